"""The main job on an embedded default: no internet, no Docker.

Starts a Hub-compatible server on 127.0.0.1 holding small generated models,
writes a demo manifest, and runs the real commands against a fresh volume:

    sync   (fetch, verify, publish)         → exit 0
    check  (offline, receipts make it fast) → exit 0
    corrupt one shard, check again          → exit 1, the reason named
    sync   (re-fetches only that shard)     → exit 0

    python -m tests.demo [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests import repos
from tests.hubserver import HubServer

MANIFEST = """\
version: 1
models_dir: {models}
profiles:
  minimal: [tiny-llm, tiny-gguf]
lanes:
  - name: tiny-llm
    kind: hf-dir
    path: vllm/tiny-llm/bf16
    env: LLM_MODEL_PATH           # `preflight env` prints it for the server's command
    source: hf://demo/TinyLlama-stand-in@main
    include: ["*.safetensors", "*.json", "tokenizer*"]
  - name: tiny-gguf
    kind: gguf
    path: gguf/tiny.Q8_0.gguf
    env: GGUF_MODEL_PATH
    source: hf://demo/tiny-gguf/tiny.Q8_0.gguf@main
  - name: embeddings
    kind: hf-cache
    path: hf-cache/hub
    source: hf://demo/embedder@main
    serves_text: true
  - name: support-lora
    kind: adapter
    path: trained/acme/support-lora
    source: hf://demo/support-lora@main
    base: tiny-llm
"""


def run(args: list[str], env: dict[str, str], shown_env: dict[str, str] | None = None) -> int:
    """Run `preflight ARGS`, printed as a command a user can paste (with the variables it needs)."""
    prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in (shown_env or {}).items())
    print(f"\n$ {prefix}preflight {' '.join(shlex.quote(a) for a in args)}", flush=True)
    return subprocess.run([sys.executable, "-m", "preflight.cli", *args], env=env).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", metavar="DIR", help="build the volume here and keep it")
    ns = parser.parse_args()
    work = Path(ns.keep) if ns.keep else Path(tempfile.mkdtemp(prefix="preflight-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    expect = []
    try:
        with HubServer() as hub:
            hub.add_repo("demo/TinyLlama-stand-in", repos.hf_model(sharded=True))
            hub.add_repo("demo/tiny-gguf", repos.gguf_file("tiny.Q8_0.gguf"))
            hub.add_repo("demo/embedder", repos.hf_model())
            hub.add_repo("demo/support-lora", repos.adapter())
            manifest = work / "lanes.yaml"
            manifest.write_text(MANIFEST.format(models=json.dumps(str((work / "models").absolute()))))
            env = {**os.environ, **hub.env()}
            hub_env = {"HF_ENDPOINT": env["HF_ENDPOINT"]}  # what the printed command needs (the demo's repos are public)
            report = work / "report.json"
            print(f"demo Hub at {hub.url}; volume at {work / 'models'}; manifest {manifest}")
            expect.append((run(["sync", "-m", str(manifest)], env, hub_env), 0))
            expect.append((run(["check", "-m", str(manifest)], env), 0))
            shard = work / "models/vllm/tiny-llm/bf16/model-00002-of-00003.safetensors"
            with open(shard, "r+b") as f:
                f.truncate(shard.stat().st_size - 7)
            print(f"\n# truncated {shard.relative_to(work)} by 7 bytes")
            expect.append((run(["check", "-m", str(manifest)], env), 1))
            expect.append((run(["sync", "-m", str(manifest), "--report", str(report)], env, hub_env), 0))
            doc = json.loads(report.read_text())
            print(f"\n{report.name} (of the last sync): status={doc['status']}, "
                  f"lanes={[(l['name'], l['status']) for l in doc['lanes']]}")
    finally:
        if not ns.keep:
            shutil.rmtree(work, ignore_errors=True)
    ok = all(got == want for got, want in expect)
    print("\ndemo: " + ("every step gave the expected exit code" if ok else f"unexpected exit codes: {expect}"))
    if ns.keep and ok:
        q = shlex.quote
        print(f"\nThe volume is kept in {work}. Without the demo Hub (it stopped), these work as printed:\n"
              f"  preflight check -m {q(str(manifest))}\n"
              f"  preflight status -m {q(str(manifest))}\n"
              f"  preflight inspect {q(str(work / 'models/gguf/tiny.Q8_0.gguf'))}\n"
              f"  preflight env -m {q(str(manifest))}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
