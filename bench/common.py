"""Shared pieces of the process-level benchmarks: run a command and measure it, interleave, report targets.

A command is measured from outside, as an init container is: wall time from
spawn to exit, peak RSS from the kernel's rusage of that one child, and the
bytes it read from /proc/<pid>/io, read while the exited child is still a
zombie (waitid with WNOWAIT), so nothing inside the process is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
MiB = 2**20
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def preflight_cmd() -> list[str]:
    """The installed console script, run by this interpreter (no shell shims in the figures)."""
    script = Path(PY).parent / "preflight"
    if script.is_file():
        return [PY, str(script)]
    return [PY, "-m", "preflight.cli"]


@dataclass(frozen=True)
class Proc:
    wall_s: float
    cpu_s: float  # user + system CPU time of the process
    maxrss_mb: float
    rchar: int  # bytes returned by read-like syscalls (page cache hits included)
    read_bytes: int  # bytes fetched from the storage layer
    returncode: int
    stderr: str


# Runs in a small separate interpreter. Linux carries the parent's peak RSS into a
# child across fork/exec (signal->maxrss), so spawning from this process, which holds
# numpy and test data, would inflate every figure; the launcher is ~10 MB.
_LAUNCHER = r"""
import json, os, subprocess, sys, time
for line in sys.stdin:
    req = json.loads(line)
    with open(req["stderr"], "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(req["cmd"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                             env=req["env"], cwd=req["cwd"])
        os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
        wall = time.perf_counter() - t0
        try:
            with open("/proc/%d/io" % p.pid) as f:
                io = dict((k, int(v)) for k, v in (l.split(": ") for l in f.read().splitlines()))
        except OSError:
            io = {}
        _pid, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    sys.stdout.write(json.dumps({"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "maxrss_kb": ru.ru_maxrss, "io": io, "rc": p.returncode}) + "\n")
    sys.stdout.flush()
"""
_launcher: subprocess.Popen | None = None


def _launch() -> subprocess.Popen:
    global _launcher
    if _launcher is None or _launcher.poll() is not None:
        _launcher = subprocess.Popen([PY, "-S", "-c", _LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return _launcher


def run(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
        expect_rc: int | None = 0) -> Proc:
    """Run `cmd` once with stdout discarded; raise when its exit code is not `expect_rc`."""
    launcher = _launch()
    assert launcher.stdin is not None and launcher.stdout is not None
    fd, err_path = tempfile.mkstemp(prefix="bench-stderr-")
    os.close(fd)
    try:
        launcher.stdin.write(json.dumps({"cmd": [str(c) for c in cmd], "env": checkout_env(env),
                                         "cwd": str(cwd) if cwd else None, "stderr": err_path}) + "\n")
        launcher.stdin.flush()
        answer = json.loads(launcher.stdout.readline())
        stderr = Path(err_path).read_text("utf-8", "replace")
    finally:
        os.unlink(err_path)
    io = answer["io"]
    proc = Proc(answer["wall"], answer["cpu"], answer["maxrss_kb"] / 1024, io.get("rchar", -1), io.get("read_bytes", -1), answer["rc"], stderr)
    if expect_rc is not None and proc.returncode != expect_rc:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {proc.returncode}, expected {expect_rc}:\n{stderr[-3000:]}")
    return proc


def checkout_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this environment) with the checkout first on PYTHONPATH.

    An installed or editable `preflight` elsewhere would otherwise be what the
    console script imports; every command gets the same path, references included.
    """
    out = dict(env if env is not None else os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), out.get("PYTHONPATH", "")) if p)
    return out


def compile_package() -> None:
    """Write preflight's bytecode, as installing the wheel does (an editable checkout under
    PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module on every start)."""
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "preflight")], check=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})


def interleave(commands: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call every timer once per round, rotating the order, so background load hits each alike."""
    names = list(commands)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            out[n].append(commands[n]())
    return out


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def object_args(doc: str) -> argparse.Namespace:
    """The command line of a benchmark that downloads one object: --rounds, --gib."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gib", type=float, default=2.0, help="size of the object in GiB (default 2)")
    return parser.parse_args()


class Runs:
    """What the timers given to `interleave` measure besides wall time: each run's CPU
    seconds by label, and the peak RSS of the runs that ask for it."""

    def __init__(self) -> None:
        self.cpu: dict[str, list[float]] = {}
        self.rss: list[float] = []

    def timed(self, label: str, cmd: Sequence[str], env: Mapping[str, str], *, rss: bool = False) -> float:
        """Run `cmd` once; its wall time."""
        proc = run(cmd, env=env)
        self.cpu.setdefault(label, []).append(proc.cpu_s)
        if rss:
            self.rss.append(proc.maxrss_mb)
        return proc.wall_s

    def sync_into(self, label: str, cmd: Sequence[str], env: Mapping[str, str], out: Path, size: int) -> Callable[[], float]:
        """A timer for `interleave`: `cmd` (a `preflight sync` of the lane big/model.safetensors)
        into an emptied `out`, its peak RSS kept; checks the file arrived whole."""

        def one() -> float:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            wall = self.timed(label, cmd, env, rss=True)
            assert (out / "big" / "model.safetensors").stat().st_size == size
            return wall
        return one

    def medians(self, times: Mapping[str, list[float]], what: str, size: int) -> dict[str, float]:
        """Each label's median wall time, printed with the MiB/s it makes of `size` bytes, its
        median CPU time and every run."""
        med = {k: median(v) for k, v in times.items()}
        width = max(len(k) for k in med)
        for k, v in med.items():
            print(f"  {what}, {k:{width}s} median {v:.2f}s = {size / v / MiB:.0f} MiB/s, CPU {median(self.cpu[k]):.2f}s"
                  f"  (runs: {', '.join(f'{x:.2f}' for x in times[k])})")
        return med


