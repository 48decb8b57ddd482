"""The member preflight judges is the member torch reads: the real torch (CPU torch 1.13.1,
ops/oracle-torch.sh) is the oracle.

For each lookup rule a file is built whose pickles carry a harmless payload: a global,
`lp_probe.ran`, that appends its tag to a log (the module is written for the test; nothing
else runs). The oracle process reports which records its zip reader returns
(`torch._C.PyTorchFileReader.get_record`) and which payloads `torch.load(weights_only=False)`
ran; preflight must name and refuse exactly those. Without the oracle the test is skipped,
except under CI=true, where it fails.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from preflight.formats import archive as A
from preflight.formats.pickle import classify, pickle_policy
from tests import pickle_builders as pb
from tests.st_campaign import oracle_python

PROBE = "import os\n\ndef ran(tag):\n    with open(os.environ['LP_PROBE_LOG'], 'a') as f:\n        f.write(tag + '\\n')\n"

ORACLE = r"""
import io, json, os, sys, warnings
import torch
warnings.filterwarnings("ignore")
out = {}
for name, path in json.load(sys.stdin):
    rec = {"records": {}}
    try:
        with open(path, "rb") as f:
            reader = torch._C.PyTorchFileReader(io.BytesIO(f.read()))
        for record in ("data.pkl", "constants.pkl"):
            try:
                rec["records"][record] = bytes(reader.get_record(record)).hex()
            except Exception:
                rec["records"][record] = None
    except Exception as exc:
        rec["reader"] = str(exc).splitlines()[0][:200]
    log = os.environ["LP_PROBE_LOG"]
    open(log, "w").close()
    try:
        torch.load(path, weights_only=False)
        rec["load"] = "ok"
    except Exception as exc:
        rec["load"] = type(exc).__name__
    rec["ran"] = open(log).read().split()
    out[name] = rec
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def torch_python() -> str:
    python = oracle_python()
    if python is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the torch oracle is not installed (run ops/oracle-torch.sh)")
        pytest.skip("the torch oracle is not installed (ops/oracle-torch.sh)")
    return python


def run_oracle(python: str, tmp_path: Path, files: dict[str, Path]) -> dict:
    (tmp_path / "probe").mkdir(exist_ok=True)
    (tmp_path / "probe" / "lp_probe.py").write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "probe"), "LP_PROBE_LOG": str(tmp_path / "probe.log")}
    out = subprocess.run([python, "-c", ORACLE], input=json.dumps([[k, str(v)] for k, v in files.items()]),
                         capture_output=True, text=True, env=env, timeout=600, check=True)
    return json.loads(out.stdout)


