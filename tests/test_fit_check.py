"""`serve:` lanes through the real CLI: check judges fit on the declared node, the report carries the figures,
the manifest refuses serve args the engine would refuse, inspect shows the figures from config.json alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.llama_fit_oracle import write_model
from tests.repos import LLAMA_CONFIG, hf_model, write_tree


def preflight(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "preflight.cli", *args], capture_output=True, text=True, timeout=120)


def _volume(tmp_path: Path, serve_vllm: str, serve_llama: str, extra_top: str = "") -> Path:
    models = tmp_path / "models"
    write_tree(models / "vllm" / "tiny", hf_model())
    (models / "gguf").mkdir(parents=True)
    write_model(models / "gguf" / "tiny.gguf", n_embd=256, n_head=8, n_head_kv=2, n_layer=4, ctx=4096)
    manifest = tmp_path / "lanes.yaml"
    manifest.write_text(f"""version: 1
models_dir: {models}
{extra_top}
lanes:
  - name: chat
    kind: hf-dir
    path: vllm/tiny
    serve: {{engine: vllm, args: "{serve_vllm}"}}
  - name: reader
    kind: gguf
    path: gguf/tiny.gguf
    serve:
      engine: llama.cpp
      args: ["-c", "{serve_llama}", "-np", "1", "--no-mmap"]
