"""Downloads on a shaped link: `preflight sync` vs curl, `aria2c -x16 -s16` and `hf download`.

Run as root from the repository root:  python bench/bench_transfer.py [--size-mib 4096]

Real model hosts cap each TCP connection, and the link is finite. This benchmark builds
both on 127.0.0.1 inside a network namespace it creates (ip netns), so no traffic
leaves the machine: the namespace's loopback gets a Linux `tbf` qdisc (the link:
--link-mbit), and tests/hubserver.py, started inside the namespace, sends each
connection's file bytes at most at --conn-mb MB/s and answers every request after
--latency-ms (netem is not available on these kernels; the first byte is delayed
by the server instead). Without namespaces (not root, no `ip`), it runs on plain
loopback and says so: the link is then not shaped.

  - one large file (safetensors, random data, --size-mib): `preflight sync` of a
    single-file lane (ranged pieces over pooled connections, hashed as the prefix
    completes, verified, published), `curl -L -o` (one connection), `aria2c -x16 -s16`
    and `hf download` (HF_HUB_DISABLE_XET=1). Targets: sync >= 0.9x the link rate,
    sync >= aria2c's throughput, peak RSS <= 200 MB.
  - --small-files small files (an hf-dir lane) with --latency-ms per request:
    `preflight sync` vs `hf download` of the same repository. Target: sync's wall
    time <= 0.5x hf download's.
  - where hashing becomes the limit: sha256 on one core of this machine (hashlib,
    from memory) against the shaped link rate; with --unshaped, the large file again
    with neither the link nor the connections capped.

Exits 1 when a target is missed. Every figure is measured in this run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PY, ROOT, Targets, checkout_env, compile_package, median, preflight_cmd, run, scratch, write_random  # noqa: E402

MiB = 2**20
MB = 10**6


class Net:
    """The namespace (or plain loopback) the server and every client run in."""

    def __init__(self, link_mbit: float | None) -> None:
        self.ns: str | None = None
        self.link_mbit = link_mbit
        self.shaped = False

    def setup(self) -> str:
        if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
            return "not root or no ip/tc: plain loopback, link NOT shaped"
        ns = f"pfbench{os.getpid()}"
        try:
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as exc:
            return f"cannot create a network namespace ({exc.stderr.strip()}): plain loopback, link NOT shaped"
        self.ns = ns
        self.sh("ip", "link", "set", "lo", "up")
        if self.link_mbit:
            self.shape(self.link_mbit)
        return f"network namespace {ns}, loopback shaped by tbf at {self.link_mbit:g} Mbit/s" if self.link_mbit else f"network namespace {ns}, not shaped"

    def shape(self, mbit: float | None) -> None:
        assert self.ns is not None
        subprocess.run(self.prefix() + ["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)
        self.shaped = False
        if mbit:
            burst = max(256 * 1024, int(mbit * 1e6 / 8 / 250))  # one timer tick's worth (HZ 250), at least 4 x the 64 KiB MTU
            self.sh("tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", f"{mbit:g}mbit", "burst", str(burst), "latency", "200ms")
            self.shaped = True

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns] if self.ns else []

    def sh(self, *cmd: str) -> None:
        subprocess.run(self.prefix() + list(cmd), check=True, capture_output=True, text=True)

    def teardown(self) -> None:
        if self.ns:
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
            self.ns = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, net: Net, repos: dict[str, Path], rate_mb: float | None, latency_ms: float) -> None:
        self.port, self.cdn_port = (8080, 8081) if net.ns else (free_port(), free_port())
        cmd = net.prefix() + [PY, "-m", "tests.hubserver", "--port", str(self.port), "--cdn-port", str(self.cdn_port), "--token", ""]
        for name, folder in repos.items():
            cmd += ["--repo", f"{name}={folder}"]
        if rate_mb:
            cmd += ["--rate", str(rate_mb * MB)]
        if latency_ms:
            cmd += ["--first-byte", str(latency_ms / 1000)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=checkout_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""  # the URL, once every file is hashed and served
        if not line.startswith("http://"):
            self.proc.kill()
            raise RuntimeError(f"the hub server did not start: {line}{self.proc.stderr.read() if self.proc.stderr else ''}")
        self.url = line.strip()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def big_repo(folder: Path, size: int) -> Path:
    from tests.builders import write_sparse_safetensors_layout

    folder.mkdir(parents=True)
    path = folder / "model.safetensors"
    rows = max(1, size // 4 // (4096 * 2))
    write_sparse_safetensors_layout(path, {f"w.{i}.weight": ("BF16", (rows, 4096)) for i in range(4)})
    total = path.stat().st_size
    data = total - rows * 4096 * 2 * 4
    write_random(path, total, offset=data)
    return path


def small_repo(folder: Path, n: int) -> int:
    """A tiny loadable llama folder (tests/repos.hf_model) plus small JSON files up to `n` files."""
    from tests.repos import hf_model

    base = hf_model()
    for rel, data in base.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    (folder / "extra").mkdir()
    for i in range(n - len(base)):
        (folder / "extra" / f"part-{i:04d}.json").write_text(json.dumps({"i": i, "pad": "x" * (200 + i % 3000)}))
    return n


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def sha256_rate() -> float:
    """Bytes per second of hashlib sha256 on one core, from memory."""
    data = os.urandom(64 * MiB)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        h = hashlib.sha256()
        for _ in range(4):
            h.update(data)
        best = max(best, 4 * len(data) / (time.perf_counter() - t))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=4096, help="size of the large file (default 4096 = 4 GiB)")
    ap.add_argument("--link-mbit", type=float, default=1000.0, help="the tbf link rate in Mbit/s (default 1000)")
    ap.add_argument("--conn-mb", type=float, default=25.0, help="the server's cap per connection in MB/s (default 25)")
    ap.add_argument("--latency-ms", type=float, default=30.0, help="first-byte latency of every request (default 30)")
    ap.add_argument("--small-files", type=int, default=500, help="files in the small-files repository (default 500)")
    ap.add_argument("--rounds", type=int, default=1, help="runs of each command (median reported)")
    ap.add_argument("--skip", action="append", default=[], choices=["curl", "aria2c", "hf", "large", "small"],
                    help="leave a command or a phase out (repeatable)")
    ap.add_argument("--unshaped", action="store_true", help="also the large file with neither link nor connections capped")
    args = ap.parse_args()

    compile_package()
    targets = Targets()
    net = Net(args.link_mbit)
    where = net.setup()
    print(f"network: {where}", flush=True)
    link_bps = args.link_mbit * 1e6 / 8 if net.shaped else None
    try:
        with scratch("bench-transfer") as tmp:
            size = args.size_mib * MiB
            t = time.monotonic()
            repos: dict[str, Path] = {}
            if "large" not in args.skip:
                big_repo(tmp / "repo-big", size)
                repos["org/big"] = tmp / "repo-big"
            if "small" not in args.skip:
                small_repo(tmp / "repo-small", args.small_files)
                repos["org/small"] = tmp / "repo-small"
            print(f"data built in {time.monotonic() - t:.1f}s", flush=True)
            server = Server(net, repos, args.conn_mb, args.latency_ms)
            print(f"server: {server.url}, each connection capped at {args.conn_mb:g} MB/s, first byte after {args.latency_ms:g} ms", flush=True)
            try:
                if "large" not in args.skip:
                    large(args, net, server, tmp, size, targets, link_bps)
                if "small" not in args.skip:
                    small(args, net, server, tmp, targets)
            finally:
                server.stop()
            rate = sha256_rate()
            print(f"sha256 on one core here: {rate / MB:.0f} MB/s; links faster than this are hashing-bound "
                  f"(the shaped link here: {link_bps / MB:.0f} MB/s)" if link_bps else f"sha256 on one core here: {rate / MB:.0f} MB/s", flush=True)
            if args.unshaped and "large" not in args.skip and net.ns:
                net.shape(None)
                server = Server(net, {"org/big": tmp / "repo-big"}, None, 0)
                try:
                    d = fresh(tmp / "vol-unshaped")
                    proc = run(net.prefix() + preflight_cmd() + ["sync", "-m", str(manifest(tmp, d, "org/big", single=True)), "--quiet"],
                               env=env_for(server, tmp))
                    print(f"  unshaped: preflight sync {proc.wall_s:.2f}s = {size / proc.wall_s / MB:.0f} MB/s "
                          f"({size / proc.wall_s / rate:.2f}x one core's sha256), CPU {proc.cpu_s:.1f}s, peak RSS {proc.maxrss_mb:.0f} MB", flush=True)
                finally:
                    server.stop()
    finally:
        net.teardown()
    return targets.finish()


def env_for(server: Server, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PREFLIGHT_"))}
    env.update(HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(tmp / "hf-home"),
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    return env


def manifest(tmp: Path, models: Path, repo: str, single: bool) -> Path:
    if single:
        lane = {"name": "big", "kind": "file", "path": "model.safetensors", "source": f"hf://{repo}/model.safetensors@main"}
    else:
        lane = {"name": "small", "kind": "hf-dir", "path": "small", "source": f"hf://{repo}@main"}
    path = tmp / f"lanes-{models.name}.yaml"
    path.write_text(json.dumps({"version": 1, "models_dir": str(models), "lanes": [lane]}))
    return path


def timed(label: str, size: int | None, runs: list, extra: str = "") -> float:
    wall = median(p.wall_s for p in runs)
    rate = f" = {size / wall / MB:.1f} MB/s" if size else ""
    print(f"  {label:<28} median {wall:.2f}s{rate}, CPU {median(p.cpu_s for p in runs):.1f}s, peak RSS "
          f"{max(p.maxrss_mb for p in runs):.0f} MB  (runs: {', '.join(f'{p.wall_s:.2f}' for p in runs)}){extra}", flush=True)
    return wall


def large(args, net: Net, server: Server, tmp: Path, size: int, targets: Targets, link_bps: float | None) -> None:
    env = env_for(server, tmp)
    url = f"{server.url}/org/big/resolve/main/model.safetensors"
    pre = net.prefix()
    size = (tmp / "repo-big" / "model.safetensors").stat().st_size
    print(f"large file: {size / MiB:.0f} MiB", flush=True)
    results: dict[str, list] = {}
    for _ in range(args.rounds):
        d = fresh(tmp / "vol-big")
        proc = run(pre + preflight_cmd() + ["sync", "-m", str(manifest(tmp, d, "org/big", True))], env=env)
        results.setdefault("preflight sync", []).append(proc)
        said = [line for line in proc.stderr.splitlines() if " in " in line and "from hf://" in line]
        if said:
            print(f"    (sync's own line for the file, fetch to verified: {said[-1].strip()})", flush=True)
        shutil.rmtree(d, ignore_errors=True)
        if "aria2c" not in args.skip and shutil.which("aria2c"):
            d = fresh(tmp / "aria")
            results.setdefault("aria2c -x16 -s16", []).append(run(pre + ["aria2c", "-x16", "-s16", "--file-allocation=none", "--allow-overwrite=true",
                                                                          "--console-log-level=warn", "--summary-interval=0", "-d", str(d), "-o", "model.safetensors", url], env=env))
            shutil.rmtree(d, ignore_errors=True)
        if "curl" not in args.skip:
            d = fresh(tmp / "curl")
            results.setdefault("curl -L -o", []).append(run(pre + ["curl", "-sS", "-f", "-L", "-o", str(d / "model.safetensors"), url], env=env))
            shutil.rmtree(d, ignore_errors=True)
        if "hf" not in args.skip and shutil.which("hf"):
            d = fresh(tmp / "hf")
            results.setdefault("hf download", []).append(run(pre + [shutil.which("hf") or "hf", "download", "org/big", "model.safetensors", "--local-dir", str(d)], env=env))
            shutil.rmtree(d, ignore_errors=True)
    walls = {name: timed(name, size, runs) for name, runs in results.items()}
    sync = walls["preflight sync"]
    if link_bps:
        targets.at_least("preflight sync / shaped link rate", size / sync / link_bps, 0.9,
                         f"{size / sync / MB:.1f} MB/s on a {link_bps / MB:.1f} MB/s link (whole process: listing, hashing, verify, publish)")
    if "aria2c -x16 -s16" in walls:
        targets.at_least("preflight sync throughput / aria2c's", walls["aria2c -x16 -s16"] / sync, 1.0, f"{sync:.2f}s vs {walls['aria2c -x16 -s16']:.2f}s")
    for ref in ("curl -L -o", "hf download"):
        if ref in walls:
            print(f"  {ref} time / preflight sync time: {walls[ref] / sync:.2f}x", flush=True)
    targets.at_most("peak RSS of preflight sync (large file)", max(p.maxrss_mb for p in results["preflight sync"]), 200.0, unit=" MB")


def small(args, net: Net, server: Server, tmp: Path, targets: Targets) -> None:
    env = env_for(server, tmp)
    pre = net.prefix()
    print(f"small files: {args.small_files} files, {args.latency_ms:g} ms first-byte latency per request", flush=True)
    results: dict[str, list] = {}
    for _ in range(args.rounds):
        d = fresh(tmp / "vol-small")
        results.setdefault("preflight sync", []).append(run(pre + preflight_cmd() + ["sync", "-m", str(manifest(tmp, d, "org/small", False)), "--quiet"], env=env))
        shutil.rmtree(d, ignore_errors=True)
        d = fresh(tmp / "vol-small")
        results.setdefault("preflight sync --workers 16", []).append(run(pre + preflight_cmd() + ["sync", "-m", str(manifest(tmp, d, "org/small", False)), "--quiet", "--workers", "16"], env=env))
        shutil.rmtree(d, ignore_errors=True)
        if "hf" not in args.skip and shutil.which("hf"):
            d = fresh(tmp / "hf-small")
            shutil.rmtree(tmp / "hf-home", ignore_errors=True)
            results.setdefault("hf download", []).append(run(pre + [shutil.which("hf") or "hf", "download", "org/small", "--local-dir", str(d)], env=env))
            shutil.rmtree(d, ignore_errors=True)
    walls = {name: timed(name, None, runs) for name, runs in results.items()}
    if "hf download" in walls:
        targets.at_most("small files: preflight sync / hf download wall time", walls["preflight sync"] / walls["hf download"], 0.5,
                        f"{walls['preflight sync']:.2f}s vs {walls['hf download']:.2f}s (sync's default --workers 16, hf's 8)")
        print(f"  with --workers 16: {walls['preflight sync --workers 16'] / walls['hf download']:.2f}x hf download's wall time", flush=True)


if __name__ == "__main__":
    sys.exit(main())