def member_bytes(path: Path, member: str, record: str = "") -> bytes:
    """The bytes of `member`; of several entries with that name, the one miniz returns for `record`."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        entries, _ = A.miniz_directory(f, size)
        named = [e for e in entries if e.shown == member]
        entry = named[0]
        if len(named) > 1:
            entry = A.miniz_pick(entries, A.record_key(A.torch_prefix(entries), record))
            assert entry is not None and entry.shown == member
        span = A.local_span(f, size, entry)
        f.seek(span.start)
        return f.read(span.size)


VERSION = ("archive/version", b"3\n")


def cases() -> dict[str, tuple[bytes, str | None]]:
    """name: (file bytes, the payload tag torch.load(weights_only=False) runs, or None)."""
    good = pb.dump(pb.tensors({"w": (2,)})[0])
    return {
        "upper-case record": (pb.zip_entries([("archive/DATA.PKL", pb.probe("upper")), VERSION]), "upper"),
        # torch.load itself stops at get_all_records (its prefix check there is case-sensitive),
        # but its zip reader returns the member, as torch.jit.load's lookups do
        "mixed-case prefix": (pb.zip_entries([("Archive/version", b"3\n"), ("ARCHIVE/Data.Pkl", pb.probe("mixed"))]), None),
        "prefix from the first entry": (pb.zip_entries([("weird/version", b"3\n"), ("weird/data.pkl", pb.probe("weird"))]), "weird"),
        # an entry outside the prefix stops torch.load at get_all_records; the reader still picks weird/
        "prefix, another folder beside": (pb.zip_entries([("weird/version", b"3\n"), ("archive/data.pkl", good),
                                                          ("weird/data.pkl", pb.probe("weird2"))]), None),
        "duplicate, lower first": (pb.zip_entries([("archive/data.pkl", pb.probe("dup-lower")), ("archive/DATA.PKL", good), VERSION]), "dup-lower"),
        "duplicate, upper first": (pb.zip_entries([("archive/DATA.PKL", pb.probe("dup-upper")), ("archive/data.pkl", good), VERSION]), "dup-upper"),
        "exact duplicate": (pb.zip_entries([("archive/data.pkl", pb.probe("dup-exact")), ("archive/data.pkl", good), VERSION]), "dup-exact"),
        ".data/version only": (pb.zip_entries([("archive/data.pkl", pb.probe("dv")), ("archive/.data/version", b"3\n")]), "dv"),
        "CONSTANTS.PKL": (pb.zip_entries([("archive/data.pkl", pb.probe("const")), ("archive/CONSTANTS.PKL", pb.dump(())), VERSION]), "const"),
        "legacy tar past 10,001 entries": (pb.legacy_tar_after(10_001, pb.probe("tar")), "tar"),
        "tar that tarfile gives up on": (pb.tar_then_broken(pb.probe_text("fallback")), "fallback"),
        "legacy stream, second pickle": (pb.legacy_with(1, pb.probe("slot1")), "slot1"),
    }


def test_preflight_refuses_the_member_torch_reads(torch_python: str, tmp_path: Path) -> None:
    built = cases()
    files = {}
    for i, (name, (data, _tag)) in enumerate(built.items()):
        files[name] = tmp_path / f"case{i}.pt"
        files[name].write_bytes(data)
    theirs = run_oracle(torch_python, tmp_path, files)
    for name, (_data, tag) in built.items():
        path, rec = files[name], theirs[name]
        found = classify(path)
        for record, member in found.records:  # the member preflight says torch reads is the one it reads
            assert rec["records"][record] == member_bytes(path, member, record).hex(), (name, record, member)
        if rec.get("records", {}).get("data.pkl") and "reader" not in rec:
            assert "data.pkl" in dict(found.records), name
        assert rec["ran"] == ([tag] if tag else []), (name, rec)
        problems = pickle_policy(path, path.name, True)
        assert [p.code for p in problems if p.is_error] == ["dangerous-pickle"], (name, problems)
        assert [p.code for p in pickle_policy(path, path.name, False)] == ["unsafe-pickle"], name


def test_the_duplicate_torch_reads_is_the_one_preflight_names(torch_python: str, tmp_path: Path) -> None:
    """miniz returns one of several entries that match a record name by its heap sort and
    binary search; preflight replays both. 120 random directories, the oracle's answer each."""
    rng = random.Random(11)
    names = ["archive/data.pkl", "archive/DATA.PKL", "archive/Data.pkl", "archive/data.pkL", "archive/a", "archive/z",
             "archive/data/0", "archive/DATA.pkl"]
    files = {}
    for i in range(120):
        entries = [VERSION] + [(rng.choice(names), pb.probe(f"e{j}")) for j in range(rng.randint(2, 12))]
        rng.shuffle(entries)
        files[f"d{i}"] = tmp_path / f"d{i}.pt"
        files[f"d{i}"].write_bytes(pb.zip_entries(entries))
    theirs = run_oracle(torch_python, tmp_path, files)
    compared = 0
    for name, path in files.items():
        want = theirs[name]["records"].get("data.pkl") if "reader" not in theirs[name] else None
        got = dict(classify(path).records).get("data.pkl")
        if want is None:
            assert got is None, name
            continue
        assert member_bytes(path, got, "data.pkl").hex() == want, name
        compared += 1
    assert compared > 60
