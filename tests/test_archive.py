"""Model archives (.tar, .tar.gz, .tgz, .tar.zst, .zip) filling folder lanes: verified,
unpacked through the door, remembered, and hostile archives refused with nothing written
outside the lane.

Archives are made with the standard library's writers (tarfile, zipfile) and zstandard;
the model inside with the real safetensors writer. Every run is the real CLI in a child
process; the bounds are measured in a fresh process (peak RSS and CPU time from
getrusage of the child), as tests/test_gguf_bounds.py does.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

from tests.docker_fixtures import write_tiny_hf_dir
from tests.hubserver import HubServer

REPO = Path(__file__).resolve().parents[1]
MAX_RSS_KB = 150 * 1024  # the CLI with its imports is ~60 MB; a bomb must not add to it
MAX_CPU_S = 30.0  # generous for a loaded 2-core machine; the cases take ~1-3 s


def run(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "preflight.cli", *map(str, args)], capture_output=True, text=True,
                          env=full, cwd=cwd, timeout=600)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_files(folder: Path) -> dict[str, bytes]:
    write_tiny_hf_dir(folder)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def make_tar(path: Path, files: dict[str, bytes], *, mode: str = "w:gz", extra=None, prefix: str = "./") -> Path:
    """A tar archive of `files` (names under `prefix`, as `tar -C DIR .` writes them), then `extra(tf)`."""
    if mode.endswith("zst"):
        import zstandard

        buf = io.BytesIO()
        make_tar_into(buf, files, "w", extra, prefix)
        path.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
        return path
    with open(path, "wb") as f:
        make_tar_into(f, files, mode, extra, prefix)
    return path


def make_tar_into(f, files: dict[str, bytes], mode: str, extra, prefix: str) -> None:
    with tarfile.open(fileobj=f, mode=mode) as tf:
        if prefix == "./":
            d = tarfile.TarInfo("./")
            d.type = tarfile.DIRTYPE
            tf.addfile(d)
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name if prefix else name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(tf)


def make_zip(path: Path, files: dict[str, bytes], extra=None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        if extra is not None:
            extra(zf)
    return path


def manifest(tmp: Path, source: str, sha: str | None = None, *, kind: str = "hf-dir", extra: str = "") -> Path:
    lines = ["version: 1", f"models_dir: {tmp / 'models'}", "lanes:", "  - name: tiny", f"    kind: {kind}",
             "    path: vllm/tiny", f"    source: {source}"]
    if sha:
        lines.append(f"    sha256: {sha}")
    m = tmp / "lanes.yaml"
    m.write_text("\n".join(lines) + "\n" + extra)
    return m


def report(tmp: Path) -> dict:
    return json.loads((tmp / "report.json").read_text())


def sync(tmp: Path, m: Path, *more: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run("sync", "-m", m, "--report", tmp / "report.json", "--termination-log", "", *more, env=env)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root (links not followed) with its inode and mtime."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_ino, st.st_mtime_ns)
    return out


def lane_files(tmp: Path) -> dict[str, bytes]:
    lane = tmp / "models" / "vllm" / "tiny"
    return {p.name: p.read_bytes() for p in sorted(lane.iterdir())} if lane.exists() else {}


# --------------------------------------------------------------------------- good archives


FORMATS = {
    "tar": ("model.tar", "w"),
    "tar.gz": ("model.tar.gz", "w:gz"),
    "tgz": ("model.tgz", "w:gz"),
    "tar.zst": ("model.tar.zst", "w:zst"),
    "zip": ("model.zip", None),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_an_archive_fills_a_folder_lane_and_a_warm_check_never_opens_it(tmp_path: Path, fmt: str) -> None:
    if fmt == "tar.zst":
        pytest.importorskip("zstandard")
    files = model_files(tmp_path / "src")
    name, mode = FORMATS[fmt]
    archive = make_zip(tmp_path / name, files) if mode is None else make_tar(tmp_path / name, files, mode=mode)
    m = manifest(tmp_path, f"file://{archive}", sha256(archive))
    done = sync(tmp_path, m)
    assert done.returncode == 0, done.stderr
    assert lane_files(tmp_path) == files
    lane = report(tmp_path)["lanes"][0]
    assert lane["status"] == "ready" and lane["fetched_files"] == len(files)
    receipts = json.loads((tmp_path / "models" / ".preflight" / "receipts.json").read_text())
    assert set(receipts["groups"][f"sha256:{sha256(archive)}"]["files"]) == set(files)
    assert len([k for k in receipts["files"] if "tiny" in k]) == len(files)  # a receipt per extracted file
    assert not list((tmp_path / "models" / ".preflight" / "staging").iterdir())
    archive.unlink()  # from here on, nothing may need the archive
    before = tree(tmp_path / "models")
    checked = run("check", "-m", m, "--termination-log", "")
    assert checked.returncode == 0, checked.stderr
    again = sync(tmp_path, m)
    assert again.returncode == 0, again.stderr
    assert "fetching" not in again.stderr
    assert {k: v for k, v in tree(tmp_path / "models").items() if ".preflight" not in k} == \
           {k: v for k, v in before.items() if ".preflight" not in k}


def test_an_https_archive_is_fetched_once_and_a_damaged_member_is_repaired_alone(tmp_path: Path) -> None:
    files = model_files(tmp_path / "src")
    archive = make_tar(tmp_path / "model.tar.gz", files)
    with HubServer() as hub:
        url = hub.add_url("releases/model.tar.gz", archive)
        m = manifest(tmp_path, url, sha256(archive))
        assert sync(tmp_path, m).returncode == 0
        assert hub.count(path="/releases/model.tar.gz") == 1
        again = sync(tmp_path, m)
        assert again.returncode == 0 and hub.count(path="/releases/model.tar.gz") == 1  # the lane is known: no request
        lane = tmp_path / "models" / "vllm" / "tiny"
        keep = {n: (lane / n).stat().st_ino for n in files if n != "model.safetensors"}
        with open(lane / "model.safetensors", "r+b") as f:
            f.truncate(100)
        assert run("check", "-m", m, "--termination-log", "").returncode == 1
        fixed = sync(tmp_path, m)
        assert fixed.returncode == 0, fixed.stderr
        assert lane_files(tmp_path) == files
        assert {n: (lane / n).stat().st_ino for n in keep} == keep  # the others were not rewritten
        assert report(tmp_path)["lanes"][0]["fetched_files"] == 1


def test_an_archive_download_resumes_where_it_stopped(tmp_path: Path) -> None:
    files = model_files(tmp_path / "src")
    files["big.bin"] = os.urandom(3 * 2**20)
    archive = make_tar(tmp_path / "model.tar", files, mode="w")
    with HubServer() as hub:
        url = hub.add_url("model.tar", archive)
        hub.url_fault("/model.tar").drop_after(2**20, times=1)
        m = manifest(tmp_path, url, sha256(archive), extra="    allow_pickle: true\n")
        done = sync(tmp_path, m, "--connections", "1")
        assert done.returncode == 0, done.stderr
        ranges = [r.range for r in hub.requests if r.path == "/model.tar" and r.method == "GET"]
        assert ranges[0] is None and ranges[-1] is not None and ranges[-1].startswith("bytes=") and ranges[-1] != "bytes=0-"
    assert lane_files(tmp_path) == files


def test_a_digest_that_does_not_match_is_exit_3_and_nothing_is_published(tmp_path: Path) -> None:
    files = model_files(tmp_path / "src")
    archive = make_tar(tmp_path / "model.tar.gz", files)
    m = manifest(tmp_path, f"file://{archive}", "ab" * 32)
    done = sync(tmp_path, m)
    assert done.returncode == 3, done.stderr
    assert "sha256" in done.stderr and "nothing was published" in done.stderr
    assert lane_files(tmp_path) == {}
    assert not list((tmp_path / "models" / ".preflight" / "staging").iterdir())
    assert report(tmp_path)["exit_code"] == 3


def test_links_inside_the_archive_become_copies_of_their_target(tmp_path: Path) -> None:
    files = model_files(tmp_path / "src")

    def links(tf: tarfile.TarFile) -> None:
        sym = tarfile.TarInfo("./sub/tokenizer_copy.json")
        sym.type, sym.linkname = tarfile.SYMTYPE, "../tokenizer.json"
        tf.addfile(sym)
        hard = tarfile.TarInfo("./config_again.json")
        hard.type, hard.linkname = tarfile.LNKTYPE, "./config.json"
        tf.addfile(hard)

    archive = make_tar(tmp_path / "model.tar.gz", files, extra=links)
    m = manifest(tmp_path, f"file://{archive}", sha256(archive))
    done = sync(tmp_path, m)
    assert done.returncode == 0, done.stderr
    lane = tmp_path / "models" / "vllm" / "tiny"
    assert (lane / "sub" / "tokenizer_copy.json").read_bytes() == files["tokenizer.json"]
    assert not (lane / "sub" / "tokenizer_copy.json").is_symlink()
    assert (lane / "config_again.json").read_bytes() == files["config.json"]


def test_lock_pins_the_archive_and_its_members_and_a_locked_sync_asks_nothing_first(tmp_path: Path) -> None:
    files = model_files(tmp_path / "src")
    archive = make_tar(tmp_path / "model.tar.gz", files)
    with HubServer() as hub:
        url = hub.add_url("model.tar.gz", archive)
        m = manifest(tmp_path, url, sha256(archive))
        scratch = set(Path(tempfile.gettempdir()).glob("preflight-scratch-*"))
        locked = run("lock", "-m", m, "--termination-log", "")
        assert locked.returncode == 0, locked.stderr
        from tests.test_schemas import validator

        lock_doc = json.loads((tmp_path / "lanes.lock.json").read_text())
        assert not list(validator("lock").iter_errors(lock_doc))
        lock = lock_doc["lanes"]["tiny"]
        assert lock["archive"] == {"size": archive.stat().st_size, "sha256": sha256(archive)}
        assert lock["files"] == {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()}
        assert set(Path(tempfile.gettempdir()).glob("preflight-scratch-*")) == scratch  # the measuring copy is gone
        before = hub.count(path="/model.tar.gz")
        done = sync(tmp_path, m, "--locked")
        assert done.returncode == 0, done.stderr
        assert hub.count(path="/model.tar.gz") == before + 1
        assert lane_files(tmp_path) == files
        hub.clear_requests()
        assert sync(tmp_path, m, "--locked").returncode == 0
        assert hub.requests == []  # a warm locked sync makes no request at all


def test_a_pinned_member_that_differs_in_the_archive_is_refused(tmp_path: Path) -> None:
    files = model_files(tmp_path / "src")
    archive = make_tar(tmp_path / "model.tar.gz", files)
    m = manifest(tmp_path, f"file://{archive}", sha256(archive), extra="    files:\n      config.json: {sha256: " + "ab" * 32 + "}\n")
    done = sync(tmp_path, m)
    assert done.returncode == 3, done.stderr
    assert "config.json" in done.stderr
    assert lane_files(tmp_path) == {}


def test_a_url_archive_needs_its_sha256_and_a_url_folder_needs_an_archive(tmp_path: Path) -> None:
    m = manifest(tmp_path, "https://example.org/model.tar.gz")
    done = run("check", "-m", m, "--termination-log", "")
    assert done.returncode == 2 and "archive's sha256" in done.stderr
    m = manifest(tmp_path, "https://example.org/model.safetensors")
    done = run("check", "-m", m, "--termination-log", "")
    assert done.returncode == 2 and "name an archive" in done.stderr


# --------------------------------------------------------------------------- hostile archives


def _entry(name: str, **kw) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def _add(tf: tarfile.TarFile, info: tarfile.TarInfo, data: bytes = b"") -> None:
    info.size = len(data) if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    tf.addfile(info, io.BytesIO(data) if data else None)


HOSTILE_TAR = {
    "dotdot": lambda tf: _add(tf, _entry("../../escaped.txt"), b"owned"),
    "dotdot-inside": lambda tf: _add(tf, _entry("./sub/../../escaped.txt"), b"owned"),
    "absolute": lambda tf: _add(tf, _entry("/tmp/escaped.txt"), b"owned"),
    "symlink-out-absolute": lambda tf: _add(tf, _entry("./passwd", type=tarfile.SYMTYPE, linkname="/etc/passwd")),
    "symlink-out-relative": lambda tf: _add(tf, _entry("./up", type=tarfile.SYMTYPE, linkname="../../../outside")),
    "symlink-to-nothing": lambda tf: _add(tf, _entry("./dangling", type=tarfile.SYMTYPE, linkname="nope.bin")),
    "hardlink-out": lambda tf: _add(tf, _entry("./hard", type=tarfile.LNKTYPE, linkname="../outside.txt")),
    "hardlink-absolute": lambda tf: _add(tf, _entry("./hard", type=tarfile.LNKTYPE, linkname="/etc/shadow")),
    "char-device": lambda tf: _add(tf, _entry("./null", type=tarfile.CHRTYPE, devmajor=1, devminor=3)),
    "block-device": lambda tf: _add(tf, _entry("./sda", type=tarfile.BLKTYPE, devmajor=8, devminor=0)),
    "fifo": lambda tf: _add(tf, _entry("./pipe", type=tarfile.FIFOTYPE)),
    "state-folder": lambda tf: _add(tf, _entry("./.preflight/receipts.json"), b"{}"),
    "twice": lambda tf: _add(tf, _entry("./config.json"), b"{}"),
    "control-character": lambda tf: _add(tf, _entry("./evil\nname"), b"x"),
    "backslash": lambda tf: _add(tf, _entry("..\\..\\escaped.txt"), b"x"),
}


def _zip_symlink(zf: zipfile.ZipFile, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (0o120777 << 16)
    zf.writestr(info, target)


def _zip_device(zf: zipfile.ZipFile) -> None:
    info = zipfile.ZipInfo("null")
    info.create_system = 3
    info.external_attr = (0o020666 << 16)
    zf.writestr(info, b"")


HOSTILE_ZIP = {
    "zip-dotdot": lambda zf: zf.writestr("../../escaped.txt", b"owned"),
    "zip-absolute": lambda zf: zf.writestr(zipfile.ZipInfo("/tmp/escaped.txt"), b"owned"),
    "zip-symlink-out": lambda zf: _zip_symlink(zf, "passwd", "/etc/passwd"),
    "zip-symlink-up": lambda zf: _zip_symlink(zf, "up", "../../../outside"),
    "zip-device": _zip_device,
}


def _assert_nothing_published(tmp_path: Path, outside_before: set[str]) -> None:
    assert lane_files(tmp_path) == {}
    assert not (tmp_path / "models" / "vllm" / "tiny").exists()
    assert {p.name for p in tmp_path.parent.iterdir()} == outside_before  # nothing next to the test's own folder
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/escaped.txt").exists()
    staging = tmp_path / "models" / ".preflight" / "staging"
    assert not [p for p in staging.iterdir() if p.name.endswith(".member.part")] if staging.exists() else True


@pytest.mark.parametrize("case", list(HOSTILE_TAR) + list(HOSTILE_ZIP))
def test_hostile_entries_are_refused_with_path_escape_and_nothing_is_written(tmp_path: Path, case: str) -> None:
    files = model_files(tmp_path / "src")
    if case in HOSTILE_TAR:
        archive = make_tar(tmp_path / "model.tar.gz", files, extra=HOSTILE_TAR[case])
    else:
        archive = make_zip(tmp_path / "model.zip", files, extra=HOSTILE_ZIP[case])
    outside = {p.name for p in tmp_path.parent.iterdir()}
    m = manifest(tmp_path, f"file://{archive}", sha256(archive))
    done = sync(tmp_path, m)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    problems = report(tmp_path)["lanes"][0]["problems"]
    assert any(p["code"] == "path-escape" for p in problems), problems
    _assert_nothing_published(tmp_path, outside)


@pytest.mark.parametrize("case", ["truncated", "not-an-archive"])
def test_an_unreadable_archive_is_exit_3_archive_invalid(tmp_path: Path, case: str) -> None:
    files = model_files(tmp_path / "src")
    archive = make_tar(tmp_path / "model.tar.gz", files)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2] if case == "truncated" else b"this is not a tar file at all" * 100)
    m = manifest(tmp_path, f"file://{archive}", sha256(archive))
    done = sync(tmp_path, m)
    assert done.returncode == 3, done.stderr
    assert any(p["code"] == "archive-invalid" for p in report(tmp_path)["lanes"][0]["problems"])
    assert lane_files(tmp_path) == {}


# --------------------------------------------------------------------------- bombs, measured in a fresh process

WRAPPER = r"""
import json, os, resource, subprocess, sys
child = subprocess.run([sys.executable, "-m", "preflight.cli", *sys.argv[1:]], capture_output=True, text=True)
use = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": child.returncode, "stderr": child.stderr[-3000:], "rss_kb": use.ru_maxrss, "cpu_s": use.ru_utime + use.ru_stime}))
"""


def measured(tmp_path: Path, m: Path, env: dict[str, str] | None = None) -> dict:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    out = subprocess.run([sys.executable, "-c", WRAPPER, "sync", "-m", str(m), "--report", str(tmp_path / "report.json"),
                          "--termination-log", ""], capture_output=True, text=True, env=full, timeout=600, check=True)
    return json.loads(out.stdout)


def _zeros_member(tf: tarfile.TarFile, size: int) -> None:
    class Zeros(io.RawIOBase):
        left = size

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n

    info = tarfile.TarInfo("./padding.bin")
    info.size = size
    tf.addfile(info, io.BufferedReader(Zeros(), 2**20))


def _many_members(tf: tarfile.TarFile, count: int) -> None:
    for i in range(count):
        tf.addfile(tarfile.TarInfo(f"./f/{i}"))


def test_a_compression_bomb_is_refused_in_bounded_memory_and_time(tmp_path: Path) -> None:
    files = model_files(tmp_path / "src")
    archive = tmp_path / "model.tar.gz"
    with open(archive, "wb") as f:
        with tarfile.open(fileobj=f, mode="w:gz", compresslevel=1) as tf:
            for name, data in files.items():
                info = tarfile.TarInfo("./" + name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            _zeros_member(tf, 600 * 2**20)  # ~600 KiB of gzip for 600 MiB: past 200x + 64 MiB
    assert archive.stat().st_size < 4 * 2**20
    outside = {p.name for p in tmp_path.parent.iterdir()}
    got = measured(tmp_path, manifest(tmp_path, f"file://{archive}", sha256(archive)))
    assert got["rc"] == 1, got["stderr"]
    assert "compression bomb" in got["stderr"]
    assert any(p["code"] == "archive-bomb" for p in report(tmp_path)["lanes"][0]["problems"])
    assert got["rss_kb"] < MAX_RSS_KB and got["cpu_s"] < MAX_CPU_S, got
    _assert_nothing_published(tmp_path, outside)


def test_a_zip_member_that_declares_a_bomb_is_refused_before_it_is_read(tmp_path: Path) -> None:
    files = model_files(tmp_path / "src")
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        with zf.open("padding.bin", "w", force_zip64=True) as member:
            chunk = bytes(2**20)
            for _ in range(300):
                member.write(chunk)
    outside = {p.name for p in tmp_path.parent.iterdir()}
    got = measured(tmp_path, manifest(tmp_path, f"file://{archive}", sha256(archive)))
    assert got["rc"] == 1, got["stderr"]
    assert "compression bomb" in got["stderr"] and "padding.bin" in got["stderr"]
    assert got["rss_kb"] < MAX_RSS_KB and got["cpu_s"] < MAX_CPU_S, got
    _assert_nothing_published(tmp_path, outside)


def test_too_many_members_are_refused_in_bounded_memory_and_time(tmp_path: Path) -> None:
    from preflight.sources.archive_reader import MAX_MEMBERS

    files = model_files(tmp_path / "src")
    archive = make_tar(tmp_path / "model.tar.gz", files, extra=lambda tf: _many_members(tf, MAX_MEMBERS + 1))
    outside = {p.name for p in tmp_path.parent.iterdir()}
    got = measured(tmp_path, manifest(tmp_path, f"file://{archive}", sha256(archive)))
    assert got["rc"] == 1, got["stderr"]
    assert f"more than {MAX_MEMBERS} entries" in got["stderr"]
    assert got["rss_kb"] < MAX_RSS_KB and got["cpu_s"] < MAX_CPU_S, got
    _assert_nothing_published(tmp_path, outside)


def test_the_total_size_bound_is_enforced(tmp_path: Path) -> None:
    files = model_files(tmp_path / "src")
    files["weights.bin"] = os.urandom(2 * 2**20)
    archive = make_tar(tmp_path / "model.tar", files, mode="w")
    outside = {p.name for p in tmp_path.parent.iterdir()}
    got = measured(tmp_path, manifest(tmp_path, f"file://{archive}", sha256(archive)), env={"PREFLIGHT_ARCHIVE_MAX_BYTES": str(2**20)})
    assert got["rc"] == 1, got["stderr"]
    assert "PREFLIGHT_ARCHIVE_MAX_BYTES" in got["stderr"]
    assert got["rss_kb"] < MAX_RSS_KB and got["cpu_s"] < MAX_CPU_S, got
    _assert_nothing_published(tmp_path, outside)
    # the same archive under the default bound is a model
    ok = sync(tmp_path, manifest(tmp_path, f"file://{archive}", sha256(archive), extra="    allow_pickle: true\n"))
    assert ok.returncode == 0, ok.stderr


def test_bytes_the_unpacking_read_that_the_download_then_replaced_are_judged_again(tmp_path: Path) -> None:
    """A staged partial archive that is not a prefix of the archive (a damaged staging file)
    and a server that ignores Range: the download starts over under the reader, which first
    reads the stale bytes. They are never taken for the archive: it is unpacked again from
    its verified copy."""
    import hashlib as h

    files = model_files(tmp_path / "src")
    files["big.bin"] = os.urandom(2 * 2**20)
    archive = make_tar(tmp_path / "model.tar", files, mode="w")
    digest = sha256(archive)
    dest = tmp_path / "dest"
    staging = dest / ".preflight" / "staging"
    staging.mkdir(parents=True)
    # the name sync gives the group's own bytes (sync._GroupPlaces.work)
    work = f"{h.sha256(f'sha256:{digest}'.encode()).hexdigest()[:32]}-{h.sha256(str(dest).encode()).hexdigest()[:12]}.group.part"
    (staging / work).write_bytes(b"\x00not the archive\x00" * 4096)
    with HubServer() as hub:
        url = hub.add_url("model.tar", archive)
        hub.url_fault("/model.tar").ignore_range()
        hub.shape(first_byte=1.0)  # the reader has judged the stale bytes before the new ones arrive
        done = run("fetch", f"{url}#sha256={digest}", dest, "--termination-log", "", "--allow-pickle", "true")
        assert done.returncode == 0, done.stderr
        assert "the staged bytes changed under the unpacking" in done.stderr
    got = {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()}
    assert got == files
