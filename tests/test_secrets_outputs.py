"""No secret reaches an output: a sentinel token against every failure we can provoke.

A hostile server (tests.fake_servers.EchoAuthServer) sends the Authorization header
back in bodies, error headers, reason phrases, redirect Locations, Content-Length and
Content-Range; token files carry second lines, CR-LF, NUL and trailing spaces. Every
command's stdout, stderr, --json, --report, termination log, and every file left under
the test's folder (models, state, reports) is searched for the token in any form.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.fake_servers import EchoAuthServer

SENTINEL = "hf_SentinelQ7x2Lp9Vb4Nz8Rk3Wd6Ty1Hm5Jc"
NEEDLES = {
    "as is": SENTINEL,
    "head": SENTINEL[:10],
    "tail": SENTINEL[-10:],
    "url-quoted": quote(f"Bearer {SENTINEL}"),
    "base64": base64.b64encode(SENTINEL.encode()).decode()[:24],
}
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MODES = ["status:401", "status:403", "status:404", "status:500", "reason", "redirect", "bad-location",
         "content-length", "content-range"]
FAST = ["--retries", "0", "--connect-timeout", "3", "--stall-timeout", "5"]


class Bench:
    """A volume, a manifest with one hf:// lane, and the place every output of a run goes."""

    def __init__(self, root: Path, server: EchoAuthServer, *, locked: bool) -> None:
        self.root = root
        root.mkdir(exist_ok=True)
        self.server = server
        self.models = root / "models"
        self.manifest = root / "lanes.yaml"
        self.manifest.write_text(
            f"version: 1\nmodels_dir: {self.models}\n"
            "lanes:\n  - {name: llm, kind: hf-dir, path: vllm/llm, source: hf://org/llm@main}\n")
        if locked:  # sync reads the lock and goes straight to the file downloads
            lane = {"source": "hf://org/llm@main", "revision": "main", "commit": COMMIT,
                    "files": {"config.json": {"size": 100, "sha1": "0" * 40}}}
            (root / "lanes.lock.json").write_text(json.dumps({"version": 1, "lanes": {"llm": lane}}))
        self.runs = 0

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PREFLIGHT_", "HUGGING"))}
        env.update(HF_ENDPOINT=self.server.url, HF_HOME=str(self.root / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
                   HF_HUB_DISABLE_XET="1", HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5")
        env.update(extra)
        return env

    def run(self, command: str, *args: str, env: dict[str, str], outputs: bool = True) -> dict[str, str]:
        """Run one command; every text it left, by where it went."""
        self.runs += 1
        report = self.root / f"report-{self.runs}.json"
        tlog = self.root / f"termination-{self.runs}.log"
        argv = [sys.executable, "-m", "preflight.cli", command, *args]
        if outputs:
            argv += ["--json", "--report", str(report), "--termination-log", str(tlog)]
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=self.root)
        assert "Traceback" not in p.stderr, p.stderr
        texts = {"exit": str(p.returncode), "stdout": p.stdout, "stderr": p.stderr}
        for name, path in (("report", report), ("termination log", tlog)):
            if path.exists():
                texts[name] = path.read_text()
        return texts


def leaks(texts: dict[str, str]) -> list[str]:
    return [f"{needle} in {where}" for where, text in texts.items() for needle, value in NEEDLES.items() if value in text]


def files_with_sentinel(root: Path, keep: tuple[Path, ...] = ()) -> list[str]:
    found = []
    for f in root.rglob("*"):
        if f.is_file() and not f.is_symlink() and f not in keep:
            data = f.read_bytes()
            if any(v.encode() in data for v in NEEDLES.values()):
                found.append(str(f.relative_to(root)))
    return found


@pytest.fixture
def echo():
    with EchoAuthServer() as server:
        yield server


@pytest.mark.parametrize("mode", MODES)
def test_a_server_echoing_the_token_never_gets_it_printed(tmp_path: Path, echo: EchoAuthServer, mode: str) -> None:
    """The same hostile answer on the Hub API (sync resolving a revision, and `lock`), on
    the file download after a good API answer, and on the download of a locked lane; the
    token from HF_TOKEN and from a file."""
    echo.mode = mode
    token_file = tmp_path / "hf-token"
    token_file.write_text(SENTINEL + "\n")
    fast = [*FAST, "--retries", "1"] if mode == "content-range" else FAST  # the retry resumes with Range
    found: list[str] = []
    exits: list[str] = []
    for where in ("api", "download", "locked"):
        echo.api_ok = where == "download"
        bench = Bench(tmp_path / where, echo, locked=where == "locked")
        env_token = bench.env(HF_TOKEN=SENTINEL)
        runs = [bench.run("sync", "-m", str(bench.manifest), *fast, env=env_token),
                bench.run("sync", "-m", str(bench.manifest), *fast, "--token-file", str(token_file), env=bench.env())]
        if where == "api":
            runs.append(bench.run("lock", "-m", str(bench.manifest), "-o", str(bench.root / "out.lock.json"), env=env_token))
        for texts in runs:
            found += leaks(texts)
            exits.append(texts["exit"])
            assert "report" in texts and json.loads(texts["report"])["exit_code"] == int(texts["exit"]), texts
            assert texts["exit"] != "0" and texts.get("termination log"), texts
        found += files_with_sentinel(bench.root)
    sent = {path.split("?")[0].split("/")[1] for path, auth in echo.seen if SENTINEL in auth}
    assert {"api", "org"} <= sent, f"the token did not reach both the API and a download: {sent}"
    assert found == [], (mode, exits, found)


@pytest.mark.parametrize("content", [
    SENTINEL + "\nsecond-line-of-the-secret-file\n",
    SENTINEL + "\r\n",
    SENTINEL + "\x00trailing",
    SENTINEL + "   \n",
    "  " + SENTINEL[:20] + "\x00" + SENTINEL[20:] + "\n",
], ids=["second-line", "crlf", "nul", "trailing-spaces", "nul-inside"])
def test_a_malformed_token_file_never_shows_its_value(tmp_path: Path, echo: EchoAuthServer, content: str) -> None:
    echo.mode = "status:401"
    token_file = tmp_path / "hf-token"
    token_file.write_bytes(content.encode())
    found: list[str] = []
    for locked in (True, False):
        bench = Bench(tmp_path / ("locked" if locked else "api"), echo, locked=locked)
        for texts in (bench.run("sync", "-m", str(bench.manifest), *FAST, "--token-file", str(token_file), env=bench.env()),
                      bench.run("lock", "-m", str(bench.manifest), "--token-file", str(token_file), env=bench.env()),
                      bench.run("sync", "-m", str(bench.manifest), *FAST, env=bench.env(HF_TOKEN_PATH=str(token_file)))):
            assert texts["exit"] in ("2", "3", "4"), texts
            assert "report" in texts and texts.get("termination log"), texts
            found += leaks(texts)
        found += files_with_sentinel(bench.root)
    assert found == [], found


def test_every_command_with_the_token_in_the_environment(tmp_path: Path, echo: EchoAuthServer) -> None:
    """check, inspect, env, perms, smoke and usage errors run with the token in the
    environment (and as the smoke API key, echoed by the endpoint) print none of it."""
    echo.mode = "status:401"
    bench = Bench(tmp_path, echo, locked=True)
    env = bench.env(HF_TOKEN=SENTINEL, PREFLIGHT_SMOKE_API_KEY=SENTINEL, MY_SERVICE_PASSWORD=SENTINEL)
    m = str(bench.manifest)
    runs = [
        bench.run("check", "-m", m, env=env),
        bench.run("check", "-m", m, "--verify", "sometimes", env=env),
        bench.run("sync", "-m", m, "--offline", env=env),
        bench.run("sync", "-m", m, "--no-such-option", SENTINEL, env=env),
        bench.run("inspect", str(tmp_path), env=env, outputs=False),
        bench.run("env", "-m", m, env=env, outputs=False),
        bench.run("perms", "-m", m, "--uid", "0", "--gid", "0", env=env, outputs=False),
        bench.run("smoke", "--endpoint", f"svc=vllm@{echo.url}#m", "--deadline", "3", "--interval", "0.2", "--no-completion",
                  "--json", "--termination-log", str(tmp_path / "smoke-termination.log"), env=env, outputs=False),
    ]
    assert any(SENTINEL in auth for _path, auth in echo.seen)
    found = [leak for texts in runs for leak in leaks(texts)]
    assert found == [], found
    assert files_with_sentinel(tmp_path) == []


def test_smoke_report_file_masks_the_api_key(tmp_path: Path, echo: EchoAuthServer) -> None:
    echo.mode = "status:401"
    bench = Bench(tmp_path, echo, locked=False)
    texts = bench.run("smoke", "--endpoint", f"svc=vllm@{echo.url}#m", "--deadline", "3", "--no-completion",
                      env=bench.env(PREFLIGHT_SMOKE_API_KEY=SENTINEL))
    assert texts["exit"] == "4" and "report" in texts
    assert leaks(texts) == []


# ---------------------------------------------------------------- short secrets

SHORT = ["x", "k3y", "p4ss5"]  # 1, 3 and 5 characters: below the length a secret is masked at everywhere


def short_leaks(texts: dict[str, str], secret: str, user: str = "me") -> list[str]:
    """Where a short secret shows as a credential's value, or in a form it was sent in."""
    end = r"(?![A-Za-z0-9_-])"
    s = re.escape(secret)
    patterns = {
        "bearer": rf"Bearer {s}{end}", "password=": rf"password\s*[=:]\s*[\"']?{s}{end}", "url": rf"//{user}:{s}@",
        "user:password": rf"(?<![A-Za-z0-9_-]){user}:{s}{end}",
        "basic": re.escape(base64.b64encode(f"{user}:{secret}".encode()).decode()),
    }
    return [f"{name} in {where}" for where, text in texts.items() for name, p in patterns.items() if re.search(p, text)]


def every_file(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): f.read_text("utf-8", "replace") for f in root.rglob("*")
            if f.is_file() and not f.is_symlink() and f.stat().st_size < 4_000_000}


