"""Manifest, Lane, Source: YAML → typed objects with located errors.

Errors name file, line and field. Independent mistakes (each field of each lane, each
top-level section, each cross-lane check) are reported together in one ManifestErrors
that reads as the first. Limits, so a hostile manifest is refused in well under a
second and 100 MB: yamlloc's bounds (4 MiB of text, 250 000 values, 64 KiB per string,
16 MiB of text after aliases and variables, 64 levels), at most MAX_LANES lanes, and
paths the kernel accepts (MAX_NAME_BYTES per component, MAX_PATH_BYTES in all).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

from .errors import ManifestError, ManifestErrors
from .record import record
from .yamlloc import MAX_BYTES, Located, dotted, load_yaml

KINDS = ("hf-dir", "gguf", "adapter", "hf-cache", "file")
DIR_KINDS = ("hf-dir", "adapter", "hf-cache")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_LANE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
STATE_DIR = ".preflight"  # <models_dir>/.preflight: receipts, staging, the lease; no lane may live there
MAX_LANES = 10_000
MAX_NAME_BYTES = 255  # one path component (NAME_MAX)
MAX_PATH_BYTES = 4096  # a whole path (PATH_MAX)


@record(frozen=True)
class Source:
    """Where a lane's bytes come from.

    scheme: "hf" (repo, path_in_repo, revision), "https"/"http" (url), "local" (path),
    "oci" (host = registry, repo, revision = tag or sha256:digest, path_in_repo = //PATH),
    "s3" (repo = bucket, path_in_repo = key or prefix), "gs" (repo = bucket, path_in_repo =
    object name or prefix, revision = the object generation a `#N` pins).
    """

    scheme: str
    raw: str
    repo: str | None = None
    path_in_repo: str | None = None
    revision: str | None = None
    url: str | None = None
    local: str | None = None
    repo_type: str = "model"
    host: str | None = None

    def display(self) -> str:
        return self.raw


def source_file_name(src: Source) -> str | None:
    """The file name a source's reference ends with (a URL's path without its query, a
    key, a path), or None when it names a repository or a bare bucket."""
    if src.scheme in ("https", "http") and src.url:
        from urllib.parse import urlsplit

        name = posixpath.basename(urlsplit(src.url).path)
    elif src.scheme == "local" and src.local:
        name = posixpath.basename(src.local.rstrip("/"))
    elif src.scheme in ("s3", "gs", "hf"):
        name = posixpath.basename(src.path_in_repo or "")
    else:
        return None
    return name or None


def archive_name(src: Source) -> str | None:
    """The archive's file name when the source names a model archive (.tar, .tar.gz, .tgz,
    .tar.zst, .zip), else None. oci:// artifacts carry their own layers and are never this."""
    if src.scheme == "oci":
        return None
    name = source_file_name(src)
    return name if name is not None and archive_kind(name) else None


# What a file's name ends with → the archive format (its compression is read from its bytes).
ARCHIVE_SUFFIXES = (
    (".tar.gz", "tar"), (".tgz", "tar"), (".tar.zst", "tar"), (".tar.zstd", "tar"), (".tzst", "tar"),
    (".tar", "tar"), (".zip", "zip"),
)


def archive_kind(name: str) -> str | None:
    """"tar" or "zip" when a file name is a model archive's, else None."""
    low = name.lower()
    for suffix, kind in ARCHIVE_SUFFIXES:
        if low.endswith(suffix) and len(low) > len(suffix):
            return kind
    return None


_SUPPORTED = "hf://, https://, http://, oci://, s3://, gs://, file:// or a path"
_SCHEMES = ("hf", "https", "http", "file", "oci", "s3", "gs")
_FUTURE: tuple[str, ...] = ()  # planned sources: say so rather than read them as a folder name
_SCHEME_LIKE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)(://|:|//)(.*)", re.S)
_WINDOWS = re.compile(r"[A-Za-z]:[\\/]")
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HUB_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co")


def parse_source(raw: str, revision: str | None = None) -> Source:
    """Parse `hf://org/repo[/path]@rev`, `https://…`, `file://…` or a path.

    A string that looks like a misspelt scheme (`hf:/org/repo`, `HF://…`, `htps://…`,
    `huggingface://…`, `C:\\…`) is refused with a did-you-mean instead of being read as a
    folder name that then fails much later as a missing mirror."""
    raw = raw.strip()
    if not raw:
        raise ValueError("the source is empty")
    if _CONTROL.search(raw):
        raise ValueError("the source contains a control character")
    if raw.startswith("hf://"):
        return _hf_source(raw, revision)
    if raw.startswith("oci://"):
        return _oci_source(raw, revision)
    if raw.startswith("s3://"):
        return _s3_source(raw)
    if raw.startswith("gs://"):
        return _gs_source(raw)
    if raw.startswith(("https://", "http://")):
        scheme, rest = raw.split("://", 1)
        host = rest.split("/", 1)[0].split("@")[-1]
        if not host or host.startswith(":"):
            raise ValueError(f"no host in the URL (expected {scheme}://HOST/PATH)")
        if any(c.isspace() for c in raw):
            raise ValueError("a URL cannot contain spaces (write them as %20)")
        path = rest.split("/", 1)[1] if "/" in rest else ""
        parts = [p for p in path.split("?")[0].split("/") if p]
        if host.lower() in _HUB_HOSTS and len(parts) >= 2 and "resolve" not in parts:
            raise ValueError(f"a Hub page, not a file download: did you mean 'hf://{parts[0]}/{parts[1]}'?")
        return Source(scheme, raw, url=raw)
    if raw.startswith("file://"):
        local = raw[len("file://") :]
        if not local:
            raise ValueError("no path after file:// (write file:///absolute/path or a plain path)")
        return Source("local", raw, local=local)
    problem = _scheme_typo(raw)
    if problem:
        raise ValueError(problem)
    return Source("local", raw, local=raw)


def _scheme_typo(raw: str) -> str | None:
    """What is wrong with a source that starts like a URL but is not a supported one."""
    if _WINDOWS.match(raw):
        return "a Windows path: the container sees POSIX paths (e.g. /mnt/mirror/x or file:///mnt/mirror/x)"
    m = _SCHEME_LIKE.match(raw)
    if not m:
        return None
    word, sep, rest = m.groups()
    low = word.lower()
    if low in _FUTURE:
        return f"{low}:// sources are not supported yet (supported: {_SUPPORTED})"
    target = low if low in _SCHEMES else "hf" if low in ("huggingface", "hugging-face", "hugging_face") else None
    if target is None and sep == "://":
        close = _close_match(low, {*_SCHEMES, "huggingface"}, cutoff=0.6)
        target = "hf" if close == "huggingface" else close
        if target is None:
            return f"unsupported source scheme {word}:// (supported: {_SUPPORTED})"
    if target is None:
        return None  # `mirror:v2/x` is a folder name
    if target == "file":
        rest = "/" + rest.lstrip("/") if rest.startswith("/") else rest
        fix = f"file://{rest}" if rest.startswith("/") else f"file:///ABSOLUTE/PATH' or the plain path '{rest}"
    else:
        fix = f"{target}://{rest.lstrip('/')}"
    return f"not a supported scheme: did you mean '{fix}'?"


def _hf_source(raw: str, revision: str | None) -> Source:
    rest = raw[len("hf://") :]
    rev = None
    if "@" in rest:
        rest, rev = rest.rsplit("@", 1)
        if not rev:
            raise ValueError("empty revision after '@'")
    repo_type = "model"
    parts = [p for p in rest.split("/") if p]
    if parts and parts[0] in ("datasets", "models") and len(parts) >= 3:
        repo_type = "dataset" if parts[0] == "datasets" else "model"
        parts = parts[1:]
    if len(parts) < 2:
        raise ValueError("expected hf://ORG/REPO[/path/in/repo][@revision]")
    if any(p in (".", "..") for p in parts):
        raise ValueError("'.' and '..' are not allowed in a repo path")
    for part in parts[:2]:
        if not _REPO_PART.match(part):
            raise ValueError(f"{_show(part)} is not a Hub organisation or repo name (letters, digits, '-', '_', '.')")
    repo = "/".join(parts[:2])
    path_in_repo = "/".join(parts[2:]) or None
    if revision and rev and revision != rev:
        raise ValueError(f"revision given twice: @{rev} in source and revision: {revision}")
    return Source("hf", raw, repo=repo, path_in_repo=path_in_repo, revision=rev or revision or "main", repo_type=repo_type)


# The object-store and registry sources' patterns, compiled (and cached by `re`) when such a source is read.
_OCI_HOST = (r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?))*(?::[0-9]{1,5})?$"
             r"|^\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?$")
