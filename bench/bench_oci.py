"""Pull and push of a raw-layer ModelPack artifact through a local OCI registry, against curl.

Run from the repository root:  python bench/bench_oci.py [--size-mib 2048] [--rounds 3]
Starts the CNCF distribution registry (Debian's docker-registry; `bash ops/registry.sh`
installs it) on 127.0.0.1 with token auth (tests/oci_servers.py's token server), its
storage on the same disk as the checkout. One file of --size-mib random bytes:
  - pull: `preflight sync` of a file lane from oci://…:v1 into an empty folder, against
    `curl -o` of the same blob URL with the same kind of bearer token (target <= 1.3x),
    and against the floor max(curl, `openssl dgst -sha256` of the same bytes), bench/
    common.Floor: printed as `ratio to floor`, target <= 1.15x.
  - push: `preflight push` of the verified lane into a fresh repository (a full upload:
    the registry links blobs per repository), against the registry's own monolithic
    upload with curl (POST an upload session, then `curl -T FILE -X PUT …?digest=`).
    Target <= 1.3x.
preflight hashes while writing, fsyncs and renames on pull; curl does neither. Rounds
are interleaved so background load hits both alike. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import HASH_LABEL, Floor, Runs, Targets, compile_package, interleave, median, preflight_cmd, run, scratch, warm, write_random  # noqa: E402
from tests.oci_servers import RegistryServer  # noqa: E402

MiB = 2**20
TARGET = 1.3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=2048, help="size of the one raw layer (default 2048)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per command (default 3)")
    args = ap.parse_args()
    if not shutil.which("docker-registry") or not shutil.which("curl"):
        print("needs docker-registry (bash ops/registry.sh) and curl", file=sys.stderr)
        return 2
    compile_package()
    with scratch("bench-oci") as root:
        reg = RegistryServer(root / "registry", "token").start()
        try:
            return bench(root, reg, args.size_mib * MiB, args.rounds)
        finally:
            reg.stop()


def _token(reg: RegistryServer, repo: str) -> str:
    assert reg.token is not None
    return reg.token.sign([{"type": "repository", "name": repo, "actions": ["pull", "push"]}])


def bench(root: Path, reg: RegistryServer, size: int, rounds: int) -> int:
    mirror = root / "mirror" / "weights.bin"
    mirror.parent.mkdir(parents=True)
    write_random(mirror, size)
    digest = "sha256:" + hashlib.file_digest(open(mirror, "rb"), "sha256").hexdigest()
    docker = reg.docker_config(root / "docker")
    env = {"DOCKER_CONFIG": str(docker), "HOME": str(root / "home"), "PREFLIGHT_QUIET": "1"}
    src = root / "src"
    src.mkdir()
    (src / "lanes.yaml").write_text(json.dumps({"version": 1, "models_dir": str(src / "models"), "lanes": [
        {"name": "w", "kind": "file", "path": "w/weights.bin", "source": str(mirror), "sha256": digest[7:]}]}))
    run([*preflight_cmd(), "sync", "-m", str(src / "lanes.yaml")], env=env)
    run([*preflight_cmd(), "push", "w", "-m", str(src / "lanes.yaml"), "--to", f"oci://{reg.host}/bench/pull:v1"], env=env)
    warm([mirror, reg.blob_path(digest)])
    floor = Floor(Runs(), mirror)
    counter = {"n": 0}

    def pull_preflight() -> float:
        counter["n"] += 1
        d = root / f"pull-{counter['n']}"
        d.mkdir()
        (d / "lanes.yaml").write_text(json.dumps({"version": 1, "models_dir": str(d / "models"), "lanes": [
            {"name": "w", "kind": "file", "path": "w/weights.bin", "source": f"oci://{reg.host}/bench/pull:v1"}]}))
        p = run([*preflight_cmd(), "sync", "-m", str(d / "lanes.yaml")], env=env)
        shutil.rmtree(d)
        return p.wall_s

    def pull_curl() -> float:
        out = root / "curl.bin"
        url = f"http://{reg.host}/v2/bench/pull/blobs/{digest}"
        p = run(["curl", "-sS", "-f", "-H", f"Authorization: Bearer {_token(reg, 'bench/pull')}", "-o", str(out), url])
        out.unlink()
        return p.wall_s

    def push_preflight() -> float:
        counter["n"] += 1
        p = run([*preflight_cmd(), "push", "w", "-m", str(src / "lanes.yaml"), "--to", f"oci://{reg.host}/bench/push{counter['n']}:v1"],
                env=env)
        return p.wall_s

    def push_curl() -> float:
        counter["n"] += 1
        repo = f"bench/curl{counter['n']}"
        token = _token(reg, repo)
        conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=60)
        conn.request("POST", f"/v2/{repo}/blobs/uploads/", headers={"Authorization": f"Bearer {token}", "Content-Length": "0"})
        resp = conn.getresponse()
        resp.read()
        loc = urlsplit(resp.getheader("Location") or "")
        conn.close()
        url = f"http://{reg.host}{loc.path}?{loc.query + '&' if loc.query else ''}digest={digest}"
        p = run(["curl", "-sS", "-f", "-X", "PUT", "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/octet-stream",
                 "-T", str(mirror), url])
        return p.wall_s

    times = interleave({"pull preflight": pull_preflight, "pull curl": pull_curl, HASH_LABEL: floor.hash_once,
                        "push preflight": push_preflight, "push curl": push_curl}, rounds)
    for name, values in times.items():
        print(f"{name:21s} median {median(values):6.2f}s  ({', '.join(f'{v:.2f}' for v in values)}); "
              f"{size / MiB / median(values):.0f} MiB/s", flush=True)
    t = Targets()
    floor.check(t, {k: median(v) for k, v in times.items()}, "pull preflight", "pull curl", f"pull, {size // MiB} MiB raw layer")
    t.at_most("pull: preflight sync / curl", median(times["pull preflight"]) / median(times["pull curl"]), TARGET,
              f"{size // MiB} MiB raw layer")
    t.at_most("push: preflight push / curl monolithic PUT", median(times["push preflight"]) / median(times["push curl"]), TARGET,
              f"{size // MiB} MiB raw layer")
    return t.finish()


if __name__ == "__main__":
    sys.exit(main())
