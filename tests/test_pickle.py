"""Pickle-bearing files: what a file holds is judged by its bytes; an allowed pickle must have a state dict's shape.

Files come from real writers: the pickle module (with stand-ins registered under torch's
names, see pickle_builders), numpy, zipfile and tarfile, the safetensors and gguf packages.
Hostile pickles are written opcode by opcode.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from preflight.check import check_single_file
from preflight.formats.pickle import MAX_INFLATE, MAX_MEMO, MAX_OPS, classify, pickle_policy, scan_pickle
from tests import pickle_builders as pb
from tests.builders import write_safetensors
from tests.repos import gguf_file


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def judged(tmp_path: Path, name: str, data: bytes, allow: bool | str = True) -> list:
    return pickle_policy(write(tmp_path, name, data), name, allow)


def refusal(tmp_path: Path, name: str, data: bytes, allow: bool | str = True) -> str:
    """The one dangerous-pickle message for a file that must be refused."""
    problems = judged(tmp_path, name, data, allow)
    errors = [p for p in problems if p.is_error]
    assert [p.code for p in errors] == ["dangerous-pickle"], problems
    return errors[0].message


def op_str(s: str) -> bytes:
    """SHORT_BINUNICODE s (BINUNICODE when longer than 255 bytes)."""
    raw = s.encode()
    return (b"\x8c" + bytes([len(raw)]) if len(raw) < 256 else b"X" + struct.pack("<I", len(raw))) + raw


# ----------------------------------------------------------------------------- what passes


def test_torch_state_dicts_pass_with_allow_pickle(tmp_path: Path) -> None:
    for name, data in (("pytorch_model.bin", pb.state_dict_zip()), ("small.pt", pb.whisper_small()),
                       ("legacy.pth", pb.legacy_checkpoint())):
        assert judged(tmp_path, name, data) == [], name
        (refused,) = judged(tmp_path, name, data, allow=False)
        assert refused.code == "unsafe-pickle" and "allow_pickle: true" in refused.message
    assert classify(write(tmp_path, "small.pt", pb.whisper_small())).kind == "torch-zip"
    assert classify(write(tmp_path, "legacy.pth", pb.legacy_checkpoint())).kind == "torch-legacy"


def test_numpy_pickles_of_every_protocol_pass(tmp_path: Path) -> None:
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.int64(3), "b": b"\x00\xff", "s": {1, 2},
             "f": frozenset({3}), "c": 1 + 2j, "od": collections.OrderedDict(a=1), "empty": b""}
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        assert judged(tmp_path, f"p{protocol}.pkl", pickle.dumps(state, protocol=protocol)) == [], protocol


def test_numpy_array_files(tmp_path: Path) -> None:
    plain = io.BytesIO()
    np.save(plain, np.zeros(4, dtype=np.float16))
    assert classify(write(tmp_path, "a.npy", plain.getvalue())).kind == "numpy"
    assert judged(tmp_path, "a.npy", plain.getvalue(), allow=False) == []
    objects = io.BytesIO()
    np.save(objects, np.array([{"k": 1}, None], dtype=object), allow_pickle=True)
    assert classify(write(tmp_path, "o.npy", objects.getvalue())).kind == "numpy-pickle"
    assert [p.code for p in judged(tmp_path, "o.npy", objects.getvalue(), allow=False)] == ["unsafe-pickle"]
    assert judged(tmp_path, "o.npy", objects.getvalue()) == []
    evil = io.BytesIO()
    np.save(evil, np.array([RunsShell(), None], dtype=object), allow_pickle=True)
    assert "posix.system" in refusal(tmp_path, "e.npy", evil.getvalue())
    npz = io.BytesIO()
    np.savez(npz, ok=np.zeros(2), bad=np.array([RunsShell()], dtype=object))
    message = refusal(tmp_path, "e.npz", npz.getvalue())
    assert "posix.system" in message and "bad.npy" in message


class RunsShell:
    def __reduce__(self):
        return os.system, ("echo owned",)


# ----------------------------------------------------------------------------- content, not name


def test_a_bin_is_judged_by_its_content(tmp_path: Path) -> None:
    raw = bytes(range(256)) * 64  # raw bytes: neither a pickle nor a zip
    for allow in (False, True):
        assert check_single_file(write(tmp_path, "raw.bin", raw), "raw.bin", allow) == []
    assert classify(tmp_path / "raw.bin").kind == "data"
    write_safetensors(tmp_path / "st.bin", {"w": ("F32", (2, 2))})
    assert classify(tmp_path / "st.bin").kind == "safetensors"
    assert check_single_file(tmp_path / "st.bin", "st.bin", False) == []
    data = bytearray((tmp_path / "st.bin").read_bytes())
    write(tmp_path, "cut.bin", bytes(data[:-3]))
    assert [p.code for p in check_single_file(tmp_path / "cut.bin", "cut.bin", False)] == ["truncated"]
    g = write(tmp_path, "g.bin", gguf_file("m.gguf")["m.gguf"])
    assert classify(g).kind == "gguf" and check_single_file(g, "g.bin", False) == []
    ggml = write(tmp_path, "old.bin", b"tjgg" + bytes(64))
    assert classify(ggml).kind == "ggml" and "ggjt" in classify(ggml).label
    assert check_single_file(ggml, "old.bin", False) == []
    assert check_single_file(write(tmp_path, "z.bin", pb.zip_of({"a.txt": b"hi"})), "z.bin", False) == []
    assert check_single_file(write(tmp_path, "notes.txt", b"hello\ncat\ndog\n"), "notes.txt", False) == []


def test_a_pickle_is_a_pickle_whatever_its_name(tmp_path: Path) -> None:
    for name in ("weights.dat", "noext", "config.yaml"):
        (problem,) = check_single_file(write(tmp_path, name, pickle.dumps({"a": 1})), name, False)
        assert problem.code == "unsafe-pickle" and "a pickle (protocol" in problem.message
        assert check_single_file(tmp_path / name, name, True) == []
    # a text pickle without PROTO is recognised by what it does
    (problem,) = check_single_file(write(tmp_path, "w.txt", b"cos\nsystem\n(S'echo owned'\ntR."), "w.txt", True)
    assert problem.code == "dangerous-pickle" and "os.system" in problem.message


def test_one_rule_for_raw_bytes_and_a_zip_member(tmp_path: Path) -> None:
    junk = b"\x00\x01 these bytes are no pickle"
    assert judged(tmp_path, "raw.pt", junk) == []
    (problem,) = judged(tmp_path, "z.pt", pb.state_dict_zip(data_pkl=junk))
    assert problem.code == "archive-invalid" and "data.pkl is not a pickle" in problem.message
    broken = b"\x80\x02\xff\xff"  # says it is a pickle, then is not
    assert "does not parse" in refusal(tmp_path, "raw2.pt", broken)
    assert "archive/data.pkl" in refusal(tmp_path, "z2.pt", pb.state_dict_zip(data_pkl=broken))


# ----------------------------------------------------------------------------- every way to import


PAYLOADS = {
    "GLOBAL": (b"cos\nsystem\n(S'echo owned'\ntR.", "os.system"),
    "GLOBAL in protocol 2": (b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00id\x85R.", "posix.system"),
    "INST": (b"(S'echo owned'\nios\nsystem\n.", "os.system"),
    "OBJ": (b"(cos\nsystem\nS'echo owned'\no.", "os.system"),
    "STACK_GLOBAL": (b"\x80\x04" + op_str("os") + op_str("system") + b"\x93" + op_str("id") + b"\x85R.", "os.system"),
    "STACK_GLOBAL through the memo": (
        b"\x80\x04" + op_str("runpy") + b"\x94" + op_str("_run_code") + b"\x94" + b"00" + b"h\x00h\x01\x93)R.", "runpy._run_code"),
    "STACK_GLOBAL through LONG_BINGET": (
        b"\x80\x04" + op_str("builtins") + b"r\x07\x00\x00\x00" + op_str("eval") + b"r\x09\x00\x00\x00" + b"00"
        + b"j\x07\x00\x00\x00j\x09\x00\x00\x00\x93" + op_str("1") + b"\x85R.", "builtins.eval"),
    "NEWOBJ": (b"\x80\x02ccode\nInteractiveInterpreter\n)\x81.", "code.InteractiveInterpreter"),
    "protocol 2 name mapping": (b"\x80\x02c__builtin__\nexec\nX\x01\x00\x00\x001\x85R.", "__builtin__.exec (builtins.exec)"),
    "getattr": (pickle.dumps(__import__("code").InteractiveInterpreter.runsource, protocol=2), "builtins.getattr"),
    "dotted name": (pickle.dumps(__import__("code").InteractiveInterpreter.runsource, protocol=4), "code.InteractiveInterpreter.runsource"),
    "distutils": (b"\x80\x02cdistutils.spawn\nspawn\n]X\x02\x00\x00\x00id\x85R.", "distutils.spawn.spawn"),
    "nested torch.load": (b"\x80\x02ctorch.serialization\nload\nX\x01\x00\x00\x00f\x85R.", "torch.serialization.load"),
    "nested pickle in storage bytes": (b"\x80\x02ctorch.storage\n_load_from_bytes\nC\x01x\x85R.", "torch.storage._load_from_bytes"),
    "module class in a checkpoint": (b"\x80\x02ctorch.nn.modules.linear\nLinear\n)\x81.", "torch.nn.modules.linear.Linear"),
}


@pytest.mark.parametrize("form", PAYLOADS)
def test_every_import_form_is_refused_naming_the_callable(tmp_path: Path, form: str) -> None:
    data, callable_ = PAYLOADS[form]
    message = refusal(tmp_path, "evil.pt", data)
    assert callable_ in message and "refusing it" in message
    # the same payload as a torch checkpoint's data.pkl, or beside it in the zip
    assert callable_ in refusal(tmp_path, "z.pt", pb.state_dict_zip(data_pkl=data))
    assert callable_ in refusal(tmp_path, "z2.pt", pb.state_dict_zip(extra={"extra/other.pkl": data}))


STRUCTURAL = {
    "EXT1": (b"\x80\x02\x82\x01)R.", "EXT1 1"),
    "EXT2": (b"\x80\x02\x83\x01\x02)R.", "EXT2 513"),
    "EXT4": (b"\x80\x02\x84\x01\x00\x00\x01)R.", "EXT4"),
    "computed STACK_GLOBAL": (b"\x80\x04" + op_str("x" * 300) + op_str("system") + b"\x93.", "not a plain string"),
    "STACK_GLOBAL of a call's result": (
        b"\x80\x04" + op_str("collections") + op_str("OrderedDict") + b"\x93)R" + op_str("system") + b"\x93.", "not a plain string"),
    "APPEND into a global": (b"csys\npath\nS'/tmp/evil'\na.", "writes into sys.path"),
    "SETITEM into a global": (b"cos\nenviron\nS'LD_PRELOAD'\nS'/tmp/x.so'\ns.", "writes into os.environ"),
    "BUILD on an allowed function": (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x0c\x00\x00\x00__defaults__Nsb.", "BUILD sets attributes of torch._utils._rebuild_tensor_v2"),
    "calling a call's result": (b"\x80\x02ccollections\nOrderedDict\n)R)R.", "not an imported global"),
    "codecs with another encoding": (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R.", "not latin1"),
    "text persistent id": (b"Pfoo\n.", "PERSID"),
    "persistent id in a plain pickle": (b"\x80\x02X\x01\x00\x00\x00xQ.", "persistent id"),
}


@pytest.mark.parametrize("form", STRUCTURAL)
def test_structural_tricks_are_refused(tmp_path: Path, form: str) -> None:
    data, why = STRUCTURAL[form]
    assert why in refusal(tmp_path, "evil.pkl", data)


def test_persistent_ids_must_have_torch_storage_shape(tmp_path: Path) -> None:
    def pid(*items: bytes) -> bytes:
        return b"\x80\x02(" + b"".join(items) + b"tQ."

    storage = b"X\x07\x00\x00\x00storage"
    float_storage, key, cpu, numel = b"ctorch\nFloatStorage\n", b"X\x01\x00\x00\x000", b"X\x03\x00\x00\x00cpu", b"K\x04"
    assert judged(tmp_path, "ok.pt", pb.state_dict_zip(data_pkl=pid(storage, float_storage, key, cpu, numel))) == []
    for bad in (pid(b"X\x06\x00\x00\x00module", b"ctorch.nn\nLinear\n", key, cpu),
                pid(storage, b"cos\nsystem\n", key, cpu, numel),
                pid(storage, float_storage, key, cpu),
                b"\x80\x02K\x01Q."):
        message = refusal(tmp_path, "bad.pt", pb.state_dict_zip(data_pkl=bad))
        assert "persistent id" in message or "os.system" in message


def test_legacy_checkpoints_are_walked_pickle_by_pickle(tmp_path: Path) -> None:
    state, storages = pb.tensors({"w": (2, 2)})
    state["evil"] = RunsShell()
    message = refusal(tmp_path, "legacy.pt", pb.legacy_checkpoint(state, storages))
    assert "posix.system" in message
    good = pb.legacy_checkpoint()
    cut = good[: good.index(b"\x80\x02]")]  # ends before the storage keys' pickle
    assert "4 of the 5 pickles" in refusal(tmp_path, "cut.pt", cut)


def test_archives_two_members_of_one_name_and_torchscript(tmp_path: Path) -> None:
    good = pb.dump(pb.tensors({"w": (2,)})[0])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", good)
        with pytest.warns(UserWarning, match="Duplicate name"):
            z.writestr("archive/data.pkl", PAYLOADS["GLOBAL"][0])
    message = refusal(tmp_path, "dup.pt", buf.getvalue())
    assert "two members named 'archive/data.pkl'" in message and "os.system" in message
    ts = pb.torchscript_archive()
    assert classify(write(tmp_path, "ViT-B-32.pt", ts)).kind == "torchscript"
    message = refusal(tmp_path, "ViT-B-32.pt", ts)
    assert "TorchScript archive (1 code file under code/)" in message and "allow_pickle: torchscript" in message
    assert [p.code for p in judged(tmp_path, "ViT-B-32.pt", ts, allow="torchscript")] == ["torchscript"]
    assert [p.code for p in judged(tmp_path, "ViT-B-32.pt", ts, allow=False)] == ["unsafe-pickle"]
    (problem,) = judged(tmp_path, "old.pt", pb.legacy_tar())
    assert problem.code == "dangerous-pickle" and "tar format" in problem.message


def test_trailing_bytes_after_stop(tmp_path: Path) -> None:
    first = pickle.dumps({"a": 1}, protocol=2)
    assert "os.system" in refusal(tmp_path, "t.pkl", first + PAYLOADS["GLOBAL"][0])
    (warning,) = judged(tmp_path, "t2.pkl", first + b"\x00\x00 junk")
    assert warning.code == "trailing-data" and not warning.is_error


# ----------------------------------------------------------------------------- bounded work


def test_truncated_and_malformed_pickles_are_refused_without_a_traceback(tmp_path: Path) -> None:
    whole = pickle.dumps({"w": np.zeros(3), "x": [1, 2, 3]}, protocol=4)
    for cut in (3, len(whole) // 2, len(whole) - 1):
        assert "does not parse" in refusal(tmp_path, "cut.pkl", whole[:cut])
    for data in (b"\x80\x02X\xff\xff\xff\x7f", b"\x80\x02h\x05.", b"\x80\x02t.", b"\x80\x02\x8e" + b"\xff" * 8 + b".",
                 b"\x80\x02S'unterminated\n.", b"\x80\x02\x8b\xff\xff\xff\xff."):
        assert "does not parse" in refusal(tmp_path, "bad.pkl", data)


def test_bombs_are_refused_within_bounds(tmp_path: Path) -> None:
    memo = b"\x80\x04" + b"".join(b"Nr" + struct.pack("<I", i) for i in range(MAX_MEMO + 1)) + b"."
    assert "memo entries" in refusal(tmp_path, "memo.pkl", memo)
    assert "nested marks" in refusal(tmp_path, "marks.pkl", b"\x80\x04" + b"(" * 100_001 + b"N.")
    assert "opcodes" in refusal(tmp_path, "ops.pkl", b"\x80\x04" + b"N0" * (MAX_OPS // 2 + 4096) + b"N.")
    bomb = pb.zip_of({"archive/data.pkl": b"\x80\x02\x8e" + struct.pack("<Q", MAX_INFLATE + 1) + bytes(MAX_INFLATE + 1) + b"."},
                     zipfile.ZIP_DEFLATED)
    assert len(bomb) < MAX_INFLATE // 100
    assert "compressed" in refusal(tmp_path, "bomb.pt", bomb)


def test_a_large_argument_is_skipped_not_read(tmp_path: Path) -> None:
    """A pickle with a 300 MB byte string inline (NumPy's protocol 4/5 layout) is judged from its opcodes."""
    p = tmp_path / "big.pkl"
    size = 300 << 20
    with open(p, "wb") as f:
        f.write(b"\x80\x04ccollections\nOrderedDict\n)R" + op_str("w") + b"\x8e" + struct.pack("<Q", size))
        f.truncate(f.tell() + size)  # sparse: the bytes are never written, nor read back
        f.seek(0, 2)
        f.write(b"s.")
    assert scan_pickle(p) == []


MEASURE = """
import sys, time
t = time.process_time()
from preflight.formats.pickle import pickle_policy
problems = pickle_policy(sys.argv[1], "x", True)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(len([p for p in problems if p.is_error]), hwm // 1024, round(time.process_time() - t, 3))
"""
MAX_CPU_S = 2.0  # the archive cases take 0.3 to 0.9 s of CPU alone; margin for a loaded 2-core machine


def measured(tmp_path: Path, name: str, data: bytes) -> tuple[int, int, float]:
    """(errors, peak MB, CPU s) of judging one file in a fresh process."""
    out = subprocess.run([sys.executable, "-c", MEASURE, str(write(tmp_path, name, data))],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent).stdout.split()
    return int(out[0]), int(out[1]), float(out[2])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc")
def test_hostile_pickles_stay_under_100_mb(tmp_path: Path) -> None:
    """Each in a fresh process, whose own peak resident memory (VmHWM) is read at the end."""
    files = {
        "memo.pkl": b"\x80\x04" + b"".join(b"Nr" + struct.pack("<I", i) for i in range(MAX_MEMO + 1)) + b".",
        "stack.pkl": b"\x80\x04" + b"N" * 1_100_000 + b".",
        "strings.pkl": b"\x80\x04" + b"".join(op_str(f"{i:0>200}") + b"0" for i in range(60_000)) + b"N.",
        "members.pt": pb.state_dict_zip({f"layer.{i}.weight": (2, 2) for i in range(20_000)}),
    }
    for name, data in files.items():
        errors, peak_mb, cpu = measured(tmp_path, name, data)
        assert peak_mb < 100, (name, peak_mb)
        assert errors == (0 if name in ("members.pt", "strings.pkl") else 1), (name, errors)


def _tar_of_empty(n: int) -> bytes:
    block = tarfile.TarInfo("e").tobuf(tarfile.GNU_FORMAT)
    out = bytearray()
    for i in range(n):
        info = tarfile.TarInfo(f"e{i}")
        out += info.tobuf(tarfile.GNU_FORMAT) if i < 8 else _renamed(block, f"e{i}")
    return bytes(out + bytes(1024))


def _renamed(block: bytes, name: str) -> bytes:
    """A GNU header with another name and its checksum recomputed (tobuf is slow for 100,000 of them)."""
    b = bytearray(block)
    b[0:100] = name.encode().ljust(100, b"\0")
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\0 " % sum(b)
    return bytes(b)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc")
def test_hostile_archives_are_judged_within_bounds(tmp_path: Path) -> None:
    """The largest archives judged, and one entry more, each in a fresh process: under 100 MB
    and the CPU bound (every member's header is read once, no member list is kept twice)."""
    from preflight.formats.archive import MAX_TAR_MEMBERS, MAX_ZIP_MEMBERS

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(MAX_ZIP_MEMBERS):
            z.writestr(zipfile.ZipInfo(f"archive/data/{i}"), b"")
    cases = {
        "zip-max.pt": (buf.getvalue(), 0),
        "tar-max.pt": (_tar_of_empty(MAX_TAR_MEMBERS), 0),
        "tar-over.pt": (_tar_of_empty(MAX_TAR_MEMBERS + 1), 1),
        "legacy-tar-deep.pt": (pb.legacy_tar_after(MAX_TAR_MEMBERS - 4, pb.probe("x")), 1),
    }
    z = zipfile.ZipFile(io.BytesIO(cases["zip-max.pt"][0]))
    assert len(z.infolist()) == MAX_ZIP_MEMBERS
    with zipfile.ZipFile(buf, "a") as z:
        z.writestr("one-more", b"")
    cases["zip-over.pt"] = (buf.getvalue(), 1)
    for name, (data, want) in cases.items():
        errors, peak_mb, cpu = measured(tmp_path, name, data)
        assert (errors, peak_mb < 100, cpu < MAX_CPU_S) == (want, True, True), (name, errors, peak_mb, cpu)


def test_binary_data_under_a_name_that_promises_no_pickle_is_data(tmp_path) -> None:
    """Random bytes often read as a few protocol-0 opcodes that reach an extension-registry
    import before failing; a file named like neither a pickle nor a weights format that
    neither declares itself a pickle (PROTO) nor parses to STOP is data, not a refusal."""
    import random

    from preflight.formats.pickle import check_by_content

    rng = random.Random(7)
    refused = 0
    for _ in range(500):
        path = tmp_path / "graph.onnx"
        path.write_bytes(bytes(rng.getrandbits(8) for _ in range(512)))
        refused += bool(check_by_content(path, "graph.onnx", False))
    assert refused <= 2  # only a PROTO header by chance (2 bytes in 65536) is read as a declared pickle
    path = tmp_path / "evil.onnx"
    path.write_bytes(b"cos\nsystem\n(S'echo owned'\ntR.")
    assert [p.code for p in check_by_content(path, "evil.onnx", True)] == ["dangerous-pickle"]  # a real pickle, whatever its name


# ----------------------------------------------------------------------------- what torch reads, found as torch finds it


VERSION = ("archive/version", b"3\n")


def test_a_record_is_found_case_insensitively(tmp_path: Path) -> None:
    """torch's zip reader (miniz) matches record names case-insensitively: archive/DATA.PKL is
    what torch.load unpickles as data.pkl, so it is judged as the checkpoint's main pickle."""
    data = pb.zip_entries([("archive/DATA.PKL", pb.probe("upper")), VERSION])
    found = classify(write(tmp_path, "up.pt", data))
    assert found.kind == "torch-zip" and found.pickled and dict(found.records)["data.pkl"] == "archive/DATA.PKL"
    assert "'archive/DATA.PKL'" in found.label
    message = refusal(tmp_path, "up.pt", data)
    assert "lp_probe.ran (in archive/DATA.PKL)" in message
    (problem,) = judged(tmp_path, "up.pt", data, allow=False)
    assert problem.code == "unsafe-pickle"
    # the same under a mixed-case prefix, and a clean checkpoint spelled so still passes
    data = pb.zip_entries([("Archive/version", b"3\n"), ("ARCHIVE/Data.Pkl", pb.probe("mixed"))])
    assert "lp_probe.ran" in refusal(tmp_path, "mixed.pt", data)
    clean = pb.zip_entries([("archive/DATA.PKL", pb.dump(pb.tensors({"w": (2,)})[0])), ("archive/data/0", bytes(8)), VERSION])
    assert judged(tmp_path, "clean.pt", clean) == []


def test_the_record_folder_is_the_first_entrys(tmp_path: Path) -> None:
    """The prefix is the first entry's folder: with `weird/version` first, torch reads weird/data.pkl."""
    good = pb.dump(pb.tensors({"w": (2,)})[0])
    data = pb.zip_entries([("weird/version", b"3\n"), ("archive/data.pkl", good), ("weird/data.pkl", pb.probe("weird"))])
    found = classify(write(tmp_path, "w.pt", data))
    assert dict(found.records)["data.pkl"] == "weird/data.pkl"
    assert "(in weird/data.pkl)" in refusal(tmp_path, "w.pt", data)
    # the storage persistent ids of the main pickle are allowed; in another pickle they are not
    main = {s.where: s.how for s in found.streams}
    assert main["weird/data.pkl"] == "main" and main["archive/data.pkl"] == "torch"


def test_two_entries_torch_takes_for_one_record_are_refused_naming_the_one_it_reads(tmp_path: Path) -> None:
    good = pb.dump(pb.tensors({"w": (2,)})[0])
    for entries, read in (
        ([("archive/data.pkl", good), ("archive/DATA.PKL", pb.dump(pb.tensors({"v": (2,)})[0])), VERSION], "archive/data.pkl"),
        ([("archive/DATA.PKL", good), ("archive/data.pkl", good), VERSION], "archive/DATA.PKL"),
    ):
        message = refusal(tmp_path, "dup.pt", pb.zip_entries(entries))
        assert "takes for data.pkl" in message and f"it reads {read!r}" in message
    # duplicates of another member are no confusion
    assert judged(tmp_path, "ok.pt", pb.zip_entries([("archive/data.pkl", good), ("archive/x", b"1"), ("archive/X", b"2"), VERSION])) == []


def test_data_version_alone_and_torchscript_spelled_otherwise(tmp_path: Path) -> None:
    data = pb.zip_entries([("archive/data.pkl", pb.probe("dv")), ("archive/.data/version", b"3\n")])
    assert classify(write(tmp_path, "dv.pt", data)).kind == "torch-zip"
    assert "lp_probe.ran" in refusal(tmp_path, "dv.pt", data)
    ts = pb.zip_entries([("archive/data.pkl", pickle.dumps({}, 2)), ("archive/CONSTANTS.PKL", pickle.dumps((), 2)), VERSION])
    found = classify(write(tmp_path, "ts.pt", ts))
    assert found.kind == "torchscript" and dict(found.records)["constants.pkl"] == "archive/CONSTANTS.PKL"
    assert "allow_pickle: torchscript" in refusal(tmp_path, "ts.pt", ts)


def test_the_legacy_tar_format_is_found_past_any_number_of_other_entries(tmp_path: Path) -> None:
    """torch's tar loader finds `storages` wherever it is; the old scan stopped after 10,000 entries."""
    data = pb.legacy_tar_after(10_001, pb.probe("tar"))
    found = classify(write(tmp_path, "old.pt", data))
    assert found.kind == "torch-tar" and found.pickled
    (problem,) = judged(tmp_path, "old.pt", data)
    assert problem.code == "dangerous-pickle" and "tar format" in problem.message


def test_a_tar_that_tarfile_gives_up_on_is_read_as_a_pickle(tmp_path: Path) -> None:
    """torch.load falls back to unpickling the file from its first byte when tarfile raises,
    so a tar whose first entry's name is a pickle is that pickle."""
    data = pb.tar_then_broken(pb.probe_text("fallback"))
    found = classify(write(tmp_path, "fb.pt", data))
    assert found.kind == "pickle" and found.pickled
    assert "lp_probe.ran" in refusal(tmp_path, "fb.pt", data)
    # a tar that reads to its end, whose first bytes are an importing pickle, is one too
    data = pb.tar_entries([(pb.probe_text("whole").decode("latin-1"), b"x")], tarfile.USTAR_FORMAT)
    found = classify(write(tmp_path, "poly.tar", data))
    assert found.kind == "pickle" and "also a pickle" in found.label
    # plain tars are not: a first entry named config.json reads as GLOBAL of a name with NUL bytes
    data = pb.tar_entries([("config.json", b"{}"), ("weights.bin", bytes(64))])
    assert classify(write(tmp_path, "plain.tar", data)).kind == "tar"
    assert judged(tmp_path, "plain.tar", data, allow=False) == []


def test_every_pickle_of_the_legacy_stream_is_walked(tmp_path: Path) -> None:
    """torch's legacy format reads five pickles with plain pickle.load; a payload in the
    protocol-version slot runs before any check of it."""
    data = pb.legacy_with(1, pb.probe("slot1"))
    assert classify(write(tmp_path, "l.pt", data)).kind == "torch-legacy"
    assert "lp_probe.ran" in refusal(tmp_path, "l.pt", data)
    data = pb.legacy_with(0, pb.probe("slot0"))  # no magic number: still the pickle torch runs first
    assert "lp_probe.ran" in refusal(tmp_path, "l0.pt", data)


def test_archives_inside_archives(tmp_path: Path) -> None:
    inner = pb.zip_entries([("archive/data.pkl", pb.probe("inner")), VERSION])
    nemo = pb.tar_entries([("model_config.yaml", b"a: 1\n"), ("model_weights.ckpt", inner)])
    found = classify(write(tmp_path, "m.nemo", nemo))
    assert found.pickled and found.members == ("model_weights.ckpt > archive/data.pkl",)
    assert "(in model_weights.ckpt > archive/data.pkl)" in refusal(tmp_path, "m.nemo", nemo)
    assert [p.code for p in judged(tmp_path, "m.nemo", nemo, allow=False)] == ["unsafe-pickle"]
    good = pb.tar_entries([("model_config.yaml", b"a: 1\n"), ("model_weights.ckpt", pb.state_dict_zip())])
    assert judged(tmp_path, "g.nemo", good) == []
    # a checkpoint stored in a zip, the whole in a tar, three levels down
    deep = pb.tar_entries([("outer.zip", pb.zip_entries([("w.pt", inner)]))])
    assert "(in outer.zip > w.pt > archive/data.pkl)" in refusal(tmp_path, "deep.tar", deep)
    # a compressed archive inside an archive is not inflated whole to be read: refused
    packed = pb.zip_entries([("w.pt", inner)], zipfile.ZIP_DEFLATED)
    assert "compressed archive inside an archive" in refusal(tmp_path, "packed.zip", packed)
    # an upper-case name inside a generic zip is still a pickle name
    assert "lp_probe.ran (in EVIL.PKL)" in refusal(tmp_path, "g.zip", pb.zip_entries([("EVIL.PKL", pb.probe("e"))]))


def test_npz_members_are_read_by_content(tmp_path: Path) -> None:
    """np.load reads any member that starts with the .npy magic, whatever its name."""
    arr = io.BytesIO()
    np.save(arr, np.array([RunsShell()], dtype=object), allow_pickle=True)
    data = pb.zip_entries([("ok.npy", b"\x93NUMPY\x01\x00v\x00" + b"{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }".ljust(118) + b"\n"),
                           ("weights", arr.getvalue())], zipfile.ZIP_DEFLATED)
    path = write(tmp_path, "a.npz", data)
    assert np.load(path, allow_pickle=True)["weights"].dtype == object  # numpy reads it as an array
    message = refusal(tmp_path, "a.npz", data)
    assert "posix.system (in weights)" in message


def test_known_formats_are_not_read_as_pickles_by_accident(tmp_path: Path) -> None:
    """A safetensors header length whose bytes read as opcodes ('N.', or 'c' then NUL bytes)
    imports nothing: still safetensors."""
    for length in (0x2E4E, 0x63, 0x50):
        header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
        header = header.ljust(length, b" ")
        data = struct.pack("<Q", len(header)) + header + bytes(4)
        found = classify(write(tmp_path, "m.bin", data))
        assert found.kind == "safetensors" and not found.pickled, (hex(length), found)


def test_inspect_and_check_refuse_the_upper_case_member(tmp_path: Path) -> None:
    """The reported case end to end: `inspect --allow-pickle` and `check` with allow_pickle: true exit 1."""
    from click.testing import CliRunner

    from preflight.cli import main

    (tmp_path / "m").mkdir()
    write(tmp_path / "m", "w.pt", pb.zip_entries([("archive/DATA.PKL", pb.probe("upper")), VERSION]))
    result = CliRunner().invoke(main, ["inspect", "--allow-pickle", str(tmp_path / "m" / "w.pt")])
    assert result.exit_code == 1 and "dangerous-pickle" in result.output and "archive/DATA.PKL" in result.output
    manifest = tmp_path / "lanes.yaml"
    manifest.write_text(f"version: 1\nmodels_dir: {tmp_path}\nlanes:\n  - {{name: clip, kind: file, path: m/w.pt, allow_pickle: true}}\n")
    result = CliRunner().invoke(main, ["check", "-m", str(manifest), "--json", "--termination-log", str(tmp_path / "tl")])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert [p["code"] for p in report["lanes"][0]["problems"]] == ["dangerous-pickle"]