_OCI_REPO = r"^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)*$"  # distribution spec
_OCI_TAG = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"
_OCI_DIGEST = r"^sha256:[0-9a-f]{64}$"
_S3_BUCKET = r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$"


def _oci_source(raw: str, revision: str | None) -> Source:
    """oci://REGISTRY/REPO[:TAG|@sha256:DIGEST][//PATH]; a lane's `revision:` is the tag."""
    rest = raw[len("oci://"):]
    ref, sep, path = rest.partition("//")
    host, _, repo_ref = ref.partition("/")
    if not host or not re.match(_OCI_HOST, host):
        raise ValueError(f"{_show(host)} is not a registry host (expected oci://REGISTRY[:PORT]/REPO[:TAG|@sha256:DIGEST][//PATH])")
    digest = tag = None
    if "@" in repo_ref:
        repo, digest = repo_ref.split("@", 1)
        if not re.match(_OCI_DIGEST, digest):
            raise ValueError(f"{_show(digest)} is not a manifest digest (sha256: and 64 lowercase hex digits)")
    else:
        repo = repo_ref
        last = repo.rsplit("/", 1)[-1]
        if ":" in last:
            repo, tag = repo.rsplit(":", 1)
            if not re.match(_OCI_TAG, tag):
                raise ValueError(f"{_show(tag)} is not a tag (letters, digits, '_', '.', '-'; at most 128)")
    if not repo or not re.match(_OCI_REPO, repo):
        raise ValueError(f"{_show(repo)} is not a repository name (lowercase letters, digits and . _ - between them, / between parts)")
    if revision and (tag or digest) and revision not in (tag, digest):
        raise ValueError(f"revision given twice: {tag or digest} in source and revision: {revision}")
    if revision and not (tag or digest):
        if re.match(_OCI_DIGEST, revision):
            digest = revision
        elif re.match(_OCI_TAG, revision):
            tag = revision
        else:
            raise ValueError(f"revision {_show(revision)} is neither a tag nor a sha256: digest")
    path = path.strip("/")
    if sep and path:
        parts = path.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"the path after // must stay inside the artifact: {_show(path)}")
    return Source("oci", raw, repo=repo, path_in_repo=path or None, revision=digest or tag or "latest", host=host)


