"""End-to-end `preflight sync` against the local Hub server: layouts, re-runs, repairs, offline, disk space.

Every test runs the real command in a subprocess and asserts what a user sees: the exit
code, the JSON report, the files on the volume, and the requests the Hub received.
The helpers at the top are shared with the fault, lease and lock tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import hubserver
from tests.hubserver import HubServer
from tests.repos import gguf_file, gguf_split, hf_model, write_tree

STATE = ".preflight"
# Files under .preflight/ that a finished run may leave; anything else there is debris.
STATE_FILES = {"receipts.json", "report.json", "ready.json"}


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    report: dict | None
    termination: str | None
    seconds: float

    def lane(self, name: str) -> dict:
        assert self.report is not None, f"no report; stderr:\n{self.stderr}"
        return next(lane for lane in self.report["lanes"] if lane["name"] == name)

    def codes(self, name: str) -> list[str]:
        return [p["code"] for p in self.lane(name)["problems"]]

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


_RUSAGE = r"""
import json, resource, subprocess, sys
p = subprocess.run(sys.argv[2:], capture_output=True, text=True)
u = resource.getrusage(resource.RUSAGE_CHILDREN)
json.dump({"code": p.returncode, "out": p.stdout, "err": p.stderr, "cpu": u.ru_utime + u.ru_stime, "rss_mb": u.ru_maxrss / 1024}, open(sys.argv[1], "w"))
"""


class Volume:
    """A manifest and a models folder in a fresh temporary directory, and a way to run preflight on them."""

    def __init__(self, root: Path, hub: HubServer | None) -> None:
        self.root = root
        self.hub = hub
        self.models = root / "models"
        self.manifest = root / "lanes.yaml"
        self._runs = 0

    def write(self, lanes: Sequence[Mapping], **top: object) -> Volume:
        doc = {"version": 1, "models_dir": str(self.models), **top, "lanes": list(lanes)}
        self.manifest.write_text(json.dumps(doc, indent=2))
        return self

    def env(self, token: bool = True, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PREFLIGHT_"))}
        env["HF_HOME"] = str(self.root / "hf-home")  # never a real login token
        env["PREFLIGHT_RAMP"] = "0"  # every connection from the start: the piece layout the tests expect does not hang on timing
        if self.hub is not None:
            env.update(self.hub.env(token=token))
        env.update(extra)
        return env

    def argv(self, command: str, *args: str) -> list[str]:
        self._runs += 1
        report = self.root / f"report-{self._runs}.json"
        tlog = self.root / f"termination-{self._runs}.log"
        argv = [sys.executable, "-m", "preflight.cli", command, "-m", str(self.manifest), *args]
        if command in ("sync", "check"):
            argv += ["--report", str(report), "--termination-log", str(tlog)]
        return argv

    def run(self, command: str = "sync", *args: str, env: Mapping[str, str] | None = None,
            timeout: float = 60, token: bool = True) -> Run:
        argv = self.argv(command, *args)
        started = time.monotonic()
        p = subprocess.run(argv, env=dict(env) if env is not None else self.env(token), capture_output=True,
                           text=True, timeout=timeout, cwd=self.root)
        return self._result(argv, p.returncode, p.stdout, p.stderr, time.monotonic() - started)

    def spawn(self, command: str = "sync", *args: str, env: Mapping[str, str] | None = None) -> tuple[subprocess.Popen, list[str]]:
        argv = self.argv(command, *args)
        p = subprocess.Popen(argv, env=dict(env) if env is not None else self.env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=self.root)
        return p, argv

    def finish(self, proc: subprocess.Popen, argv: list[str], timeout: float = 60) -> Run:
        started = time.monotonic()
        out, err = proc.communicate(timeout=timeout)
        return self._result(argv, proc.returncode, out, err, time.monotonic() - started)

    def _result(self, argv: list[str], code: int, out: str, err: str, seconds: float) -> Run:
        if "--report" not in argv:
            return Run(code, out, err, None, None, seconds)
        report_path = Path(argv[argv.index("--report") + 1])
        tlog = Path(argv[argv.index("--termination-log") + 1])
        report = json.loads(report_path.read_text()) if report_path.exists() else None
        return Run(code, out, err, report, tlog.read_text() if tlog.exists() else None, seconds)

    def run_measured(self, command: str = "sync", *args: str, env: Mapping[str, str] | None = None,
                     timeout: float = 600) -> tuple[Run, float, float]:
        """`preflight COMMAND` as the only child of a fresh wrapper process, which reports the
        child's CPU seconds and peak RSS in MB (RUSAGE_CHILDREN of a process that had no
        other child: the test process's own size and other children do not count)."""
        argv = self.argv(command, *args)
        out = self.root / "rusage.json"
        subprocess.run([sys.executable, "-c", _RUSAGE, str(out), *argv], env=dict(env) if env is not None else self.env(),
                       cwd=self.root, timeout=timeout, check=True)
        m = json.loads(out.read_text())
        return self._result(argv, m["code"], m["out"], m["err"], 0.0), m["cpu"], m["rss_mb"]

    def tree(self, lane_path: str) -> dict[str, bytes]:
        root = self.models / lane_path
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    def debris(self, *, allow_partial: bool = False) -> list[str]:
        """Temp, staging and probe files left on the volume (partial downloads only if not allowed)."""
        found = []
        for p in self.models.rglob("*"):
            rel = p.relative_to(self.models).as_posix()
            if p.is_dir():
                continue
            if rel.startswith(STATE + "/"):
                inner = rel[len(STATE) + 1:]
                if inner in STATE_FILES:
                    continue
                if allow_partial and inner.startswith("staging/") and inner.endswith(".part"):
                    continue
                found.append(rel)
            elif p.name.startswith(".") or p.name.endswith((".part", ".tmp", ".lnk", ".incomplete")):
                found.append(rel)
        return sorted(found)

    def partials(self) -> list[Path]:
        staging = self.models / STATE / "staging"
        return sorted(staging.glob("*.part")) if staging.is_dir() else []

    def partial_sizes(self) -> list[int]:
        """Sizes of the staged partials; one published (renamed away) between listing and stat is skipped."""
        sizes = []
        for path in self.partials():
            try:
                sizes.append(path.stat().st_size)
            except FileNotFoundError:
                pass
        return sizes


