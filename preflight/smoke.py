"""Post-deploy smoke checks of inference endpoints: vLLM, llama.cpp, embeddings, plain HTTP.

Every endpoint is polled in its own thread until its checks pass, a check fails
for good, or the deadline passes. Servers refuse connections or answer 503 while
they load weights; that is waiting, not failure. An endpoint that answers but
serves the wrong model or cannot produce one token has failed for good, and
waiting longer would not fix it.

Standard-library HTTP only (the probe runs in a small image), and HTTP(S)_PROXY
is ignored on purpose: the endpoints are compose- or cluster-internal.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from typing import IO, Any
from urllib.parse import urlsplit

from . import problems as pc
from .errors import ExitCode, ManifestError, UsageError
from .problems import Problem
from .record import record

KINDS = ("vllm", "llama.cpp", "http", "embeddings")
_KIND_ALIASES = {"llamacpp": "llama.cpp", "llama-cpp": "llama.cpp", "llama_cpp": "llama.cpp", "embedding": "embeddings"}
_LABEL = {"vllm": "vLLM", "llama.cpp": "llama.cpp", "http": "HTTP endpoint", "embeddings": "embeddings server"}
READY, FAILED = "ready", "failed"
SPEC_SYNTAX = "NAME=KIND@URL[#MODEL]"
SPEC_EXAMPLE = "coder=vllm@http://vllm:8000#Qwen/Qwen2.5-Coder-7B-Instruct"
API_KEY_ENV = "PREFLIGHT_SMOKE_API_KEY"
PROMPT = "Hello"
MAX_BODY = 1 << 20

# Statuses that mean "not yet" rather than "wrong": loading (503), a proxy in front of a
# container that is not up (502/504), throttling. A readiness GET also tolerates 500,
# which generic services answer while their own dependencies start.
_WAIT_STATUS = frozenset({408, 425, 429, 502, 503, 504})
_WAIT_STATUS_GET = _WAIT_STATUS | {500}
_EXIT_BY_CODE = {
    pc.ENDPOINT_UNREACHABLE: ExitCode.FETCH,
    pc.ENDPOINT_NOT_READY: ExitCode.FETCH,
    pc.ENDPOINT_AUTH: ExitCode.AUTH,
}
# When endpoints fail differently, the run exits with the first of these that occurred.
_EXIT_PRECEDENCE = (ExitCode.AUTH, ExitCode.NOT_READY, ExitCode.FETCH)


@record(frozen=True)
class Endpoint:
    """One inference endpoint to check. `url` is the server's base URL (a trailing
    `/v1` is dropped for the OpenAI-style kinds); for kind `http` it is fetched as given."""

    name: str
    kind: str
    url: str
    model: str | None = None
    lane: str | None = None
    api_key: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        name = (self.name or "").strip()
        if not name or any(c.isspace() for c in name):
            raise UsageError(f"endpoint name {self.name!r} must be a non-empty word")
        kind = _KIND_ALIASES.get(self.kind, self.kind)
        if kind not in KINDS:
            raise UsageError(f"endpoint {name}: unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "url", _normalise_url(name, kind, self.url))
        object.__setattr__(self, "model", self.model or None)
        object.__setattr__(self, "lane", self.lane or None)

    @property
    def label(self) -> str:
        return f"{_LABEL[self.kind]} at {self.url}"


def _normalise_url(name: str, kind: str, url: str) -> str:
    raw = (url or "").strip()
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https"):
        raise UsageError(f"endpoint {name}: URL {url!r} must start with http:// or https://")
    if not parts.hostname:
        raise UsageError(f"endpoint {name}: URL {url!r} has no host")
    try:
        parts.port
    except ValueError:
        raise UsageError(f"endpoint {name}: URL {url!r} has an invalid port") from None
    if parts.username or parts.password:
        raise UsageError(
            f"endpoint {name}: credentials in the URL are not supported",
            hint=f"put an API key in {API_KEY_ENV} (or the manifest's api_key_env) instead",
        )
    if parts.fragment:
        raise UsageError(f"endpoint {name}: URL {url!r} must not contain '#'")
    if kind == "http":
        return raw
    base = raw.rstrip("/")
    if parts.query:
        raise UsageError(f"endpoint {name}: a {_LABEL[kind]} base URL takes no query string: {url!r}")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base


def parse_endpoint_spec(spec: str) -> Endpoint:
    """`NAME=KIND@URL[#MODEL]`, e.g. `coder=vllm@http://vllm:8000#Qwen/Qwen2.5-Coder-7B-Instruct`."""
    usage = f"endpoint {spec!r}: expected {SPEC_SYNTAX}, e.g. {SPEC_EXAMPLE}"
    name, eq, rest = spec.partition("=")
    kind, at, target = rest.partition("@")
    if not eq or not at or not name.strip() or not kind.strip() or not target.strip():
        raise UsageError(usage)
    url, _, model = target.partition("#")
    return Endpoint(name=name.strip(), kind=kind.strip(), url=url.strip(), model=model.strip() or None)


# ----------------------------------------------------------------------------- manifest

_ENDPOINT_KEYS = ("name", "kind", "url", "model", "lane", "api_key_env")


def endpoints_from_manifest(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> list[Endpoint]:
    """The manifest's top-level `endpoints:` list.

    Only that list is expanded (`${VAR}`, `${VAR:-default}`), so an unset variable
    in a lane (a token the smoke run does not need) never stops the smoke run.
    """
    return read_smoke_manifest(path, env)[0]


def read_smoke_manifest(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> tuple[list[Endpoint], set[str]]:
    """The manifest's endpoints, and the names of its disabled lanes (`enabled:` false after
    `${VAR}` expansion; their endpoints are not deployed). One read, one parse."""
    env = os.environ if env is None else env
    file = os.fspath(path)
    doc, root = _read_manifest(file)
    raw = doc.get("endpoints")
    if raw is None:
        return [], set()
    if not isinstance(raw, list):
        raise ManifestError("expected a list of {name, kind, url, model, lane}", file=file, field="endpoints")
    lines = _endpoint_lines(root)
    endpoints = [endpoint_from_mapping(item, env=env, file=file, field=f"endpoints[{i}]", lines=lines.get(i)) for i, item in enumerate(raw)]
    return endpoints, _disabled_lanes(doc, env)


def _disabled_lanes(doc: dict, env: Mapping[str, str]) -> set[str]:
    """Only `enabled` is expanded; an unset variable there without a default leaves the lane enabled."""
    import yaml

    from .yamlloc import expand_vars

    out: set[str] = set()
    lanes = doc.get("lanes")
    for lane in lanes if isinstance(lanes, list) else []:
        if not isinstance(lane, dict) or not isinstance(lane.get("name"), str):
            continue
        value = lane.get("enabled", True)
        if isinstance(value, str):
            unset: list[str] = []
            expanded = expand_vars(value, env, on_missing=unset.append)
            try:
                value = True if unset else yaml.safe_load(expanded)
            except yaml.YAMLError:
                value = True
        if value is False:
            out.add(lane["name"])
    return out


def _read_manifest(file: str) -> tuple[dict, Any]:
    """The document and its lines, from one bounded parse (the manifest loader's limits;
    variables are left for each endpoint field to expand)."""
    from .yamlloc import MAX_BYTES, load_yaml

    try:
        with open(file, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"cannot read the manifest: {exc.strerror or exc}", file=file) from None
    located = load_yaml(raw.decode("utf-8", "replace"), file, expand=False)
    doc = located.value
    if doc is None:
        return {}, None
    if not isinstance(doc, dict):
        raise ManifestError("expected a mapping at the top level", file=file)
    return doc, located


def _endpoint_lines(located: Any) -> dict[int, dict[str, int]]:
    """For endpoints[i]: the line of the entry ("") and of each of its keys, for error messages."""
    out: dict[int, dict[str, int]] = {}
    if located is None or not isinstance(located.value, dict) or not isinstance(located.value.get("endpoints"), list):
        return out
    for i, item in enumerate(located.value["endpoints"]):
        entry = out.setdefault(i, {"": located.line("endpoints", i) or 0})
        if isinstance(item, dict):
            for key in item:
                entry[str(key)] = located.line("endpoints", i, key) or entry[""]
    return out


def endpoint_from_mapping(raw: Any, *, env: Mapping[str, str] | None = None, file: str | None = None, field: str | None = None,
                          lines: Mapping[str, int] | None = None) -> Endpoint:
    """One manifest entry `{name, kind, url, model, lane, api_key_env}` → Endpoint.
    `lines`: the line of the entry ("") and of each key, when read from a file."""
    from .manifest import _close_match
    from .yamlloc import expand_vars

    env = os.environ if env is None else env
    lines = lines or {}
    if not isinstance(raw, Mapping):
        raise ManifestError("expected a mapping {name, kind, url, model, lane}", file=file, field=field, line=lines.get(""))
    unknown = sorted(set(raw) - set(_ENDPOINT_KEYS))
    if unknown:
        close = _close_match(str(unknown[0]), set(_ENDPOINT_KEYS))
        raise ManifestError(f"unknown key {unknown[0]!r}" + (f" (did you mean {close!r}?)" if close else ""), file=file,
                            field=f"{field}.{unknown[0]}" if field else str(unknown[0]), line=lines.get(str(unknown[0])),
                            hint=f"allowed: {', '.join(_ENDPOINT_KEYS)}")
    values: dict[str, str | None] = {}
    for key in _ENDPOINT_KEYS:
        value = raw.get(key)
        where = f"{field}.{key}" if field else key
        if value is None:
            values[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ManifestError(f"expected a string, got {type(value).__name__}", file=file, field=where, line=lines.get(key))

        def missing(var: str, where: str = where) -> None:
            raise ManifestError(f"environment variable {var} is not set and has no default", file=file, field=where, line=lines.get(key), hint=f"set {var}, or write ${{{var}:-default}}")

        values[key] = expand_vars(str(value), env, on_missing=missing).strip() or None
    for key in ("name", "kind", "url"):
        if not values[key]:
            raise ManifestError(f"{key} is required", file=file, field=f"{field}.{key}" if field else key, line=lines.get(""))
    api_key = None
    if values["api_key_env"]:
        api_key = env.get(values["api_key_env"])
        if not api_key:
            raise ManifestError(f"environment variable {values['api_key_env']} (api_key_env) is not set", file=file, field=f"{field}.api_key_env" if field else "api_key_env", line=lines.get("api_key_env"))
    try:
        return Endpoint(values["name"], values["kind"], values["url"], values["model"], values["lane"], api_key)  # type: ignore[arg-type]
    except UsageError as exc:
        raise ManifestError(exc.message, file=file, field=field, line=lines.get(""), hint=exc.hint) from None


# ----------------------------------------------------------------------------- results


@record
class Check:
    """One request of the last attempt and what it showed."""

    name: str
    ok: bool
    detail: str
    request: str
    status: int | None = None
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "ok": self.ok, "request": self.request, "detail": self.detail}
        if self.status is not None:
            d["status"] = self.status
        d["elapsed_s"] = round(self.elapsed_s, 3)
        return d


@record
class EndpointResult:
    endpoint: Endpoint
    status: str = FAILED
    checks: list[Check] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    elapsed_s: float = 0.0
    attempts: int = 0

    @property
    def exit_code(self) -> ExitCode:
        if self.status == READY:
            return ExitCode.READY
        codes = [_EXIT_BY_CODE.get(p.code, ExitCode.NOT_READY) for p in self.problems if p.is_error]
        return next((c for c in _EXIT_PRECEDENCE if c in codes), ExitCode.NOT_READY)

    def to_dict(self) -> dict[str, Any]:
        ep = self.endpoint
        return {
            "name": ep.name, "kind": ep.kind, "url": ep.url, "model": ep.model, "lane": ep.lane,
            "status": self.status, "elapsed_s": round(self.elapsed_s, 3), "attempts": self.attempts,
            "checks": [c.to_dict() for c in self.checks], "problems": [p.to_dict() for p in self.problems],
        }


@record
class SmokeReport:
    endpoints: list[EndpointResult]
    elapsed_s: float = 0.0
    skipped: list[str] = field(default_factory=list)  # endpoints of disabled lanes

    @property
    def exit_code(self) -> ExitCode:
        codes = {r.exit_code for r in self.endpoints if r.status != READY}
        return next((c for c in _EXIT_PRECEDENCE if c in codes), ExitCode.READY)

    @property
    def status(self) -> str:
        return "ready" if self.exit_code == ExitCode.READY else "not-ready"

    @property
    def reason(self) -> str | None:
        bad = [r for r in self.endpoints if r.status != READY]
        if not bad:
            return None
        parts = [f"{r.endpoint.name}: {r.problems[0].message if r.problems else 'failed'}" for r in bad[:3]]
        return "; ".join(parts) + (f" (+{len(bad) - 3} more endpoints)" if len(bad) > 3 else "")

    def to_dict(self) -> dict[str, Any]:
        from .report import SCHEMA_VERSION

        d: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "status": self.status, "exit_code": int(self.exit_code), "command": "smoke",
            "elapsed_s": round(self.elapsed_s, 3), "endpoints": [r.to_dict() for r in self.endpoints],
        }
        if self.reason:
            d["reason"] = self.reason
        if self.skipped:
            d["skipped"] = list(self.skipped)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def render_human(report: SmokeReport, out: IO[str] | None = None) -> None:
    """One line per endpoint, then the verdict."""
    out = out or sys.stderr
    width = max([len(r.endpoint.name) for r in report.endpoints] + [4])
    for r in report.endpoints:
        ep = r.endpoint
        head = f"{'ok  ' if r.status == READY else 'FAIL'} {ep.name:<{width}}  {ep.kind:<10} {ep.url}"
        if r.status == READY:
            done = "; ".join(f"{c.name}: {c.detail}" for c in r.checks)
            print(f"{head}  ready in {r.elapsed_s:.2f}s  [{done}]", file=out)
        else:
            first = r.problems[0] if r.problems else None
            print(f"{head}  {first.code + ': ' + first.message if first else 'failed'}", file=out)
    if report.exit_code == ExitCode.READY:
        print(f"preflight smoke: ready ({len(report.endpoints)} endpoints, {report.elapsed_s:.2f}s)", file=out)
    else:
        print(f"preflight smoke: NOT READY (exit {int(report.exit_code)}): {report.reason}", file=out)


# ----------------------------------------------------------------------------- HTTP


@record
class _Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def message(self) -> str:
        """The server's own words: OpenAI/vLLM/llama.cpp error shapes, else the text."""
        try:
            doc = self.json()
        except ValueError:
            text = self.body.decode("utf-8", "replace").strip()
            return text[:200]
        if isinstance(doc, dict):
            err = doc.get("error")
            if isinstance(err, dict) and err.get("message"):
                return str(err["message"])[:200]
            for key in ("error", "message", "detail", "status"):
                if isinstance(doc.get(key), str) and doc[key]:
                    return doc[key][:200]
        return json.dumps(doc)[:200]


