"""Fit before a download: what judging a 70B lane from its source's headers costs.

Run from the repository root:  python bench/bench_fit.py [--rounds N]
Builds, as sparse files under build/, a Llama-3-70B-shaped folder (hidden 8192, 80 layers,
vocabulary 128256, 30 safetensors shards with real headers and holes for data, 141 GB on
paper) and serves it from tests/hubserver.py in its own process (the listing carries
placeholder digests for the shards: hashing 141 GB takes minutes, and nothing downloads them).
Then, interleaved round by round:

  - preflight: the lane's fit inputs read through the Hub source as sync reads them
    (config.json, tokenizer_config.json, one ranged read per shard header), timed inside a
    fresh process after the listing, and the bytes the server sent for them;
  - curl: the reference a script would use, `curl -L -r 0-7` for every shard's length, then
    `curl -L -r 8-N` for every header (two processes, every URL in each, 8 at once);
  - `preflight sync` of the lane on a node it does not fit (1x 80 GiB, TP 1), as a whole
    process: it exits 1 before a byte of weights moves.

Targets: the fit read under 1 s and under 1 MiB transferred for the lane; the sync refusal
moves under 1 MiB. Prints the ratio against curl. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PY, ROOT, Targets, checkout_env, compile_package, interleave, median, preflight_cmd, run, scratch  # noqa: E402

TARGET_SECONDS = 1.0
TARGET_BYTES = 2**20
DIMS = dict(hidden=8192, inter=28672, layers=80, vocab=128256, heads=64, kv_heads=8, shards=30, max_len=131072)
REPO = "meta-llama/Llama-3.1-70B-Instruct"

_SERVER = r"""
import sys, json, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.hubserver import HubServer
folder = Path(sys.argv[2])
files = {p.name: p for p in sorted(folder.iterdir())}
hub = HubServer().start()
hub.add_repo(sys.argv[3], files, unhashed=[n for n in files if n.endswith(".safetensors")])
print(json.dumps({"url": hub.url}), flush=True)
while True:
    line = sys.stdin.readline()
    if not line:
        break
    cmd = json.loads(line)
    if cmd == "clear":
        hub.clear_requests()
        print(json.dumps({}), flush=True)
    elif cmd == "bytes":
        sent = sum(r.bytes_sent for r in hub.requests if r.status in (200, 206) and (r.file or "").endswith((".safetensors", ".json")))
        print(json.dumps({"bytes": sent, "requests": len(hub.requests)}), flush=True)
hub.stop()
"""

_READER = r"""
import json, sys, time
from preflight.manifest import load_manifest
from preflight.sources import Context, open_source
from preflight.sources.http import Timeouts
from preflight.sync import checked_listing
from preflight.serving.before import source_inputs
lane = load_manifest(sys.argv[1]).lanes[0]
source = open_source(lane, Context(sys.argv[1], Timeouts()))
t0 = time.perf_counter()
files, _version = checked_listing(lane, source.resolve(None))
t1 = time.perf_counter()
got = source_inputs(lane, source, files)
t2 = time.perf_counter()
print(json.dumps({"listing_s": t1 - t0, "read_s": t2 - t1, "bytes": got.counter.bytes, "requests": got.counter.requests,
                  "groups": len(got.inputs.weights) if got.inputs and got.inputs.weights else 0, "why_not": got.why_not}))
