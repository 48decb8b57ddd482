"""The header grammar of the safetensors library (serde_json), case by case, against the library itself.

Each case is a raw header written before real tensor bytes; `safe_open` + `get_tensor`
judges it, and our check must agree, except for the two forms refused on purpose
(see the comment in preflight/formats/safetensors.py).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from safetensors import safe_open

from preflight import problems as P
from preflight.formats.safetensors import check_safetensors

E = '"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'


def _deep(n: int) -> str:
    return '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":' + "[" * n + "]" * n + "}}"


# name: (header text, library loads it)
CASES: dict[str, tuple[str, bool]] = {
    "plain": ("{" + E + "}", True),
    "second-__metadata__": ('{"__metadata__":{"x":"1"},"__metadata__":{"y":"2"},' + E + "}", False),
    "second-__metadata__-after-null": ('{"__metadata__":null,"__metadata__":{"y":"2"},' + E + "}", False),
    "dtype-twice": ('{"a":{"dtype":"F32","dtype":"I32","shape":[2],"data_offsets":[0,8]}}', False),
    "dtype-twice-one-escaped": ('{"a":{"dtype":"F32","\\u0064type":"F32","shape":[2],"data_offsets":[0,8]}}', False),
    "shape-twice": ('{"a":{"dtype":"F32","shape":[3],"shape":[2],"data_offsets":[0,8]}}', False),
    "tensor-name-twice": ("{" + E + "," + E + "}", True),  # a HashMap: the last entry wins
    "metadata-key-twice": ('{"__metadata__":{"x":"1","x":"2"},' + E + "}", True),
    "repeated-keys-in-an-ignored-field": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":{"k":1,"k":2}}}', True),
    "lone-high-surrogate-in-name": ('{"a\\ud800":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', False),
    "lone-low-surrogate-in-name": ('{"a\\udc00":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', False),
    "high-surrogate-then-letter": ('{"a\\ud83d\\u0041":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', False),
    "surrogate-in-metadata-value": ('{"__metadata__":{"x":"\\udc00"},' + E + "}", False),
    "surrogate-in-ignored-field": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":"\\ud800"}}', False),
    "surrogate-pair": ('{"a\\ud83d\\ude00":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', True),
    "minus-zero-offset": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[-0,8]}}', False),
    "minus-zero-dimension": ('{"a":{"dtype":"F32","shape":[-0,2],"data_offsets":[0,0]}}', False),
    "minus-zero-in-ignored-field": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":-0}}', True),
    "fraction-offset": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0.0,8]}}', False),
    "exponent-offset": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8e0]}}', False),
    "offset-beyond-u64": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551616]}}', False),
    "double-overflow-in-ignored-field": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1e400}}', False),
    "huge-integer-in-ignored-field": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":' + "9" * 400 + "}}", False),
    "metadata-value-number": ('{"__metadata__":{"x":1},' + E + "}", False),
    "metadata-value-null": ('{"__metadata__":{"x":null},' + E + "}", False),
    "metadata-null": ('{"__metadata__":null,' + E + "}", True),
    "metadata-list": ('{"__metadata__":[],' + E + "}", False),
    "trailing-spaces-and-newlines": ("{" + E + "}  \n\t\r ", True),
    "leading-whitespace": (" \n{" + E + "}", True),  # the '{' check is commented out in the library
    "trailing-nul": ("{" + E + "}\0\0", False),
    "byte-order-mark": ("\ufeff{" + E + "}", False),
    "unknown-field-in-entry": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":[1,{"y":null}]}}', True),
    "nesting-127": (_deep(125), True),
    "nesting-128": (_deep(126), False),
    "nesting-3000": (_deep(3000), False),
    "nan": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,NaN]}}', False),
}

# Forms serde's derive takes that we refuse on purpose: no writer emits them.
DELIBERATE = {
    "entry-as-array": ('{"a":["F32",[2],[0,8]]}', True),
    "dtype-as-map": ('{"a":{"dtype":{"F32":null},"shape":[2],"data_offsets":[0,8]}}', True),
}


def write(path: Path, header: str) -> Path:
    raw = header.encode("utf-8")
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 8)
    return path


def library_loads(path: Path) -> bool:
    try:
        with safe_open(str(path), "numpy") as f:
            for k in f.keys():
                f.get_tensor(k)
        return True
    except Exception:
        return False


@pytest.mark.parametrize("name", sorted(CASES))
def test_agrees_with_the_library(tmp_path: Path, name: str) -> None:
    header, loads = CASES[name]
    path = write(tmp_path / "m.safetensors", header)
    assert library_loads(path) is loads, "the library changed its mind: update the case"
    info = check_safetensors(path)
    assert info.ok is loads, info.problems
    if not loads:
        assert {p.code for p in info.problems if p.is_error} & {P.HEADER_INVALID, P.BAD_OFFSETS, P.BAD_SHAPE}


@pytest.mark.parametrize("name", sorted(DELIBERATE))
def test_deliberate_differences_are_refused_with_a_reason(tmp_path: Path, name: str) -> None:
    header, loads = DELIBERATE[name]
    path = write(tmp_path / "m.safetensors", header)
    assert library_loads(path) is loads
    info = check_safetensors(path)
    assert not info.ok and info.problems[0].code == P.HEADER_INVALID


def test_messages_say_what_the_library_refuses(tmp_path: Path) -> None:
    def message(name: str) -> str:
        return check_safetensors(write(tmp_path / f"{name}.safetensors", CASES[name][0])).problems[0].message

    assert "duplicate field '__metadata__'" in message("second-__metadata__")
    assert "duplicate field 'dtype'" in message("dtype-twice")
    assert "lone UTF-16 surrogate" in message("lone-high-surrogate-in-name")
    assert "-0 is the float -0.0" in message("minus-zero-offset")
    assert "deeper than 127 levels" in message("nesting-128")
    assert "deeper than 127 levels" in message("nesting-3000")


def test_a_repeated_tensor_name_is_a_warning(tmp_path: Path) -> None:
    info = check_safetensors(write(tmp_path / "m.safetensors", CASES["tensor-name-twice"][0]))
    assert info.ok and [(p.code, p.severity) for p in info.problems] == [(P.HEADER_INVALID, "warning")]
    assert "given 2 times; loaders keep the last entry" in info.problems[0].message
