"""oci://REGISTRY/REPO[:TAG|@sha256:DIGEST][//PATH]: models in an OCI registry, and
`preflight push` into one.

Reads CNCF ModelPack artifacts, Docker Model Runner artifacts, KitOps ModelKits, ORAS
file artifacts and plain images ("modelcar": the files under `/models` by default, the
layers applied with their whiteouts). A tag or an index resolves to one manifest digest,
which is the lane's version (the lock pins it).

How a file is fetched depends on how the artifact stores it:
- a raw layer (one file per blob) is listed from its descriptor (size, sha256), and
  streamed straight into the staging file with Range resume across processes;
- a tar layer's files are listed by reading the layer once as a stream, in memory
  (nothing is written): the layer's digest is checked, every entry's name and type is
  checked (`oci_tar`), and each member's size and sha256 are measured. Each member is
  then an ordinary file with an expectation: its fetch reads the layer from the start
  and copies that member alone into the staging file (no resume inside a tar layer),
  and sync verifies it like any file before it is published. A one-file tar layer
  whose ModelPack annotations give its name and size is listed without a read; its
  fetch then reads the whole layer and checks the layer's digest.
The source never writes anywhere but the staging file it is given.
"""

from __future__ import annotations

import fnmatch
import json
import platform
import posixpath
from collections.abc import Iterator
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import AuthError, FetchError, IntegrityError, StalledError, UnsafeSourceError, UsageError
from ..manifest import FileExpect, Lane, parse_source
from . import Context, Destination, Entry, Listing, Pushed, PushLane, Source, Transfer
from .oci_registry import DIGEST, INDEX_TYPES, OCI_MANIFEST, Manifest, Registry, Repository
from ..record import record

if TYPE_CHECKING:
    from ..volume import StagedFile
    from ..lockfile import LockedLane
    from .http import Fetched

# --------------------------------------------------------------------------- the media-type table
#
# Read from the public sources of each format:
#   ModelPack (CNCF model-spec, specs-go/v1/mediatype.go): application/vnd.cncf.model.*
#     manifest artifactType application/vnd.cncf.model.manifest.v1+json, config
#     application/vnd.cncf.model.config.v1+json, layers {weight, weight.config, doc, code,
#     dataset}.v1.{raw, tar, tar+gzip, tar+zstd}; annotations org.cncf.model.filepath and
#     org.cncf.model.file.metadata+json ({name, mode, uid, gid, size, mtime, typeflag}).
#   Docker Model Runner (docker/model-runner, pkg/distribution/types/config.go):
#     config application/vnd.docker.ai.model.config.v0.1+json (any ...model.config.*),
#     gguf.v3, safetensors, dduf, mmproj, license, chat.template.jinja (raw files),
#     vllm.config.tar and dir.tar (tar archives); names from org.cncf.model.filepath or
#     org.opencontainers.image.title when present.
#   KitOps (kitops-ml/kitops, pkg/lib/constants/mediatype): config
#     application/vnd.kitops.modelkit.config.v1+json (the Kitfile), layers
#     {model, modelpart, dataset, code, docs}.v1.{tar, tar+gzip, tar+zstd}.
#   Images (OCI image spec; Docker v2): layer.v1.tar[+gzip|+zstd] and
#     rootfs.diff.tar.gzip; whiteouts `.wh.NAME` and `.wh..wh..opq`.
#   ORAS file artifacts: a layer named by org.opencontainers.image.title is the file
#     itself, unless io.deis.oras.content.unpack says it is a tar+gzip of a folder.


@record(frozen=True)
class LayerType:
    role: str  # weight, config, aux (docs, code, datasets, licences: only when the lane's include names them), image
    packing: str  # raw | tar (the compression is read from the blob's first bytes)
    default_name: str | None = None  # a raw file's name when the layer carries none


LAYER_TYPES: dict[str, LayerType] = {}
for _part, _role in (("weight", "weight"), ("weight.config", "config"), ("doc", "aux"), ("code", "aux"), ("dataset", "aux")):
    for _suffix, _packing in ((".raw", "raw"), (".tar", "tar"), (".tar+gzip", "tar"), (".tar+zstd", "tar")):
        LAYER_TYPES[f"application/vnd.cncf.model.{_part}.v1{_suffix}"] = LayerType(_role, _packing)
for _part, _role in (("model", "weight"), ("modelpart", "weight"), ("dataset", "aux"), ("code", "aux"), ("docs", "aux")):
    for _suffix in (".tar", ".tar+gzip", ".tar+zstd"):
        LAYER_TYPES[f"application/vnd.kitops.modelkit.{_part}.v1{_suffix}"] = LayerType(_role, "tar")
