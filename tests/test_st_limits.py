"""Hostile headers and JSON files are refused in bounded memory and CPU time; real big ones still pass.

Each check runs in a fresh process whose peak RSS and CPU time its parent reads with
`getrusage(RUSAGE_CHILDREN)`: CPU time, not wall clock, so a loaded machine does not
fail the test, and generous bounds (the measured figures are in the README's limits
section: tens of milliseconds for most refusals).
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from preflight.formats.jsonfile import CONFIG_LIMITS, INDEX_LIMITS
from preflight.formats.safetensors import DEFAULT_MAX_HEADER_BYTES, LIBRARY_MAX_HEADER_BYTES, MAX_TENSORS
from tests.builders import write_sparse_safetensors_layout
from tests.repos import LLAMA_CONFIG, TOKENIZER

MAX_RSS_MB = 100
MAX_CPU_S = 3.0

# Runs one check in a child of this meter process and prints the child's codes, peak RSS and CPU time.
METER = r"""
import json, resource, subprocess, sys
child = subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], capture_output=True, text=True)
use = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": child.returncode, "out": child.stdout, "err": child.stderr[-2000:],
                  "rss_mb": use.ru_maxrss / 1024, "cpu_s": use.ru_utime + use.ru_stime}))
"""
CHECK_FILE = r"""
import json, sys
from preflight.formats.safetensors import check_safetensors
print(json.dumps([p.code for p in check_safetensors(sys.argv[1]).problems if p.is_error]))
"""
CHECK_FOLDER = r"""
import json, sys
from pathlib import Path
from preflight.check import discover
from preflight.formats.hfdir import check_hf_dir
root = Path(sys.argv[1])
print(json.dumps([p.code for p in check_hf_dir(root, discover(root)).problems if p.is_error]))
"""
CHECK_ADAPTER = r"""
import json, sys
from pathlib import Path
from preflight.check import discover
from preflight.formats.adapter import check_adapter
root = Path(sys.argv[1])
print(json.dumps([p.code for p in check_adapter(root, discover(root)).problems if p.is_error]))
"""


def measured(code: str, *args: str) -> tuple[list[str], float, float]:
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", METER, code, *args], capture_output=True, text=True, cwd=root, check=True)
    m = json.loads(r.stdout)
    assert m["rc"] == 0 and "Traceback" not in m["err"], m["err"]
    return json.loads(m["out"]), m["rss_mb"], m["cpu_s"]


def within_bounds(codes: list[str], rss: float, cpu: float) -> None:
    assert rss < MAX_RSS_MB, f"peak RSS {rss:.0f} MB ({codes})"
    assert cpu < MAX_CPU_S, f"CPU {cpu:.2f} s ({codes})"


def raw_header_file(path: Path, header: bytes) -> Path:
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def tiny_entries(n: int) -> bytes:
    """Valid zero-size tensors: the most tensors per header byte."""
    return b"{" + b",".join(b'"%d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}' % i for i in range(n)) + b"}"


def fill_to(prefix: bytes, item: bytes, suffix: bytes, size: int) -> bytes:
    return prefix + item * ((size - len(prefix) - len(suffix)) // len(item)) + suffix


HOSTILE_HEADERS = {
    # what: (header bytes, expected code)
    "tiny-tensors-up-to-the-cap": (tiny_entries(DEFAULT_MAX_HEADER_BYTES // 60), "header-too-large"),
    "metadata-of-tiny-strings": (fill_to(b'{"__metadata__":{', b'"k":"v",', b'"z":"v"}}', DEFAULT_MAX_HEADER_BYTES - 64), "header-too-large"),
    "list-of-zeros-in-an-ignored-field": (fill_to(b'{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":[', b"0,", b"0]}}",
                                                  DEFAULT_MAX_HEADER_BYTES - 64), "header-too-large"),
    "nesting-up-to-the-cap": (b'{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":' + b"[" * (DEFAULT_MAX_HEADER_BYTES - 128), "header-invalid"),
    "one-string-up-to-the-cap": (fill_to(b'{"__metadata__":{"x":"', b"a", b'"}}', DEFAULT_MAX_HEADER_BYTES - 64), None),
    "more-tensors-than-the-limit": (tiny_entries(MAX_TENSORS + 10), "header-too-large"),
}


@pytest.mark.slow
@pytest.mark.parametrize("what", sorted(HOSTILE_HEADERS))
def test_hostile_header_is_bounded(tmp_path: Path, what: str) -> None:
    header, code = HOSTILE_HEADERS[what]
    assert len(header) <= DEFAULT_MAX_HEADER_BYTES
    path = raw_header_file(tmp_path / "m.safetensors", header)
    codes, rss, cpu = measured(CHECK_FILE, str(path))
    assert (codes[:1] == [code]) if code else codes == [], codes
    within_bounds(codes, rss, cpu)


@pytest.mark.slow
def test_a_header_length_near_the_library_cap_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", LIBRARY_MAX_HEADER_BYTES - 8))
        f.truncate(8 + LIBRARY_MAX_HEADER_BYTES)  # sparse: a header of NULs that is never read
    codes, rss, cpu = measured(CHECK_FILE, str(path))
    assert codes == ["header-too-large"]
    within_bounds(codes, rss, cpu)


@pytest.mark.slow
def test_a_real_shard_of_many_tensors_passes(tmp_path: Path) -> None:
    """A MoE shard's worth of tensors (40,000, Llama/Qwen naming) passes within the bounds."""
    layout = {f"model.layers.{i // 512}.mlp.experts.{i % 512}.down_proj.weight": ("BF16", (8, 8)) for i in range(40_000)}
    path = write_sparse_safetensors_layout(tmp_path / "model-00001-of-00002.safetensors", layout)
    codes, rss, cpu = measured(CHECK_FILE, str(path))
    assert codes == []
    within_bounds(codes, rss, cpu)


