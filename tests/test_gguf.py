"""check_gguf and the split checks on files written by gguf.GGUFWriter, and one corruption per problem code."""

from __future__ import annotations

import io
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import gguf
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGUFValueType, LlamaFileType

from preflight import problems as P
from preflight.formats.gguf import (
    ARRAY,
    FILE_TYPES,
    GGML_TYPES,
    SCALAR_TYPES,
    STRING,
    ArraySummary,
    check_gguf,
    check_gguf_split,
    split_sibling_names,
)
from tests.builders import (
    gguf_header_end,
    gguf_kv_offsets,
    gguf_tensor_offsets,
    patch_bytes,
    patch_u32,
    patch_u64,
    truncate,
    write_gguf,
    write_gguf_split,
    write_sparse_gguf,
)
from tests.test_safetensors import CountingFile


def codes(info) -> list[str]:
    return [p.code for p in info.problems]


def reference_opens(path: Path) -> bool:
    try:
        reader = gguf.GGUFReader(str(path))
        for t in reader.tensors:
            assert t.data.nbytes == t.n_bytes
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------- tables copied from gguf


def test_ggml_type_table_matches_the_gguf_package() -> None:
    """Ours is the gguf package's table plus the types llama.cpp has that the package lacks yet (42: Q2_0)."""
    theirs = {int(t): (t.name, block, size) for t, (block, size) in GGML_QUANT_SIZES.items()}
    assert {t: GGML_TYPES[t] for t in theirs} == theirs
    assert {t: v for t, v in GGML_TYPES.items() if t not in theirs} == {42: ("Q2_0", 64, 18)}


def test_file_type_table_matches_the_gguf_package() -> None:
    assert FILE_TYPES == {int(v): v.name for v in LlamaFileType}


def test_value_type_table_matches_the_gguf_package() -> None:
    ours = {t: name for t, (name, _) in SCALAR_TYPES.items()} | {STRING: "string", ARRAY: "array"}
    assert ours == {int(v): v.name.lower() for v in GGUFValueType}
    for t, (_, fmt) in SCALAR_TYPES.items():
        assert struct.calcsize("<" + fmt) == struct.calcsize(gguf.GGUFWriter._simple_value_packing[GGUFValueType(t)])


# --------------------------------------------------------------------------- valid files


def test_valid_file_is_described(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", n_vocab=100, quant="Q4_K", file_type=15, context_length=8192,
                      extra_kv={"general.tags": ["a", "b"], "llama.rope.dims": [1, 2, 3]})
    info = check_gguf(path)
    assert info.ok and info.problems == []
    assert (info.version, info.architecture, info.context_length, info.file_type) == (3, "llama", 8192, "Q4_K_M")
    assert (info.block_count, info.vocab_size, info.tied_embeddings, info.vocab_only) == (1, 100, True, False)
    assert info.quant_types == {"Q4_K": 8, "F32": 3}  # token_embd + 7 block matrices; 3 norms
    assert info.tensor_count == 11 and info.parameter_count == 100 * 256 + 256 + 2 * 256 + 7 * 256 * 256
    assert info.metadata["tokenizer.ggml.tokens"] == ArraySummary("string", 100)
    assert info.metadata["tokenizer.ggml.scores"] == ArraySummary("float32", 100)
    assert info.metadata["general.tags"] == ["a", "b"]
    assert info.metadata["llama.rope.dims"] == [1, 2, 3]
    assert info.split is None
    reader = gguf.GGUFReader(str(path))
    assert info.data_offset == reader.data_offset
    assert info.kv_count == len(reader.fields) - 3  # the reader adds GGUF.version/tensor_count/kv_count
    for t in reader.tensors:
        mine = info.tensors[t.name]
        assert info.data_offset + mine.offset == t.data_offset
        assert mine.nbytes == t.n_bytes and mine.type_name == t.tensor_type.name
        assert mine.dims == tuple(int(d) for d in t.shape)


