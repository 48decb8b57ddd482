"""A verified copy from a local mirror (a path source) against its floor: cp and sha256.

Run from the repository root:  python bench/bench_mirror.py [--rounds N] [--gib N]
One safetensors file of --gib GiB (random data) in a mirror folder on the same disk as
the checkout, read once so the page cache holds it (as a warm NFS client or a local
disk would serve it). Each round, into an empty folder on the same disk:
  - `preflight sync` of a single-file lane whose source is the mirror file with its
    sha256 pinned (staging, copy, hash, fsync, rename);
  - `cp` of the same file (whatever cp does here: copy_file_range, a reflink where the
    filesystem has them; no hashing, no fsync);
  - `openssl dgst -sha256` of the same bytes.
The floor is max(cp, sha256) (bench/common.Floor). Targets: sync <= 1.15x the floor,
printed as `ratio to floor`; peak RSS of sync <= 200 MB. Exits 1 when a target is missed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import HASH_LABEL, Floor, Runs, Targets, compile_package, interleave, object_args, preflight_cmd, scratch, warm  # noqa: E402

TARGET_RSS_MB = 200.0


def main() -> int:
    args = object_args(__doc__)

    from bench.bench_sync import fresh, safetensors_file

    targets = Targets()
    compile_package()
    with scratch("bench-mirror") as root:
        (root / "mirror").mkdir()
        src = safetensors_file(root / "mirror" / "model.safetensors", int(args.gib * 2**30), "model.layers")
        size = src.stat().st_size
        with open(src, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        warm([src])
        out = root / "out"
        manifest = root / "lanes.yaml"
        manifest.write_text(json.dumps({"version": 1, "models_dir": str(out), "lanes": [
            {"name": "big", "kind": "file", "path": "big/model.safetensors", "source": str(src), "sha256": digest}]}))
        sync = [*preflight_cmd(), "sync", "-m", str(manifest), "--quiet", "--termination-log", ""]
        env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PREFLIGHT_")}
        runs = Runs()
        floor = Floor(runs, src, env)

        preflight_big = runs.sync_into("preflight sync", sync, env, out, size)

        def cp_big() -> float:
            folder = fresh(out / "big")
            return runs.timed("cp", ["cp", str(src), str(folder / "model.safetensors")], env)

        times = interleave({"preflight sync": preflight_big, "cp": cp_big, HASH_LABEL: floor.hash_once}, args.rounds)
        med = runs.medians(times, f"{args.gib:g} GiB file", size)
        floor.check(targets, med, "preflight sync", "cp", f"{args.gib:g} GiB mirror file")
        targets.at_most("peak RSS of sync", max(runs.rss), TARGET_RSS_MB, unit=" MB")
    return targets.finish()


if __name__ == "__main__":
    sys.exit(main())