def _s3_source(raw: str) -> Source:
    """s3://BUCKET/PREFIX (a folder lane) or s3://BUCKET/KEY (a file lane)."""
    rest = raw[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket or not re.match(_S3_BUCKET, bucket):
        raise ValueError(f"{_show(bucket)} is not a bucket name (expected s3://BUCKET/PREFIX or s3://BUCKET/KEY)")
    if any(p in (".", "..") for p in key.split("/")):
        raise ValueError("'.' and '..' are not allowed in an S3 key or prefix")
    return Source("s3", raw, repo=bucket, path_in_repo=key.strip("/") or None)


# Cloud Storage bucket names: 3-63 characters (up to 222 with dots), lowercase letters,
# digits, '-', '_' and '.', starting and ending with a letter or digit.
_GS_BUCKET = r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$"
_GS_GENERATION = r"^[0-9]{1,19}$"
MAX_GS_NAME = 1024  # bytes of UTF-8, Cloud Storage's limit for an object name


def _gs_source(raw: str) -> Source:
    """gs://BUCKET/PREFIX (a folder lane) or gs://BUCKET/OBJECT[#GENERATION] (a file lane).

    `#GENERATION` pins one object generation, as gsutil and gcloud write version-specific
    URLs; `@` is an ordinary character of object names."""
    rest = raw[len("gs://"):]
    rest, sep, generation = rest.partition("#")
    if sep and not re.match(_GS_GENERATION, generation):
        raise ValueError(f"{_show(generation)} is not an object generation (digits after '#', e.g. gs://BUCKET/OBJECT#1712345678901234)")
    bucket, _, name = rest.partition("/")
    if not bucket or not re.match(_GS_BUCKET, bucket):
        raise ValueError(f"{_show(bucket)} is not a Cloud Storage bucket name (lowercase letters, digits, '-', '_', '.'; "
                         "expected gs://BUCKET/PREFIX or gs://BUCKET/OBJECT)")
    if any(p in (".", "..") for p in name.split("/")):
        raise ValueError("'.' and '..' are not allowed in an object name or prefix")
    if len(name.encode()) > MAX_GS_NAME:
        raise ValueError(f"an object name is at most {MAX_GS_NAME} bytes")
    name = name.strip("/")
    if sep and not name:
        raise ValueError("a generation pins an object: gs://BUCKET/OBJECT#GENERATION")
    return Source("gs", raw, repo=bucket, path_in_repo=name or None, revision=generation or None)


@record(frozen=True)
class FileExpect:
    """What the manifest or lock says a file must be."""

    size: int | None = None
    sha256: str | None = None
    sha1: str | None = None  # git blob sha1 (small files on the Hub)
    md5: str | None = None  # DVC-tracked files
    crc32c: str | None = None  # 8 hex digits: a Cloud Storage object's CRC32C (a listing's, never a pin of the manifest or lock)
    generation: str | None = field(default=None, compare=False)  # the object generation the lock pins (gs://), not a property of the bytes
    origin: str | None = field(default=None, compare=False)  # where a pin was written ("lanes.yaml:12"), for messages

    def merge(self, other: FileExpect | None) -> FileExpect:
        if other is None:
            return self
        return FileExpect(self.size if self.size is not None else other.size, self.sha256 or other.sha256, self.sha1 or other.sha1,
                          self.md5 or other.md5, crc32c=self.crc32c or other.crc32c, generation=self.generation or other.generation,
                          origin=self.origin or other.origin)


SIGNATURE_METHODS = ("key", "certificate", "sigstore")
_SIGNATURE_KEYS = {"file", "method", "key", "certificate_chain", "identity", "issuer", "trusted_root", "required"}
_SIGNATURE_ONLY = {"key": ("key",), "certificate": ("certificate_chain",), "sigstore": ("identity", "issuer", "trusted_root")}


@record(frozen=True)
class SignaturePolicy:
    """What must have signed a lane (an OpenSSF model signature: a Sigstore bundle whose
    DSSE envelope holds an in-toto statement listing every file with its digest).

    `file`: the signature, relative to the lane's folder (the folder holding a single-file
    lane's file) or absolute (a mounted file); None is the usual name (see `signature_file`).
    Key, certificate and trusted-root paths are absolute or relative to the manifest."""

    method: str  # one of SIGNATURE_METHODS
    file: str | None = None
    key: str | None = None  # method key: the publisher's PEM public key
    certificate_chain: tuple[str, ...] = ()  # method certificate: PEM trust anchors (and intermediates)
    identity: str | None = None  # method sigstore: the signer's identity (email, workflow URI) ...
    issuer: str | None = None  # ... as vouched for by this OIDC issuer ...
    trusted_root: str | None = None  # ... under this Sigstore trusted root (offline: no TUF fetch)
    required: bool = True  # false: a lane without its signature file is ready (with a warning)


def signature_file(lane: Lane) -> str:
    """The signature's path as the lane's policy gives it: relative to the lane's root, or absolute."""
    assert lane.signature is not None
    if lane.signature.file:
        return lane.signature.file
    return "model.sig" if lane.is_dir else posixpath.basename(lane.path) + ".sig"


SERVE_ENGINES = ("vllm", "llama.cpp")
_SERVE_KEYS = {"engine", "version", "args"}


@record(frozen=True)
class ServeSpec:
    """`serve: {engine, version, args}`: the engine and the flags its command already uses."""

    engine: str
    args: tuple[str, ...] = ()
    version: str | None = None

    def parsed(self):
        from .serving.args import parse_args

        return parse_args(self.engine, list(self.args))


@record(frozen=True)
class Lane:
    """One lane as the manifest gives it, defaults applied."""

    name: str
    kind: str
    path: str  # relative to models_dir, normalised, never escaping it
    source: Source | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    files: Mapping[str, FileExpect] = field(default_factory=dict)
    required: bool = True
    enabled: bool = True
    profiles: tuple[str, ...] = ()
    allow_pickle: bool | str = False  # True: state-dict pickles; "torchscript": TorchScript archives too
    serves_text: bool = True
    vocab_only: bool = False  # gguf: the file is a vocabulary only (llama.cpp loads it with vocab_only; no weights)
    base: str | None = None  # adapter: name of the base lane
    checksums: str | None = None  # a `sha256sum -c` file (relative to the manifest or absolute)
    dvc: str | None = None  # a `.dvc` file pinning the content
    env: str | None = None  # variable `preflight env` sets to the lane's path
    layout: str = "revisions"  # folder lanes: "revisions" (a symlink to one complete revision) or "in-place"
    signature: SignaturePolicy | None = None  # verify an OpenSSF model signature before the lane is ready
    serve: ServeSpec | None = None  # how the lane is served: fit is checked against this node
    variants: tuple[Lane, ...] = ()  # alternatives in order, each a whole lane of the same name (the first that fits is served)
    variant: str | None = None  # this lane's variant name; None for the lane as written (the primary)
    archive: FileExpect | None = None  # a folder lane filled from an archive: the archive's own size and sha256
    line: int | None = None

    @property
    def revision(self) -> str | None:
        return self.source.revision if self.source else None

    @property
    def label(self) -> str:
        return self.name if self.variant is None else f"{self.name} (variant {self.variant})"

    @property
    def is_dir(self) -> bool:
        return self.kind in DIR_KINDS


@record(frozen=True)
class Manifest:
    """A parsed manifest: its lanes, profiles and settings, and the file it came from."""

    file: str
    version: int
    models_dir: str
    lanes: tuple[Lane, ...]
    profiles: Mapping[str, tuple[str, ...]]
    endpoints: tuple[Mapping[str, Any], ...] = ()
    lock: str | None = None
    accelerator: Any = None  # declared: "2x80GiB,cc=9.0" or a mapping (serving/accel.py)

    @property
    def lock_path(self) -> Path:
        """Where the manifest's lock lives: its `lock:`, else <manifest>.lock.json, beside the manifest."""
        base = Path(self.file).parent
        return base / (self.lock or Path(self.file).stem + ".lock.json")

    def lane(self, name: str) -> Lane:
        for lane in self.lanes:
            if lane.name == name:
                return lane
        raise KeyError(name)

    def select(self, profile: str | None = None, names: tuple[str, ...] = ()) -> list[Lane]:
        """Lanes to act on: a profile's lanes, or named lanes, or every enabled lane."""
        known = {lane.name for lane in self.lanes}
        for n in names:
            if n not in known:
                raise ManifestError(f"no lane named {n!r} (lanes: {', '.join(sorted(known))})", file=self.file)
        wanted: set[str] | None = None
        if profile:
            if profile not in self.profiles:
                members = [lane.name for lane in self.lanes if profile in lane.profiles]
                if not members:
                    listed = ", ".join(sorted(set(self.profiles) | {p for lane in self.lanes for p in lane.profiles})) or "none"
                    raise ManifestError(f"no profile named {profile!r} (profiles: {listed})", file=self.file)
                wanted = set(members)
            else:
                wanted = set(self.profiles[profile]) | {lane.name for lane in self.lanes if profile in lane.profiles}
        if names:
            wanted = set(names) if wanted is None else wanted & set(names)
        out = []
        for lane in self.lanes:
            if wanted is not None:
                if lane.name in wanted:
                    out.append(lane)
            elif lane.enabled:
                out.append(lane)
        return out


_TOP_KEYS = {"version", "models_dir", "defaults", "profiles", "lanes", "endpoints", "lock", "accelerator"}
_LANE_KEYS = {
    "name", "kind", "path", "source", "revision", "include", "exclude", "files", "sha256", "sha1", "size",
    "required", "enabled", "profiles", "allow_pickle", "serves_text", "vocab_only", "base", "checksums", "dvc", "endpoint", "env",
    "layout", "signature", "serve", "variants",
}
# What a variant may set; everything else (kind, env, required, profiles, ...) is the lane's.
_VARIANT_KEYS = {"name", "path", "source", "revision", "include", "exclude", "files", "sha256", "sha1", "size", "serve"}
PRIMARY = "primary"  # the lane as written, among its variants
_DEFAULT_KEYS = {"revision", "include", "exclude", "required", "allow_pickle", "serves_text", "layout", "signature", "serve"}
LAYOUTS = ("revisions", "in-place")
_FLAGS = ("required", "enabled", "allow_pickle", "serves_text")


def _type_name(t: type | tuple) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "a mapping"}
    if isinstance(t, tuple):
        return " or ".join(names.get(x, x.__name__) for x in t)
    return names.get(t, t.__name__)


