"""Processes the tests start (registries, object stores): found, started and ended the
same way everywhere."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent


def terminate(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not ended within `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def installed(exe: str, version: str, folder_var: str) -> Path | None:
    """Where an ops/ script keeps the server it built or installed (the script's own lookup):
    $folder_var, else build/EXE-VERSION in the checkout, else the user's cache; None when
    it is not there."""
    if os.environ.get(folder_var):
        candidates = [Path(os.environ[folder_var])]
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        candidates = [REPO / "build" / f"{exe}-{version}", cache / "lane-preflight" / f"{exe}-{version}"]
    for folder in candidates:
        path = folder / "bin" / exe
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def required(path: Path | None, missing: str) -> Path:
    """`path`; when there is none, the tests that need it are skipped with `missing` (how to
    get it), or fail under CI=true, so a CI run cannot pass without having run them."""
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, name: str, timeout: float = 20.0) -> bool:
    """True once the port accepts connections; False when the process exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{name} did not listen on {port} within {timeout:g}s")


def start_listening(argv: Callable[[int], list[str]], log: Path, name: str) -> tuple[subprocess.Popen, int]:
    """Start `argv(port)` on a free port of 127.0.0.1 (its output appended to `log`) and wait
    until it listens; a port taken between picking and binding means another pick."""
    for _attempt in range(5):
        port = free_port()
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv(port), stdout=out, stderr=subprocess.STDOUT)
        if wait_listening(port, proc, name):
            return proc, port
    raise RuntimeError(f"{name} would not start; see {log}")


S = TypeVar("S", bound="ServerProcess")


class ServerProcess:
    """A server the tests run on 127.0.0.1 with its own `root` folder, its output in a log
    beside it; a subclass names it and says how it is started on a port (`argv`)."""

    name = "the server"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = root.parent / f"{root.name}.log"

    def argv(self, port: int) -> list[str]:
        raise NotImplementedError

    def start(self: S) -> S:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc, self.port = start_listening(self.argv, self.log, self.name)
        return self

    def stop(self) -> None:
        terminate(self.proc)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"