FLOOR_LIMIT = 1.15
HASH_LABEL = "sha256 (openssl dgst)"


class Floor:
    """The floor of a verified download, measured in the same run as the download.

    No download that checks sha256 can beat the slower of moving the bytes and hashing
    them, so its floor is max(move, hash), each a median of interleaved runs:
      - move: the reference command moving the same bytes from the same place into a
        file on the same disk (curl -o FILE from the same server; cp for a mirror). To a
        file, not to /dev/null: preflight must put every byte in that disk's page cache
        too, and /dev/null would leave that cost out of the reference only. Neither
        curl nor cp fsyncs; preflight does before it publishes, and that is not in
        the floor (write-behind overlaps most of it);
      - hash: `openssl dgst -sha256` of the same bytes from the page cache, the OpenSSL
        sha256 that Python's hashlib calls (coreutils sha256sum does not use the CPU's
        SHA instructions on this machine and is several times slower: it would flatter
        the ratio).
    """

    def __init__(self, runs: Runs, data: Path, env: Mapping[str, str] | None = None) -> None:
        self.runs, self.data, self.env = runs, data, dict(env if env is not None else os.environ)

    def hash_once(self) -> float:
        """One timed `openssl dgst -sha256` of the data (a timer for `interleave`, under HASH_LABEL)."""
        return self.runs.timed(HASH_LABEL, ["openssl", "dgst", "-sha256", str(self.data)], self.env)

    def check(self, targets: Targets, med: Mapping[str, float], sync: str, move: str, what: str) -> float:
        """Print `sync`'s ratio to the floor max(med[move], med[HASH_LABEL]) and hold it to FLOOR_LIMIT."""
        floor = max(med[move], med[HASH_LABEL])
        bound = move if med[move] >= med[HASH_LABEL] else "sha256"
        ratio = med[sync] / floor
        print(f"  ratio to floor: {ratio:.2f}x ({sync} {med[sync]:.2f}s; floor {floor:.2f}s = max({move} {med[move]:.2f}s, "
              f"sha256 {med[HASH_LABEL]:.2f}s), bound by {bound})", flush=True)
        targets.at_most(f"{what}: {sync} / floor", ratio, FLOOR_LIMIT, f"{med[sync]:.2f}s vs {floor:.2f}s")
        return ratio


def warm(paths: Iterable[Path]) -> None:
    """Read files once so the page cache holds them, as on a restart of the container."""
    buf = bytearray(8 * 2**20)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def write_random(path: Path, size: int, *, block: int = 64 * 2**20, offset: int = 0) -> None:
    """Fill `path` from `offset` to `size` with incompressible bytes (one random block, repeated)."""
    import numpy as np

    data = np.random.default_rng().bytes(block)
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.seek(offset)
        left = size - offset
        while left > 0:
            n = min(left, block)
            f.write(data[:n])
            left -= n


@contextmanager
def scratch(name: str) -> Iterator[Path]:
    """A temporary folder under the repository's ignored build/ (same disk as the checkout), removed after."""
    base = ROOT / "build"
    base.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Targets:
    """Collects measured figures against their limits; `finish` prints a verdict and gives the exit code."""

    missed: list[str] = field(default_factory=list)

    def at_most(self, label: str, value: float, limit: float, detail: str = "", unit: str = "x") -> None:
        ok = value <= limit
        print(f"{'ok  ' if ok else 'MISS'} {label}: {value:.3g}{unit} (target <= {limit:g}{unit}){'; ' + detail if detail else ''}", flush=True)
        if not ok:
            self.missed.append(label)

    def at_least(self, label: str, value: float, limit: float, detail: str = "", unit: str = "x") -> None:
        ok = value >= limit
        print(f"{'ok  ' if ok else 'MISS'} {label}: {value:.3g}{unit} (target >= {limit:g}{unit}){'; ' + detail if detail else ''}", flush=True)
        if not ok:
            self.missed.append(label)

    def holds(self, label: str, ok: bool, detail: str = "") -> None:
        print(f"{'ok  ' if ok else 'MISS'} {label}{': ' + detail if detail else ''}", flush=True)
        if not ok:
            self.missed.append(label)

    def finish(self) -> int:
        if self.missed:
            print(f"{len(self.missed)} target(s) missed: {', '.join(self.missed)}", flush=True)
            return 1
        print("all targets met", flush=True)
        return 0