def _show(value: Any, limit: int = 80) -> str:
    """repr() for a message, cut short: a value can be 64 KiB long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "…" + text[-4:]


class _Collect:
    """`with r.section():` — a ManifestError inside is recorded and parsing goes on."""

    def __init__(self, errors: list[ManifestError]) -> None:
        self.errors = errors

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, ManifestErrors):
            self.errors.extend(exc.errors)
            return True
        if isinstance(exc, ManifestError):
            self.errors.append(exc)
            return True
        return False


class _Reader:
    def __init__(self, doc: Located) -> None:
        self.doc = doc
        self.errors: list[ManifestError] = []

    def section(self) -> _Collect:
        return _Collect(self.errors)

    def get(self, obj: Mapping, key: tuple, name: str, typ: type | tuple, default: Any = None, required: bool = False) -> Any:
        if name not in obj or obj[name] is None:
            if required:
                raise self.doc.error(key, f"missing required field {name!r}")
            return default
        value = obj[name]
        if isinstance(value, str) and typ in (bool, int):  # JSON: "${FLAG:-true}" is quoted, and still a flag
            value = self.doc.retyped.get(key + (name,), value)
        ok = isinstance(value, typ) and not (typ in (int, (int,)) and isinstance(value, bool))
        if not ok:
            raise self.doc.error(key + (name,), f"expected {_type_name(typ)}, found {type(value).__name__} {_show(value)}")
        return value

    def strings(self, obj: Mapping, key: tuple, name: str, default: tuple = ()) -> tuple[str, ...]:
        value = obj.get(name)
        if value is None:
            return default
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.doc.error(key + (name,), f"expected a list of strings, found {_show(value)}")
        return tuple(value)

    def unknown(self, obj: Mapping, key: tuple, allowed: set[str], what: str) -> None:
        """Every unknown key is an error of its own (with a did-you-mean)."""
        for k in obj:
            if k not in allowed:
                close = _close_match(k, allowed)
                self.errors.append(self.doc.error(
                    key + (k,),
                    f"unknown {what} key {_show(k)}" + (f" (did you mean {close!r}?)" if close else ""),
                    hint=None if close else f"allowed: {', '.join(sorted(allowed))}",
                ))


def _close_match(word: str, options: set[str], cutoff: float = 0.7) -> str | None:
    import difflib

    if len(word) > 64:
        return None
    found = difflib.get_close_matches(word, sorted(options), n=1, cutoff=cutoff)
    return found[0] if found else None


def normalise_rel(path: str) -> str | None:
    """A relative POSIX path inside its root, or None when it escapes or is absolute."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return None
    norm = posixpath.normpath(path)
    if norm == ".." or norm.startswith("../") or norm.startswith("/"):
        return None
    return norm


def rel_path_problem(path: str) -> str | None:
    """Why `path` cannot name something inside its root, or None. Stricter than
    normalise_rel: no `..` at all, no control character, nothing the kernel would refuse."""
    if not path:
        return "it is empty"
    if _CONTROL.search(path):
        return "it contains a control character"
    if "\\" in path:
        return "it contains '\\' (write POSIX paths, with '/')"
    if path.startswith("/"):
        return "it is absolute"
    if ".." in path.split("/"):  # `a//b`, `a/./b` and `a/` are harmless: they are normalised
        return "it goes up with '..'"
    return _length_problem(path)


def _length_problem(path: str) -> str | None:
    size = len(path.encode("utf-8", "surrogatepass"))
    if size > MAX_PATH_BYTES:
        return f"it is {size} bytes long (at most {MAX_PATH_BYTES})"
    for part in path.split("/"):
        n = len(part.encode("utf-8", "surrogatepass"))
        if n > MAX_NAME_BYTES:
            return f"a component is {n} bytes long (at most {MAX_NAME_BYTES}): {_show(part, 40)}"
    return None


def _fs_path(r: _Reader, obj: Mapping, key: tuple, name: str) -> str | None:
    """An optional file path (absolute, or relative to the manifest): a string the kernel can open."""
    value = r.get(obj, key, name, str)
    if value is not None:
        problem = "it is empty" if not value else "it contains a control character" if _CONTROL.search(value) else _length_problem(value)
        if problem:
            raise r.doc.error(key + (name,), f"{name} {_show(value)} is not a usable path: {problem}")
    return value


def _expect(r: _Reader, obj: Any, key: tuple) -> FileExpect:
    if not isinstance(obj, dict):
        raise r.doc.error(key, f"expected a mapping with sha256/sha1/size, found {_show(obj)}")
    r.unknown(obj, key, {"sha256", "sha1", "size"}, "file")
    size = r.get(obj, key, "size", int)
    if size is not None and size < 0:
        raise r.doc.error(key + ("size",), f"size must be >= 0, found {size}")
    sha256 = r.get(obj, key, "sha256", str)
    if sha256 is not None:
        sha256 = sha256.lower().removeprefix("sha256:")
        if not _HEX64.match(sha256):
            raise r.doc.error(key + ("sha256",), f"expected 64 hex digits, found {_show(sha256)}")
    sha1 = r.get(obj, key, "sha1", str)
    if sha1 is not None:
        sha1 = sha1.lower()
        if not _HEX40.match(sha1):
            raise r.doc.error(key + ("sha1",), f"expected 40 hex digits (git blob sha1), found {_show(sha1)}")
    where = next((k for k in ("sha256", "sha1", "size") if obj.get(k) is not None), None)
    line = r.doc.line(*key, where) if where else None
    return FileExpect(size, sha256, sha1, origin=f"{r.doc.file}:{line}" if line else r.doc.file)


