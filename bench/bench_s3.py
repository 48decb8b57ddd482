"""Download throughput of `preflight sync` from S3 (a real S3 server on loopback), against
curl of a presigned URL and against botocore itself.

Run from the repository root:  python bench/bench_s3.py [--rounds N] [--gib N]
Starts s3s-fs (bash ops/s3-server.sh builds it once) on 127.0.0.1 with a scratch root,
uploads one 2 GiB safetensors file (random data) through preflight's own uploader
(multipart, sha256 per part and in the metadata; its time is printed), then each
round, into an empty folder on the same disk:
  - `preflight sync` of a single-file lane s3://bench/big/model.safetensors (presigned
    GET through preflight's downloader: staging, hash while writing, fsync, rename);
  - `curl -o` of a presigned URL for the same object (no hashing, no fsync);
  - botocore used directly, as `aws s3 cp` would use it without its transfer manager:
    get_object, the body streamed to a file in 1 MiB reads (no hashing, no fsync).
and `openssl dgst -sha256` of the same bytes. Targets: sync <= 1.15x the floor max(curl,
sha256) (bench/common.Floor, printed as `ratio to floor`), sync <= 1.3x curl, peak RSS of
sync <= 200 MB. Exits 1 when a target is missed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import HASH_LABEL, PY, Floor, MiB, Runs, Targets, compile_package, interleave, object_args, preflight_cmd, scratch, warm  # noqa: E402

TARGET_CURL = 1.3
TARGET_RSS_MB = 200.0
BUCKET = "bench"
KEY = "big/model.safetensors"

BOTOCORE_GET = r"""
import sys, botocore.session
from botocore.config import Config
endpoint, key_id, secret, bucket, key, out = sys.argv[1:]
cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
             request_checksum_calculation="when_required", response_checksum_validation="when_required")
client = botocore.session.get_session().create_client("s3", region_name="us-east-1", endpoint_url=endpoint,
                                                      aws_access_key_id=key_id, aws_secret_access_key=secret, config=cfg)
body = client.get_object(Bucket=bucket, Key=key)["Body"]
with open(out, "wb") as f:
    while True:
        chunk = body.read(1 << 20)
        if not chunk:
            break
        f.write(chunk)
"""


def main() -> int:
    args = object_args(__doc__)

    from bench.bench_sync import fresh, safetensors_file
    from tests.s3_server import ACCESS_KEY, SECRET_KEY, S3Server

    targets = Targets()
    compile_package()
    with scratch("bench-s3") as root:
        src = safetensors_file(root / "model.safetensors", int(args.gib * 2**30), "model.layers")
        size = src.stat().st_size
        server = S3Server(root / "s3-root").start()
        try:
            server.bucket(BUCKET)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFLIGHT_"))}
            env.update(server.env(HOME=str(root), AWS_EC2_METADATA_DISABLED="true"))
            os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
            from preflight.integrity import hash_file
            from preflight.sources.http import Timeouts
            from preflight.sources.s3_client import S3Client

            client = S3Client(Timeouts(10, 120))
            t0 = time.perf_counter()
            client.upload(BUCKET, KEY, src, size, hash_file(src)["sha256"])
            up = time.perf_counter() - t0
            print(f"  upload (multipart, sha256 per part): {up:.2f}s = {size / up / MiB:.0f} MiB/s, hashing included")
            url = client.presign_get(BUCKET, KEY)

            out = root / "out"
            manifest = root / "lanes.yaml"
            manifest.write_text(json.dumps({"version": 1, "models_dir": str(out), "lanes": [
                {"name": "big", "kind": "file", "path": "big/model.safetensors", "source": f"s3://{BUCKET}/{KEY}"}]}))
            sync = [*preflight_cmd(), "sync", "-m", str(manifest), "--quiet", "--termination-log", ""]
            runs = Runs()
            warm([src])
            floor = Floor(runs, src, env)

            preflight_big = runs.sync_into("preflight sync", sync, env, out, size)

            def curl_big() -> float:
                folder = fresh(out / "big")
                return runs.timed("curl presigned", ["curl", "-sS", "-f", "-o", str(folder / "model.safetensors"), url], env)

            def botocore_big() -> float:
                folder = fresh(out / "big")
                wall = runs.timed("botocore get_object", [PY, "-c", BOTOCORE_GET, server.endpoint, ACCESS_KEY, SECRET_KEY, BUCKET, KEY,
                                                          str(folder / "model.safetensors")], env)
                assert (folder / "model.safetensors").stat().st_size == size
                return wall

            times = interleave({"preflight sync": preflight_big, "curl presigned": curl_big, HASH_LABEL: floor.hash_once,
                                "botocore get_object": botocore_big}, args.rounds)
            med = runs.medians(times, f"{args.gib:g} GiB object", size)
            floor.check(targets, med, "preflight sync", "curl presigned", f"{args.gib:g} GiB object")
            print(f"  sync / botocore get_object: {med['preflight sync'] / med['botocore get_object']:.2f}x")
            targets.at_most(f"sync vs curl of a presigned URL, {args.gib:g} GiB over loopback",
                            med["preflight sync"] / med["curl presigned"], TARGET_CURL,
                            f"{med['preflight sync']:.2f}s vs {med['curl presigned']:.2f}s")
            targets.at_most("peak RSS of sync", max(runs.rss), TARGET_RSS_MB, unit=" MB")
        finally:
            server.stop()
    return targets.finish()


if __name__ == "__main__":
    sys.exit(main())
