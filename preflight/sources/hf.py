"""Hugging Face Hub: revision → commit, file listing with sizes and digests, URLs, auth headers.

huggingface_hub does what it does well here (endpoint, token, errors, URL
building); the bytes themselves go through sources/http.py, which resumes across
processes and hashes while writing.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from typing import TYPE_CHECKING

from ..errors import AuthError, FetchError, UsageError
from ..manifest import FileExpect, Lane
from . import Entry, Source, Transfer
from . import Listing
from ..record import record

if TYPE_CHECKING:
    from ..volume import StagedFile
    from ..lockfile import LockedLane
    from .http import Fetched


@record(frozen=True)
class RemoteFile:
    rel: str  # path inside the lane folder
    path_in_repo: str
    size: int | None
    sha256: str | None  # LFS files
    sha1: str | None  # git blob id (what the Hub reports for every file)

    @property
    def expect(self) -> FileExpect:
        return FileExpect(self.size, self.sha256, None if self.sha256 else self.sha1)

    @property
    def etag(self) -> str | None:
        return self.sha256 or self.sha1


@record(frozen=True)
class RepoListing:
    commit: str
    files: dict[str, RemoteFile]
    gated: bool = False


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


TOKEN_HINT = ("give a token that can read it: --token-file FILE (a mounted secret; PREFLIGHT_TOKEN_FILE), the HF_TOKEN "
              "variable, or the file `hf auth login` writes (HF_TOKEN_PATH, default $HF_HOME/token); for a gated model, "
              "accept its licence on the model's page on the Hub first, with the account the token belongs to")


def read_token(token_file: str | None) -> str | None:
    """--token-file first (a mounted secret, re-read each run), then HF_TOKEN, then
    HF_TOKEN_PATH (huggingface_hub's own lookup). Read strictly: the first line, stripped;
    a token with a control character (a NUL, a stray CR) is a usage error that names
    where it came from, never its value."""
    if token_file:
        try:
            raw = Path(token_file).read_bytes()[: 64 * 1024]
        except FileNotFoundError:
            return None  # an optional secret that is not mounted: no token
        except OSError as exc:
            raise UsageError(f"cannot read the token file {token_file}: {exc.strerror}",
                             hint=f"make it readable by uid {os.getuid()} (e.g. mode 0440 with group {os.getgid()}), "
                                  "or drop --token-file / PREFLIGHT_TOKEN_FILE") from None
        return clean_token(raw.decode("utf-8", "replace"), f"the token file {token_file}")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var):
            return clean_token(os.environ[var], var)
    if os.environ.get("HF_TOKEN_PATH"):
        return read_token(os.environ["HF_TOKEN_PATH"])
    from huggingface_hub import get_token

    token = get_token()
    return clean_token(token, "the stored Hugging Face token") if token else None


def clean_token(raw: str, where: str) -> str | None:
    """The first line of `raw`, stripped; UsageError (without the value) for anything
    that would corrupt an HTTP header."""
    lines = raw.splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        return None
    bad = next((c for c in token if ord(c) < 0x20 or ord(c) == 0x7F or c in "\ufffd" or c.isspace()), None)
    if bad is not None:
        raise UsageError(f"{where} holds a character that cannot be part of a token (U+{ord(bad):04X}); its value is not shown",
                         hint="write the token alone on the file's first line")
    from ..redact import register

    register(token)
    return token


def auth_headers(token: str | None) -> dict[str, str]:
    from huggingface_hub.utils import build_hf_headers

    from .. import __version__

    return build_hf_headers(token=token or False, library_name="lane-preflight", library_version=__version__)


def file_url(repo: str, path_in_repo: str, commit: str, repo_type: str = "model") -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo, path_in_repo, revision=commit, repo_type=None if repo_type == "model" else repo_type, endpoint=endpoint())


def _selected(path: str, lane: Lane) -> bool:
    if lane.include and not any(fnmatch.fnmatch(path, p) for p in lane.include):
        return False
    return not any(fnmatch.fnmatch(path, p) for p in lane.exclude)


def resolve(lane: Lane, token: str | None, timeout: float = 30.0) -> RepoListing:
    """One request: the repo at the lane's revision, with every file's size and digest."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    src = lane.source
    assert src is not None and src.scheme == "hf" and src.repo
    api = HfApi(endpoint=endpoint(), token=token or False)
    where = f"{src.repo}@{src.revision}"
    try:
        info = api.repo_info(src.repo, revision=src.revision, repo_type=src.repo_type, files_metadata=True, timeout=timeout)
    except GatedRepoError:
        raise AuthError(
            f"{src.repo} is gated: " + ("the token has no access to it" if token else "a token is needed and none was given"),
            hint=TOKEN_HINT,
        ) from None
    except RevisionNotFoundError:
        raise FetchError(f"revision {src.revision!r} not found in {src.repo}", status=404) from None
    except RepositoryNotFoundError:
        if not token:
            raise AuthError(f"{src.repo} not found, or private or gated and no token was given", hint=TOKEN_HINT) from None
        raise FetchError(f"repository {src.repo} not found (or the token cannot see it)", status=404) from None
    except EntryNotFoundError:
        raise FetchError(f"{where}: not found", status=404) from None
    except HfHubHTTPError as exc:
        response = getattr(exc, "response", None)
        status = response.status_code if response is not None else None
        if status in (401, 403):
            raise AuthError(f"{where}: HTTP {status} (the token was rejected, or has no access to this repo)", hint=TOKEN_HINT) from None
        err = FetchError(f"{where}: HTTP {status}: {str(exc).splitlines()[0][:200]}", status=status)
        if response is not None:
            from .http import parse_retry_after

            err.retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise err from None
    except Exception as exc:  # connection refused, DNS, timeouts from the HTTP client
        from .http import DNS_FAILURE

        import socket

        dns = any(isinstance(e, socket.gaierror) or any(w in str(e).lower() for w in _DNS_WORDS) for e in _chain(exc))
        raise FetchError(f"cannot reach {endpoint()} for {where}: {type(exc).__name__}: {str(exc)[:200]}",
                         status=DNS_FAILURE if dns else None) from None
    commit = info.sha
    if not commit:
        raise FetchError(f"{where}: the Hub gave no commit for this revision")
    files: dict[str, RemoteFile] = {}
    prefix = (src.path_in_repo or "").strip("/")
    single = not lane.is_dir
    for s in info.siblings or []:
        path = s.rfilename
        if single:
            if path != prefix and not (lane.kind == "gguf" and _is_split_sibling(prefix, path)):
                continue
            rel = path.rsplit("/", 1)[-1]
        else:
            if prefix:
                if not path.startswith(prefix + "/"):
                    continue
                rel = path[len(prefix) + 1 :]
            else:
                rel = path
            if rel in (".gitattributes",) or not _selected(rel, lane):
                continue
        lfs = s.lfs
        sha256 = getattr(lfs, "sha256", None) if lfs is not None else None
        if isinstance(lfs, dict):
            sha256 = lfs.get("sha256")
        files[rel] = RemoteFile(rel, path, s.size, sha256, s.blob_id)
    if single and not files:
        raise FetchError(f"{prefix or '(no file)'} is not in {where}", status=404, hint="the hf:// source of a single-file lane must name the file: hf://org/repo/path/file@rev")
    if not files:
        raise FetchError(f"{where}: no files match the lane's include/exclude", status=404)
    return RepoListing(commit, files, bool(getattr(info, "gated", False)))


_DNS_WORDS = ("name or service not known", "temporary failure in name resolution", "nodename nor servname", "getaddrinfo failed")


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and len(out) < 10:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _is_split_sibling(first: str, path: str) -> bool:
    from ..check import gguf_split_names

    names = gguf_split_names(first.rsplit("/", 1)[-1])
    folder = first.rsplit("/", 1)[0] + "/" if "/" in first else ""
    return len(names) > 1 and path in {folder + n for n in names}


class HubSource(Source):
    """hf://org/repo[/path]@revision: the repo's listing at a commit, files over HTTP with the token."""

    def resolve(self, locked: LockedLane | None) -> Listing:
        lane, src = self.lane, self.lane.source
        assert src is not None and src.repo
        if locked is not None and locked.commit and locked.files:
            files = {}
            for rel, exp in locked.files.items():
                if lane.is_dir:
                    path_in_repo = f"{src.path_in_repo}/{rel}" if src.path_in_repo else rel
                else:
                    folder = src.path_in_repo.rsplit("/", 1)[0] + "/" if "/" in (src.path_in_repo or "") else ""
                    path_in_repo = folder + rel
                files[rel] = (path_in_repo, exp)
            commit = locked.commit
        else:
            token = self.ctx.token()
            listing = self.ctx.retrying(lane.name, lambda: resolve(lane, token, timeout=max(self.ctx.timeouts.connect, 10.0)))
            if listing.gated and not token:
                raise AuthError(
                    f"{src.repo} is gated: a token is needed and none was given",
                    hint=TOKEN_HINT,
                )
            commit = listing.commit
            files = {rel: (f.path_in_repo, f.expect) for rel, f in listing.files.items()}
        from ..volume import is_hex_digest

        if not is_hex_digest(commit, (40, 64)):
            from ..errors import UnsafeSourceError

            raise UnsafeSourceError(f"the source gave {str(commit)[:80]!r} as the commit of {src.repo}, which is not a commit id; nothing was written")
        return Listing(commit, {rel: Entry(e, file_url(src.repo, pir, commit, src.repo_type), e.sha256 or e.sha1)
                                for rel, (pir, e) in files.items()})

    def read_range(self, entry: Entry, start: int, length: int) -> bytes | None:
        from .http import read_range

        return self.ctx.retrying(self.lane.name, lambda: read_range(entry.locator, auth_headers(self.ctx.token()), start, length, self.ctx.timeouts))

    def fetch(self, entry: Entry, partial: StagedFile, algos: tuple[str, ...], transfer: Transfer) -> Fetched:
        from .http import fetch_to

        try:
            return fetch_to(entry.locator, partial, headers=auth_headers(self.ctx.token()), expected_size=entry.expect.size,
                            algos=algos, etag=entry.etag, **transfer.http())
        except AuthError as exc:
            exc.hint = TOKEN_HINT
            raise