def parse_manifest(doc: Located) -> Manifest:
    r = _Reader(doc)
    top = doc.value
    if top is None:
        raise doc.error((), "the manifest is empty", hint="see README.md, 'Manifest reference'")
    if not isinstance(top, dict):
        raise doc.error((), f"expected a mapping at the top level, found {type(top).__name__}")
    version = top.get("version")
    if version is not None:
        version = r.get(top, (), "version", int)  # a wrong type is an error of its own: stop here
        if version != 1:
            raise doc.error(("version",), f"unsupported manifest version {version} (this preflight reads version 1)")
    r.unknown(top, (), _TOP_KEYS, "top-level")
    models_dir = "/models"
    with r.section():
        models_dir = _models_dir(r, top)
    defaults: dict = {}
    with r.section():
        defaults = _defaults(r, top)
    profiles_raw: dict = {}
    with r.section():
        profiles_raw = r.get(top, (), "profiles", dict, default={})
    lanes_raw: list = []
    with r.section():
        lanes_raw = r.get(top, (), "lanes", list, required=True)
        if not lanes_raw:
            raise doc.error(("lanes",), "no lanes: a manifest needs at least one lane")
        if len(lanes_raw) > MAX_LANES:
            raise doc.error(("lanes",), f"{len(lanes_raw)} lanes: at most {MAX_LANES} in one manifest")
    lanes: list[tuple[int, dict, Lane]] = []  # (index, raw, lane) of the lanes that parsed
    names: set[str] = set()  # every lane name given, parsed or not: nothing else reports it as unknown
    seen: dict[str, int] = {}
    for i, raw in enumerate(lanes_raw):
        key = ("lanes", i)
        with r.section():
            if not isinstance(raw, dict):
                raise doc.error(key, f"expected a lane mapping, found {_show(raw)}")
            if isinstance(raw.get("name"), str):
                names.add(raw["name"])
            lane = _parse_lane(r, raw, key, defaults, models_dir)
            if lane is None:
                continue
            if lane.name in seen:
                raise doc.error(key + ("name",), f"duplicate lane name {lane.name!r} (first at line {seen[lane.name]})")
            seen[lane.name] = doc.line(*key) or 0
            lanes.append((i, raw, lane))
    profiles: dict[str, tuple[str, ...]] = {}
    for pname, members in profiles_raw.items():
        key = ("profiles", pname)
        with r.section():
            if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
                raise doc.error(key, f"expected a list of lane names, found {_show(members)}")
            for j, m in enumerate(members):
                if m not in names:
                    raise doc.error(key + (j,), f"profile {pname!r} names unknown lane {_show(m)}")
            profiles[pname] = tuple(members)
    for i, _raw, lane in lanes:
        if lane.base is not None:
            with r.section():
                if lane.base not in names:
                    raise doc.error(("lanes", i, "base"), f"base lane {_show(lane.base)} is not defined")
                if lane.base == lane.name:
                    raise doc.error(("lanes", i, "base"), "a lane cannot be its own base")
    r.errors.extend(_overlaps(doc, [*lanes, *((i, raw, v) for i, raw, lane in lanes for v in lane.variants)]))
    endpoints: list = []
    with r.section():
        endpoints = r.get(top, (), "endpoints", list, default=[])
    for i, raw, lane in lanes:
        ep = raw.get("endpoint")
        if ep is not None:
            with r.section():
                if not isinstance(ep, dict):
                    raise doc.error(("lanes", i, "endpoint"), f"expected a mapping {{kind, url, model}}, found {_show(ep)}")
                endpoints = [*endpoints, {"name": lane.name, "lane": lane.name, **ep}]
    lock = None
    with r.section():
        lock = _fs_path(r, top, (), "lock")
    accelerator = None
    with r.section():
        accelerator = top.get("accelerator")
        if accelerator is not None:
            from .serving.accel import AcceleratorError, parse_declared

            try:
                parse_declared(accelerator)
            except AcceleratorError as exc:
                raise doc.error(("accelerator",), f"accelerator {_show(accelerator)}: {exc}") from None
    r.errors.sort(key=lambda e: e.line or 0)  # in reading order (stable: a lane's own order within a line)
    if version is None:
        r.errors.append(doc.error(("version",), "missing required field 'version': write `version: 1` as the manifest's first line"))
    if r.errors:
        raise r.errors[0] if len(r.errors) == 1 else ManifestErrors(r.errors)
    return Manifest(doc.file, 1, models_dir, tuple(lane for _i, _raw, lane in lanes), profiles, tuple(endpoints), lock, accelerator)


def _models_dir(r: _Reader, top: Mapping) -> str:
    value = r.get(top, (), "models_dir", str, default="/models")
    problem = "it is empty" if not value.strip() else "it contains a control character" if _CONTROL.search(value) else _length_problem(value)
    if problem:
        raise r.doc.error(("models_dir",), f"models_dir {_show(value)} is not a usable folder: {problem}")
    return value


def _pickle_policy(r: _Reader, obj: Mapping, key: tuple, default: Any = None) -> bool | str | None:
    """`allow_pickle`: false, true (pickles shaped like a state dict), or `torchscript`
    (TorchScript archives too, whose code torch.jit.load compiles and runs)."""
    value = r.get(obj, key, "allow_pickle", (bool, str), default=default)
    if isinstance(value, str):
        retyped = r.doc.retyped.get(key + ("allow_pickle",))  # a quoted "${PICKLE:-yes}" reads as a flag
        if isinstance(retyped, bool):
            return retyped
        if value.strip().lower() != "torchscript":
            raise r.doc.error(key + ("allow_pickle",), f"expected true, false or torchscript, got {value[:40]!r}")
        return "torchscript"
    return value


def _layout(r: _Reader, obj: Mapping, key: tuple, default: str | None) -> str | None:
    """`layout`: how a folder lane is laid out on the volume (see revisions.py)."""
    value = r.get(obj, key, "layout", str, default=default)
    if value is not None and value not in LAYOUTS:
        raise r.doc.error(key + ("layout",), f"expected one of {', '.join(LAYOUTS)}, got {value[:40]!r}")
    return value


def _defaults(r: _Reader, top: Mapping) -> dict:
    """`defaults:`, each value checked as the lane field it stands for."""
    defaults = r.get(top, (), "defaults", dict, default={})
    key = ("defaults",)
    r.unknown(defaults, key, _DEFAULT_KEYS, "defaults")
    out: dict[str, Any] = {}
    for name in ("required", "allow_pickle", "serves_text"):
        with r.section():
            out[name] = _pickle_policy(r, defaults, key) if name == "allow_pickle" else r.get(defaults, key, name, bool)
    with r.section():
        out["revision"] = r.get(defaults, key, "revision", str)
    with r.section():
        out["layout"] = _layout(r, defaults, key, None)
    with r.section():
        if defaults.get("serve") is not None:
            out["serve"] = _serve(r, defaults, key, None, None)
    with r.section():
        raw = _signature_raw(r, defaults, key)
        if raw:  # checked once here, so each lane inherits a complete policy (or none, after an error)
            _signature(r, {}, key, raw)
            out["signature"] = raw
    for name in ("include", "exclude"):
        with r.section():
            out[name] = r.strings(defaults, key, name)
    return {k: v for k, v in out.items() if v is not None and v != ()}


