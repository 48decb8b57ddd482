"""Full verification throughput: `preflight check --verify full` against `openssl dgst -sha256`.

Run from the repository root:  python bench/bench_verify.py [--rounds N]
Builds a 4 x 1 GiB sharded safetensors folder (random data) under build/, warms
the page cache, then times, interleaved round by round:
  - one 1 GiB file lane: `preflight check --verify full` vs `openssl dgst -sha256 FILE`
  - the 4-shard folder lane: `preflight check --verify full` vs four openssl
    processes, two at a time (`xargs -P2`)
  - in-process `preflight.integrity.hash_file` (timed inside a fresh interpreter, startup
    excluded) vs the openssl process on the same file
Prints medians and ratios; exits 1 when a ratio is above its target.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PY, Targets, checkout_env, compile_package, interleave, median, preflight_cmd, run, scratch, warm, write_random  # noqa: E402
from preflight import integrity  # noqa: E402
from preflight.integrity import hash_file  # noqa: E402
from tests.builders import write_sparse_safetensors_layout  # noqa: E402

GiB = 2**30
SHARDS = 4
TARGET_SINGLE = 1.05
TARGET_FOLDER = 1.05
HASH_CHUNK = integrity.READ_CHUNK
HASH_FILE_TIMER = """
import sys, time
from preflight import integrity
start = time.perf_counter()
integrity.hash_file(sys.argv[1])
print(time.perf_counter() - start)
"""


def build_folder(folder: Path) -> list[Path]:
    """A 4-shard BF16 model folder (index, config, tokenizer) whose shards hold 1 GiB of random data each."""
    folder.mkdir(parents=True)
    weight_map: dict[str, str] = {}
    shards = []
    for i in range(1, SHARDS + 1):
        name = f"model-{i:05d}-of-{SHARDS:05d}.safetensors"
        tensors = {f"model.layers.{4 * (i - 1) + j}.mlp.up_proj.weight": ("BF16", (32768, 4096)) for j in range(4)}
        path = write_sparse_safetensors_layout(folder / name, tensors)
        header_end = path.stat().st_size - GiB
        write_random(path, path.stat().st_size, offset=header_end)
        weight_map.update({t: name for t in tensors})
        shards.append(path)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": SHARDS * GiB}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16"}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}))
    return shards


def write_manifests(root: Path, shards: list[Path]) -> tuple[Path, Path]:
    """One manifest with the first shard as a single-file lane, one with the whole folder as an hf-dir lane."""
    digests = {p: hash_file(p)["sha256"] for p in shards}
    first = shards[0]
    single = root / "single.yaml"
    single.write_text(json.dumps({
        "version": 1, "models_dir": str(root / "models"),
        "lanes": [{"name": "one", "kind": "file", "path": str(first.relative_to(root / "models")),
                   "sha256": digests[first], "size": first.stat().st_size}],
    }))
    folder = root / "folder.yaml"
    folder.write_text(json.dumps({
        "version": 1, "models_dir": str(root / "models"),
        "lanes": [{"name": "four", "kind": "hf-dir", "path": str(first.parent.relative_to(root / "models")),
                   "files": {p.name: {"sha256": digests[p], "size": p.stat().st_size} for p in shards}}],
    }))
    return single, folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    targets = Targets()
    compile_package()
    with scratch("bench-verify") as root:
        t0 = time.perf_counter()
        shards = build_folder(root / "models" / "four")
        single_yaml, folder_yaml = write_manifests(root, shards)
        warm(shards)
        print(f"built {SHARDS} x 1 GiB shards in {time.perf_counter() - t0:.1f}s; page cache warm", flush=True)
        listing = root / "shards.txt"
        listing.write_text("".join(f"{p}\n" for p in shards))
        pf = [*preflight_cmd(), "check", "--verify", "full", "--quiet", "--termination-log", ""]
        rss: dict[str, float] = {}

        def preflight(manifest: Path, key: str) -> float:
            proc = run([*pf, "-m", str(manifest)])
            rss[key] = max(rss.get(key, 0.0), proc.maxrss_mb)
            return proc.wall_s

        def in_process() -> float:
            """hash_file in a fresh interpreter (as the CLI calls it), timed inside it: startup excluded."""
            out = subprocess.run([PY, "-c", HASH_FILE_TIMER, str(shards[0])], check=True, capture_output=True, text=True, env=checkout_env())
            return float(out.stdout)

        times = interleave({
            "preflight 1 file": lambda: preflight(single_yaml, "single"),
            "openssl 1 file": lambda: run(["openssl", "dgst", "-sha256", str(shards[0])]).wall_s,
            "preflight 4 files": lambda: preflight(folder_yaml, "folder"),
            "openssl 4 files (xargs -P2)": lambda: run(["xargs", "-a", str(listing), "-P2", "-n1", "openssl", "dgst", "-sha256"]).wall_s,
            "hash_file in-process": in_process,
        }, args.rounds)
        med = {name: median(values) for name, values in times.items()}
        for name, value in med.items():
            print(f"  {name:30s} median {value:.3f}s  (runs: {', '.join(f'{v:.3f}' for v in times[name])})")
        print(f"  peak RSS of preflight check: {rss['single']:.0f} MB (1 file), {rss['folder']:.0f} MB (4 files)")
        single = med["preflight 1 file"] / med["openssl 1 file"]
        folder = med["preflight 4 files"] / med["openssl 4 files (xargs -P2)"]
        inproc = med["hash_file in-process"] / med["openssl 1 file"]
        rate = GiB / med["openssl 1 file"] / 2**20
        targets.at_most("1 GiB file lane vs openssl dgst", single, TARGET_SINGLE,
                        f"{med['preflight 1 file']:.3f}s vs {med['openssl 1 file']:.3f}s (openssl {rate:.0f} MiB/s)")
        targets.at_most("4 x 1 GiB folder lane vs openssl, xargs -P2", folder, TARGET_FOLDER,
                        f"{med['preflight 4 files']:.3f}s vs {med['openssl 4 files (xargs -P2)']:.3f}s")
        best = {name: min(values) for name, values in times.items()}
        print(f"info least disturbed runs (min): 1 file {best['preflight 1 file'] / best['openssl 1 file']:.3f}x, "
              f"4 files {best['preflight 4 files'] / best['openssl 4 files (xargs -P2)']:.3f}x")
        print(f"info hash_file in-process ({HASH_CHUNK // 1024} KiB reads) vs openssl process: {inproc:.3f}x "
              f"({med['hash_file in-process']:.3f}s vs {med['openssl 1 file']:.3f}s)")
    return targets.finish()


if __name__ == "__main__":
    sys.exit(main())