def _folder(tmp_path: Path, config: bytes, *, index: bytes | None = None, tokenizer: bytes | None = None) -> Path:
    from tests.builders import write_safetensors

    root = tmp_path / "m"
    root.mkdir()
    (root / "config.json").write_bytes(config)
    (root / "tokenizer.json").write_bytes(tokenizer or json.dumps(TOKENIZER).encode())
    if index is None:
        write_safetensors(root / "model.safetensors", {"model.embed_tokens.weight": ("BF16", (32, 16))})
    else:
        (root / "model.safetensors.index.json").write_bytes(index)
    return root


HOSTILE_CONFIGS = {
    "nested-config": (b"[" * 1_000_000, "config-invalid"),
    "nested-object-config": (b'{"a":' * 200_000 + b"1" + b"}" * 200_000, "config-invalid"),
    "config-of-tiny-members": (fill_to(b"{", b'"k":0,', b'"z":0}', CONFIG_LIMITS.max_bytes - 16), "config-invalid"),
}


@pytest.mark.slow
@pytest.mark.parametrize("what", sorted(HOSTILE_CONFIGS))
def test_hostile_config_is_bounded(tmp_path: Path, what: str) -> None:
    config, code = HOSTILE_CONFIGS[what]
    codes, rss, cpu = measured(CHECK_FOLDER, str(_folder(tmp_path, config)))
    assert code in codes
    within_bounds(codes, rss, cpu)


@pytest.mark.slow
def test_a_400_mb_config_is_refused_unread(tmp_path: Path) -> None:
    root = _folder(tmp_path, b"{}")
    with open(root / "config.json", "r+b") as f:
        f.truncate(400 * 2**20)  # sparse
    codes, rss, cpu = measured(CHECK_FOLDER, str(root))
    assert "config-invalid" in codes
    within_bounds(codes, rss, cpu)


@pytest.mark.slow
def test_a_nested_adapter_config_is_refused(tmp_path: Path) -> None:
    from tests.repos import adapter, write_tree

    root = write_tree(tmp_path / "lora", adapter())
    (root / "adapter_config.json").write_bytes(b'{"r":' * 100_000 + b"1" + b"}" * 100_000)
    codes, rss, cpu = measured(CHECK_ADAPTER, str(root))
    assert "adapter-invalid" in codes
    within_bounds(codes, rss, cpu)


@pytest.mark.slow
def test_hostile_index_is_bounded(tmp_path: Path) -> None:
    index = fill_to(b'{"weight_map":{', b'"a":"s",', b'"z":"s"}}', INDEX_LIMITS.max_bytes - 16)
    codes, rss, cpu = measured(CHECK_FOLDER, str(_folder(tmp_path, json.dumps(LLAMA_CONFIG).encode(), index=index)))
    assert "index-invalid" in codes
    within_bounds(codes, rss, cpu)


@pytest.mark.slow
def test_a_100k_tensor_index_and_a_big_tokenizer_pass(tmp_path: Path) -> None:
    """The index of a large MoE repo (100,000 tensors over 160 shards) is read, and a tokenizer.json of 250,000 tokens."""
    names = ["model.embed_tokens.weight",
             *(f"model.layers.{i // 1600}.mlp.experts.{i % 1600 // 3}.{('gate', 'up', 'down')[i % 3]}_proj.weight" for i in range(100_000 - 1))]
    index = {"metadata": {"total_size": 1}, "weight_map": {n: f"model-{i // 625 + 1:05d}-of-00160.safetensors" for i, n in enumerate(names)}}
    tokenizer = json.dumps({**TOKENIZER, "model": {"type": "BPE", "vocab": {f"tok{i}": i for i in range(250_000)}, "merges": []}}).encode()
    assert len(tokenizer) > 4 * 2**20
    config = {**LLAMA_CONFIG, "architectures": ["MixtralForCausalLM"], "num_hidden_layers": 63}
    root = _folder(tmp_path, json.dumps(config).encode(), index=json.dumps(index, indent=2).encode(), tokenizer=tokenizer)
    codes, rss, cpu = measured(CHECK_FOLDER, str(root))
    assert set(codes) == {"shard-missing"}  # read through: only the shards are absent
    within_bounds(codes, rss, cpu)
