"""check_safetensors on real files from the safetensors serializer and on one corruption per problem code."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from preflight import problems as P
from preflight.formats.safetensors import DTYPE_BITS, check_safetensors
from tests.builders import (
    append_bytes,
    patch_safetensors_header,
    patch_u64,
    truncate,
    write_safetensors,
    write_sparse_safetensors,
)


def small(path: Path) -> Path:
    return write_safetensors(
        path,
        {"embed.weight": ("BF16", (8, 16)), "norm.weight": np.arange(16, dtype=np.float32), "lm_head.weight": ("F16", (8, 16))},
        metadata={"format": "pt"},
    )


def codes(info) -> list[str]:
    return [p.code for p in info.problems]


def reference_opens(path: Path) -> bool:
    try:
        with safe_open(str(path), "numpy") as f:
            list(f.keys())
        return True
    except Exception:
        return False


def test_valid_file_reports_layout(tmp_path: Path) -> None:
    path = small(tmp_path / "model.safetensors")
    info = check_safetensors(path)
    assert info.ok and info.problems == []
    assert info.name == "model.safetensors"
    assert info.file_size == path.stat().st_size
    assert 8 + info.header_size + info.data_size == info.file_size
    assert info.metadata == {"format": "pt"}
    assert set(info.tensors) == {"embed.weight", "norm.weight", "lm_head.weight"}
    assert info.tensors["embed.weight"].dtype == "BF16"
    assert info.tensors["embed.weight"].shape == (8, 16)
    assert info.tensors["embed.weight"].nbytes == 8 * 16 * 2
    assert info.dtypes == {"BF16": 1, "F32": 1, "F16": 1}
    assert info.parameter_count == 8 * 16 * 2 + 16


def test_every_dtype_the_serializer_writes_is_known_and_sized_right(tmp_path: Path) -> None:
    tensors = {f"t.{d}": (d, (2, 8)) for d in DTYPE_BITS if not d.startswith("F6")}
    path = write_safetensors(tmp_path / "all.safetensors", tensors)
    info = check_safetensors(path)
    assert info.ok, info.problems
    assert set(info.dtypes) == {d for d in DTYPE_BITS if not d.startswith("F6")}
    assert info.tensors["t.F4"].nbytes == 8 and info.tensors["t.C64"].nbytes == 128


def test_six_bit_dtypes_count_bits_not_bytes(tmp_path: Path) -> None:
    # The serializer cannot produce F6 from numpy; relabel a 3-byte U8 tensor as 4 F6 values (24 bits).
    path = write_safetensors(tmp_path / "f6.safetensors", {"w": ("U8", (3,))})
    patch_safetensors_header(path, lambda h: h["w"].update(dtype="F6_E2M3", shape=[4]))
    info = check_safetensors(path)
    assert info.ok, info.problems
    assert info.parameter_count == 4
    assert reference_opens(path)


def test_zero_tensor_file_is_valid(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "empty-model.safetensors", {}, metadata={"format": "pt"})
    info = check_safetensors(path)
    assert info.ok and info.tensors == {} and info.metadata == {"format": "pt"}


def test_tensor_order_in_json_does_not_matter(tmp_path: Path) -> None:
    path = small(tmp_path / "m.safetensors")
    patch_safetensors_header(path, lambda h: dict(reversed(list(h.items()))))
    assert check_safetensors(path).ok
    assert reference_opens(path)


# One corrupted variant per problem code: (builder, expected code, text the message must contain).
Variant = Callable[[Path], Path]


def _shift_offsets(by: int) -> Callable[[dict], None]:
    def edit(h: dict) -> None:
        for k, v in h.items():
            if k != "__metadata__":
                v["data_offsets"] = [v["data_offsets"][0] + by, v["data_offsets"][1] + by]
    return edit


def _first(h: dict) -> dict:
    return min((v for k, v in h.items() if k != "__metadata__"), key=lambda v: v["data_offsets"][0])


def _second(h: dict) -> dict:
    return sorted((v for k, v in h.items() if k != "__metadata__"), key=lambda v: v["data_offsets"][0])[1]


VARIANTS: dict[str, tuple[Variant, str, str]] = {
    "empty": (lambda p: (p.write_bytes(b""), p)[1], P.EMPTY_FILE, "empty"),
    "shorter-than-length-field": (lambda p: (p.write_bytes(b"\x10\x00\x00"), p)[1], P.TRUNCATED, "3 bytes"),
    "header-length-past-eof": (lambda p: patch_u64(small(p), 0, p.stat().st_size), P.TRUNCATED, "header length field says"),
    "header-length-huge": (lambda p: patch_u64(small(p), 0, 2**60), P.HEADER_TOO_LARGE, str(2**60)),
    "data-truncated": (lambda p: truncate(small(p), by=10), P.TRUNCATED, "truncated by 10 bytes"),
    "trailing-data": (lambda p: append_bytes(small(p), b"\0" * 24), P.TRAILING_DATA, "24 bytes of trailing data"),
    "header-not-utf8": (lambda p: patch_safetensors_header(small(p), raw=b'{"\xff\xfe": 1}  '), P.HEADER_INVALID, "not UTF-8"),
    "header-not-json": (lambda p: patch_safetensors_header(small(p), raw=b'{"a": {"dtype": '), P.HEADER_INVALID, "not valid JSON"),
    "header-nan": (lambda p: patch_safetensors_header(small(p), raw=b'{"__metadata__": {"a": NaN}}'), P.HEADER_INVALID, "NaN"),
    "header-not-object": (lambda p: patch_safetensors_header(small(p), raw=b"[1, 2]  "), P.HEADER_INVALID, "JSON list"),
    "entry-not-object": (lambda p: patch_safetensors_header(small(p), lambda h: h.update({"x": [1]})), P.HEADER_INVALID, "'x'"),
    "entry-missing-dtype": (lambda p: patch_safetensors_header(small(p), lambda h: h["embed.weight"].pop("dtype")), P.HEADER_INVALID, "dtype is None"),
    "shape-negative": (lambda p: patch_safetensors_header(small(p), lambda h: h["embed.weight"].update(shape=[-8, -16])), P.HEADER_INVALID, "shape is [-8, -16]"),
    "offsets-three-values": (lambda p: patch_safetensors_header(small(p), lambda h: h["embed.weight"]["data_offsets"].append(9)), P.HEADER_INVALID, "data_offsets"),
    "metadata-not-strings": (lambda p: patch_safetensors_header(small(p), lambda h: h["__metadata__"].update(n=1)), P.HEADER_INVALID, "__metadata__"),
    "unknown-dtype": (lambda p: patch_safetensors_header(small(p), lambda h: h["embed.weight"].update(dtype="F128")), P.BAD_DTYPE, "'F128'"),
    "shape-disagrees-with-span": (lambda p: patch_safetensors_header(small(p), lambda h: h["embed.weight"].update(shape=[8, 17])), P.BAD_SHAPE, "needs 272 bytes"),
    "sub-byte-shape": (lambda p: patch_safetensors_header(write_safetensors(p, {"w": ("U8", (2,))}), lambda h: h["w"].update(dtype="F4", shape=[3])), P.BAD_SHAPE, "12 bits"),
    "offsets-not-from-zero": (lambda p: patch_safetensors_header(small(p), _shift_offsets(4)), P.BAD_OFFSETS, "begins at 4, expected 0"),
    "offsets-overlap": (lambda p: patch_safetensors_header(small(p), lambda h: _second(h).update(data_offsets=[0, _second(h)["data_offsets"][1] - _second(h)["data_offsets"][0]])), P.BAD_OFFSETS, "overlaps"),
    "offsets-gap": (lambda p: patch_safetensors_header(small(p), lambda h: _first(h).update(data_offsets=[0, _first(h)["data_offsets"][1] - 4])), P.BAD_OFFSETS, "byte gap"),
    "offsets-reversed": (lambda p: patch_safetensors_header(small(p), lambda h: _first(h).update(data_offsets=list(reversed(_first(h)["data_offsets"])))), P.BAD_OFFSETS, "end before they begin"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_corruption_has_its_code_and_names_the_file(tmp_path: Path, variant: str) -> None:
    build, code, text = VARIANTS[variant]
    path = build(tmp_path / "shard.safetensors")
    info = check_safetensors(path, name="lane/shard.safetensors")
    assert not info.ok
    assert code in codes(info), info.problems
    hit = next(p for p in info.problems if p.code == code)
    assert hit.path == "lane/shard.safetensors"
    assert "lane/shard.safetensors" in hit.message
    assert text in hit.message, hit.message


@pytest.mark.parametrize("variant", ["valid", "valid-reordered", *sorted(VARIANTS)])
def test_agrees_with_the_safetensors_library(tmp_path: Path, variant: str) -> None:
    """What we pass, safe_open opens; what safe_open refuses, we refuse."""
    path = tmp_path / "m.safetensors"
    if variant == "valid":
        small(path)
    elif variant == "valid-reordered":
        patch_safetensors_header(small(path), lambda h: dict(reversed(list(h.items()))))
    else:
        VARIANTS[variant][0](path)
    ours = check_safetensors(path).ok
    theirs = reference_opens(path)
    assert theirs or not ours, f"validator passes a file safe_open refuses ({variant})"
    if variant.startswith("valid"):
        assert ours and theirs


def test_truncation_message_puts_expected_and_found_side_by_side(tmp_path: Path) -> None:
    path = small(tmp_path / "m.safetensors")
    full = path.stat().st_size
    truncate(path, full - 100)
    (p,) = check_safetensors(path).problems
    assert p.message == f"m.safetensors: header says data ends at {full} bytes, file has {full - 100} (truncated by 100 bytes)"


def test_header_cap_is_configurable(tmp_path: Path) -> None:
    path = small(tmp_path / "m.safetensors")
    info = check_safetensors(path, max_header_bytes=16)
    assert codes(info) == [P.HEADER_TOO_LARGE]
    assert "above the limit of 16 bytes" in info.problems[0].message


def test_headers_the_library_refuses_are_too_large_whatever_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 100_000_001) + b" " * 16)
    assert codes(check_safetensors(path, max_header_bytes=2**30)) == [P.HEADER_TOO_LARGE]


def test_many_bad_tensors_are_summarised(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", {f"w{i}": ("U8", (4,)) for i in range(12)})
    patch_safetensors_header(path, lambda h: [v.update(dtype="Q9") for k, v in h.items() if k != "__metadata__"])
    info = check_safetensors(path)
    bad = [p for p in info.problems if p.code == P.BAD_DTYPE]
    assert len(bad) == 6
    assert bad[-1].message == "m.safetensors: 7 more 'bad-dtype' finding(s) not shown"


def test_missing_file_and_directory_are_findings_not_exceptions(tmp_path: Path) -> None:
    assert codes(check_safetensors(tmp_path / "nope.safetensors")) == [P.MISSING]
    assert codes(check_safetensors(tmp_path)) == [P.NOT_A_FILE]


class CountingFile(io.RawIOBase):
    """A real file whose reads are counted, to prove a check reads only the header."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "rb")
        self.name = str(path)
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def readinto(self, b) -> int:  # type: ignore[override]
        n = self._f.readinto(b)
        self.bytes_read += n or 0
        return n or 0

    def close(self) -> None:
        self._f.close()
        super().close()


def test_an_8_gib_file_is_checked_from_its_header_alone(tmp_path: Path) -> None:
    path = write_sparse_safetensors(tmp_path / "big.safetensors", 8 * 2**30)
    assert reference_opens(path)
    f = CountingFile(path)
    try:
        info = check_safetensors(f)
        assert info.ok, info.problems
        assert info.file_size == path.stat().st_size > 8 * 2**30
        assert f.bytes_read == 8 + info.header_size
        assert not f.closed  # a caller's file object is left open
    finally:
        f.close()


def test_file_objects_are_named_after_their_file(tmp_path: Path) -> None:
    path = small(tmp_path / "m.safetensors")
    truncate(path, by=1)
    with open(path, "rb") as f:
        info = check_safetensors(f)
    assert info.name == "m.safetensors" and info.problems[0].message.startswith("m.safetensors: ")
    in_memory = check_safetensors(io.BytesIO(b"\x00" * 4), name="stream.safetensors")
    assert codes(in_memory) == [P.TRUNCATED] and in_memory.name == "stream.safetensors"