def hub_downloads(hub: HubServer, repo_id: str | None = None) -> int:
    """File-byte requests (resolve or CDN GETs) the hub received."""
    return hub.count(repo_id, kind="resolve") + hub.count(repo_id, kind="cdn")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


@pytest.fixture
def vol(tmp_path: Path, hub_server: HubServer) -> Volume:
    return Volume(tmp_path, hub_server)


def hf_lane(name: str, path: str, source: str, kind: str = "hf-dir", **extra: object) -> dict:
    return {"name": name, "kind": kind, "path": path, "source": source, **extra}


# --------------------------------------------------------------------------- first sync, re-sync, check


def test_empty_volume_sync_then_check_then_resync_fetches_nothing(vol: Volume, hub_server: HubServer) -> None:
    files = hf_model()
    hub_server.add_repo("org/llm", files)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])

    first = vol.run("sync", "--json")
    assert first.code == 0, first.stderr
    assert json.loads(first.stdout)["status"] == "ready"
    lane = first.lane("llm")
    assert lane["status"] == "ready" and lane["problems"] == []
    assert lane["fetched_files"] == len(files)
    assert vol.tree("vllm/llm") == files
    assert vol.debris() == []
    assert (vol.models / STATE / "ready.json").exists()
    assert first.termination is None

    check = vol.run("check")
    assert check.code == 0, check.stderr
    assert check.lane("llm")["status"] == "ready"

    hub_server.clear_requests()
    again = vol.run("sync")
    assert again.code == 0, again.stderr
    assert hub_downloads(hub_server) == 0
    assert "fetched_files" not in again.lane("llm")
    assert vol.tree("vllm/llm") == files


def test_with_a_lock_a_resync_makes_at_most_one_request_per_lane_and_offline_none(vol: Volume, hub_server: HubServer) -> None:
    hub_server.add_repo("org/llm", hf_model())
    hub_server.add_repo("org/gguf", gguf_file("tiny.Q8_0.gguf"))
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main"),
               hf_lane("tiny", "gguf/tiny.Q8_0.gguf", "hf://org/gguf/tiny.Q8_0.gguf@main", kind="gguf")])
    locked = vol.run("lock")
    assert locked.code == 0, locked.stderr
    assert (vol.root / "lanes.lock.json").exists()
    assert vol.run("sync").code == 0

    hub_server.clear_requests()
    again = vol.run("sync")
    assert again.code == 0, again.stderr
    assert hub_server.count("org/llm", method=None) <= 1
    assert hub_server.count("org/gguf", method=None) <= 1
    assert hub_downloads(hub_server) == 0

    hub_server.clear_requests()
    offline = vol.run("sync", "--offline")
    assert offline.code == 0, offline.stderr
    assert hub_server.requests == []