def _parse_lane(r: _Reader, raw: dict, key: tuple, defaults: Mapping, models_dir: str) -> Lane | None:
    """One lane, or None when it has errors (all of them recorded in r.errors)."""
    doc = r.doc
    before = len(r.errors)
    r.unknown(raw, key, _LANE_KEYS, "lane")
    name = kind = path = None
    with r.section():
        name = r.get(raw, key, "name", str, required=True)
        if not _LANE_NAME.match(name) or len(name) > MAX_NAME_BYTES:
            raise doc.error(key + ("name",), f"lane name {_show(name)} must be letters, digits, '-', '_' or '.' (at most {MAX_NAME_BYTES})")
    with r.section():
        kind = r.get(raw, key, "kind", str, required=True)
        if kind not in KINDS:
            close = _close_match(kind, set(KINDS))
            kind = None
            raise doc.error(key + ("kind",), f"unknown kind {_show(raw['kind'])}" + (f" (did you mean {close!r}?)" if close else ""), hint=f"kinds: {', '.join(KINDS)}")
    with r.section():
        path = _lane_path(r, raw, key, models_dir)
    source = None
    with r.section():
        revision = r.get(raw, key, "revision", str)
        src_raw = r.get(raw, key, "source", str)
        if src_raw is not None:
            try:
                # a default revision yields to an explicit `@rev` in the source; the lane's own `revision:` must agree with it
                pinned = "@" in src_raw.strip().removeprefix("hf://")
                source = parse_source(src_raw, revision or (None if pinned else defaults.get("revision")))
            except ValueError as exc:
                raise doc.error(key + ("source",), f"bad source {_show(src_raw)}: {exc}") from None
    files: dict[str, FileExpect] = {}
    with r.section():
        files_raw = r.get(raw, key, "files", dict, default={})
        for rel, exp in files_raw.items():
            with r.section():
                problem = rel_path_problem(rel)
                if problem:
                    raise doc.error(key + ("files", rel), f"file path {_show(rel)} must be relative and stay inside the lane: {problem}")
                files[posixpath.normpath(rel)] = _expect(r, exp if exp is not None else {}, key + ("files", rel))
    direct = {k: raw[k] for k in ("sha256", "sha1", "size") if k in raw}
    archive_pin = None
    unpacks = source is not None and kind in ("hf-dir", "adapter") and archive_name(source) is not None
    if direct and kind is not None and path is not None:
        with r.section():
            if unpacks:
                if "sha1" in direct:
                    raise doc.error(key + ("sha1",), "an archive is pinned by its sha256 (and size), not a git blob sha1")
                archive_pin = _expect(r, direct, key)
            elif kind in DIR_KINDS:
                raise doc.error(key + (next(iter(direct)),), f"a {kind} lane is a folder: give digests per file under 'files:' "
                                "(or name an archive as its source: sha256 then pins the archive)")
            else:
                files[posixpath.basename(path)] = _expect(r, direct, key).merge(files.get(posixpath.basename(path)))
    flags: dict[str, Any] = {}
    for flag in _FLAGS:
        with r.section():
            if flag == "allow_pickle":
                flags[flag] = _pickle_policy(r, raw, key, defaults.get(flag, False))
            else:
                flags[flag] = r.get(raw, key, flag, bool, default=defaults.get(flag, True))
    strings: dict[str, tuple[str, ...]] = {}
    for field_name in ("include", "exclude", "profiles"):
        with r.section():
            strings[field_name] = r.strings(raw, key, field_name, tuple(defaults.get(field_name) or ()))
    vocab_only = False
    with r.section():
        vocab_only = r.get(raw, key, "vocab_only", bool, default=False)
        if vocab_only and kind is not None and kind != "gguf":
            raise doc.error(key + ("vocab_only",), f"'vocab_only' applies to gguf lanes, not {kind}")
    base = checksums = dvc = env = None
    with r.section():
        base = r.get(raw, key, "base", str)
        if base is not None and kind is not None and kind != "adapter":
            raise doc.error(key + ("base",), f"'base' applies to adapter lanes, not {kind}")
    with r.section():
        checksums = _fs_path(r, raw, key, "checksums")
    with r.section():
        dvc = _fs_path(r, raw, key, "dvc")
    with r.section():
        env = r.get(raw, key, "env", str)
    layout = "revisions"
    with r.section():
        layout = _layout(r, raw, key, defaults.get("layout", "revisions"))
    signature = None
    with r.section():
        signature = _signature(r, raw, key, defaults.get("signature"))
    serve = None
    with r.section():
        serve = _serve(r, raw, key, defaults.get("serve"), kind)
    if len(r.errors) > before:
        return None
    if signature is not None and kind in DIR_KINDS and strings["include"]:
        # a folder lane's signature file is one of its files (fetched like the others), whatever `include` selects
        sig = signature.file or "model.sig"
        if not sig.startswith("/") and not any(fnmatch.fnmatch(sig, pat) for pat in strings["include"]):
            strings["include"] = (*strings["include"], sig)
    if source is not None and source.scheme in ("https", "http") and kind not in DIR_KINDS:
        fname = posixpath.basename(path)
        if not files.get(fname, FileExpect()).sha256 and not checksums and not dvc:
            raise doc.error(
                key + ("source",),
                "a URL source needs the file's sha256 (plain URLs carry no digest to verify against)",
                hint="add `sha256: <64 hex>` to the lane, or run `preflight lock` against a trusted copy",
            )
    if source is not None and source.scheme in ("https", "http") and kind in DIR_KINDS:
        if not unpacks:
            raise doc.error(key + ("source",), f"a URL names one file, and a {kind} lane is a folder: name an archive "
                            "(.tar, .tar.gz, .tgz, .tar.zst, .zip) to fill it from, or make the lane a file kind")
        if not (archive_pin and archive_pin.sha256):
            raise doc.error(key + ("source",), "a URL source needs the archive's sha256 (plain URLs carry no digest to verify against)",
                            hint="add `sha256: <64 hex>` (the archive's) to the lane")

    if source is not None and source.scheme == "gs" and source.revision and kind in DIR_KINDS:
        raise doc.error(key + ("source",), f"a generation (#{source.revision}) pins one object, and a {kind} lane is a folder of objects",
                        hint="drop the #GENERATION: `preflight lock` pins the generation of every object of the lane")
    if kind == "hf-cache" and (source is None or source.scheme != "hf"):
        raise doc.error(key + ("source",), "an hf-cache lane needs an hf:// source (the repo whose cache entry it is)")
    lane = Lane(
        name=name, kind=kind, path=path, source=source, include=strings["include"], exclude=strings["exclude"], files=files,
        required=flags["required"], enabled=flags["enabled"], profiles=strings["profiles"], allow_pickle=flags["allow_pickle"],
        serves_text=flags["serves_text"], vocab_only=vocab_only, base=base, checksums=checksums, dvc=dvc, env=env, layout=layout,
        signature=signature, serve=serve, archive=archive_pin, line=doc.line(*key),
    )
    if raw.get("variants") is not None:
        variants = _variants(r, raw, key, lane, defaults, models_dir)
        if variants is None:
            return None
        lane = dataclasses.replace(lane, variants=variants)
    return lane


