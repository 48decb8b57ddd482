"""Download throughput of `preflight sync` from Cloud Storage (fake-gcs-server on loopback),
against curl of the same JSON API media URL and against the floor of one hash pass.

Run from the repository root:  python bench/bench_gcs.py [--rounds N] [--gib N]
Starts fake-gcs-server (bash ops/gcs-server.sh installs it once) on 127.0.0.1 with its
filesystem backend in a scratch folder and puts one 2 GiB safetensors file (random data)
in it with a plain media upload, as gsutil makes objects: no sha256 metadata. Then each
round, into an empty folder on the same disk:
  - `preflight sync` of a single-file lane gs://bench/big/model.safetensors (the generation
    named in the URL, staging, the object's CRC32C checked while writing, fsync, rename);
  - the same with the file's sha256 pinned in the manifest (sha256 while writing instead);
  - `curl -o` of the same alt=media URL (no hashing, no fsync);
  - `openssl dgst -sha256` of the same bytes (one hash pass, from the page cache; bench/common.Floor).
First it prints the speed of each digest on one core (sha256, CRC32C through
google-crc32c, CRC32C in plain Python), the figures docs/gcs.md gives for the choice.
The floor of a pinned pull is max(curl, sha256): neither the network nor the hash can be
skipped; the floor of a CRC32C pull is curl (CRC32C runs at several GB/s). Targets: each
sync <= 1.15x its floor (printed as `ratio to floor`); peak RSS of sync <= 200 MB. Exits 1 when a target is missed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import FLOOR_LIMIT, HASH_LABEL, Floor, MiB, Runs, Targets, compile_package, interleave, object_args, preflight_cmd, scratch, warm  # noqa: E402

TARGET_RSS_MB = 200.0
BUCKET = "bench"
NAME = "big/model.safetensors"


def crc32c_python(data: bytes) -> int:
    """CRC32C in plain Python, table-driven: what the package would be without google-crc32c."""
    table = _table()
    crc = 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _table() -> list[int]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        out.append(c)
    return out


def hash_speeds() -> None:
    """MiB/s of the digests a pull may compute, on one core, 1 MiB pieces of a reused buffer."""
    import hashlib

    import google_crc32c

    from preflight.integrity import Crc32c

    buf = bytearray(os.urandom(MiB))
    view = memoryview(buf)
    for label, make in (("sha256", hashlib.sha256), ("crc32c (google-crc32c, with its copy)", Crc32c)):
        h = make()
        t0 = time.perf_counter()
        for _ in range(512):
            h.update(view)
        print(f"  {label}: {512 / (time.perf_counter() - t0):.0f} MiB/s")
    small = bytes(buf[: MiB // 4])
    t0 = time.perf_counter()
    assert crc32c_python(small) == google_crc32c.value(small)
    print(f"  crc32c in plain Python (table-driven): {0.25 / (time.perf_counter() - t0):.1f} MiB/s")


def main() -> int:
    args = object_args(__doc__)

    from bench.bench_sync import fresh, safetensors_file
    from tests.gcs_server import GcsServer

    targets = Targets()
    compile_package()
    hash_speeds()
    with scratch("bench-gcs") as root:
        src = safetensors_file(root / "model.safetensors", int(args.gib * 2**30), "model.layers")
        size = src.stat().st_size
        server = GcsServer(root / "gcs-root", backend="filesystem").start()
        try:
            server.bucket(BUCKET)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GS_", "CLOUDSDK_", "GCE_", "PREFLIGHT_"))}
            env.update(HOME=str(root), STORAGE_EMULATOR_HOST=server.endpoint, NO_GCE_CHECK="True")
            os.environ.update({k: env[k] for k in ("HOME", "STORAGE_EMULATOR_HOST", "NO_GCE_CHECK")})
            from preflight.integrity import hash_file
            from preflight.sources.gcs_client import GcsClient
            from preflight.sources.http import Timeouts

            info = server.put(BUCKET, NAME, src)  # a media upload, as gsutil makes them: no sha256 metadata
            assert "sha256" not in (info.get("metadata") or {})
            digest = hash_file(src)["sha256"]
            url, _headers = GcsClient(Timeouts(10, 300), False, print).media(BUCKET, NAME, info["generation"])

            out = root / "out"
            manifest, pinned = root / "lanes.yaml", root / "pinned.yaml"
            big = {"name": "big", "kind": "file", "path": "big/model.safetensors", "source": f"gs://{BUCKET}/{NAME}"}
            manifest.write_text(json.dumps({"version": 1, "models_dir": str(out), "lanes": [big]}))
            pinned.write_text(json.dumps({"version": 1, "models_dir": str(out), "lanes": [{**big, "sha256": digest}]}))
            runs = Runs()
            warm([src])
            floor = Floor(runs, src, env)

            def sync_of(label: str, path: Path):
                cmd = [*preflight_cmd(), "sync", "-m", str(path), "--quiet", "--termination-log", ""]

                return runs.sync_into(label, cmd, env, out, size)

            def curl_big() -> float:
                folder = fresh(out / "big")
                return runs.timed("curl", ["curl", "-sS", "-f", "-o", str(folder / "model.safetensors"), url], env)

            times = interleave({"sync (crc32c)": sync_of("sync (crc32c)", manifest), "sync (sha256 pin)": sync_of("sync (sha256 pin)", pinned),
                                "curl": curl_big, HASH_LABEL: floor.hash_once}, args.rounds)
            med = runs.medians(times, f"{args.gib:g} GiB object", size)
            print(f"  sync (crc32c): {med['sync (crc32c)'] / med['curl']:.2f}x curl; ratio to floor (curl alone): "
                  f"{med['sync (crc32c)'] / med['curl']:.2f}x")
            targets.at_most(f"sync (the object's CRC32C) / floor (curl of the media URL), {args.gib:g} GiB over loopback",
                            med["sync (crc32c)"] / med["curl"], FLOOR_LIMIT, f"{med['sync (crc32c)']:.2f}s vs {med['curl']:.2f}s")
            floor.check(targets, med, "sync (sha256 pin)", "curl", f"{args.gib:g} GiB object, a pinned sha256")
            targets.at_most("peak RSS of sync", max(runs.rss), TARGET_RSS_MB, unit=" MB")
        finally:
            server.stop()
    return targets.finish()


if __name__ == "__main__":
    sys.exit(main())