# --------------------------------------------------------------------------- layouts


def test_sharded_hf_dir(vol: Volume, hub_server: HubServer) -> None:
    files = hf_model(sharded=True)
    assert sum(name.endswith(".safetensors") for name in files) == 3
    hub_server.add_repo("org/sharded", files)
    vol.write([hf_lane("big", "vllm/big", "hf://org/sharded@main")])
    r = vol.run()
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/big") == files
    assert vol.debris() == []


def test_single_gguf(vol: Volume, hub_server: HubServer) -> None:
    files = gguf_file("tiny.Q8_0.gguf")
    hub_server.add_repo("org/gguf", {**files, "README.md": b"# tiny\n"})
    vol.write([hf_lane("tiny", "gguf/tiny.Q8_0.gguf", "hf://org/gguf/tiny.Q8_0.gguf@main", kind="gguf")])
    r = vol.run()
    assert r.code == 0, r.stderr
    assert vol.tree("gguf") == files  # only the named file, not the rest of the repo
    assert vol.debris() == []


def test_split_gguf_fetches_every_part(vol: Volume, hub_server: HubServer) -> None:
    files = gguf_split("big", 3)
    hub_server.add_repo("org/split", files)
    vol.write([hf_lane("big", "gguf/big-00001-of-00003.gguf", "hf://org/split/big-00001-of-00003.gguf@main", kind="gguf")])
    r = vol.run()
    assert r.code == 0, r.stderr
    assert r.lane("big")["files"] == 3
    assert vol.tree("gguf") == files
    assert vol.debris() == []


def test_hf_cache_layout(vol: Volume, hub_server: HubServer) -> None:
    files = hf_model()
    commit = hub_server.add_repo("org/embed", files)
    vol.write([hf_lane("embed", "hf-cache/hub", "hf://org/embed@main", kind="hf-cache")])
    r = vol.run()
    assert r.code == 0, r.stderr
    repo = vol.models / "hf-cache/hub/models--org--embed"
    assert (repo / "refs" / "main").read_text().strip() == commit
    snapshot = repo / "snapshots" / commit
    for rel, data in files.items():
        link = snapshot / rel
        assert link.is_symlink(), rel
        target = link.resolve()
        assert target.parent == (repo / "blobs").resolve()
        assert target.read_bytes() == data
    # the LFS blob is named by its sha256, as huggingface_hub names it
    assert (repo / "blobs" / sha256(files["model.safetensors"])).is_file()
    assert vol.debris() == []
    check = vol.run("check")
    assert check.code == 0, check.stderr


def test_hf_cache_is_readable_by_huggingface_hub_offline(vol: Volume, hub_server: HubServer) -> None:
    files = hf_model()
    commit = hub_server.add_repo("org/embed", files)
    vol.write([hf_lane("embed", "hub", "hf://org/embed@main", kind="hf-cache")])
    assert vol.run().code == 0
    code = ("import sys\nfrom huggingface_hub import snapshot_download\n"
            "print(snapshot_download('org/embed', cache_dir=sys.argv[1]))")
    p = subprocess.run([sys.executable, "-c", code, str(vol.models / "hub")], capture_output=True, text=True,
                       env=vol.env(HF_HUB_OFFLINE="1"), timeout=60)
    assert p.returncode == 0, p.stderr
    assert Path(p.stdout.strip()).name == commit


@pytest.mark.parametrize("pin", ["commit", "tag"])
def test_revision_pinned_to_a_commit_or_tag(vol: Volume, hub_server: HubServer, pin: str) -> None:
    old = hf_model(extra={"VERSION": b"1\n"})
    first = hub_server.add_repo("org/llm", old, tags=["v1"])
    hub_server.add_repo("org/llm", hf_model(extra={"VERSION": b"2\n"}))
    revision = first if pin == "commit" else "v1"
    vol.write([hf_lane("llm", "vllm/llm", f"hf://org/llm@{revision}")])
    r = vol.run()
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == old
    assert r.lane("llm")["revision"] == first
    resolves = {q.revision for q in hub_server.requests if q.kind == "resolve"}
    assert resolves == {first}


