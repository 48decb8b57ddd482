"""Signed lanes: cold verification by `preflight check` vs the reference `model_signing verify`.

Run from the repository root:  python bench/bench_signing.py [--shards 4] [--shard-mib 1024] [--rounds 3]
Builds a sharded safetensors folder (default 4 x 1 GiB of random data) under build/,
signs it with a fresh EC key through model_signing (as `model_signing sign key` does),
warms the page cache, then times, interleaved round by round:
  - `preflight check` of the lane with `signature: {method: key}`, cold: receipts removed
    before each run, so every file is hashed once and the signature verified
  - `python -m model_signing verify key` on the same folder (hashes every file itself)
  - `openssl dgst -sha256` of every file, two at a time: one plain hash pass
and then a warm `preflight check` (receipts kept: nothing to hash, the library not imported).
Prints medians and ratios; exits 1 when a target is missed:
  - cold check wall time         <= 1.10x `model_signing verify`
  - cold check bytes read        <= the lane's size + 64 MiB (one pass: the model is never read twice;
                                    the rest is the interpreter and the library being imported)
  - warm re-check bytes read     <= 0.1% of the lane's size (as bench_recheck.py: imports, receipts)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PY, Targets, compile_package, interleave, median, preflight_cmd, run, scratch, warm, write_random  # noqa: E402
from tests.builders import write_sparse_safetensors_layout  # noqa: E402

MiB = 2**20
TARGET_VS_REFERENCE = 1.10
TARGET_EXTRA_READ = 64 * MiB
TARGET_WARM_READ = 0.001


def build_folder(folder: Path, shards: int, shard_bytes: int) -> list[Path]:
    """A sharded BF16 model folder (index, config, tokenizer) whose shards hold random data."""
    folder.mkdir(parents=True)
    rows = max(1, shard_bytes // (4 * 4096 * 2))
    weight_map: dict[str, str] = {}
    out = []
    for i in range(1, shards + 1):
        name = f"model-{i:05d}-of-{shards:05d}.safetensors"
        tensors = {f"model.layers.{4 * (i - 1) + j}.mlp.up_proj.weight": ("BF16", (rows, 4096)) for j in range(4)}
        path = write_sparse_safetensors_layout(folder / name, tensors)
        data = 4 * rows * 4096 * 2
        write_random(path, path.stat().st_size, offset=path.stat().st_size - data)
        weight_map.update({t: name for t in tensors})
        out.append(path)
    total = shards * 4 * rows * 4096 * 2
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    # no architecture: the folder's model-level checks have nothing to hold these stand-in tensors to
    (folder / "config.json").write_text(json.dumps({"model_type": "bench", "torch_dtype": "bfloat16"}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--shard-mib", type=int, default=1024, help="size of each shard (default 1024: a 4 GiB lane)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import model_signing  # noqa: F401  (the signing extra must be installed)

    from tests.signing_helpers import ec_key_pair, sign_with_key

    compile_package()
    t = Targets()
    with scratch("bench-signing") as root:
        models = root / "models"
        lane = models / "vllm/signed"
        build_folder(lane, args.shards, args.shard_mib * MiB)
        key = ec_key_pair(root / "keys")
        sign_with_key(lane, lane / "model.sig", key)
        size = sum(p.stat().st_size for p in lane.iterdir() if p.name != "model.sig")
        manifest = root / "lanes.yaml"
        manifest.write_text(f"version: 1\nmodels_dir: {models}\nlanes:\n"
                            f"  - {{name: signed, kind: hf-dir, path: vllm/signed, signature: {{method: key, key: {key.public}}}}}\n")
        receipts = models / ".preflight" / "receipts.json"
        check = [*preflight_cmd(), "check", "-m", str(manifest), "--termination-log", ""]
        reference = [PY, "-m", "model_signing", "verify", "key", "--signature", str(lane / "model.sig"),
                     "--public_key", str(key.public), str(lane)]
        files = sorted(str(p) for p in lane.iterdir() if p.name != "model.sig")
        hash_pass = ["sh", "-c", 'printf "%s\\n" "$@" | xargs -P2 -n1 openssl dgst -sha256 >/dev/null', "sh", *files]
        warm(p for p in lane.iterdir())
        print(f"lane: {len(files)} files, {size / 2**30:.2f} GiB; {args.rounds} rounds; {os.cpu_count()} cores", flush=True)

        cold_reads: list[int] = []

        def cold() -> float:
            receipts.unlink(missing_ok=True)
            proc = run(check)
            cold_reads.append(proc.rchar)
            return proc.wall_s

        timings = interleave({
            "preflight check (cold)": cold,
            "model_signing verify": lambda: run(reference).wall_s,
            "openssl hash pass (-P2)": lambda: run(hash_pass).wall_s,
        }, args.rounds)
        for name, values in timings.items():
            print(f"  {name:<26} median {median(values):.2f}s  ({', '.join(f'{v:.2f}' for v in values)})", flush=True)
        ours, ref, floor = (median(timings[n]) for n in timings)
        print(f"  ratio check/model_signing verify: {ours / ref:.2f}x; check/one hash pass: {ours / floor:.2f}x", flush=True)

        run(check)  # leaves the receipts of a passed verification
        warm_runs = [run(check) for _ in range(max(args.rounds, 3))]
        warm_wall = median(p.wall_s for p in warm_runs)
        warm_read = max(p.rchar for p in warm_runs)
        print(f"  preflight check (warm)     median {warm_wall * 1000:.0f} ms, read {warm_read} bytes", flush=True)

        t.at_most("cold check vs model_signing verify", ours / ref, TARGET_VS_REFERENCE)
        t.at_most("cold check bytes read beyond the lane", (max(cold_reads) - size) / MiB, TARGET_EXTRA_READ / MiB, unit=" MiB",
                  detail=f"{max(cold_reads)} bytes for a {size}-byte lane")
        t.at_most("warm re-check bytes read / lane size", warm_read / size, TARGET_WARM_READ, detail=f"{warm_read} bytes")
    return t.finish()


if __name__ == "__main__":
    sys.exit(main())
