"""Fuzzing the header checks: any bytes give findings, never an exception, in bounded time and memory.

Inputs are random bytes and mutations of valid files (bit flips, truncations,
overwrites of the length/count/type fields the real writers produced). Whenever a
mutant passes, the reference reader must open it too.
"""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
from datetime import timedelta
from pathlib import Path

import gguf
import numpy as np
import pytest
import safetensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preflight.formats.gguf import check_gguf
from preflight.formats.safetensors import check_safetensors
from tests.builders import write_gguf, write_safetensors
from tests.test_gguf import reference_opens

FUZZ = settings(
    max_examples=150,
    deadline=timedelta(seconds=2),  # each check takes milliseconds; this catches runaway loops
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
NAME = "fuzzed.bin"
INTERESTING = [0, 1, 7, 8, 31, 32, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**60, 2**63 - 1, 2**63, 2**64 - 1]


class Base:
    def __init__(self, data: bytes, fields: list[tuple[int, int]]) -> None:
        self.data = data
        self.fields = fields  # (offset, width) of every length, count, type and offset field


@pytest.fixture(scope="module")
def st_base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    path = write_safetensors(
        tmp_path_factory.mktemp("st") / "m.safetensors",
        {"a": ("BF16", (2, 4)), "b": np.arange(3, dtype=np.float32), "c": ("F4", (2, 2)), "d": ("I64", (1,))},
        metadata={"format": "pt"},
    )
    return Base(path.read_bytes(), [(0, 8)])


def _gguf_fields(path: Path) -> list[tuple[int, int]]:
    """(offset, width) of every integer field in the header, found through gguf.GGUFReader's memory map."""
    reader = gguf.GGUFReader(str(path))
    start = reader.data.ctypes.data
    fields = {(8, 8), (16, 8)}  # tensor and key/value counts
    for f in [*reader.fields.values(), *(t.field for t in reader.tensors)]:
        for part in f.parts:
            width = part.dtype.itemsize
            if part.dtype.kind in "ui" and width > 1:
                for i in range(min(part.size, 4)):
                    fields.add((part.ctypes.data - start + i * width, width))
    return sorted(fields)


@pytest.fixture(scope="module")
def gguf_bases(tmp_path_factory: pytest.TempPathFactory) -> list[Base]:
    folder = tmp_path_factory.mktemp("gguf")
    model = write_gguf(folder / "m.gguf", n_vocab=20, quant="Q8_0",
                       tensors={"token_embd.weight": (2, 64), "blk.0.attn_q.weight": (2, 64), "output_norm.weight": (64,)},
                       extra_kv={"general.tags": ["x", "y"], "llama.rope.dims": [1, 2], "general.flag": True})
    vocab = write_gguf(folder / "vocab.gguf", tensors={}, n_vocab=20)
    return [Base(p.read_bytes(), _gguf_fields(p)) for p in (model, vocab)]


@st.composite
def mutants(draw: st.DrawFn, base: Base) -> bytes:
    data = bytearray(base.data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "field", "field", "splice"]))
        if not data:
            break
        if op == "flip":
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif op == "field":
            offset, width = draw(st.sampled_from(base.fields))
            value = draw(st.sampled_from(INTERESTING) | st.integers(0, 2**64 - 1)) % (1 << (8 * width))
            data[offset : offset + width] = value.to_bytes(width, "little")[: max(0, len(data) - offset)]
            del data[len(base.data) :]  # an overwrite never grows the file
        else:
            pos = draw(st.integers(0, len(data)))
            data[pos:pos] = draw(st.binary(max_size=16))
    return bytes(data)


def assert_findings_only(info) -> None:
    for p in info.problems:
        assert p.path == NAME and p.message.startswith(f"{NAME}: ")
    assert info.ok == (not any(p.is_error for p in info.problems))


def safetensors_library_accepts(data: bytes) -> bool:
    try:
        safetensors.deserialize(data)
        return True
    except Exception:
        return False


def gguf_reader_accepts(data: bytes, folder: Path) -> bool:
    path = folder / "accepted.gguf"
    path.write_bytes(data)
    return reference_opens(path)