def test_include_and_exclude_globs(vol: Volume, hub_server: HubServer) -> None:
    files = hf_model(extra={"original/consolidated.pth": b"\x80\x02pickle", "README.md": b"# readme\n"})
    hub_server.add_repo("org/llm", files)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main", include=["*.safetensors", "*.json"],
                       exclude=["generation_config.json"])])
    r = vol.run()
    assert r.code == 0, r.stderr
    got = vol.tree("vllm/llm")
    assert set(got) == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert hub_server.count("org/llm", "original/consolidated.pth") == 0
    assert hub_server.count("org/llm", "README.md") == 0


def test_https_url_lane_with_sha256(vol: Volume, hub_server: HubServer) -> None:
    data = gguf_file("clip.gguf")["clip.gguf"]
    url = hub_server.add_url("/files/clip.gguf", data)
    vol.write([{"name": "clip", "kind": "gguf", "path": "clip/clip.gguf", "source": url, "sha256": sha256(data),
                "size": len(data)}])
    r = vol.run()
    assert r.code == 0, r.stderr
    assert (vol.models / "clip/clip.gguf").read_bytes() == data
    assert hub_server.count(path="/files/clip.gguf") == 1
    assert vol.debris() == []


def test_https_url_lane_with_a_wrong_sha256_is_not_published(vol: Volume, hub_server: HubServer) -> None:
    data = gguf_file("clip.gguf")["clip.gguf"]
    url = hub_server.add_url("/files/clip.gguf", data)
    vol.write([{"name": "clip", "kind": "gguf", "path": "clip/clip.gguf", "source": url, "sha256": "0" * 64}])
    r = vol.run("sync", "--retries", "0")
    assert r.code == 3, r.stderr
    assert "sha256" in r.lane("clip")["problems"][-1]["message"]
    assert not (vol.models / "clip/clip.gguf").exists()
    assert vol.debris() == []


def test_a_dangerous_pickle_is_never_published_and_the_valid_file_stays(vol: Volume, hub_server: HubServer) -> None:
    from tests.example_repos import malicious_checkpoint, whisper_checkpoint

    good, evil = whisper_checkpoint(), malicious_checkpoint()
    lane = {"name": "whisper", "kind": "file", "path": "whisper/small.pt", "allow_pickle": True}
    vol.write([{**lane, "source": hub_server.add_url("/files/small.pt", good), "sha256": sha256(good)}])
    assert vol.run().code == 0
    target = vol.models / "whisper/small.pt"
    before = target.stat().st_ino
    # the manifest now names the malicious file, with its own (matching) digest
    vol.write([{**lane, "source": hub_server.add_url("/files/evil.pt", evil), "sha256": sha256(evil)}])
    r = vol.run("sync", "--retries", "3")
    assert r.code == 1, r.stderr
    codes = [p["code"] for p in r.lane("whisper")["problems"]]
    assert "dangerous-pickle" in codes, codes
    assert "posix.system" in r.stderr or "os.system" in r.stderr
    assert target.read_bytes() == good and target.stat().st_ino == before
    assert hub_server.count(path="/files/evil.pt") == 1  # refused once, not retried
    assert vol.debris() == []


def test_local_mirror_lane(vol: Volume, tmp_path: Path) -> None:
    files = hf_model(sharded=True)
    mirror = write_tree(tmp_path / "mirror" / "llm", files)
    vol.write([{"name": "llm", "kind": "hf-dir", "path": "vllm/llm", "source": f"file://{mirror}"}])
    r = vol.run()
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == files
    assert vol.hub is not None and vol.hub.requests == []
    assert vol.debris() == []


# --------------------------------------------------------------------------- repairs


