"""check_index / index_shard_names on shards and indexes laid out the way transformers writes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preflight import problems as P
from preflight.formats.safetensors import SafetensorsInfo, check_safetensors
from preflight.formats.sharded import check_index, index_shard_names, read_index
from tests.builders import Sharded, truncate, write_safetensors, write_sharded

INDEX = "model.safetensors.index.json"


def shards_of(folder: Path, names: list[str]) -> dict[str, SafetensorsInfo | None]:
    return {n: check_safetensors(folder / n) if (folder / n).is_file() else None for n in names}


def check_folder(folder: Path):
    names, problem = index_shard_names(folder / INDEX)
    assert problem is None
    return check_index(folder / INDEX, shards_of(folder, names))


def edit_index(s: Sharded, edit) -> None:
    doc = json.loads(s.index.read_text())
    edit(doc)
    s.index.write_text(json.dumps(doc, indent=2))


def only(info, code: str):
    hits = [p for p in info.problems if p.code == code]
    assert hits, info.problems
    for p in hits:
        assert p.path == INDEX and INDEX in p.message
    return hits


def test_valid_sharded_model(tmp_path: Path) -> None:
    s = write_sharded(tmp_path, 3, tensors_per_shard=2, dtype="BF16", shape=(4, 8))
    names, problem = index_shard_names(s.index)
    assert problem is None
    assert names == [p.name for p in s.shards]
    info = check_index(s.index, shards_of(tmp_path, names))
    assert info.ok and info.problems == []
    assert info.tensor_count == 6
    assert info.total_size == info.data_size == 6 * 4 * 8 * 2
    assert info.parameter_count == 6 * 32
    assert info.dtypes == {"BF16": 6}


def test_missing_shard_is_reported_once(tmp_path: Path) -> None:
    s = write_sharded(tmp_path, 3)
    s.shards[1].unlink()
    info = check_folder(tmp_path)
    (p,) = info.problems
    assert p.code == P.SHARD_MISSING
    assert p.message == f"{INDEX}: shard model-00002-of-00003.safetensors is missing (3 tensors are mapped to it)"


def test_a_broken_shard_is_left_to_its_own_check(tmp_path: Path) -> None:
    s = write_sharded(tmp_path, 2)
    s.shards[0].write_bytes(b"")
    truncate(s.shards[1], by=3)
    shards = shards_of(tmp_path, [p.name for p in s.shards])
    assert not shards[s.shards[0].name].ok and not shards[s.shards[1].name].ok
    info = check_index(s.index, shards)
    assert info.problems == []  # the empty shard and the truncated one were reported by check_safetensors


def test_tensor_mapped_to_a_shard_that_does_not_hold_it(tmp_path: Path) -> None:
    s = write_sharded(tmp_path, 2)
    edit_index(s, lambda d: d["weight_map"].update({"lm_head.weight": s.shards[0].name}))
    (p,) = only(check_folder(tmp_path), P.INDEX_MISMATCH)
    assert p.message == f"{INDEX}: index maps tensor 'lm_head.weight' to {s.shards[0].name}, which does not hold it"


def test_tensor_mapped_to_the_wrong_shard(tmp_path: Path) -> None:
    s = write_sharded(tmp_path, 2)
    edit_index(s, lambda d: d["weight_map"].update({"model.layers.1.mlp.w0.weight": s.shards[0].name}))
    (p,) = only(check_folder(tmp_path), P.INDEX_MISMATCH)
    assert "'model.layers.1.mlp.w0.weight' to model-00001-of-00002.safetensors, but it is in model-00002-of-00002.safetensors" in p.message


def test_shard_holding_a_tensor_the_index_does_not_list(tmp_path: Path) -> None:
    s = write_sharded(tmp_path, 2)
    edit_index(s, lambda d: d["weight_map"].pop("model.layers.0.mlp.w2.weight"))
    (p,) = only(check_folder(tmp_path), P.INDEX_MISMATCH)
    assert "shard model-00001-of-00002.safetensors holds tensor 'model.layers.0.mlp.w2.weight', which the index does not list" in p.message


def test_tensor_duplicated_in_two_shards(tmp_path: Path) -> None:
    s = write_sharded(tmp_path, 2)
    write_safetensors(s.shards[1], {"model.layers.1.mlp.w0.weight": ("BF16", (4, 8)), "model.layers.1.mlp.w1.weight": ("BF16", (4, 8)),
                                    "model.layers.1.mlp.w2.weight": ("BF16", (4, 8)), "model.layers.0.mlp.w0.weight": ("BF16", (4, 8))})
    (p,) = only(check_folder(tmp_path), P.INDEX_MISMATCH)
    assert "'model.layers.0.mlp.w0.weight' is in model-00001-of-00002.safetensors as the index says, and also in model-00002" in p.message


def test_total_size_mismatch_is_a_warning(tmp_path: Path) -> None:
    write_sharded(tmp_path, 2, total_size=1000)
    info = check_folder(tmp_path)
    assert info.ok
    (p,) = only(info, P.TOTAL_SIZE_MISMATCH)
    assert p.severity == "warning"
    assert f"total_size says 1000 bytes, the shards hold {info.data_size} bytes" in p.message


def test_total_size_may_be_absent(tmp_path: Path) -> None:
    s = write_sharded(tmp_path, 2)
    edit_index(s, lambda d: d.pop("metadata"))
    info = check_folder(tmp_path)
    assert info.ok and info.problems == [] and info.total_size is None


@pytest.mark.parametrize(
    "text, found",
    [
        ("{not json", "not valid JSON"),
        ("[]", "JSON list"),
        ('{"metadata": {}}', "'weight_map' is missing"),
        ('{"weight_map": {}}', "'weight_map' is empty"),
        ('{"weight_map": {"a": 3}}', "weight_map['a'] is 3"),
        ('{"metadata": {"total_size": "big"}, "weight_map": {"a": "s.safetensors"}}', "total_size is 'big'"),
        ("", "empty"),
        ("\ufeff{}", "not valid JSON"),
    ],
)
def test_malformed_index(tmp_path: Path, text: str, found: str) -> None:
    (tmp_path / INDEX).write_text(text)
    info = check_index(tmp_path / INDEX, {})
    (p,) = only(info, P.INDEX_INVALID)
    assert found in p.message, p.message
    assert not info.ok


def test_unusable_index_gives_no_names_and_says_why(tmp_path: Path) -> None:
    (tmp_path / INDEX).write_text("[]")
    names, problem = index_shard_names(tmp_path / INDEX)
    assert names == [] and problem is not None and problem.code == P.INDEX_INVALID
    names, problem = index_shard_names(tmp_path / "absent.json")
    assert names == [] and problem is not None and problem.code == P.MISSING


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/model.safetensors", "..", "C:evil.safetensors", ""])
def test_shard_names_must_not_escape_the_folder(tmp_path: Path, shard: str) -> None:
    s = write_sharded(tmp_path, 2)
    edit_index(s, lambda d: d["weight_map"].update({"evil.weight": shard}))
    names, problem = index_shard_names(s.index)
    assert problem is None and shard not in names
    info = check_index(s.index, shards_of(tmp_path, names))
    (p,) = only(info, P.PATH_ESCAPE)
    assert repr(shard) in p.message
    assert not info.ok


def test_read_index_lists_shards_once_in_order(tmp_path: Path) -> None:
    s = write_sharded(tmp_path, 3)
    info = read_index(s.index)
    assert info.shard_names == [p.name for p in s.shards]
    assert info.weight_map == s.weight_map