class EchoRegistry:
    """A registry that asks for basic auth and answers every authenticated request 401 with
    the credentials it was sent, in every form, in its error message."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization", "")
                if not auth.startswith("Basic "):
                    body = b'{"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}'
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="echo"')
                else:
                    user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    msg = f"{auth}; password={password}; login {user}:{password}; https://{user}:{password}@echo/; after {password} tries"
                    body = json.dumps({"errors": [{"code": "DENIED", "message": msg}, {"code": "X", "message": f"token {password}"}]}).encode()
                    self.send_response(401)
                    self.send_header("X-Echo", f"Basic {auth[6:]}")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> EchoRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.mark.parametrize("secret", SHORT, ids=[f"{len(s)}-char" for s in SHORT])
def test_a_short_registry_password_is_masked_in_every_output(tmp_path: Path, secret: str) -> None:
    """A Docker config.json with a short password; the registry echoes the credentials back
    in every form. stdout (--json), stderr, --report, the termination log (a required lane:
    exit 4) and report.json on the volume (an optional lane: the run is ready and leaves it)
    show none of them; ordinary words survive."""
    runs = {}
    with EchoRegistry() as reg:
        docker = tmp_path / "docker"
        docker.mkdir()
        (docker / "config.json").write_text(json.dumps({"auths": {reg.host: {"username": "me", "password": secret}}}))
        for required in (True, False):
            bench = Bench(tmp_path / f"required-{required}", EchoAuthServer(), locked=False)
            bench.models.mkdir()
            bench.manifest.write_text(f"version: 1\nmodels_dir: {bench.models}\nlanes:\n  - {{name: llm, kind: hf-dir, path: vllm/llm, "
                                      f"source: 'oci://{reg.host}/m:v1', required: {str(required).lower()}}}\n")
            runs[required] = bench.run("sync", "-m", str(bench.manifest), *FAST, env=bench.env(DOCKER_CONFIG=str(docker)))
    assert runs[True]["exit"] == "4" and runs[False]["exit"] == "0", runs
    for texts in runs.values():
        assert "DENIED" in texts["stdout"] and "***" in texts["stdout"], texts["stdout"]  # the echo is there, masked
    assert {"stdout", "stderr", "report", "termination log"} <= set(runs[True])
    files = {**every_file(tmp_path / "required-True"), **every_file(tmp_path / "required-False")}
    state = [name for name in files if name.endswith(".preflight/report.json")]
    assert state and "DENIED" in files[state[0]], sorted(files)
    found = short_leaks(runs[True], secret) + short_leaks(runs[False], secret) + short_leaks(files, secret)
    assert found == [], found
    assert not any(f'"password": "{secret}"' in text or f"password={secret};" in text for text in files.values())
    # the same word where it is no credential's value is left: ordinary text is not garbled
    assert f"after {secret} tries" in runs[True]["stderr"]


@pytest.mark.parametrize("secret", SHORT, ids=[f"{len(s)}-char" for s in SHORT])
def test_a_short_hub_token_and_api_key_are_masked_in_every_output(tmp_path: Path, echo: EchoAuthServer, secret: str) -> None:
    """A short HF_TOKEN echoed by the Hub (`Bearer x`), and a short smoke API key echoed by an endpoint."""
    echo.mode = "status:401"
    bench = Bench(tmp_path, echo, locked=False)
    runs = {"sync": bench.run("sync", "-m", str(bench.manifest), *FAST, env=bench.env(HF_TOKEN=secret)),
            "smoke": bench.run("smoke", "--endpoint", f"svc=vllm@{echo.url}#m", "--deadline", "3", "--no-completion", "--json",
                               "--termination-log", str(tmp_path / "smoke-termination.log"),
                               env=bench.env(PREFLIGHT_SMOKE_API_KEY=secret), outputs=False)}
    assert any(auth == f"Bearer {secret}" for _path, auth in echo.seen)
    found = [f"{cmd}: {leak}" for cmd, texts in runs.items() for leak in short_leaks(texts, secret)]
    found += short_leaks(every_file(tmp_path), secret)
    assert found == [], found