def test_corrupt_and_truncated_files_are_replaced_and_valid_ones_left_alone(vol: Volume, hub_server: HubServer) -> None:
    files = hf_model(sharded=True)
    hub_server.add_repo("org/llm", files)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    assert vol.run().code == 0
    root = vol.models / "vllm/llm"
    shard1, shard2 = root / "model-00001-of-00003.safetensors", root / "model-00002-of-00003.safetensors"
    shard1.write_bytes(files[shard1.name][:-7])  # truncated
    bad = bytearray(files[shard2.name])
    bad[-1] ^= 0xFF  # same size, different bytes: only the digest can tell
    shard2.write_bytes(bytes(bad))
    keep = root / "model-00003-of-00003.safetensors"
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.iterdir()}

    hub_server.clear_requests()
    r = vol.run()  # receipts no longer match the changed files' stat, so they are re-hashed
    assert r.code == 0, r.stderr
    assert vol.tree("vllm/llm") == files
    assert r.lane("llm")["fetched_files"] == 2
    assert hub_server.count("org/llm", shard1.name, kind="resolve") == 1
    assert hub_server.count("org/llm", shard2.name, kind="resolve") == 1
    assert hub_server.count("org/llm", keep.name, kind="resolve") == 0
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.iterdir()}
    for name in set(files) - {shard1.name, shard2.name}:
        assert after[name] == before[name], f"{name} was rewritten"
    assert vol.debris() == []


def test_truncated_file_found_by_stat_is_replaced_without_full_verify(vol: Volume, hub_server: HubServer) -> None:
    files = gguf_file("tiny.Q8_0.gguf")
    hub_server.add_repo("org/gguf", files)
    vol.write([hf_lane("tiny", "gguf/tiny.Q8_0.gguf", "hf://org/gguf/tiny.Q8_0.gguf@main", kind="gguf")])
    write_tree(vol.models / "gguf", {"tiny.Q8_0.gguf": files["tiny.Q8_0.gguf"][:100]})
    r = vol.run()
    assert r.code == 0, r.stderr
    assert vol.tree("gguf") == files


# --------------------------------------------------------------------------- offline


@pytest.mark.parametrize("how", ["flag", "HF_HUB_OFFLINE"])
def test_offline_names_the_missing_lane_and_sends_nothing(vol: Volume, hub_server: HubServer, how: str) -> None:
    hub_server.add_repo("org/llm", hf_model())
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    if how == "flag":
        r = vol.run("sync", "--offline")
    else:
        r = vol.run("sync", env=vol.env(HF_HUB_OFFLINE="1"))
    assert r.code == 1, r.stderr
    assert r.lane("llm")["status"] == "missing"
    assert "llm" in r.report["reason"]
    assert "llm" in (r.termination or "")
    assert hub_server.requests == []
    assert not (vol.models / "vllm/llm").exists()


# --------------------------------------------------------------------------- disk space


class _AnnouncedOnly(hubserver._Content):
    """A served file whose size comes from a sparse file and whose digests are placeholders.

    Hashing terabytes of holes would take hours; the test needs only the size the Hub
    announces, since not one byte of the file may be fetched.
    """

    def __init__(self, source: bytes | os.PathLike[str] | str) -> None:
        if isinstance(source, (bytes, bytearray, memoryview)):
            super().__init__(source)
            return
        self._data = None
        self._path = Path(source)
        self.size = self._path.stat().st_size
        self.git_sha1 = hashlib.sha1(b"placeholder").hexdigest()
        self.sha256 = hashlib.sha256(b"placeholder").hexdigest()


def test_not_enough_disk_space_exits_5_before_any_byte(vol: Volume, hub_server: HubServer, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    huge = tmp_path / "huge.gguf"
    with open(huge, "wb") as f:
        f.truncate(2**43)  # 8 TiB announced, no disk used
    monkeypatch.setattr(hubserver, "_Content", _AnnouncedOnly)
    hub_server.add_repo("org/huge", {"huge.gguf": huge})
    vol.write([hf_lane("huge", "gguf/huge.gguf", "hf://org/huge/huge.gguf@main", kind="gguf")])
    r = vol.run("sync", "--json")
    assert r.code == 5, r.stderr
    assert "disk space" in r.stderr
    assert "disk space" in (r.termination or "")
    assert hub_downloads(hub_server) == 0
    assert hub_server.bytes_sent("org/huge", "huge.gguf") == 0
    assert not (vol.models / "gguf/huge.gguf").exists()
    assert vol.debris() == []


# A sharded model on the Hub and a volume whose manifest asks for it (shared by the fault and lease tests).
@pytest.fixture
def model_vol(vol: Volume, hub_server: HubServer) -> tuple[Volume, dict[str, bytes]]:
    files = hf_model(sharded=True)
    hub_server.add_repo("org/llm", files)
    vol.write([hf_lane("llm", "vllm/llm", "hf://org/llm@main")])
    return vol, files