class _NoAnswer(Exception):
    def __init__(self, reason: str, *, final: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.final = final


def _http(method: str, url: str, *, body: Any = None, timeout: float, api_key: str | None) -> _Answer:
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, parts.port, timeout=timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"Accept": "application/json", "User-Agent": "lane-preflight-smoke"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        conn.request(method, target, body=data, headers=headers)
        resp = conn.getresponse()
        return _Answer(resp.status, resp.read(MAX_BODY))
    except ssl.SSLCertVerificationError as exc:
        raise _NoAnswer(f"TLS certificate not trusted: {exc.verify_message}", final=True) from None
    except ConnectionRefusedError:
        raise _NoAnswer("connection refused") from None
    except socket.gaierror:
        raise _NoAnswer(f"cannot resolve host {parts.hostname}") from None
    except TimeoutError:
        raise _NoAnswer(f"no answer within {timeout:.1f}s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _NoAnswer(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
    finally:
        conn.close()


# ----------------------------------------------------------------------------- probes


class _Wait(Exception):
    """Not ready yet; poll again. `answered` is False when no HTTP answer came back."""

    def __init__(self, reason: str, *, answered: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.answered = answered


class _Fail(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def _same_model(served: str, expected: str) -> bool:
    """llama.cpp reports the GGUF path (or its --alias); accept the file name or its stem."""
    if served == expected:
        return True
    base = served.rstrip("/").rsplit("/", 1)[-1]
    return expected in (base, base.removesuffix(".gguf"))


class _Probe:
    """One attempt at one endpoint: each request becomes a Check."""

    def __init__(self, ep: Endpoint, *, timeout: Callable[[], float], completion: bool) -> None:
        self.ep = ep
        self.timeout = timeout
        self.completion = completion
        self.checks: list[Check] = []

    def run(self) -> None:
        kind = self.ep.kind
        if kind == "http":
            self.get_ok("get", "")
            return
        self.get_ok("health", "/health")
        if kind in ("vllm", "llama.cpp"):
            ids = self.served_models()
            model = self.pick_model(ids, exact=kind == "vllm")
            if self.completion:
                self.complete(model)
        elif self.completion:
            self.embed()

    # -- plumbing

    def request(self, name: str, method: str, path: str, body: Any = None) -> _Answer:
        shown = f"{method} {path or urlsplit(self.ep.url).path or '/'}"
        t0 = time.monotonic()
        try:
            ans = _http(method, self.ep.url + path, body=body, timeout=self.timeout(), api_key=self.ep.api_key)
        except _NoAnswer as exc:
            self.checks.append(Check(name, False, exc.reason, shown, None, time.monotonic() - t0))
            if exc.final:
                raise _Fail(Problem(path or "/", pc.ENDPOINT_UNREACHABLE, f"{self.ep.label}: {exc.reason}")) from None
            raise _Wait(exc.reason, answered=False) from None
        self.checks.append(Check(name, 200 <= ans.status < 300, f"HTTP {ans.status}", shown, ans.status, time.monotonic() - t0))
        return ans

    def note(self, ok: bool, detail: str) -> None:
        self.checks[-1].ok = ok
        self.checks[-1].detail = detail

    def fail(self, path: str, code: str, message: str) -> _Fail:
        self.note(False, message)
        return _Fail(Problem(path or "/", code, message))

    def settle(self, ans: _Answer, path: str, *, wait_on: frozenset[int], code: str) -> None:
        """Return on 2xx; otherwise decide between waiting and failing for good."""
        if 200 <= ans.status < 300:
            return
        req = self.checks[-1].request
        said = ans.message()
        what = f"{req} answered {ans.status}" + (f": {said}" if said else "")
        if ans.status in wait_on:
            self.note(False, what)
            raise _Wait(what, answered=True)
        if ans.status in (401, 403):
            raise self.fail(path, pc.ENDPOINT_AUTH, f"{self.ep.label}: {what} (set {API_KEY_ENV} or the manifest's api_key_env)")
        raise self.fail(path, code, f"{self.ep.label}: {what}")

    def parse(self, ans: _Answer, path: str, code: str) -> Any:
        try:
            return ans.json()
        except ValueError:
            raise self.fail(path, code, f"{self.ep.label}: {self.checks[-1].request} did not answer JSON: {ans.body[:80]!r}") from None

    # -- checks

    def get_ok(self, name: str, path: str) -> None:
        ans = self.request(name, "GET", path)
        self.settle(ans, path, wait_on=_WAIT_STATUS_GET, code=pc.BAD_RESPONSE)
        self.note(True, "ok" if ans.status == 200 else f"HTTP {ans.status}")

    def served_models(self) -> list[str]:
        path = "/v1/models"
        ans = self.request("models", "GET", path)
        if ans.status == 404 and self.ep.kind == "llama.cpp":
            return self.props_model()
        self.settle(ans, path, wait_on=_WAIT_STATUS, code=pc.BAD_RESPONSE)
        doc = self.parse(ans, path, pc.BAD_RESPONSE)
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
            raise self.fail(path, pc.BAD_RESPONSE, f"{self.ep.label}: GET {path} is not an OpenAI model list")
        return [m["id"] for m in data]

    def props_model(self) -> list[str]:
        """Older llama.cpp servers have no /v1/models; /props names the loaded file."""
        path = "/props"
        ans = self.request("models", "GET", path)
        self.settle(ans, path, wait_on=_WAIT_STATUS, code=pc.BAD_RESPONSE)
        doc = self.parse(ans, path, pc.BAD_RESPONSE)
        doc = doc if isinstance(doc, dict) else {}
        names = [doc.get(k) for k in ("model_alias", "model_path")]
        return [n for n in names if isinstance(n, str) and n]

    def pick_model(self, ids: list[str], *, exact: bool) -> str:
        path = self.checks[-1].request.split(" ", 1)[1]
        if not ids:
            raise self.fail(path, pc.BAD_RESPONSE, f"{self.ep.label} lists no served model at {path}")
        want = self.ep.model
        if want is None:
            self.note(True, f"serves {ids}")
            return ids[0]
        hits = [i for i in ids if i == want] or ([] if exact else [i for i in ids if _same_model(i, want)])
        if not hits:
            fix = f" (start vLLM with --served-model-name {want}, or fix the endpoint's model)" if self.ep.kind == "vllm" else ""
            raise self.fail(path, pc.MODEL_MISMATCH, f"{self.ep.label} serves {ids} but endpoint {self.ep.name} expects {want!r}{fix}")
        self.note(True, f"serves {hits[0]!r}")
        return hits[0]

    def complete(self, model: str) -> None:
        path = "/v1/completions"
        ans = self.request("completion", "POST", path, {"model": model, "prompt": PROMPT, "max_tokens": 1, "temperature": 0})
        self.settle(ans, path, wait_on=_WAIT_STATUS, code=pc.COMPLETION_FAILED)
        doc = self.parse(ans, path, pc.COMPLETION_FAILED)
        choices = doc.get("choices") if isinstance(doc, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self.fail(path, pc.COMPLETION_FAILED, f"{self.ep.label}: POST {path} answered without choices: {ans.body[:120]!r}")
        self.note(True, f"1 token {choices[0].get('text', '')!r}")

    def embed(self) -> None:
        path = "/v1/embeddings"
        body: dict[str, Any] = {"input": PROMPT}
        if self.ep.model:
            body["model"] = self.ep.model
        ans = self.request("embedding", "POST", path, body)
        self.settle(ans, path, wait_on=_WAIT_STATUS, code=pc.EMBEDDING_FAILED)
        doc = self.parse(ans, path, pc.EMBEDDING_FAILED)
        data = doc.get("data") if isinstance(doc, dict) else None
        vector = data[0].get("embedding") if isinstance(data, list) and data and isinstance(data[0], dict) else None
        if not isinstance(vector, list) or not vector or not all(isinstance(x, (int, float)) for x in vector):
            raise self.fail(path, pc.EMBEDDING_FAILED, f"{self.ep.label}: POST {path} answered without an embedding vector")
        served = doc.get("model")
        if self.ep.model and isinstance(served, str) and served and not _same_model(served, self.ep.model):
            raise self.fail(path, pc.MODEL_MISMATCH, f"{self.ep.label} embeds with {served!r} but endpoint {self.ep.name} expects {self.ep.model!r}")
        self.note(True, f"dimension {len(vector)}")


# ----------------------------------------------------------------------------- polling


def _stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _secs(s: float) -> str:
    return f"{s:.1f}s" if s < 10 else f"{s:.0f}s"


def _watch(ep: Endpoint, *, deadline_s: float, interval_s: float, request_timeout_s: float, completion: bool,
           log: Callable[[str], None], log_every_s: float, stop: threading.Event) -> EndpointResult:
    start = time.monotonic()
    deadline = start + deadline_s
    result = EndpointResult(ep)
    last_reason: str | None = None
    last_log = float("-inf")

    def timeout() -> float:
        # Never let one request outlive the deadline by more than a moment.
        return max(0.1, min(request_timeout_s, deadline - time.monotonic()))

    while True:
        result.attempts += 1
        probe = _Probe(ep, timeout=timeout, completion=completion)
        try:
            probe.run()
        except _Fail as exc:
            result.problems.append(exc.problem)
            break
        except _Wait as exc:
            now = time.monotonic()
            waited = now - start
            if now >= deadline or stop.is_set():
                if exc.answered:
                    msg = f"{ep.label} not ready after {waited:.1f}s: {exc.reason}"
                    result.problems.append(Problem("/", pc.ENDPOINT_NOT_READY, msg))
                else:
                    msg = f"{ep.label} unreachable for {waited:.1f}s: {exc.reason}"
                    result.problems.append(Problem("/", pc.ENDPOINT_UNREACHABLE, msg))
                break
            if exc.reason != last_reason or now - last_log >= log_every_s:
                log(f"smoke: {ep.name}: waiting for {ep.label}: {exc.reason} ({waited:.1f}s elapsed, {_secs(deadline - now)} left)")
                last_reason, last_log = exc.reason, now
            stop.wait(min(interval_s, max(0.0, deadline - now)))
        else:
            result.status = READY
            break
        finally:
            result.checks = probe.checks
    result.elapsed_s = time.monotonic() - start
    if result.status == READY:
        log(f"smoke: {ep.name}: {ep.label} ready after {result.elapsed_s:.1f}s")
    else:
        log(f"smoke: {ep.name}: {result.problems[0].message}")
    return result


def run_smoke(
    endpoints: Sequence[Endpoint],
    *,
    deadline_s: float = 600,
    interval_s: float = 2,
    request_timeout_s: float = 10,
    completion: bool = True,
    log: Callable[[str], None] = _stderr_log,
    log_every_s: float = 5,
) -> SmokeReport:
    """Check every endpoint concurrently until each is ready or has failed.

    `completion=False` skips the one-token completion / one-input embedding and
    stops at health plus the served-model check. Waiting is logged once per
    endpoint when its reason changes and every `log_every_s` seconds otherwise.
    """
    if not endpoints:
        raise UsageError("no endpoints to check", hint=f"give --endpoint {SPEC_SYNTAX} or a manifest with an `endpoints:` list")
    seen: set[str] = set()
    for ep in endpoints:
        if ep.name in seen:
            raise UsageError(f"endpoint name {ep.name!r} is used twice")
        seen.add(ep.name)
    if deadline_s < 0 or interval_s <= 0 or request_timeout_s <= 0:
        raise UsageError("deadline must be >= 0, interval and request timeout > 0")
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            log(line)

    stop = threading.Event()
    start = time.monotonic()
    results: list[EndpointResult | None] = [None] * len(endpoints)

    def work(i: int, ep: Endpoint) -> None:
        try:
            results[i] = _watch(ep, deadline_s=deadline_s, interval_s=interval_s, request_timeout_s=request_timeout_s,
                                completion=completion, log=say, log_every_s=log_every_s, stop=stop)
        except Exception as exc:  # a bug must cost this endpoint, not the whole report
            crash = Problem("/", pc.BAD_RESPONSE, f"{ep.label}: the check crashed: {type(exc).__name__}: {exc}")
            results[i] = EndpointResult(ep, problems=[crash], elapsed_s=time.monotonic() - start)

    threads = [threading.Thread(target=work, args=(i, ep), name=f"smoke-{ep.name}", daemon=True) for i, ep in enumerate(endpoints)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except BaseException:
        stop.set()
        raise
    return SmokeReport([r for r in results if r is not None], time.monotonic() - start)