# --------------------------------------------------------------------------- safetensors


@FUZZ
@given(data=st.binary(max_size=600))
def test_safetensors_random_bytes(data: bytes) -> None:
    info = check_safetensors(io.BytesIO(data), name=NAME)
    assert_findings_only(info)
    if info.ok:
        assert safetensors_library_accepts(data)


@FUZZ
@given(header=st.binary(max_size=300), tail=st.binary(max_size=64))
def test_safetensors_random_header_behind_a_plausible_length(header: bytes, tail: bytes) -> None:
    data = struct.pack("<Q", len(header)) + header + tail
    info = check_safetensors(io.BytesIO(data), name=NAME)
    assert_findings_only(info)
    if info.ok:
        assert safetensors_library_accepts(data)


@FUZZ
@given(json_header=st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**65) | st.text(max_size=6),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from(["dtype", "shape", "data_offsets", "__metadata__", "a", "b"]), kids, max_size=4),
    max_leaves=20,
))
def test_safetensors_structured_garbage_headers(json_header: object) -> None:
    raw = json.dumps(json_header).encode()
    data = struct.pack("<Q", len(raw)) + raw + b"\0" * 16
    info = check_safetensors(io.BytesIO(data), name=NAME)
    assert_findings_only(info)
    if info.ok:
        assert safetensors_library_accepts(data)


@FUZZ
@given(data=st.data())
def test_safetensors_mutations(st_base: Base, data: st.DataObject) -> None:
    blob = data.draw(mutants(st_base))
    info = check_safetensors(io.BytesIO(blob), name=NAME)
    assert_findings_only(info)
    if info.ok:
        assert safetensors_library_accepts(blob), "validator passed a mutant the safetensors library refuses"


# --------------------------------------------------------------------------- GGUF


@FUZZ
@given(data=st.binary(max_size=600))
def test_gguf_random_bytes(data: bytes) -> None:
    assert_findings_only(check_gguf(io.BytesIO(data), name=NAME))


@FUZZ
@given(rest=st.binary(max_size=600), version=st.sampled_from([2, 3]))
def test_gguf_random_bytes_behind_a_valid_magic(rest: bytes, version: int, tmp_path: Path) -> None:
    data = b"GGUF" + struct.pack("<I", version) + rest
    info = check_gguf(io.BytesIO(data), name=NAME)
    assert_findings_only(info)
    if info.ok:
        assert gguf_reader_accepts(data, tmp_path)


@FUZZ
@given(data=st.data())
def test_gguf_mutations(gguf_bases: list[Base], data: st.DataObject, tmp_path: Path) -> None:
    base = data.draw(st.sampled_from(gguf_bases))
    blob = data.draw(mutants(base))
    info = check_gguf(io.BytesIO(blob), name=NAME)
    assert_findings_only(info)
    if info.ok:
        assert gguf_reader_accepts(blob, tmp_path), "validator passed a mutant gguf.GGUFReader refuses"


# --------------------------------------------------------------------------- memory


def test_huge_length_fields_allocate_nothing_big(st_base: Base, gguf_bases: list[Base]) -> None:
    """Every length/count field set to huge values: peak allocation stays near the file size."""
    cases: list[tuple[str, bytes]] = []
    for value in (2**31, 2**32 - 1, 2**40, 2**60, 2**64 - 1):
        cases.append(("st", struct.pack("<Q", value) + st_base.data[8:]))
        for base in gguf_bases:
            for offset, width in base.fields:
                blob = bytearray(base.data)
                blob[offset : offset + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
                cases.append(("gguf", bytes(blob)))
    tracemalloc.start()
    try:
        for kind, blob in cases:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            info = (check_safetensors if kind == "st" else check_gguf)(io.BytesIO(blob), name=NAME)
            assert_findings_only(info)
            peak = tracemalloc.get_traced_memory()[1] - before
            assert peak < 1 * 2**20, f"{kind}: {peak} bytes allocated for a {len(blob)}-byte input"
    finally:
        tracemalloc.stop()
    assert len(cases) > 100