def _variants(r: _Reader, raw: dict, key: tuple, lane: Lane, defaults: Mapping, models_dir: str) -> tuple[Lane, ...] | None:
    """`variants:`, alternatives to the lane in order: each overrides the lane's source, path, revision,
    include/exclude, per-file digests and serve, and is a whole lane of the same name."""
    doc = r.doc
    at = key + ("variants",)
    items = raw["variants"]
    if not isinstance(items, list) or not items:
        raise doc.error(at, f"expected a list of variants (each a mapping with name, path, source, ...), found {_show(items)}")
    if lane.kind not in ("hf-dir", "hf-cache", "gguf"):
        raise doc.error(at, f"a {lane.kind} lane has no variants: they are chosen by how the engine serves them (hf-dir, hf-cache, gguf)")
    if lane.base is not None or lane.checksums or lane.dvc:
        raise doc.error(at, "a lane with variants pins its files per variant (files:, sha256:), not with base/checksums/dvc")
    before = len(r.errors)
    out: list[Lane] = []
    seen: dict[str, int] = {PRIMARY: -1}
    paths = {lane.path: PRIMARY}
    for k, item in enumerate(items[:64]):
        vkey = at + (k,)
        with r.section():
            if not isinstance(item, dict):
                raise doc.error(vkey, f"expected a variant mapping (name, path, source, ...), found {_show(item)}")
            r.unknown(item, vkey, _VARIANT_KEYS, "variant")
            vname = r.get(item, vkey, "name", str, required=True)
            if not _LANE_NAME.match(vname) or len(vname) > 64:
                raise doc.error(vkey + ("name",), f"variant name {_show(vname)} must be letters, digits, '-', '_' or '.' (at most 64)")
            if vname in seen:
                taken = "the lane as written" if vname == PRIMARY else f"variant {seen[vname] + 1}"
                raise doc.error(vkey + ("name",), f"variant name {vname!r} is already {taken}'s")
            seen[vname] = k
            vpath = _lane_path(r, item, vkey, models_dir) if "path" in item or lane.kind != "hf-cache" else lane.path
            if vpath in paths and lane.kind != "hf-cache":
                raise doc.error(vkey + ("path",), f"path {vpath} is already {'the lane' if paths[vpath] == PRIMARY else 'variant ' + repr(paths[vpath])}'s: "
                                                 "each variant has its own path (`preflight env` exports the chosen one)")
            paths[vpath] = vname
            source = lane.source
            if "source" in item or "revision" in item:
                src_raw = r.get(item, vkey, "source", str)
                revision = r.get(item, vkey, "revision", str)
                if src_raw is None:  # another revision of the lane's own repo
                    if lane.source is None or lane.source.scheme != "hf":
                        raise doc.error(vkey + ("revision",), "a variant's revision alone applies to an hf:// lane source; give the variant its own source")
                    body = lane.source.raw.removeprefix("hf://")
                    src_raw = "hf://" + (body.rsplit("@", 1)[0] if "@" in body else body)
                pinned = "@" in src_raw.strip().removeprefix("hf://")
                try:
                    source = parse_source(src_raw, revision or (None if pinned or "source" not in item else defaults.get("revision")))
                except ValueError as exc:
                    raise doc.error(vkey + ("source",), f"bad source {_show(src_raw)}: {exc}") from None
            if lane.kind == "hf-cache" and (source is None or source.scheme != "hf"):
                raise doc.error(vkey + ("source",), "an hf-cache variant needs an hf:// source")
            files: dict[str, FileExpect] = {}
            for rel, exp in (r.get(item, vkey, "files", dict, default={}) or {}).items():
                problem = rel_path_problem(rel)
                if problem:
                    raise doc.error(vkey + ("files", rel), f"file path {_show(rel)} must be relative and stay inside the lane: {problem}")
                files[posixpath.normpath(rel)] = _expect(r, exp if exp is not None else {}, vkey + ("files", rel))
            direct = {x: item[x] for x in ("sha256", "sha1", "size") if x in item}
            if direct:
                if lane.is_dir:
                    raise doc.error(vkey + (next(iter(direct)),), f"a {lane.kind} lane is a folder: give digests per file under 'files:'")
                files[posixpath.basename(vpath)] = _expect(r, direct, vkey).merge(files.get(posixpath.basename(vpath)))
            if source is not None and source.scheme in ("https", "http") and not lane.is_dir and not files.get(posixpath.basename(vpath), FileExpect()).sha256:
                raise doc.error(vkey + ("source",), "a URL source needs the file's sha256 (plain URLs carry no digest to verify against)",
                                hint="add `sha256: <64 hex>` to the variant")
            include = r.strings(item, vkey, "include", lane.include)
            exclude = r.strings(item, vkey, "exclude", lane.exclude)
            serve = _serve(r, item, vkey, lane.serve, lane.kind)
            if serve is None and lane.serve is not None:
                raise doc.error(vkey + ("serve",), "a variant is chosen by how it is served: it needs `serve:` (its own, or the lane's)")
            out.append(dataclasses.replace(lane, path=vpath, source=source, files=files, include=include, exclude=exclude, serve=serve,
                                           variant=vname, line=doc.line(*vkey)))
    if len(items) > 64:
        r.errors.append(doc.error(at, f"{len(items)} variants: at most 64"))
    if lane.serve is None:
        r.errors.append(doc.error(key, "a lane with variants needs `serve:`: the first variant that fits this node is chosen by it",
                                  hint="add serve: {engine: vllm, args: \"...\"} to the lane (variants inherit it)"))
    if len(r.errors) > before:
        return None
    return tuple(out)


def _signature_raw(r: _Reader, obj: Mapping, key: tuple) -> dict | None:
    """`signature:` as written (a mapping, or false to opt a lane out of the default), its keys checked."""
    if "signature" not in obj or obj["signature"] is None:
        return None
    value = obj["signature"]
    if isinstance(value, str):
        value = r.doc.retyped.get(key + ("signature",), value)
    if value is False:
        return {}
    if not isinstance(value, dict):
        raise r.doc.error(key + ("signature",), f"expected a mapping (method, key, ...) or false, found {_show(value)}")
    r.unknown(value, key + ("signature",), _SIGNATURE_KEYS, "signature")
    return value


def _signature(r: _Reader, raw: Mapping, key: tuple, default: dict | None) -> SignaturePolicy | None:
    """A lane's signature policy: its own `signature:` over `defaults.signature`. A lane that
    names its own method inherits only `file` and `required` from the default."""
    own = _signature_raw(r, raw, key)
    if own == {}:
        return None  # `signature: false`
    if own is None and not default:
        return None
    merged: dict = dict(default or {})
    if own is not None and "method" in own:
        merged = {k: v for k, v in merged.items() if k in ("file", "required")}
    merged.update(own or {})
    where = key + ("signature",) if own is not None else ("defaults", "signature")
    lane_keys = set(own or ())

    def at(name: str) -> tuple:
        return (key + ("signature",) if name in lane_keys else ("defaults", "signature")) + (name,)

    method = merged.get("method")
    if method is None:
        raise r.doc.error(where, f"missing required field 'method' ({', '.join(SIGNATURE_METHODS)})")
    if method not in SIGNATURE_METHODS:
        close = _close_match(str(method), set(SIGNATURE_METHODS))
        raise r.doc.error(at("method"), f"unknown signature method {_show(method)}" + (f" (did you mean {close!r}?)" if close else ""),
                          hint=f"methods: {', '.join(SIGNATURE_METHODS)}")
    for other, names in _SIGNATURE_ONLY.items():
        for name in names:
            if other != method and name in merged:
                raise r.doc.error(at(name), f"{name!r} applies to signature method {other}, not {method}")

    def path(name: str, required: bool) -> str | None:
        value = merged.get(name)
        if value is None:
            if required:
                raise r.doc.error(where, f"signature method {method} needs {name!r}", hint=_SIGNATURE_HINT[name])
            return None
        if not isinstance(value, str):
            raise r.doc.error(at(name), f"expected a path, found {type(value).__name__} {_show(value)}")
        problem = "it is empty" if not value.strip() else "it contains a control character" if _CONTROL.search(value) else _length_problem(value)
        if problem:
            raise r.doc.error(at(name), f"{name} {_show(value)} is not a usable path: {problem}")
        return value

    def text(name: str) -> str:
        value = merged.get(name)
        if value is None:
            raise r.doc.error(where, f"signature method {method} needs {name!r}", hint=_SIGNATURE_HINT[name])
        if not isinstance(value, str) or not value.strip() or _CONTROL.search(value):
            raise r.doc.error(at(name), f"expected a non-empty string, found {_show(value)}")
        return value

    file = path("file", False)
    if file is not None and not file.startswith("/"):
        problem = rel_path_problem(file)
        if problem:
            raise r.doc.error(at("file"), f"signature file {_show(file)} must be absolute or stay inside the lane: {problem}")
        file = posixpath.normpath(file)
    chain: tuple[str, ...] = ()
    if method == "certificate":
        value = merged.get("certificate_chain")
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise r.doc.error(at("certificate_chain") if value is not None else where,
                              "signature method certificate needs 'certificate_chain'",
                              hint=_SIGNATURE_HINT["certificate_chain"])
        for i, item in enumerate(value):
            problem = None if isinstance(item, str) and item.strip() and not _CONTROL.search(item) else "expected a path"
            if problem or _length_problem(item):
                raise r.doc.error(at("certificate_chain") + (i,), f"certificate_chain[{i}] {_show(item)} is not a usable path")
        chain = tuple(value)
    required = merged.get("required", True)
    if isinstance(required, str):
        required = r.doc.retyped.get(at("required"), required)
    if not isinstance(required, bool):
        raise r.doc.error(at("required"), f"expected true or false, found {_show(required)}")
    return SignaturePolicy(
        method=method, file=file, key=path("key", method == "key"), certificate_chain=chain,
        identity=text("identity") if method == "sigstore" else None, issuer=text("issuer") if method == "sigstore" else None,
        trusted_root=path("trusted_root", method == "sigstore"), required=required,
    )