"""


class Server:
    def __init__(self, folder: Path) -> None:
        self.proc = subprocess.Popen([PY, "-c", _SERVER, str(ROOT), str(folder), REPO], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = json.loads(self.proc.stdout.readline())["url"]

    def ask(self, what: str) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(what) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def header_length(path: Path) -> int:
    with open(path, "rb") as f:
        return int.from_bytes(f.read(8), "little")


def curl_headers(urls: list[str], out: Path) -> tuple[float, list[int]]:
    """Two curl processes, 8 transfers at once (--parallel, as preflight reads 8 shards at once):
    every shard's 8-byte length, then every header. Returns (seconds, header lengths)."""
    def args(ranges: list[str]) -> list[str]:
        argv = ["curl", "-sfL", "--parallel", "--parallel-max", "8"]
        for i, (url, rng) in enumerate(zip(urls, ranges)):
            argv += (["--next", "-sfL"] if i else []) + ["-r", rng, "-o", str(out / f"part-{i}"), url]
        return argv

    t0 = time.perf_counter()
    subprocess.run(args(["0-7"] * len(urls)), check=True, stderr=subprocess.DEVNULL)
    lengths = [int.from_bytes((out / f"part-{i}").read_bytes()[:8], "little") for i in range(len(urls))]
    subprocess.run(args([f"8-{7 + n}" for n in lengths]), check=True, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0, lengths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    targets = Targets()
    compile_package()
    from tests.builders import write_sparse_llama_folder

    with scratch("bench-fit") as root:
        t0 = time.perf_counter()
        folder = write_sparse_llama_folder(root / "repo", **DIMS)
        shards = sorted(p.name for p in folder.glob("*.safetensors"))
        paper = sum(p.stat().st_size for p in folder.iterdir())
        headers = sum(8 + header_length(folder / s) for s in shards)
        print(f"repo: {len(shards)} shards, {paper / 1e9:.0f} GB on paper, headers {headers / 1024:.1f} KiB in all; built in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
        server = Server(folder)
        try:
            env = {**checkout_env(), "HF_ENDPOINT": server.url, "HF_HOME": str(root / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
            env.pop("HF_TOKEN", None)
            manifest = root / "lanes.json"
            manifest.write_text(json.dumps({"version": 1, "models_dir": str(root / "models"), "lanes": [{
                "name": "orchestrator", "kind": "hf-dir", "path": "vllm/orchestrator", "source": f"hf://{REPO}@main",
                "serve": {"engine": "vllm", "args": "--max-model-len 32768"}}]}))
            from huggingface_hub import hf_hub_url

            urls = [hf_hub_url(REPO, s, endpoint=server.url) for s in shards]
            (root / "curl").mkdir()
            reads: list[dict] = []
            curl_bytes: list[int] = []
            syncs: list[tuple[float, int]] = []

            def preflight_reads() -> float:
                server.ask("clear")
                p = subprocess.run([PY, "-c", _READER, str(manifest)], capture_output=True, text=True, env=env, check=True)
                got = json.loads(p.stdout)
                got["sent"] = server.ask("bytes")["bytes"]
                reads.append(got)
                return got["read_s"]

            def curl() -> float:
                server.ask("clear")
                seconds, lengths = curl_headers(urls, root / "curl")
                assert 8 * len(lengths) + sum(lengths) == headers
                curl_bytes.append(server.ask("bytes")["bytes"])
                return seconds

            def sync() -> float:
                server.ask("clear")
                proc = run([*preflight_cmd(), "sync", "-m", str(manifest), "--accelerator", "1x80GiB,cc=9.0", "--quiet",
                            "--termination-log", ""], env=env, expect_rc=1)
                syncs.append((proc.wall_s, server.ask("bytes")["bytes"]))
                return proc.wall_s

            times = interleave({"preflight fit reads": preflight_reads, "curl two passes": curl, "preflight sync (refused)": sync}, args.rounds)
        finally:
            server.close()
        med = {k: median(v) for k, v in times.items()}
        for k, v in med.items():
            print(f"  {k:28s} median {v * 1e3:.0f} ms  (min {min(times[k]) * 1e3:.0f}, max {max(times[k]) * 1e3:.0f})")
        last = reads[-1]
        print(f"info listing (huggingface_hub repo_info) median {median(r['listing_s'] for r in reads) * 1e3:.0f} ms; "
              f"{last['groups']} weight groups kept; fit reads: {last['requests']} requests")
        targets.at_most("fit from remote headers, one 70B lane", med["preflight fit reads"], TARGET_SECONDS, unit=" s",
                        detail=f"vs curl's two passes {med['curl two passes'] * 1e3:.0f} ms: ratio {med['preflight fit reads'] / med['curl two passes']:.2f}")
        sent = max(r["sent"] for r in reads)
        targets.at_most("bytes the server sent for the fit reads", sent / 2**10, TARGET_BYTES / 2**10, unit=" KiB",
                        detail=f"curl sent {median(curl_bytes) / 2**10:.1f} KiB (headers alone: {headers / 2**10:.1f} KiB)")
        targets.holds("sync refuses the lane on a node it does not fit before its weights move",
                      all(b <= TARGET_BYTES for _w, b in syncs),
                      f"1x 80 GiB: exit 1 in {median(w for w, _b in syncs) * 1e3:.0f} ms (whole process), {max(b for _w, b in syncs) / 2**10:.1f} KiB sent")
    return targets.finish()


if __name__ == "__main__":
    sys.exit(main())
