"""What fit keeps of a model (the lock's and the receipts' `fit`) and how a remote header is read:
the summary gives the figures the full headers give, a malformed one is ignored, a ranged read
never passes its budget, and the cache sizes agree with the GGUF reader's table."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from preflight.formats.gguf import GGML_TYPES
from preflight.formats.safetensors import check_safetensors
from preflight.serving.accel import parse_declared
from preflight.serving.args import LLAMA_CACHE_TYPES, parse_args
from preflight.serving.fit import CACHE_TYPES, WeightGroups, served_dtype, weights_per_rank
from preflight.serving.inputs import FitInputs, evaluate, folder_inputs
from preflight.serving.model import config_facts, slim_config
from preflight.serving.remote import Counter, OutOfBudget, RangeView
from tests.test_fit_vllm_logs import DATA, headers
from tests.test_serving import LLAMA8B

CONFIGS = DATA["configs"]


@pytest.mark.parametrize("model", sorted(CONFIGS))
def test_slim_config_keeps_every_fact(model: str) -> None:
    cfg = {**CONFIGS[model], "id2label": {str(i): f"L{i}" for i in range(5000)}, "task_specific_params": {"x": list(range(100))}}
    slim = slim_config(cfg)
    assert config_facts(slim) == config_facts(cfg)
    assert "id2label" not in slim and len(json.dumps(slim)) < 2048


@pytest.mark.parametrize("model", [m for m in sorted(CONFIGS) if "intermediate_size" in CONFIGS[m] and "num_key_value_heads" in CONFIGS[m]
                                   and CONFIGS[m]["model_type"] in ("llama", "qwen2", "qwen3", "qwen3_moe")
                                   and CONFIGS[m]["num_hidden_layers"] * CONFIGS[m].get("num_experts", 1) < 8000])
@pytest.mark.parametrize("flags", ["", "-tp 2", "-tp 8 -pp 2", "--dtype float16"])
def test_weight_groups_give_the_figures_the_headers_give(model: str, flags: str) -> None:
    cfg = CONFIGS[model]
    facts, args = config_facts(cfg), parse_args("vllm", flags)
    tensors = headers(cfg)
    dtype = served_dtype(facts, args, None)
    groups = WeightGroups.of(tensors)
    restored = WeightGroups.from_list(json.loads(json.dumps(groups.to_list())))
    assert restored == groups and len(groups) < len(tensors) / 2
    exact = [sum(n for n in _per_tensor(facts, tensors, args, dtype, s)) for s in range(args["pipeline_parallel_size"])]
    got = weights_per_rank(facts, restored, args, dtype)
    assert all(abs(g - e) <= len(tensors) * args["tensor_parallel_size"] for g, e in zip(got, exact)), (got, exact)


def _per_tensor(facts, tensors, args, dtype, stage):
    """Each tensor on its own (a group of one): the figure before any summing."""
    for name, spec in tensors.items():
        yield weights_per_rank(facts, {name: spec}, args, dtype)[stage]


@pytest.mark.parametrize("rows", [
    "not a list", [[0, "tp", "BF16", 0, 10]], [[0, "sideways", "BF16", 0, 10, 20]], [[-1, "tp", "BF16", 0, 10, 20]],
    [["lm", "tp", "BF16", 0, 10, 20]], [[0, "tp", "BF16", 0, True, 20]], [[0, "tp", "X" * 40, 0, 10, 20]], [[0, "tp", "BF16", 0, 2**63, 1]],
])
def test_malformed_weight_rows_are_ignored(rows) -> None:
    assert WeightGroups.from_list(rows) is None


def test_kept_inputs_are_refused_unless_well_formed() -> None:
    good = folder_inputs(LLAMA8B, None, 8192).to_dict()
    assert FitInputs.from_dict(good, "lock") is not None
    for bad in ({**good, "format": 0}, {**good, "engine": "tgi"}, {**good, "config": []}, {**good, "weights": [["x"]]},
                {**good, "tokenizer_max_len": -1}, {"format": 1, "engine": "llama.cpp", "gguf": {}, "n_vocab": "many"}, None, []):
        assert FitInputs.from_dict(bad, "lock") is None
    odd = FitInputs.from_dict({**good, "config": {**good["config"], "head_dim": "wide"}}, "receipts")
    assert odd is not None and evaluate(odd, _spec("vllm"), parse_declared("1x80GiB,cc=9.0")) is None  # not judged, no traceback


def _spec(engine: str, args: str = ""):
    from preflight.manifest import ServeSpec

    return ServeSpec(engine, tuple(args.split()))


def test_cache_type_sizes_agree_with_the_gguf_table() -> None:
    table = {name.lower(): (block, size) for name, block, size in GGML_TYPES.values()}
    assert set(CACHE_TYPES) == set(LLAMA_CACHE_TYPES)
    assert all(table[t] == CACHE_TYPES[t] for t in CACHE_TYPES)


def _reader(data: bytes, log: list):
    def read(start: int, length: int) -> bytes:
        log.append((start, length))
        return data[start:start + length]
    return read


def test_a_range_view_reads_only_the_header(tmp_path: Path) -> None:
    from tests.builders import write_sparse_safetensors_layout

    path = write_sparse_safetensors_layout(tmp_path / "s.safetensors", {f"t{i}": ("BF16", (1024, 1024)) for i in range(40)})
    data = path.read_bytes()
    log: list = []
    view = RangeView(_reader(data, log), len(data), budget=64 * 1024, first=8 * 1024)
    info = check_safetensors(view, name="s.safetensors")
    assert info.ok and len(info.tensors) == 40 and view.fetched <= 8 * 1024 and log == [(0, 8 * 1024)]
    big = write_sparse_safetensors_layout(tmp_path / "b.safetensors", {f"tensor.{i:05d}": ("BF16", (8, 8)) for i in range(400)})
    data = big.read_bytes()
    log.clear()
    view = RangeView(_reader(data, log), len(data), budget=64 * 1024, first=8 * 1024)
    assert check_safetensors(view, name="b").ok
    header = 8 + struct.unpack("<Q", data[:8])[0]
    assert len(log) == 2 and view.fetched == header  # the rest of a long header in one more read, not a byte more


def test_a_range_view_stops_at_its_budget() -> None:
    data = struct.pack("<Q", 15 * 2**20) + b"{" + b" " * (16 * 2**20)
    log: list = []
    view = RangeView(_reader(data, log), len(data), budget=2**20, first=8 * 1024)
    info = check_safetensors(view, name="x")
    assert not info.ok and view.out_of_budget and view.fetched <= 2**20
    assert any(p.code == "unreadable" for p in info.problems)
    with pytest.raises(OutOfBudget):
        RangeView(_reader(data, []), len(data), budget=10, first=64).read(64)
    counter = Counter()
    RangeView(_reader(b"abc" * 10, []), 30, budget=30, first=8, counter=counter).read(30)
    assert counter.bytes == 30 and counter.requests == 1
