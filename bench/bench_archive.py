"""A model.tar.gz lane: `preflight fetch URL#sha256=… DEST` against `curl URL | tar xz -C DEST`.

Run from the repository root:  python bench/bench_archive.py [--size-mib 2048] [--rounds 2]
Builds (once, cached under build/) a tar.gz of a model folder: config, tokenizer and
bf16-like safetensors shards (random normal values, so gzip finds what it finds in real
weights, about 20%), compressed with gzip level 1 to about --size-mib. Serves it from
tests/hubserver.py on 127.0.0.1 (GET with Range, streaming from the file). Each round,
into an empty folder on the same disk, interleaved:
  - preflight fetch: the archive staged (ranged download, sha256 while writing, fsync),
    checked against its pinned sha256, then unpacked in one pass (names, links and bounds
    checked, every member hashed, written behind, fsynced), each member's format checked,
    renamed into place, receipts and ready.json written;
  - curl -sS URL | tar xz -C DEST (GNU tar with gzip; no digest, no fsync).
Targets: preflight <= 1.3x the pipe's wall time; peak RSS of preflight <= 200 MB.
Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, Targets, compile_package, interleave, median, preflight_cmd, run, scratch  # noqa: E402
from tests.hubserver import HubServer  # noqa: E402

MiB = 2**20
TARGET = 1.3
TARGET_RSS_MB = 200.0
SHARD_MIB = 512


def bf16_block(size: int) -> bytes:
    """`size` bytes of bf16 values drawn from a normal distribution (weights-like entropy)."""
    import numpy as np

    values = np.random.default_rng(7).standard_normal(size // 2, dtype=np.float32)
    return (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()


def safetensors_header(name: str, nbytes: int) -> bytes:
    header = json.dumps({name: {"dtype": "BF16", "shape": [nbytes // 2 // 4096, 4096], "data_offsets": [0, nbytes]},
                         "__metadata__": {"format": "pt"}}).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header


class _Shard(io.RawIOBase):
    """A safetensors shard streamed from one repeated 64 MiB bf16 block (gzip's 32 KiB window never sees the repeat)."""

    def __init__(self, head: bytes, nbytes: int, block: bytes) -> None:
        self.parts = [head]
        self.left = nbytes
        self.block = block
        self.offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.parts:
            data = self.parts.pop(0)
        elif self.left:
            n = min(len(b), self.left, len(self.block) - self.offset)
            data = self.block[self.offset:self.offset + n]
            self.offset = (self.offset + n) % len(self.block)
            self.left -= n
        else:
            return 0
        b[:len(data)] = data
        return len(data)


def build_archive(path: Path, size: int) -> dict[str, int]:
    """A model.tar.gz of about `size` bytes; returns its members' sizes."""
    raw_target = int(size / 0.80)  # gzip -1 leaves bf16 noise at ~80%
    shards = max(1, raw_target // (SHARD_MIB * MiB))
    per = (raw_target // shards) // (2 * 4096) * (2 * 4096)
    block = bf16_block(64 * MiB)
    members: dict[str, int] = {}
    config = json.dumps({"architectures": ["BenchModel"], "model_type": "bench"}).encode()
    tokenizer = json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}).encode()
    index = {"metadata": {"total_size": per * shards}, "weight_map": {}}
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as out:
        gz = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

        class Sink(io.RawIOBase):
            def writable(self) -> bool:
                return True

            def write(self, b) -> int:
                out.write(gz.compress(bytes(b)))
                return len(b)

        buffered = io.BufferedWriter(Sink(), 4 * MiB)
        with tarfile.open(fileobj=buffered, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            def add(name: str, data_or_stream, n: int) -> None:
                info = tarfile.TarInfo("./" + name)
                info.size = n
                tf.addfile(info, data_or_stream if not isinstance(data_or_stream, bytes) else io.BytesIO(data_or_stream))
                members[name] = n

            add("config.json", config, len(config))
            add("tokenizer.json", tokenizer, len(tokenizer))
            for i in range(1, shards + 1):
                name = f"model-{i:05d}-of-{shards:05d}.safetensors"
                tensor = f"model.layers.{i}.weight"
                head = safetensors_header(tensor, per)
                add(name, io.BufferedReader(_Shard(head, per, block), 4 * MiB), len(head) + per)
                index["weight_map"][tensor] = name
            body = json.dumps(index).encode()
            add("model.safetensors.index.json", body, len(body))
        buffered.flush()
        out.write(gz.flush())
    tmp.rename(path)
    return members


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048, help="about how large the archive is (default 2048)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not shutil.which("curl") or not shutil.which("tar"):
        print("needs curl and GNU tar", file=sys.stderr)
        return 2
    compile_package()
    cache = ROOT / "build" / "bench-archive"
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"model-{args.size_mib}.tar.gz"
    if not archive.exists():
        t = time.perf_counter()
        build_archive(archive, args.size_mib * MiB)
        print(f"  built {archive.name} ({archive.stat().st_size / MiB:.0f} MiB) in {time.perf_counter() - t:.0f}s", flush=True)
    with open(archive, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    with tarfile.open(archive) as tf:
        expected = {m.name.removeprefix("./"): m.size for m in tf.getmembers() if m.isfile()}
    targets = Targets()
    with scratch("bench-archive") as root, HubServer() as hub:
        url = hub.add_url("releases/model.tar.gz", archive)
        env = {**os.environ, "HF_HOME": str(root / "hf-home"), "PREFLIGHT_QUIET": "1"}
        rss: list[float] = []
        cpu: dict[str, list[float]] = {}
        counter = [0]

        def fresh() -> Path:
            counter[0] += 1
            for old in root.glob("dest-*"):
                shutil.rmtree(old)
            dest = root / f"dest-{counter[0]}"
            dest.mkdir()
            return dest

        def unpacked(dest: Path) -> dict[str, int]:
            return {p.relative_to(dest).as_posix(): p.stat().st_size for p in dest.rglob("*")
                    if p.is_file() and ".preflight" not in p.parts}

        def preflight() -> float:
            dest = fresh()
            proc = run([*preflight_cmd(), "fetch", f"{url}#sha256={digest}", str(dest), "--termination-log", ""], env=env)
            assert unpacked(dest) == expected, "preflight did not unpack the archive as tar does"
            rss.append(proc.maxrss_mb)
            cpu.setdefault("preflight fetch", []).append(proc.cpu_s)
            return proc.wall_s

        def pipe() -> float:
            dest = fresh()
            proc = run(["sh", "-c", 'curl -sS -f "$1" | tar xz -C "$2"', "sh", url, str(dest)], env=env)
            assert unpacked(dest) == expected
            cpu.setdefault("curl | tar xz", []).append(proc.cpu_s)
            return proc.wall_s

        times = interleave({"preflight fetch": preflight, "curl | tar xz": pipe}, args.rounds)
        med = {k: median(v) for k, v in times.items()}
        size = archive.stat().st_size
        for k, v in med.items():
            print(f"  {size / MiB:.0f} MiB model.tar.gz ({sum(expected.values()) / MiB:.0f} MiB unpacked), {k:16s} median {v:.2f}s, "
                  f"CPU {median(cpu[k]):.2f}s  (runs: {', '.join(f'{x:.2f}' for x in times[k])})", flush=True)
        targets.at_most("preflight fetch vs curl | tar xz", med["preflight fetch"] / med["curl | tar xz"], TARGET,
                        f"{med['preflight fetch']:.2f}s vs {med['curl | tar xz']:.2f}s")
        targets.at_most("peak RSS of preflight fetch", max(rss), TARGET_RSS_MB, unit=" MB")
    return targets.finish()


if __name__ == "__main__":
    sys.exit(main())