""")
    return manifest


def test_check_reports_fit_and_refuses_what_cannot_start(tmp_path):
    m = _volume(tmp_path, "--max-model-len 2048", "4096")
    ok = preflight("check", "-m", str(m), "--json", "--accelerator", "1x1MiB,cc=9.0,memory_limit=64MiB")
    report = json.loads(ok.stdout)
    chat, reader = report["lanes"]
    assert chat["fit"]["engine"] == "vllm" and chat["fit"]["kv_bytes_per_token"] == 2 * 1 * 8 * 2 * 2
    assert chat["fit"]["weights_bytes_per_gpu"] > 0 and chat["fit"]["max_model_len"] == 2048
    assert reader["fit"]["engine"] == "llama.cpp" and reader["fit"]["kv_cache_bytes"] == 4096 * 4 * 2 * (2 * 32 * 2)
    assert ok.returncode == 0, ok.stderr  # vLLM's own overhead estimate is only a warning (fit-margin)
    assert any(p["code"] == "fit-margin" for p in chat["problems"])
    assert "fit: vllm tight" in ok.stderr and "fit: llama.cpp fits" in ok.stderr
    bad = preflight("check", "-m", str(m), "--json", "--accelerator", "1x100KiB,cc=9.0,memory_limit=4MiB")
    assert bad.returncode == 1
    lanes = json.loads(bad.stdout)["lanes"]
    codes = {lane["name"]: [p["code"] for p in lane["problems"] if p.get("severity", "error") == "error"] for lane in lanes}
    assert codes == {"chat": ["kv-cache-too-large"], "reader": []}  # on a GPU node, -ngl auto puts the reader on the GPU
    assert "lower --max-model-len" in bad.stderr
    cpu = preflight("check", "-m", str(m), "--json", "-l", "reader", "--accelerator", "cpu,memory_limit=4MiB")
    assert cpu.returncode == 1
    (reader,) = json.loads(cpu.stdout)["lanes"]
    assert [p["code"] for p in reader["problems"]] == ["memory-limit-exceeded"] and "lower --ctx-size" in cpu.stderr


def test_context_longer_than_the_model_is_refused(tmp_path):
    m = _volume(tmp_path, "--max-model-len 4096", "1024")
    r = preflight("check", "-m", str(m), "--json", "--accelerator", "1x80GiB,cc=9.0", "-l", "chat")
    assert r.returncode == 1
    (lane,) = json.loads(r.stdout)["lanes"]
    assert lane["problems"][0]["code"] == "context-too-long" and "2048" in lane["problems"][0]["message"]


def test_manifest_refuses_serve_args_the_engine_would_refuse(tmp_path):
    m = _volume(tmp_path, "--tensor-parallel-size two", "1024")
    r = preflight("check", "-m", str(m))
    assert r.returncode == 2 and "serve.args" in r.stderr and "--tensor-parallel-size" in r.stderr
    m.write_text(m.read_text().replace("engine: vllm", "engine: vlm"))
    r = preflight("check", "-m", str(m))
    assert r.returncode == 2 and "did you mean 'vllm'" in r.stderr
    m2 = _volume(tmp_path / "b", "", "1024", extra_top="accelerator: 2xlots")
    r = preflight("check", "-m", str(m2))
    assert r.returncode == 2 and "accelerator" in r.stderr


def test_inspect_shows_kv_figures_from_config_alone(tmp_path):
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**LLAMA_CONFIG, "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
                                                    "num_key_value_heads": 8, "max_position_embeddings": 8192}))
    r = preflight("inspect", str(folder), "--json", "--serve", "vllm:--max-model-len 8192", "--accelerator", "1x24GiB,cc=8.9")
    out = json.loads(r.stdout)
    assert out["fit"]["kv_bytes_per_token"] == 131072 and out["fit"]["max_model_len"] == 8192
    text = preflight("inspect", str(folder), "--serve", "vllm")
    assert "KV 128.0 KiB/token" in text.stdout


_OPENS = """import sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" and args and isinstance(args[0], (str, bytes)) else None)
import atexit
atexit.register(lambda: sys.stderr.write("OPENED " + repr(sorted(set(p for p in opened if p.endswith(".safetensors")))) + chr(10)))
sys.argv = ['preflight', *sys.argv[1:]]
from preflight.cli import main
main()
"""


def _weights_opened(*args: str) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    """The .safetensors files a run opens (Python's audit hook sees every open)."""
    import ast

    p = subprocess.run([sys.executable, "-c", _OPENS, *args], capture_output=True, text=True, timeout=120)
    return ast.literal_eval(p.stderr.rsplit("OPENED ", 1)[1].splitlines()[0]), p


def test_a_warm_recheck_judges_fit_from_the_receipts_and_reads_no_header(tmp_path):
    from tests.builders import write_sparse_llama_folder

    models = tmp_path / "models"
    folder = write_sparse_llama_folder(models / "vllm" / "deep", hidden=64, inter=128, layers=96, vocab=512, heads=4, kv_heads=2, shards=4)
    headers = sum(8 + int.from_bytes(p.read_bytes()[:8], "little") for p in folder.glob("*.safetensors"))
    assert headers > 60_000
    lane = {"name": "deep", "kind": "hf-dir", "path": "vllm/deep", "serve": {"engine": "vllm", "args": "--max-model-len 4096"}}
    served = tmp_path / "served.json"
    served.write_text(json.dumps({"version": 1, "models_dir": str(models), "lanes": [lane]}))
    node = ("--accelerator", "1x24GiB,cc=8.9")
    opened, cold = _weights_opened("check", "-m", str(served), "--json", *node)
    assert cold.returncode == 0, cold.stderr
    assert len(opened) == 4  # the format checks read each shard's header once
    first = json.loads(cold.stdout)["lanes"][0]["fit"]
    assert first["inputs_from"] == "volume"
    receipts = json.loads((models / ".preflight" / "receipts.json").read_text())
    kept = receipts["lanes"]["deep"]["fit_inputs"]
    assert kept["config"]["num_hidden_layers"] == 96 and len(json.dumps(kept)) < headers / 4
    opened, warm = _weights_opened("check", "-m", str(served), "--json", *node)
    assert opened == [] and warm.returncode == 0
    second = json.loads(warm.stdout)["lanes"][0]["fit"]
    assert second["inputs_from"] == "receipts" and {**second, "inputs_from": None} == {**first, "inputs_from": None}
    # another node: the verdict is judged again from the kept inputs, still without opening a shard
    opened, other = _weights_opened("check", "-m", str(served), "--json", "--accelerator", "2x80GiB,cc=9.0")
    third = json.loads(other.stdout)["lanes"][0]["fit"]
    assert opened == [] and third["inputs_from"] == "receipts" and third["gpu_total_bytes"] == 80 * 2**30
    assert third["weights_bytes_per_gpu"] == first["weights_bytes_per_gpu"]
    # the same files checked without `serve:` (another manifest on the volume) are the same lane to
    # the format checks: neither run reads a header again, nor forgets the fit inputs
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"version": 1, "models_dir": str(models), "lanes": [{k: v for k, v in lane.items() if k != "serve"}]}))
    opened, unserved = _weights_opened("check", "-m", str(plain), "--json")
    assert opened == [] and unserved.returncode == 0, unserved.stderr
    opened, served_again = _weights_opened("check", "-m", str(served), "--json", *node)
    assert opened == [] and json.loads(served_again.stdout)["lanes"][0]["fit"]["inputs_from"] == "receipts"
    # a shard rewritten in place changes the fingerprint: its headers are read again
    shard = sorted(folder.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes())
    again = json.loads(preflight("check", "-m", str(served), "--json", *node).stdout)["lanes"][0]["fit"]
    assert again["inputs_from"] == "volume"