@pytest.mark.parametrize("quant", ["F32", "F16", "BF16", "Q4_0", "Q8_0", "Q4_K", "Q6_K", "IQ4_XS", "TQ2_0", "MXFP4"])
def test_quant_types_pass_and_open_in_the_reference_reader(tmp_path: Path, quant: str) -> None:
    path = write_gguf(tmp_path / "m.gguf", quant=quant)
    info = check_gguf(path)
    assert info.ok, info.problems
    assert info.quant_types[quant] >= 2
    assert reference_opens(path)


def test_tokenizer_only_file_ending_before_the_aligned_data_start_is_valid(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "ggml-vocab-llama.gguf", tensors={}, n_vocab=1000)
    size = path.stat().st_size
    assert size % 32 != 0  # ends right after the header, as llama.cpp's vocab files do
    info = check_gguf(path)
    assert info.ok, info.problems
    assert info.tensor_count == 0 and info.data_offset > size
    assert info.metadata["tokenizer.ggml.tokens"] == ArraySummary("string", 1000)


def test_custom_alignment_is_honoured(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", alignment=64)
    info = check_gguf(path)
    assert info.ok and info.alignment == 64 and info.data_offset % 64 == 0


def test_file_objects_and_in_memory_bytes(tmp_path: Path) -> None:
    data = write_gguf(tmp_path / "m.gguf").read_bytes()
    assert check_gguf(io.BytesIO(data), name="mem.gguf").ok
    cut = check_gguf(io.BytesIO(data[:-4]), name="mem.gguf")
    assert codes(cut) == [P.TENSOR_OUT_OF_BOUNDS] and cut.problems[0].message.startswith("mem.gguf: ")


def test_an_8_gib_file_is_checked_from_its_header_alone(tmp_path: Path) -> None:
    path = write_sparse_gguf(tmp_path / "big.gguf", 8 * 2**30)
    f = CountingFile(path)
    try:
        info = check_gguf(f)
        assert info.ok, info.problems
        assert abs(info.parameter_count * 2 - 8 * 2**30) < 2**24  # F16 weights filling 8 GiB
        assert f.bytes_read < 2**20
    finally:
        f.close()


# --------------------------------------------------------------------------- one corruption per code


def _second_tensor_offset(p: Path) -> int:
    return gguf_tensor_offsets(p, "output_norm.weight").value_offset


def _first_tensor_end(p: Path) -> int:
    """Where token_embd.weight's data ends (relative to the data start), i.e. output_norm's offset."""
    return next(t.data_offset for t in gguf.GGUFReader(str(p)).tensors if t.name == "output_norm.weight") - gguf.GGUFReader(str(p)).data_offset


def _dup_key(p: Path) -> Path:
    write_gguf(p, extra_kv={"general.aaaa": 1, "general.aaab": 2})
    data = p.read_bytes()
    return patch_bytes(p, data.index(b"general.aaab"), b"general.aaaa")


def _dup_tensor(p: Path) -> Path:
    write_gguf(p, tensors={"a.weight": (256,), "b.weight": (256,)})
    data = p.read_bytes()
    return patch_bytes(p, data.index(b"b.weight"), b"a.weight")


def _row_not_block_multiple(p: Path) -> Path:
    write_gguf(p, quant="Q8_0")
    dims_at = gguf_tensor_offsets(p, "blk.0.attn_q.weight").type_offset - 16
    return patch_u64(p, dims_at, 250)


def _huge_dim(p: Path) -> Path:
    write_gguf(p)
    dims_at = gguf_tensor_offsets(p, "output_norm.weight").type_offset - 8
    return patch_u64(p, dims_at, 2**63 + 1)


def _too_many_dims(p: Path) -> Path:
    write_gguf(p, tensors={"x.weight": (256,)})
    n_dims_at = gguf_tensor_offsets(p, "x.weight").type_offset - 8 - 4
    return patch_u32(p, n_dims_at, 5)


def _header_end_unaligned(p: Path) -> Path:
    write_gguf(p)
    end = gguf_header_end(p)
    assert end % 32
    return truncate(p, end)


Variant = Callable[[Path], Path]
VARIANTS: dict[str, tuple[Variant, str, str]] = {
    "empty": (lambda p: (p.write_bytes(b""), p)[1], P.EMPTY_FILE, "empty"),
    "shorter-than-header": (lambda p: (p.write_bytes(b"GGUF\x03\x00"), p)[1], P.TRUNCATED, "shorter than the 24-byte"),
    "bad-magic": (lambda p: patch_bytes(write_gguf(p), 0, b"GGML"), P.BAD_MAGIC, "b'GGML', expected b'GGUF'"),
    "safetensors-named-gguf": (lambda p: (p.write_bytes(b"\x10" + b"\0" * 7 + b'{"a":1}'), p)[1], P.BAD_MAGIC, "not a GGUF file"),
    "version-1": (lambda p: patch_u32(write_gguf(p), 4, 1), P.UNSUPPORTED_VERSION, "version 1"),
    "version-4": (lambda p: patch_u32(write_gguf(p), 4, 4), P.UNSUPPORTED_VERSION, "version 4, expected 2 or 3"),
    "big-endian": (lambda p: write_gguf(p, big_endian=True), P.UNSUPPORTED_VERSION, "big-endian GGUF (version 3 byte-swapped"),
    "kv-count-huge": (lambda p: patch_u64(write_gguf(p), 16, 2**60), P.COUNT_TOO_LARGE, f"{2**60} key/values"),
    "tensor-count-huge": (lambda p: patch_u64(write_gguf(p), 8, 2**40), P.COUNT_TOO_LARGE, f"{2**40} tensors"),
    "key-length-huge": (lambda p: patch_u64(write_gguf(p), 24, 2**62), P.COUNT_TOO_LARGE, f"claims {2**62} bytes"),
    "array-count-huge": (lambda p: patch_u64(write_gguf(p), gguf_kv_offsets(p, "tokenizer.ggml.tokens").value_offset + 4, 2**50), P.COUNT_TOO_LARGE, f"claims {2**50} strings"),
    "token-length-huge": (lambda p: patch_u64(write_gguf(p), gguf_kv_offsets(p, "tokenizer.ggml.tokens").value_offset + 12, 2**40), P.COUNT_TOO_LARGE, "past the end of the file"),
    "scores-count-huge": (lambda p: patch_u64(write_gguf(p), gguf_kv_offsets(p, "tokenizer.ggml.scores").value_offset + 4, 2**40), P.COUNT_TOO_LARGE, "x float32"),
    "header-cut-mid-kv": (lambda p: truncate(write_gguf(p), gguf_kv_offsets(p, "tokenizer.ggml.scores").value_offset + 20), P.TRUNCATED, "array tokenizer.ggml.scores claims 32 x float32 (128 bytes), only 8 bytes remain in the file (truncated"),
    "bad-value-type": (lambda p: patch_u32(write_gguf(p), gguf_kv_offsets(p, "llama.context_length").type_offset, 13), P.BAD_VALUE_TYPE, "value type 13"),
    "bad-array-item-type": (lambda p: patch_u32(write_gguf(p), gguf_kv_offsets(p, "tokenizer.ggml.tokens").value_offset, 99), P.BAD_VALUE_TYPE, "item type 99"),
    "duplicate-key": (_dup_key, P.HEADER_INVALID, "'general.aaaa' appears twice"),
    "empty-key": (lambda p: write_gguf(p, extra_kv={"": 1}), P.HEADER_INVALID, "is empty"),
    "alignment-not-power-of-two": (lambda p: patch_u32(write_gguf(p, alignment=64), gguf_kv_offsets(p, "general.alignment").value_offset, 48), P.HEADER_INVALID, "general.alignment is 48"),
    "alignment-wrong-type": (lambda p: write_gguf(p, extra_kv={"general.alignment": 32.0}), P.HEADER_INVALID, "general.alignment is a float32"),
    "duplicate-tensor": (_dup_tensor, P.HEADER_INVALID, "'a.weight' appears twice"),
    "too-many-dims": (_too_many_dims, P.HEADER_INVALID, "5 dimensions"),
    "name-too-long": (lambda p: write_gguf(p, tensors={"x" * 70: (256,)}), P.HEADER_INVALID, "70 bytes"),
    "dim-huge": (_huge_dim, P.HEADER_INVALID, "below 2^63"),
    "unknown-tensor-type": (lambda p: patch_u32(write_gguf(p), gguf_tensor_offsets(p, "blk.0.attn_q.weight").type_offset, 4), P.BAD_TENSOR_TYPE, "ggml type 4"),
    "row-not-block-multiple": (_row_not_block_multiple, P.BAD_SHAPE, "250 elements, not a multiple of its block size 32"),
    "data-truncated": (lambda p: truncate(write_gguf(p), by=100), P.TENSOR_OUT_OF_BOUNDS, "truncated by 100 bytes"),
    "data-start-past-eof": (_header_end_unaligned, P.TRUNCATED, "tensor data should start at"),
    "misaligned": (lambda p: patch_u64(write_gguf(p), _second_tensor_offset(p), 8192 + 1), P.MISALIGNED, "8193, not a multiple of the alignment 32"),
    "overlap": (lambda p: patch_u64(write_gguf(p), _second_tensor_offset(p), 0), P.BAD_OFFSETS, "overlapping"),
    "gap": (lambda p: patch_u64(write_gguf(p), _second_tensor_offset(p), 8192 + 64), P.BAD_OFFSETS, "64 byte gap"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_corruption_has_its_code_and_names_the_file(tmp_path: Path, variant: str) -> None:
    build, code, text = VARIANTS[variant]
    path = build(tmp_path / "model.Q4_K_M.gguf")
    info = check_gguf(path, name="gguf/model.Q4_K_M.gguf")
    assert not info.ok
    assert code in codes(info), info.problems
    hit = next(p for p in info.problems if p.code == code)
    assert hit.path == "gguf/model.Q4_K_M.gguf"
    assert "gguf/model.Q4_K_M.gguf" in hit.message
    assert text in hit.message, hit.message


VALID: dict[str, Variant] = {
    "default": lambda p: write_gguf(p),
    "tokenizer-only": lambda p: write_gguf(p, tensors={}, n_vocab=100),
    "q4_k": lambda p: write_gguf(p, quant="Q4_K", file_type=15),
    "aligned-64": lambda p: write_gguf(p, alignment=64),
    "two-blocks": lambda p: write_gguf(p, n_layer=2),
}


@pytest.mark.parametrize("variant", [*sorted(VALID), *sorted(VARIANTS)])
def test_agrees_with_the_gguf_reader(tmp_path: Path, variant: str) -> None:
    """What we pass, gguf.GGUFReader opens; what it refuses, we refuse."""
    path = tmp_path / "m.gguf"
    (VALID.get(variant) or VARIANTS[variant][0])(path)
    ours = check_gguf(path).ok
    theirs = reference_opens(path)
    assert theirs or not ours, f"validator passes a file GGUFReader refuses ({variant})"
    if variant in VALID:
        assert ours and theirs


def test_missing_file(tmp_path: Path) -> None:
    assert codes(check_gguf(tmp_path / "absent.gguf")) == [P.MISSING]


# --------------------------------------------------------------------------- splits


def test_split_sibling_names() -> None:
    assert split_sibling_names("gguf/Qwen2.5-72B-Q4_K_M-00002-of-00003.gguf") == [
        "Qwen2.5-72B-Q4_K_M-00001-of-00003.gguf",
        "Qwen2.5-72B-Q4_K_M-00002-of-00003.gguf",
        "Qwen2.5-72B-Q4_K_M-00003-of-00003.gguf",
    ]
    assert split_sibling_names("mistral-7b-instruct-v0.2.Q4_K_M.gguf") is None
    assert split_sibling_names("x-00001-of-00000.gguf") is None


def test_valid_split(tmp_path: Path) -> None:
    parts = write_gguf_split(tmp_path, "qwen", n_splits=3)
    infos = {p.name: check_gguf(p) for p in parts}
    assert all(i.ok for i in infos.values())
    assert [i.split.no for i in infos.values()] == [0, 1, 2]
    assert check_gguf_split(parts) == []
    assert check_gguf_split(parts, infos=infos) == []
    assert all(reference_opens(p) for p in parts)


def test_missing_split_part(tmp_path: Path) -> None:
    parts = write_gguf_split(tmp_path, "qwen", n_splits=3)
    parts[1].unlink()
    (p,) = check_gguf_split(parts)
    assert p.code == P.SPLIT_MISSING and p.path == "qwen-00002-of-00003.gguf"
    assert p.message == "qwen-00002-of-00003.gguf: part missing; split has 3 parts, found 2"


def test_missing_parts_are_found_from_one_name(tmp_path: Path) -> None:
    parts = write_gguf_split(tmp_path, "qwen", n_splits=3)
    problems = check_gguf_split([parts[0]])
    assert [(p.code, p.path) for p in problems] == [
        (P.SPLIT_MISSING, "qwen-00002-of-00003.gguf"),
        (P.SPLIT_MISSING, "qwen-00003-of-00003.gguf"),
    ]


def test_split_number_disagreeing_with_the_file_name(tmp_path: Path) -> None:
    parts = write_gguf_split(tmp_path, "qwen", n_splits=3)
    patch_bytes(parts[1], gguf_kv_offsets(parts[1], "split.no").value_offset, struct.pack("<H", 2))
    (p,) = check_gguf_split(parts)
    assert p.code == P.SPLIT_INVALID and p.path == parts[1].name
    assert "split.no=2 of split.count=3, file name says part 1 (0-based) of 3" in p.message


def test_split_tensor_total(tmp_path: Path) -> None:
    parts = write_gguf_split(tmp_path, "qwen", n_splits=2)
    for part in parts:
        patch_u32(part, gguf_kv_offsets(part, "split.tensors.count").value_offset, 5)
    (p,) = check_gguf_split(parts)
    assert p.code == P.SPLIT_INVALID and p.message == "qwen-00001-of-00002.gguf: split.tensors.count says 5 tensors, the 2 parts hold 11"


def test_split_parts_disagree_on_tensor_total(tmp_path: Path) -> None:
    parts = write_gguf_split(tmp_path, "qwen", n_splits=2)
    patch_u32(parts[1], gguf_kv_offsets(parts[1], "split.tensors.count").value_offset, 7)
    (p,) = check_gguf_split(parts)
    assert p.code == P.SPLIT_INVALID and "disagree on split.tensors.count" in p.message


def test_split_part_without_split_metadata(tmp_path: Path) -> None:
    parts = write_gguf_split(tmp_path, "qwen", n_splits=2)
    write_gguf(parts[1])  # a standalone 11-tensor file under a part's name
    first, total = check_gguf_split(parts)
    assert first.code == P.SPLIT_INVALID and first.path == parts[1].name and "no split.no / split.count" in first.message
    assert total.code == P.SPLIT_INVALID and "says 11 tensors, the 2 parts hold 17" in total.message


def test_parts_of_different_splits_and_bad_names(tmp_path: Path) -> None:
    a = write_gguf_split(tmp_path / "a", "qwen", n_splits=2)
    b = write_gguf_split(tmp_path / "b", "llama", n_splits=2)
    (p,) = check_gguf_split([a[0], b[1]])
    assert p.code == P.SPLIT_INVALID and "different splits" in p.message
    other = tmp_path / "model-00003-of-00002.gguf"
    shutil.copy(a[0], other)
    (p,) = check_gguf_split([other])
    assert p.code == P.SPLIT_INVALID and p.path == other.name


def test_an_invalid_part_is_left_to_its_own_check(tmp_path: Path) -> None:
    parts = write_gguf_split(tmp_path, "qwen", n_splits=2)
    parts[1].write_bytes(b"garbage!" * 8)
    assert codes(check_gguf(parts[1])) == [P.BAD_MAGIC]
    assert check_gguf_split(parts) == []


def test_download_cut_inside_the_vocabulary_reads_as_truncated(tmp_path: Path) -> None:
    path = truncate(write_gguf(tmp_path / "m.gguf", n_vocab=1000), 10_000)
    (p,) = check_gguf(path).problems
    assert p.code == P.TRUNCATED
    assert p.message.startswith("m.gguf: file ends at 10000 bytes while reading array tokenizer.ggml.tokens (string ")


def test_big_endian_file_reports_its_real_version(tmp_path: Path) -> None:
    info = check_gguf(write_gguf(tmp_path / "be.gguf", big_endian=True))
    assert info.version == 3 and codes(info) == [P.UNSUPPORTED_VERSION]
