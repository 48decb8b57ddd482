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