_SIGNATURE_HINT = {
    "key": "key: a PEM public key file (e.g. a mounted Secret or ConfigMap), the pair of the key the model was signed with",
    "certificate_chain": "certificate_chain: [PEM files] of the CA that issued the signing certificate",
    "identity": "identity: the signer's identity in its certificate (an email, or a CI workflow URI)",
    "issuer": "issuer: the OIDC issuer that vouched for the identity (e.g. https://token.actions.githubusercontent.com)",
    "trusted_root": "trusted_root: a Sigstore trusted_root.json file, so verification needs no network",
}


def _serve(r: _Reader, obj: Mapping, key: tuple, default: ServeSpec | None, kind: str | None) -> ServeSpec | None:
    """`serve:` as written (a mapping, or false to opt out of the default); its args parsed as the engine parses them."""
    value = obj.get("serve")
    if value is None:
        if default is None or kind is None:
            return default
        applies = kind in ("hf-dir", "hf-cache", "gguf") and (kind == "gguf") == (default.engine == "llama.cpp")
        return default if applies else None  # a default for vLLM does not describe the GGUF lanes, and the other way round
    if value is False:
        return None
    at = key + ("serve",)
    if not isinstance(value, dict):
        raise r.doc.error(at, f"expected a mapping {{engine, args, version}} or false, found {_show(value)}")
    r.unknown(value, at, _SERVE_KEYS, "serve")
    engine = value.get("engine", default.engine if default else None)
    if engine is None:
        raise r.doc.error(at, f"missing required field 'engine' ({', '.join(SERVE_ENGINES)})")
    if engine not in SERVE_ENGINES:
        close = _close_match(str(engine).lower().replace("llamacpp", "llama.cpp").replace("llama-cpp", "llama.cpp"), set(SERVE_ENGINES), 0.5)
        raise r.doc.error(at + ("engine",), f"unknown engine {_show(engine)}" + (f" (did you mean {close!r}?)" if close else ""),
                          hint=f"engines: {', '.join(SERVE_ENGINES)}")
    if kind is not None and (kind == "gguf") != (engine == "llama.cpp") and kind in ("gguf", "hf-dir", "hf-cache"):
        raise r.doc.error(at + ("engine",), f"a {kind} lane is not served by {engine}" + (" (llama.cpp serves GGUF lanes)" if engine == "llama.cpp" else " (vLLM serves folder lanes)"))
    args = value.get("args", list(default.args) if default and default.engine == engine and "args" not in value else [])
    if isinstance(args, str):
        from .serving.args import ArgsError, split_args

        try:
            words = tuple(split_args(args))
        except ArgsError as exc:
            raise r.doc.error(at + ("args",), str(exc)) from None
    elif isinstance(args, list) and all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in args):
        words = tuple(str(a) for a in args)
    else:
        raise r.doc.error(at + ("args",), f"expected the server's arguments as a string or a list of strings, found {_show(args)}")
    version = value.get("version", default.version if default else None)
    if version is not None and not isinstance(version, (str, int, float)):
        raise r.doc.error(at + ("version",), f"expected a version string, found {_show(version)}")
    spec = ServeSpec(engine, words, str(version) if version is not None else None)
    from .serving.args import ArgsError

    try:
        spec.parsed()
    except ArgsError as exc:
        raise r.doc.error(at + ("args",), f"{engine} would refuse these arguments: {exc}") from None
    return spec


def _lane_path(r: _Reader, raw: dict, key: tuple, models_dir: str) -> str:
    doc = r.doc
    path_raw = r.get(raw, key, "path", str, required=True)
    problem = rel_path_problem(path_raw)
    path = posixpath.normpath(path_raw) if problem is None else None
    if path == ".":
        problem = "it is models_dir itself"
    if problem:
        raise doc.error(key + ("path",), f"path {_show(path_raw)} must be relative and stay inside models_dir: {problem}")
    if any(part.lower() == STATE_DIR for part in path.split("/")):
        raise doc.error(key + ("path",), f"path {_show(path_raw)} uses the reserved name {STATE_DIR} (preflight's own state in models_dir)")
    total = len(models_dir.rstrip("/").encode("utf-8", "surrogatepass")) + 1 + len(path.encode("utf-8", "surrogatepass"))
    if total > MAX_PATH_BYTES:
        raise doc.error(key + ("path",), f"models_dir and path together are {total} bytes long (at most {MAX_PATH_BYTES})")
    return path


def _overlaps(doc: Located, lanes: list[tuple[int, dict, Lane]]) -> list[ManifestError]:
    """Two lanes writing the same file would fight; nested hf-cache roots are fine.

    Sorting by path components puts every lane right after the lanes it lies inside,
    so one pass with a stack of enclosing lanes finds every conflict: O(n log n)."""
    order = sorted(lanes, key=lambda t: (t[2].path.split("/"), t[0]))
    stack: list[tuple[list[str], int, Lane]] = []
    errors = []
    for i, _raw, b in order:
        parts = b.path.split("/")
        while stack and stack[-1][0] != parts[: len(stack[-1][0])]:
            stack.pop()
        for _parts, j, a in stack:  # a encloses b (or is the same path)
            if not (a.kind == b.kind == "hf-cache"):
                how = "is the same path as" if a.path == b.path else "lies inside the folder of" if a.is_dir else "lies inside the file of"
                first, second = (a, b) if (j, a.variant or "") < (i, b.variant or "") else (b, a)
                where = ("lanes", max(i, j)) + (("variants", second.variant) if second.variant else ())
                errors.append(ManifestError(
                    f"lanes {first.label!r} and {second.label!r} overlap: {b.path} {how} lane {a.label!r}",
                    file=doc.file, line=second.line or doc.line("lanes", max(i, j)), field=dotted(where) + ".path",
                ))
                break
        stack.append((parts, i, b))
    return sorted(errors, key=lambda e: e.line or 0)


def load_manifest(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> Manifest:
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError("manifest not found", file=str(p), hint="pass --manifest FILE or set PREFLIGHT_MANIFEST") from None
    except IsADirectoryError:
        raise ManifestError("manifest path is a folder, expected a YAML file", file=str(p)) from None
    except OSError as exc:
        raise ManifestError(f"cannot read manifest: {exc.strerror}", file=str(p)) from None
    if len(data) > MAX_BYTES:
        raise ManifestError(f"the manifest is larger than {MAX_BYTES >> 20} MiB", file=str(p), hint="a manifest lists lanes, not data")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError("manifest is not UTF-8 text", file=str(p)) from None
    return parse_manifest(load_yaml(text, str(p), env))


def split_lanes(lanes: tuple[str, ...]) -> tuple[str, ...]:
    """Lane names from repeated --lane options or PREFLIGHT_LANES (comma- or space-separated)."""
    out: list[str] = []
    for item in lanes:
        out.extend(x for x in item.replace(",", " ").split() if x)
    return tuple(out)
