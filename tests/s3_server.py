"""A real S3-compatible server for the tests: s3s-fs (built by ops/s3-server.sh) on
127.0.0.1 with its own root folder, and a botocore client to fill its buckets.

Outside CI a missing binary skips the s3 tests (run `bash ops/s3-server.sh` once); under
CI=true it fails them, so a CI run cannot pass without having run them.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path
from typing import Any

from tests.procs import ServerProcess, installed, required

ACCESS_KEY = "PREFLIGHTTESTKEY0001"
SECRET_KEY = "s3-test-secret-7f3a9c2e5b1d8f04a6"  # masked like any secret: outputs must never show it
VERSION = "0.14.1"


def binary() -> Path | None:
    """Where ops/s3-server.sh keeps s3s-fs (same lookup), when it is there."""
    return installed("s3s-fs", VERSION, "PREFLIGHT_S3_SERVER_DIR")


def require_binary() -> Path:
    return required(binary(), "s3s-fs is not built: run `bash ops/s3-server.sh` (about ten minutes, once)")


class S3Server(ServerProcess):
    """s3s-fs serving `root` (one folder per bucket) on 127.0.0.1."""

    name = "s3s-fs"

    def __init__(self, root: Path, *, auth: bool = True) -> None:
        super().__init__(root)
        self.auth = auth
        self._client: Any = None

    def argv(self, port: int) -> list[str]:
        keys = ["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY] if self.auth else []
        return [str(require_binary()), "--host", "127.0.0.1", "--port", str(port), *keys, str(self.root)]

    def env(self, **extra: str) -> dict[str, str]:
        """The variables an S3 user sets for this server."""
        out = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1"}
        if self.auth:
            out.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        out.update(extra)
        return out

    # ------------------------------------------------------------------ filling buckets

    @property
    def client(self) -> Any:
        if self._client is None:
            import botocore.session
            from botocore import UNSIGNED
            from botocore.config import Config

            cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, signature_version="s3v4" if self.auth else UNSIGNED,
                         request_checksum_calculation="when_required", response_checksum_validation="when_required")
            keys = {"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY} if self.auth else {}
            self._client = botocore.session.get_session().create_client("s3", region_name="us-east-1", endpoint_url=self.endpoint, config=cfg, **keys)
        return self._client

    def bucket(self, name: str) -> str:
        """A fresh bucket (a folder of the server's root)."""
        if (self.root / name).exists():
            shutil.rmtree(self.root / name)
        self.client.create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, data: bytes, *, checksum: bool = False, metadata: dict[str, str] | None = None) -> None:
        extra: dict[str, Any] = {}
        if checksum:
            extra["ChecksumSHA256"] = base64.b64encode(hashlib.sha256(data).digest()).decode()
        if metadata:
            extra["Metadata"] = metadata
        self.client.put_object(Bucket=bucket, Key=key, Body=data, **extra)

    def put_tree(self, bucket: str, prefix: str, files: dict[str, bytes], **kw: Any) -> None:
        for rel, data in files.items():
            self.put(bucket, f"{prefix}/{rel}" if prefix else rel, data, **kw)

    def get(self, bucket: str, key: str) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def head(self, bucket: str, key: str) -> dict[str, Any]:
        return self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(o["Key"] for o in self.client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents") or [])
