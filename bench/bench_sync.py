"""Download throughput of `preflight sync` over loopback, against curl and `hf download`.

Run from the repository root:  python bench/bench_sync.py [--rounds N]
Serves, with tests/hubserver.py on 127.0.0.1 (the Hub API plus a "CDN" port the
file URLs redirect to, streaming from files on disk):
  - org/big: one 2 GiB safetensors file (random data). Each round, into an empty
    folder on the same disk: `preflight sync` of a single-file lane, `curl -L -o`
    of the same URL, and `hf download org/big model.safetensors --local-dir D`
    (HF_HUB_DISABLE_XET=1), and `openssl dgst -sha256` of the same bytes. Targets: sync
    <= 1.15x the floor max(curl, sha256) (bench/common.Floor, printed as `ratio to
    floor`), sync <= 1.3x curl, sync >= 2x faster than hf download, peak RSS of sync <= 200 MB. For reading the figures only: curl
    followed by coreutils `sync FILE` (curl plus the fsync sync also does).
    With --chunk-kib N, also a sync with preflight's 1 MiB network read size patched to N KiB.
  - org/sharded: a folder lane of 8 x 128 MiB shards, synced with --workers 4
    and --workers 1; the staging folder is watched to show shards in flight at once.
preflight fetches to staging, hashes while writing, writes behind (writeback every
32 MiB, written pages dropped from the page cache), fsyncs and renames. curl does none
of that: it leaves the whole file dirty in the page cache, which is most of its time
where fresh page-cache memory is costly (virtual machines). Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import HASH_LABEL, PY, Floor, Runs, Targets, compile_package, interleave, median, preflight_cmd, run, scratch, warm, write_random  # noqa: E402
from tests.builders import write_sparse_safetensors_layout  # noqa: E402
from tests.hubserver import HubServer  # noqa: E402

MiB = 2**20
TARGET_CURL = 1.3
TARGET_HF = 2.0
TARGET_RSS_MB = 200.0
SHARDS = 8
CHUNK_WRAPPER = (
    "import sys; import preflight.sources.http as h; assert hasattr(h, 'RECV_CHUNK'); h.RECV_CHUNK = int(sys.argv.pop(1)); "
    "from preflight.cli import main; sys.argv[0] = 'preflight'; main()"
)


def safetensors_file(path: Path, data_bytes: int, prefix: str) -> Path:
    """A valid BF16 safetensors file whose `data_bytes` of tensor data are random."""
    rows = data_bytes // 4 // (4096 * 2)
    write_sparse_safetensors_layout(path, {f"{prefix}.{i}.weight": ("BF16", (rows, 4096)) for i in range(4)})
    size = path.stat().st_size
    write_random(path, size, offset=size - data_bytes)
    return path


def sharded_repo(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    files: dict[str, Path] = {}
    weight_map = {}
    for i in range(1, SHARDS + 1):
        name = f"model-{i:05d}-of-{SHARDS:05d}.safetensors"
        files[name] = safetensors_file(folder / name, 128 * MiB, f"model.layers.{i}")
        weight_map |= {f"model.layers.{i}.{j}.weight": name for j in range(4)}
    for name, obj in {
        "model.safetensors.index.json": {"metadata": {"total_size": SHARDS * 128 * MiB}, "weight_map": weight_map},
        "config.json": {"architectures": ["BenchShardsModel"], "model_type": "bench"},  # no layout to hold its made-up tensor names to
        "tokenizer.json": {"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}},
    }.items():
        (folder / name).write_text(json.dumps(obj))
        files[name] = folder / name
    return files


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


class StagingWatch:
    """Polls a staging folder while a command runs; remembers the most `.part` files seen at once."""

    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self.most = max(self.most, sum(1 for p in self.staging.iterdir() if p.name.endswith(".part")))
            except OSError:
                pass

    def __enter__(self) -> StagingWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk-kib", type=int, default=0,
                        help="also time sync with this read/hash chunk size patched in (to size a change; adds a minute)")
    args = parser.parse_args()
    targets = Targets()
    compile_package()
    hf_cli = Path(PY).parent / "hf"
    with scratch("bench-sync") as root:
        src = root / "served"
        src.mkdir()
        big = safetensors_file(src / "model.safetensors", 2 * 2**30, "model.layers")
        shard_files = sharded_repo(src / "sharded")
        warm([big, *shard_files.values()])
        with HubServer() as hub:
            hub.add_repo("org/big", {"model.safetensors": big})
            hub.add_repo("org/sharded", shard_files)
            env = {**os.environ, **hub.env(), "HF_HOME": str(root / "hf-home")}
            out = root / "out"
            manifest = root / "lanes.yaml"
            manifest.write_text(json.dumps({"version": 1, "models_dir": str(out), "lanes": [
                {"name": "big", "kind": "file", "path": "big/model.safetensors", "source": "hf://org/big/model.safetensors@main"},
                {"name": "sharded", "kind": "hf-dir", "path": "sharded", "source": "hf://org/sharded@main"},
            ]}))
            sync = [*preflight_cmd(), "sync", "-m", str(manifest), "--quiet", "--termination-log", ""]
            url = hub.file_url("org/big", "model.safetensors")
            rss: list[float] = []
            cpu: dict[str, list[float]] = {}

            def preflight_big(cmd: list[str] = sync, key: str = "preflight sync") -> float:
                fresh(out)
                proc = run([*cmd, "--lane", "big"], env=env)
                assert (out / "big" / "model.safetensors").stat().st_size == big.stat().st_size
                rss.append(proc.maxrss_mb)
                cpu.setdefault(key, []).append(proc.cpu_s)
                return proc.wall_s

            def curl_big() -> float:
                folder = fresh(out / "big")
                proc = run(["curl", "-sS", "-f", "-L", "-o", str(folder / "model.safetensors"), url], env=env)
                cpu.setdefault("curl -L -o", []).append(proc.cpu_s)
                return proc.wall_s

            def curl_durable_big() -> float:
                folder = fresh(out / "big")
                target = str(folder / "model.safetensors")
                return run(["sh", "-c", 'curl -sS -f -L -o "$1" "$2" && sync "$1"', "sh", target, url], env=env).wall_s

            def hf_big() -> float:
                folder = fresh(out / "big")
                return run([str(hf_cli), "download", "org/big", "model.safetensors", "--local-dir", str(folder)], env=env).wall_s

            floor = Floor(Runs(), big, env)
            t0 = time.perf_counter()
            timers = {"preflight sync": preflight_big, "curl -L -o": curl_big, "curl -o, then sync FILE": curl_durable_big,
                      "hf download": hf_big, HASH_LABEL: floor.hash_once}
            patched = f"sync, {args.chunk_kib} KiB chunks"
            if args.chunk_kib:
                wrapped = [PY, "-c", CHUNK_WRAPPER, str(args.chunk_kib * 1024), *sync[2:]]
                timers[patched] = lambda: preflight_big(wrapped, patched)
            times = interleave(timers, args.rounds)
            med = {k: median(v) for k, v in times.items()}
            size = big.stat().st_size
            for k, v in med.items():
                cpu_note = f", CPU {median(cpu[k]):.2f}s" if k in cpu else ""
                print(f"  2 GiB file, {k:24s} median {v:.2f}s = {size / v / MiB:.0f} MiB/s{cpu_note}  (runs: {', '.join(f'{x:.2f}' for x in times[k])})")
            floor.check(targets, med, "preflight sync", "curl -L -o", "2 GiB file over loopback")
            targets.at_most("sync vs curl, 2 GiB over loopback", med["preflight sync"] / med["curl -L -o"], TARGET_CURL,
                            f"{med['preflight sync']:.2f}s vs {med['curl -L -o']:.2f}s")
            targets.at_least("hf download time / sync time", med["hf download"] / med["preflight sync"], TARGET_HF,
                             f"{med['hf download']:.2f}s vs {med['preflight sync']:.2f}s")
            targets.at_most("peak RSS of sync (2 GiB file)", max(rss), TARGET_RSS_MB, unit=" MB")
            print(f"  (2 GiB comparison took {time.perf_counter() - t0:.0f}s)", flush=True)

            in_flight: dict[int, int] = {}

            def sharded(workers: int) -> float:
                fresh(out)
                (out / ".preflight" / "staging").mkdir(parents=True)
                with StagingWatch(out / ".preflight" / "staging") as watch:
                    proc = run([*sync, "--lane", "sharded", "--workers", str(workers)], env=env)
                in_flight[workers] = max(in_flight.get(workers, 0), watch.most)
                assert len(list((out / "sharded").glob("*.safetensors"))) == SHARDS
                return proc.wall_s

            times = interleave({"--workers 4": lambda: sharded(4), "--workers 1": lambda: sharded(1)}, args.rounds)
            w4, w1 = median(times["--workers 4"]), median(times["--workers 1"])
            total = SHARDS * 128 * MiB
            print(f"  8 x 128 MiB shards: --workers 4 {w4:.2f}s ({total / w4 / MiB:.0f} MiB/s), --workers 1 {w1:.2f}s "
                  f"({total / w1 / MiB:.0f} MiB/s), speed-up {w1 / w4:.2f}x on this machine")
            targets.holds("shards fetched concurrently with --workers 4", in_flight[4] >= 2 and in_flight[1] <= 1,
                          f"at most {in_flight[4]} shards staged at once with --workers 4, {in_flight[1]} with --workers 1")
    return targets.finish()


if __name__ == "__main__":
    sys.exit(main())