LAYER_TYPES.update({
    "application/vnd.docker.ai.gguf.v3": LayerType("weight", "raw", "model.gguf"),
    "application/vnd.docker.ai.safetensors": LayerType("weight", "raw", "model.safetensors"),
    "application/vnd.docker.ai.dduf": LayerType("weight", "raw", "model.dduf"),
    "application/vnd.docker.ai.mmproj": LayerType("config", "raw", "model.mmproj"),
    "application/vnd.docker.ai.chat.template.jinja": LayerType("config", "raw", "template.jinja"),
    "application/vnd.docker.ai.license": LayerType("aux", "raw", "LICENSE"),
    "application/vnd.docker.ai.vllm.config.tar": LayerType("config", "tar"),
    "application/vnd.docker.ai.dir.tar": LayerType("weight", "tar"),
})
IMAGE_LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.docker.image.rootfs.diff.tar",
}
MODELPACK_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
KITOPS_CONFIG = "application/vnd.kitops.modelkit.config.v1+json"
DOCKER_AI_CONFIG = "application/vnd.docker.ai.model.config"  # a prefix: v0.1+json, v0.2+json, …
IMAGE_CONFIGS = {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
ANN_FILEPATH = "org.cncf.model.filepath"
ANN_FILE_METADATA = "org.cncf.model.file.metadata+json"
ANN_TITLE = "org.opencontainers.image.title"
ANN_ORAS_UNPACK = "io.deis.oras.content.unpack"
MODELCAR_ROOT = "models"  # where KServe's modelcar images keep the model
ATTESTATION = "attestation-manifest"
FINAL = 400  # FetchError.status of an answer that asking again cannot change (sources.http.NO_RETRY): not retried
MAX_LAYERS = 4096  # layers of one manifest (an image has at most 127; a ModelPack artifact one per weight file)
MAX_INDEX_ENTRIES = 4096  # manifests one index lists


# --------------------------------------------------------------------------- what the artifact holds


@record(frozen=True)
class Blob:
    digest: str
    size: int
    media_type: str

    @property
    def hex(self) -> str:
        return self.digest[7:]


@record
class Item:
    """One file of the artifact and how to get it: a raw blob, or a member of a tar layer."""

    path: str  # inside the artifact
    role: str
    size: int | None
    sha256: str | None
    blob: Blob
    member: str | None = None  # the tar member holding the bytes (a hard or symbolic link names its target's)


@record
class Plan:
    digest: str  # the manifest's
    kind: str  # modelpack, docker-ai, kitops, image, oras
    items: dict[str, Item] = field(default_factory=dict)


def _descriptor(d: object, what: str) -> Blob:
    if not isinstance(d, dict):
        raise IntegrityError(f"{what}: a descriptor that is not an object")
    digest, size, media = d.get("digest"), d.get("size"), d.get("mediaType")
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise IntegrityError(f"{what}: a descriptor with digest {str(digest)[:80]!r} (only sha256 digests are read)")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise IntegrityError(f"{what}: a descriptor of {digest} without a size")
    return Blob(digest, size, media if isinstance(media, str) else "")


def _host_arch() -> str:
    m = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(m, m)


def pick_from_index(index: Manifest, what: str) -> str:
    """The manifest an index leads to: a model artifact first, else this machine's
    platform (linux), else linux/amd64, else the only candidate."""
    listed = index.data.get("manifests") or []
    if not isinstance(listed, list) or len(listed) > MAX_INDEX_ENTRIES:
        raise IntegrityError(f"{what}: an index of {len(listed) if isinstance(listed, list) else 'no list of'} manifests "
                             f"(at most {MAX_INDEX_ENTRIES})", status=FINAL)
    entries = [e for e in listed if isinstance(e, dict)]
    cands = []
    for e in entries:
        ann = e.get("annotations") if isinstance(e.get("annotations"), dict) else {}
        if ann.get("vnd.docker.reference.type") == ATTESTATION:
            continue
        try:
            cands.append((_descriptor(e, what).digest, e))
        except IntegrityError:
            continue
    if not cands:
        raise FetchError(f"{what}: the index lists no manifest", status=404)
    for digest, e in cands:
        ann = e.get("annotations") if isinstance(e.get("annotations"), dict) else {}
        if e.get("artifactType") == MODELPACK_ARTIFACT or ann.get("io.opendatahub.modelcar.manifest.type") == "modelpack":
            return digest
    for arch in (_host_arch(), "amd64"):
        for digest, e in cands:
            p = e.get("platform") if isinstance(e.get("platform"), dict) else {}
            if p.get("os") == "linux" and p.get("architecture") == arch:
                return digest
    if len(cands) == 1:
        return cands[0][0]
    raise FetchError(f"{what}: the index lists {len(cands)} manifests and none is a model artifact or for linux/{_host_arch()}",
                     hint="name one by digest: oci://REGISTRY/REPO@sha256:…", status=404)


def artifact_kind(m: Manifest, config: Blob) -> str:
    at = m.data.get("artifactType")
    if config.media_type == MODELPACK_CONFIG or at == MODELPACK_ARTIFACT:
        return "modelpack"
    if config.media_type.startswith(DOCKER_AI_CONFIG):
        return "docker-ai"
    if config.media_type == KITOPS_CONFIG:
        return "kitops"
    if config.media_type in IMAGE_CONFIGS:
        return "image"
    return "oras"


def _layer_type(kind: str, layer: Blob, ann: dict, what: str) -> LayerType:
    t = LAYER_TYPES.get(layer.media_type)
    if t is not None:
        return t
    if kind == "image" and layer.media_type in IMAGE_LAYER_TYPES:
        return LayerType("image", "tar")
    if kind == "oras" and isinstance(ann.get(ANN_TITLE), str):
        return LayerType("weight", "tar" if str(ann.get(ANN_ORAS_UNPACK)).lower() == "true" else "raw")
    if kind in ("modelpack", "docker-ai", "kitops") and layer.media_type in IMAGE_LAYER_TYPES and isinstance(ann.get(ANN_TITLE), str):
        return LayerType("weight", "tar")
    raise FetchError(f"{what}: layer {layer.digest[:19]}… has media type {layer.media_type[:120]!r}, which is not a model, "
                     "image or file layer this tool knows", status=FINAL,
                     hint="known: ModelPack application/vnd.cncf.model.*, Docker Model Runner application/vnd.docker.ai.*, "
                          "KitOps application/vnd.kitops.modelkit.*, OCI/Docker image layers, ORAS files")


def _raw_name(kind: str, t: LayerType, ann: dict, layer: Blob, counts: dict[str, int], totals: dict[str, int]) -> str:
    for key in (ANN_FILEPATH, ANN_TITLE):
        if isinstance(ann.get(key), str) and ann[key].strip():
            return ann[key]
    if t.default_name is None:
        raise FetchError(f"layer {layer.digest[:19]}… ({layer.media_type}) names no file (no {ANN_FILEPATH} or {ANN_TITLE} annotation)",
                         status=FINAL)
    n = totals.get(layer.media_type, 1)
    if n == 1:
        return t.default_name
    counts[layer.media_type] = counts.get(layer.media_type, 0) + 1
    stem, dot, ext = t.default_name.rpartition(".")
    return f"{stem}-{counts[layer.media_type]:05d}-of-{n:05d}.{ext}"


def _one_file_tar(ann: dict) -> tuple[str, int] | None:
    """A ModelPack tar layer whose annotations say it holds exactly one regular file."""
    path, meta = ann.get(ANN_FILEPATH), ann.get(ANN_FILE_METADATA)
    if not isinstance(path, str) or not isinstance(meta, str):
        return None
    from .oci_registry import loads

    try:
        data = loads(meta)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("typeflag") not in (0, 48, "0") or not isinstance(data.get("size"), int) or data["size"] < 0:
        return None
    return path, data["size"]


# --------------------------------------------------------------------------- the source


def _selected_aux(rel: str, lane: Lane) -> bool:
    return bool(lane.include) and any(fnmatch.fnmatch(rel, p) for p in lane.include)


class OciSource(Source):
    """A lane whose files come from an artifact or image in an OCI registry."""

    def __init__(self, lane: Lane, ctx: Context) -> None:
        super().__init__(lane, ctx)
        src = lane.source
        assert src is not None and src.host and src.repo
        self.repo = Repository(Registry(src.host, ctx.timeouts), src.repo)
        self.reference = src.revision or "latest"
        self._plans: dict[str, Plan] = {}

    @property
    def what(self) -> str:
        return f"oci://{self.repo.ref(self.reference)}"

    # -- resolve

    def resolve(self, locked: LockedLane | None) -> Listing:
        if locked is not None and locked.commit and locked.files and DIGEST.match(locked.commit):
            # The lock pins the manifest and every file: no request until something must be fetched.
            digest = locked.commit
            # '?' marks a name in the lane (not in the artifact), mapped back at fetch time (`_item`).
            return Listing(digest, {rel: Entry(exp, self._locator(digest, "?" + rel), exp.sha256) for rel, exp in locked.files.items()})
        manifest = self._manifest(self.reference)
        plan = self._plan(manifest)
        return Listing(plan.digest, self._select(plan))

    def _locator(self, digest: str, path: str) -> str:
        return f"oci://{self.repo.registry.host}/{self.repo.name}@{digest}#{path}"

    def _manifest(self, reference: str) -> Manifest:
        m = self.ctx.retrying(self.lane.name, lambda: self.repo.manifest(reference))
        if m.media_type in INDEX_TYPES:
            chosen = pick_from_index(m, f"oci://{self.repo.ref(reference)}")
            m = self.ctx.retrying(self.lane.name, lambda: self.repo.manifest(chosen))
            if m.media_type in INDEX_TYPES:
                raise FetchError(f"oci://{self.repo.ref(chosen)}: an index inside an index; name the manifest by digest", status=FINAL)
        return m

    def _plan(self, m: Manifest) -> Plan:
        if m.digest in self._plans:
            return self._plans[m.digest]
        what = f"oci://{self.repo.ref(m.digest)}"
        config = _descriptor(m.data.get("config"), what)
        layers = m.data.get("layers")
        if not isinstance(layers, list):
            raise IntegrityError(f"{what}: a manifest without layers")
        if len(layers) > MAX_LAYERS:
            raise IntegrityError(f"{what}: a manifest of {len(layers)} layers (at most {MAX_LAYERS}); nothing was written", status=FINAL)
        kind = artifact_kind(m, config)
        plan = Plan(m.digest, kind)
        typed = []
        for raw in layers:
            blob = _descriptor(raw, what)
            ann = raw.get("annotations") if isinstance(raw.get("annotations"), dict) else {}
            typed.append((blob, ann, _layer_type(kind, blob, ann, what)))
        if not any(t.role in ("weight", "config", "image") for _b, _a, t in typed):
            raise FetchError(f"{what}: the artifact has no model layers ({len(typed)} layer(s): "
                             f"{', '.join(sorted({b.media_type for b, _a, _t in typed})[:4]) or 'none'})", status=FINAL)
        totals: dict[str, int] = {}
        for blob, ann, t in typed:
            if t.packing == "raw" and not any(isinstance(ann.get(k), str) for k in (ANN_FILEPATH, ANN_TITLE)):
                totals[blob.media_type] = totals.get(blob.media_type, 0) + 1
        counts: dict[str, int] = {}
        image_view: dict[str, tuple[Blob, object]] = {}
        for blob, ann, t in typed:
            if t.packing == "raw":
                path = self._name(_raw_name(kind, t, ann, blob, counts, totals), blob)
                plan.items[path] = Item(path, t.role, blob.size, blob.hex, blob)
                continue
            one = _one_file_tar(ann) if kind == "modelpack" else None
            if one is not None:
                path = self._name(one[0], blob)
                plan.items[path] = Item(path, t.role, one[1], None, blob, member=path)
                continue
            members = self._scan(blob)
            if t.role == "image":
                _apply_layer(image_view, blob, members)
            else:
                self._add_members(plan, blob, t.role, members, strict=True)
        if image_view:
            self._add_image(plan, image_view)
        self._plans[m.digest] = plan
        return plan

    def _name(self, raw: str, blob: Blob) -> str:
        from .oci_tar import normalise

        path = normalise(raw, blob.digest[:19] + "…")
        if not path:
            raise UnsafeSourceError(f"layer {blob.digest[:19]}… names the file {raw[:100]!r}; nothing was written", status=FINAL)
        return path

    def _scan(self, blob: Blob):
        from .oci_tar import BlobReader, scan

        def once():
            chunks, head = self._blob_chunks(blob, None)
            return scan(BlobReader(chunks, blob.digest, blob.size, self.ctx.deadline, f"layer {blob.digest[:19]}… of {self.what}"), head)

        return self.ctx.retrying(self.lane.name, once)

    def _add_members(self, plan: Plan, blob: Blob, role: str, members, strict: bool) -> None:
        from .oci_tar import symlink_target

        files = {m.path: m for m in members if m.kind == "file"}
        for m in members:
            where = f"layer {blob.digest[:19]}… of {self.what}"
            if m.kind in ("dir", "whiteout", "opaque"):
                continue
            if m.kind == "special":
                if strict:
                    raise UnsafeSourceError(f"{where} holds {m.path[:200]!r}, a device or FIFO; nothing was written", status=FINAL)
                continue
            target = m
            if m.kind == "hardlink":
                target = files.get(m.link or "")
            elif m.kind == "symlink":
                inside = symlink_target(m.path, m.link or "")
                target = files.get(inside) if inside is not None else None
            if target is None:
                raise UnsafeSourceError(f"{where} holds a link {m.path[:200]!r} → {str(m.link)[:200]!r} that does not lead to a file inside "
                                        "the artifact; nothing was written", status=FINAL)
            plan.items[m.path] = Item(m.path, role, target.size, target.sha256, blob, member=target.path)

    def _add_image(self, plan: Plan, view: dict) -> None:
        """An image's files after its layers and whiteouts; links and specials are judged
        only inside the selected folder (a base image's /dev or /bin links are no concern)."""
        from .oci_tar import symlink_target

        prefix = self._prefix(plan)
        inside = lambda p: not prefix or p == prefix or p.startswith(prefix + "/")  # noqa: E731
        for path, (blob, m) in view.items():
            if m.kind in ("dir", "whiteout", "opaque") or not inside(path):
                continue
            where = f"layer {blob.digest[:19]}… of {self.what}"
            target, tblob = m, blob
            if m.kind == "special":
                raise UnsafeSourceError(f"{where} holds {path[:200]!r}, a device or FIFO, in the model folder; nothing was written", status=FINAL)
            if m.kind == "hardlink":
                got = view.get(m.link or "")
                target, tblob = (got[1], got[0]) if got is not None and got[0] == blob else (None, blob)
            elif m.kind == "symlink":
                dest = symlink_target(path, m.link or "")
                got = view.get(dest) if dest is not None and inside(dest) else None
                target, tblob = (got[1], got[0]) if got is not None else (None, blob)
            if target is None or target.kind != "file":
                raise UnsafeSourceError(f"{where} holds a link {path[:200]!r} → {str(m.link)[:200]!r} that leaves the model folder or leads "
                                        "to no file; nothing was written", status=FINAL)
            plan.items[path] = Item(path, "weight", target.size, target.sha256, tblob, member=target.path)

    def _prefix(self, plan: Plan | None) -> str:
        src = self.lane.source
        assert src is not None
        if src.path_in_repo:
            return src.path_in_repo.strip("/")
        if plan is None:
            return ""
        # KServe's modelcar layout: an image, or an artifact made from one (olot's ModelPack
        # manifest reuses the image's layers), keeps the model under /models.
        if plan.kind == "image" or (plan.items and all(p.startswith(MODELCAR_ROOT + "/") for p in plan.items)):
            return MODELCAR_ROOT
        return ""

    def _select(self, plan: Plan) -> dict[str, Entry]:
        from ..check import gguf_split_names, selected

        lane, prefix = self.lane, self._prefix(plan)
        out: dict[str, Entry] = {}

        def entry(item: Item) -> Entry:
            return Entry(FileExpect(item.size, item.sha256), self._locator(plan.digest, item.path), item.sha256)

        if lane.is_dir:
            if prefix and prefix in plan.items:
                raise FetchError(f"{self.what}: //{prefix} is a file, and a {lane.kind} lane needs a folder", status=404)
            for path, item in sorted(plan.items.items()):
                if prefix:
                    if not path.startswith(prefix + "/"):
                        continue
                    rel = path[len(prefix) + 1:]
                else:
                    rel = path
                if item.role == "aux" and not _selected_aux(rel, lane):
                    continue
                if selected(rel, lane):
                    out[rel] = entry(item)
            if not out:
                where = f"under //{prefix}" if prefix else "in it"
                raise FetchError(f"{self.what}: no files {where} match the lane ({len(plan.items)} file(s) in the artifact: "
                                 f"{', '.join(sorted(plan.items)[:5])})", status=404)
            return out
        if prefix:
            names = gguf_split_names(posixpath.basename(prefix)) if lane.kind == "gguf" else [posixpath.basename(prefix)]
            folder = posixpath.dirname(prefix)
            for n in names:
                path = f"{folder}/{n}" if folder else n
                if path not in plan.items:
                    raise FetchError(f"{self.what}: //{path} is not in the artifact ({', '.join(sorted(plan.items)[:5])})", status=404)
                out[n] = entry(plan.items[path])
            return out
        weights = {p: i for p, i in plan.items.items() if i.role in ("weight", "image")}
        if lane.kind == "gguf":
            weights = {p: i for p, i in weights.items() if p.endswith(".gguf")}
        if len(weights) == 1 or (lane.kind == "gguf" and weights and _one_split_set(sorted(weights))):
            return {posixpath.basename(p): entry(i) for p, i in sorted(weights.items())}
        raise FetchError(f"{self.what}: the artifact holds {len(weights)} weight files ({', '.join(sorted(weights)[:5])}); "
                         f"a {lane.kind} lane names one with //PATH", status=404)

    # -- fetch

    def _item(self, entry: Entry) -> tuple[Plan, Item]:
        ref, _, path = entry.locator.partition("#")
        digest = ref.rsplit("@", 1)[-1]
        plan = self._plans.get(digest)
        if plan is None:
            self.repo.registry.ping()
            plan = self._plan(self._manifest(digest))
        if path.startswith("?"):
            from ..sync import place_names

            placed = place_names(self.lane, self._select(plan))
            path = placed[path[1:]].locator.partition("#")[2] if path[1:] in placed else path[1:]
        item = plan.items.get(path)
        if item is None:
            raise FetchError(f"{self.what}@{digest[:19]}…: {path} is not in the artifact", status=404)
        return plan, item

    def fetch(self, entry: Entry, partial: StagedFile, algos: tuple[str, ...], transfer: Transfer) -> Fetched:
        self.repo.registry.cancel = transfer.cancel
        _plan, item = self._item(entry)
        if item.member is None:
            return self._fetch_raw(item, partial, algos, transfer)
        return self._fetch_member(item, partial, algos, transfer)

    def _fetch_raw(self, item: Item, partial: StagedFile, algos: tuple[str, ...], transfer: Transfer) -> Fetched:
        from .http import fetch_to

        url = self.repo.blob_url(item.blob.digest)
        for attempt in range(2):
            try:
                return fetch_to(url, partial, headers=self.repo.registry.auth_headers(self.repo.pull), expected_size=item.blob.size,
                                algos=algos, **transfer.http())
            except AuthError as exc:
                # A bearer token that expired during a long run: one fresh token, then the registry's word.
                self.repo.registry.forget_token(self.repo.pull)
                if attempt == 0 and self.repo.registry.auth_headers(self.repo.pull):
                    continue
                raise self.repo.registry._denied(exc.status or 401, f"blob {item.blob.digest[:19]}… of {self.repo.name}", url) from None
            except FetchError as exc:
                if exc.status == 404:
                    raise FetchError(f"{self.what}: blob {item.blob.digest} is not in the registry (HTTP 404)", url=url, status=404) from None
                raise
        raise AssertionError("unreachable")

    def _blob_chunks(self, blob: Blob, transfer: Transfer | None) -> tuple[Iterator[bytes], bytes]:
        """The blob's bytes as a stream from its start, and its first bytes (for the magic)."""
        import socket

        from .http import _http_error, open_stream

        timeouts = transfer.timeouts if transfer else self.ctx.timeouts
        cancel = transfer.cancel if transfer else None
        self.repo.registry.ping()
        url = self.repo.blob_url(blob.digest)
        headers = {"Accept-Encoding": "identity", **self.repo.registry.auth_headers(self.repo.pull)}
        resp, conn, _final = open_stream(url, headers, timeouts, cancel=cancel)
        if resp.status in (401, 403):
            conn.close()
            self.repo.registry.forget_token(self.repo.pull)
            raise self.repo.registry._denied(resp.status, f"blob {blob.digest[:19]}… of {self.repo.name}", url)
        if resp.status != 200:
            err = _http_error(resp, url)
            conn.close()
            raise FetchError(f"{self.what}: blob {blob.digest}: HTTP {resp.status}", url=url, status=resp.status) if resp.status == 404 else err

        def chunks() -> Iterator[bytes]:
            try:
                while True:
                    try:
                        data = resp.read1(2**20)
                    except (socket.timeout, TimeoutError):
                        raise StalledError(f"no data for {timeouts.stall:g}s from {self.repo.registry.host}", url=url) from None
                    except OSError as exc:
                        if cancel is not None and cancel.is_set():
                            raise FetchError("cancelled", url=url) from None
                        raise FetchError(f"connection to {self.repo.registry.host} lost: {exc.strerror or exc}", url=url) from None
                    if not data:
                        return
                    yield data
            finally:
                if cancel is not None:
                    cancel.forget(conn.sock)
                conn.close()

        it = chunks()
        first = next(it, b"")

        def whole() -> Iterator[bytes]:
            if first:
                yield first
            yield from it

        return whole(), first[:8]

    def _fetch_member(self, item: Item, partial: StagedFile, algos: tuple[str, ...], transfer: Transfer) -> Fetched:
        from ..integrity import Hasher
        from .http import Fetched
        from .oci_tar import BlobReader, extract

        assert item.member is not None
        partial.size()  # clears a symlink or folder standing at the staging name
        hasher = Hasher(algos, item.size) if ("sha1" not in algos or item.size is not None) else Hasher(("sha256",))
        what = f"layer {item.blob.digest[:19]}… of {self.what}"
        chunks, head = self._blob_chunks(item.blob, transfer)
        reader = BlobReader(chunks, item.blob.digest, item.blob.size, transfer.deadline, what)
        written = [0]
        with partial.writer(append=False) as f:

            def write(data: bytes) -> None:
                if transfer.may_write is not None and not transfer.may_write():
                    raise FetchError(f"stopped at byte {written[0]}: another writer holds the volume now")
                if item.size is not None and written[0] + len(data) > item.size:
                    raise IntegrityError(f"{what}: {item.member} is longer than the {item.size} bytes listed")
                view = memoryview(data)
                while view:
                    view = view[f.write(view):]
                hasher.update(data)
                written[0] += len(data)
                if transfer.progress:
                    transfer.progress(len(data))

            got = extract(reader, head, item.member, write, whole=item.sha256 is None)
            import os

            os.fsync(f.fileno())
        if got is None:
            raise IntegrityError(f"{what} holds no file {item.member}", status=404)
        return Fetched(written[0], hasher.hexdigests(), 0, self.repo.blob_url(item.blob.digest))

    def read_range(self, entry: Entry, start: int, length: int) -> bytes | None:
        """A raw layer's bytes through a ranged blob GET; a member of a tar layer has no known
        offset (layers are usually compressed), so fit waits for its download."""
        from .http import read_range

        _plan, item = self._item(entry)
        if item.member is not None:
            return None
        url = self.repo.blob_url(item.blob.digest)
        self.repo.registry.ping()
        return self.ctx.retrying(self.lane.name, lambda: read_range(url, self.repo.registry.auth_headers(self.repo.pull), start, length,
                                                                    self.ctx.timeouts))

    def size_hint(self, entry: Entry) -> int | None:
        try:
            return self._item(entry)[1].size
        except FetchError:
            return None

    def lock_files(self, listing: Listing) -> dict[str, FileExpect]:
        """Members listed from annotations have no sha256 yet: the lock pins what they hash
        to, read from their layer (whose digest is checked)."""
        out = {}
        for rel, e in listing.files.items():
            exp = e.expect
            if not exp.sha256:
                plan, item = self._item(e)
                members = {m.path: m for m in self._scan(item.blob)}
                m = members.get(item.member or "")
                if m is None or m.kind != "file":
                    raise FetchError(f"{self.what}: layer {item.blob.digest[:19]}… holds no file {item.member}", status=404)
                item.sha256, item.size = m.sha256, m.size
                exp = FileExpect(m.size, m.sha256)
            out[rel] = exp
        return out


def _one_split_set(paths: list[str]) -> bool:
    from ..check import gguf_split_names

    names = [posixpath.basename(p) for p in paths]
    return len({posixpath.dirname(p) for p in paths}) == 1 and gguf_split_names(names[0]) == names


def _apply_layer(view: dict, blob: Blob, members) -> None:
    """One image layer over the ones below it: whiteouts remove, later entries replace."""
    from .oci_tar import WHITEOUT

    below = dict(view)
    for m in members:
        folder, _, base = m.path.rpartition("/")
        if m.kind == "opaque":
            for p in [p for p in below if folder == "" or p.startswith(folder + "/")]:
                view.pop(p, None)
                below.pop(p, None)
            continue
        if m.kind == "whiteout":
            gone = (folder + "/" if folder else "") + base[len(WHITEOUT):]
            for p in [p for p in below if p == gone or p.startswith(gone + "/")]:
                view.pop(p, None)
                below.pop(p, None)
            continue
        if m.kind != "dir":
            for p in [p for p in below if p.startswith(m.path + "/")]:
                view.pop(p, None)
                below.pop(p, None)
        view[m.path] = (blob, m)


# --------------------------------------------------------------------------- push

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack", ".dduf", ".npz", ".tflite", ".pkl")
CONFIG_TAR_MAX_FILE = 8 * 2**20  # a config file up to this size goes into the config tar layer
CONFIG_TAR_MAX = 64 * 2**20
_TAG_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def config_tar(files) -> bytes:
    """A deterministic tar of small files (sorted, mtime 0, root-owned, 0644), so the
    same files always make the same layer digest."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for f in sorted(files, key=lambda f: f.rel):
            data = f.path.read_bytes()
            if len(data) != f.size:
                raise IntegrityError(f"{f.path} changed since it was verified ({len(data)} bytes, verified {f.size})")
            import hashlib

            if hashlib.sha256(data).hexdigest() != f.sha256:
                raise IntegrityError(f"{f.path} changed since it was verified (its sha256 differs)")
            info = tarfile.TarInfo(f.rel)
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class OciDestination(Destination):
    """`preflight push … --to oci://REGISTRY/REPO[:TAG]`: each lane as a ModelPack artifact."""

    def __init__(self, url: str, ctx: Context) -> None:
        super().__init__(url, ctx)
        src = parse_source(url)
        assert src.host and src.repo
        if src.path_in_repo:
            raise UsageError(f"--to {url}: a push goes to REGISTRY/REPO[:TAG], without //PATH")
        if src.revision and src.revision.startswith("sha256:"):
            raise UsageError(f"--to {url}: a push goes to a tag; the digest is what it reports")
        self.tag = None if src.revision == "latest" and not url.rstrip("/").endswith(":latest") else src.revision
        self.repo = Repository(Registry(src.host, ctx.timeouts), src.repo)
        self._tagged: dict[str, str] = {}

    def push(self, lane: PushLane, transfer: Transfer) -> Pushed:
        from .. import __version__

        registry, repo = self.repo.registry, self.repo
        registry.cancel = transfer.cancel
        tag = self.tag or "".join(c if c in _TAG_CHARS else "-" for c in lane.lane.name)[:128]
        if tag in self._tagged:
            raise UsageError(f"--to {self.url}: lanes {self._tagged[tag]} and {lane.lane.name} would both be tagged {tag}",
                             hint="push each lane to its own tag, or leave the tag out: each lane is then tagged with its name")
        self._tagged[tag] = lane.lane.name
        self.ctx.retrying(f"push {lane.lane.name}", registry.ping)
        pushed = Pushed(lane.lane.name, "")
        weights = [f for f in lane.files if f.rel.lower().endswith(WEIGHT_SUFFIXES) or not lane.lane.is_dir]
        small = [f for f in lane.files if f not in weights and f.size <= CONFIG_TAR_MAX_FILE]
        if sum(f.size for f in small) > CONFIG_TAR_MAX:
            small = []
        raws = [f for f in lane.files if f not in small]
        layers = []
        mount_from = None
        src = lane.lane.source
        if src is not None and src.scheme == "oci" and src.host == registry.host and src.repo != repo.name:
            mount_from = src.repo
        for f in raws:
            digest = f"sha256:{f.sha256}"
            self._blob(digest, f.size, pushed, lambda f=f, digest=digest: repo.upload(f.path, digest, f.size, transfer.progress,
                                                                                       deadline=transfer.deadline), mount_from)
            role = "weight" if f in weights else ("doc" if f.rel.lower().startswith(("readme", "license")) else "weight.config")
            meta = json.dumps({"name": f.rel, "mode": 0o644, "uid": 0, "gid": 0, "size": f.size, "mtime": "1970-01-01T00:00:00Z",
                               "typeflag": 48}, separators=(",", ":"))
            layers.append({"mediaType": f"application/vnd.cncf.model.{role}.v1.raw", "digest": digest, "size": f.size,
                           "annotations": {ANN_FILEPATH: f.rel, ANN_FILE_METADATA: meta, ANN_TITLE: f.rel}})
        if small:
            import hashlib

            data = config_tar(small)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            self._blob(digest, len(data), pushed, lambda: self._upload_bytes(data, digest), mount_from, files=len(small))
            layers.append({"mediaType": "application/vnd.cncf.model.weight.config.v1.tar", "digest": digest, "size": len(data),
                           "annotations": {ANN_TITLE: "config.tar"}})
        fmt = next((ext for ext in ("safetensors", "gguf", "onnx") if any(f.rel.endswith("." + ext) for f in lane.files)), "")
        source = src.display() if src is not None else None
        if source:
            from ..redact import redact

            source = redact(source)
        descriptor = {"name": lane.lane.name, **({"sourceURL": source} if source else {}), **({"revision": lane.revision} if lane.revision else {})}
        config = json.dumps({"descriptor": descriptor, "config": {"format": fmt} if fmt else {},
                             "modelfs": {"type": "layers", "diffIds": [l["digest"] for l in layers]}},
                            sort_keys=True, separators=(",", ":")).encode()
        import hashlib

        cdigest = "sha256:" + hashlib.sha256(config).hexdigest()
        self._blob(cdigest, len(config), None, lambda: self._upload_bytes(config, cdigest), None)
        annotations = {"org.opencontainers.image.title": lane.lane.name, "lane-preflight.lane": lane.lane.name,
                       "lane-preflight.kind": lane.lane.kind, "lane-preflight.path": lane.lane.path,
                       "org.opencontainers.image.created": "1970-01-01T00:00:00Z", "lane-preflight.version": __version__}
        if source:
            annotations["org.opencontainers.image.source"] = source
        if lane.revision:
            annotations["org.opencontainers.image.revision"] = lane.revision
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": MODELPACK_ARTIFACT,
                               "config": {"mediaType": MODELPACK_CONFIG, "digest": cdigest, "size": len(config)},
                               "layers": layers, "annotations": annotations}, sort_keys=True, separators=(",", ":")).encode()
        digest = self.ctx.retrying(f"push {lane.lane.name}", lambda: repo.put_manifest(tag, manifest, OCI_MANIFEST))
        pushed.ref = f"oci://{registry.host}/{repo.name}@{digest}"
        self.ctx.log(f"{lane.lane.name}: oci://{registry.host}/{repo.name}:{tag} is {digest}")
        return pushed

    def _upload_bytes(self, data: bytes, digest: str) -> None:
        import tempfile

        with tempfile.NamedTemporaryFile(prefix="preflight-oci-") as tmp:
            tmp.write(data)
            tmp.flush()
            self.repo.upload(Path(tmp.name), digest, len(data), chunk=0)

    def _blob(self, digest: str, size: int, pushed: Pushed | None, upload, mount_from: str | None, files: int = 1) -> None:
        repo = self.repo
        have = self.ctx.retrying(f"HEAD {digest[:19]}", lambda: repo.has_blob(digest))
        if have is None and mount_from:
            if self.ctx.retrying(f"mount {digest[:19]}", lambda: repo.mount(digest, mount_from)):
                have = size
        if have is not None:
            if pushed is not None:
                pushed.skipped_files += files
                pushed.skipped_bytes += size
            return
        self.ctx.retrying(f"upload {digest[:19]}", upload)
        if pushed is not None:
            pushed.uploaded_files += files
            pushed.uploaded_bytes += size
