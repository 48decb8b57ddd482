"""Artifacts made by third-party packers: olot (KServe modelcar layers and a ModelPack
manifest over them, in an OCI layout) pushed with the oras Python SDK."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def base_layout(layout: Path) -> None:
    """An empty linux/amd64 image behind an index, tagged latest: what olot adds model layers to."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    from tests.oci_servers import tar_bytes

    base = tar_bytes([("etc/os-release", b"NAME=base\n")])
    layer = _blob(layout, base)
    config = _blob(layout, json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                                       "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
                                       "history": [{"created_by": "base"}]}).encode())
    manifest = _blob(layout, json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                         "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                                         "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}]}).encode())
    index = _blob(layout, json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, **manifest, "platform": {"architecture": "amd64", "os": "linux"}}]}).encode())
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_INDEX, **index, "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))


def olot_modelcar(layout: Path, model_dir: Path) -> dict[str, str]:
    """olot's modelcar image (one tar layer per file under /models) plus its ModelPack
    manifest, in an OCI layout. Returns the digests of the image and ModelPack manifests."""
    from olot.basics import oci_layers_on_top

    base_layout(layout)
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    oci_layers_on_top(layout, files, root_dir=model_dir, add_modelpack=True)
    root = json.loads((layout / "index.json").read_text())
    index = json.loads((layout / "blobs" / "sha256" / root["manifests"][0]["digest"][7:]).read_bytes())
    out = {}
    for m in index["manifests"]:
        doc = json.loads((layout / "blobs" / "sha256" / m["digest"][7:]).read_bytes())
        out["modelpack" if doc.get("artifactType") == "application/vnd.cncf.model.manifest.v1+json" else "image"] = m["digest"]
    return out


def oras_push_layout(layout: Path, target: str, user: str, password: str) -> None:
    from oras.layout.layout import NewLayout
    from oras.provider import Registry

    reg = Registry(hostname=target.split("/", 1)[0], insecure=True)
    reg.login(username=user, password=password)
    NewLayout(str(layout)).push_to_registry(provider=reg, target=target, tag="latest")


def oras_pull(target: str, outdir: Path, user: str, password: str) -> list[str]:
    from oras.provider import Registry

    reg = Registry(hostname=target.split("/", 1)[0], insecure=True)
    reg.login(username=user, password=password)
    return reg.pull(target=target, outdir=str(outdir))
