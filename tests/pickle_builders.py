"""PyTorch-shaped files made without torch, by the real pickle module.

Stand-in classes and functions are registered under torch's own module names only while
a file is being pickled, so the pickler writes exactly the opcodes torch.save writes:
GLOBAL torch._utils._rebuild_tensor_v2, collections.OrderedDict, storages as persistent
ids ('storage', torch.FloatStorage, key, location, numel), protocol 2. The layouts follow
torch/serialization.py: the zip format (<archive>/data.pkl, byteorder, data/<key>,
version, .data/serialization_id), the legacy format (five pickles, then raw storages),
and a TorchScript archive (data.pkl, constants.pkl, code/).
"""

from __future__ import annotations

import collections
import copyreg
import io
import pickle
import struct
import sys
import tarfile
import types
import zipfile
from contextlib import contextmanager

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


class FloatStorage:
    """Stands for torch.FloatStorage (the class a storage's persistent id names)."""


class HalfStorage:
    pass


def _rebuild_tensor_v2(*args):  # the pickle names it; nothing calls it
    raise AssertionError("stand-in")


def build_intlist(*args):
    raise AssertionError("stand-in")


class CLIP:
    """Stands for a TorchScript class (__torch__.clip.model.CLIP): NEWOBJ, then BUILD with its attributes."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def __reduce_ex__(self, protocol):
        return copyreg.__newobj__, (CLIP,), self.state


for _obj, _module in ((FloatStorage, "torch"), (HalfStorage, "torch"), (_rebuild_tensor_v2, "torch._utils"),
                      (build_intlist, "torch.jit._pickle"), (CLIP, "__torch__.clip.model")):
    _obj.__module__ = _module
    _obj.__qualname__ = _obj.__name__


class Storage:
    def __init__(self, kind: type, key: str, numel: int) -> None:
        self.kind, self.key, self.numel = kind, key, numel
        self.data = bytes(numel * (4 if kind is FloatStorage else 2))


class Tensor:
    """Reduces the way torch.Tensor does: _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)."""

    def __init__(self, storage: Storage, shape: tuple[int, ...]) -> None:
        self.storage, self.shape = storage, shape

    def __reduce_ex__(self, protocol):
        stride, acc = [], 1
        for dim in reversed(self.shape):
            stride.insert(0, acc)
            acc *= dim
        return _rebuild_tensor_v2, (self.storage, 0, tuple(self.shape), tuple(stride), False, collections.OrderedDict())


_MODULES = {
    "torch": {"FloatStorage": FloatStorage, "HalfStorage": HalfStorage},
    "torch._utils": {"_rebuild_tensor_v2": _rebuild_tensor_v2},
    "torch.jit": {},
    "torch.jit._pickle": {"build_intlist": build_intlist},
    "__torch__": {},
    "__torch__.clip": {},
    "__torch__.clip.model": {"CLIP": CLIP},
}


@contextmanager
def torch_names():
    """Register the stand-ins under torch's names for the pickler to find, then remove them."""
    clash = [m for m in _MODULES if m in sys.modules]
    if clash:
        raise RuntimeError(f"{clash[0]} is already imported: these stand-ins would shadow it")
    try:
        for name, attrs in _MODULES.items():
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            sys.modules[name] = module
        yield
    finally:
        for name in _MODULES:
            sys.modules.pop(name, None)


class _TorchPickler(pickle.Pickler):
    legacy = False

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.kind, obj.key, "cpu", obj.numel) + ((None,) if self.legacy else ())
        return None


def tensors(shapes: dict[str, tuple[int, ...]], kind: type = FloatStorage) -> tuple[collections.OrderedDict, list[Storage]]:
    state, storages = collections.OrderedDict(), []
    for i, (name, shape) in enumerate(shapes.items()):
        numel = 1
        for d in shape:
            numel *= d
        s = Storage(kind, str(i), numel)
        storages.append(s)
        state[name] = Tensor(s, shape)
    return state, storages


def dump(obj, *, protocol: int = 2, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    with torch_names():
        p = _TorchPickler(buf, protocol=protocol)
        p.legacy = legacy
        p.dump(obj)
    return buf.getvalue()


def torch_zip(obj, storages: list[Storage], *, archive: str = "archive", extra: dict[str, bytes] | None = None,
              data_pkl: bytes | None = None, compress: int = zipfile.ZIP_STORED) -> bytes:
    """torch.save's zip layout: data.pkl first, then byteorder, the storages, version and serialization id."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as z:
        z.writestr(f"{archive}/data.pkl", data_pkl if data_pkl is not None else dump(obj))
        z.writestr(f"{archive}/byteorder", "little", zipfile.ZIP_STORED)
        for s in storages:
            z.writestr(f"{archive}/data/{s.key}", s.data, zipfile.ZIP_STORED)
        for name, data in (extra or {}).items():
            z.writestr(f"{archive}/{name}", data)
        z.writestr(f"{archive}/version", "3\n", zipfile.ZIP_STORED)
        z.writestr(f"{archive}/.data/serialization_id", "1234567890123456789012345678901234567890", zipfile.ZIP_STORED)
    return buf.getvalue()


def state_dict_zip(shapes: dict[str, tuple[int, ...]] | None = None, **kw) -> bytes:
    state, storages = tensors(shapes or {"linear.weight": (4, 2), "linear.bias": (4,)})
    return torch_zip(state, storages, **kw)


def whisper_small() -> bytes:
    """openai-whisper's small.pt: torch.save({"dims": {...}, "model_state_dict": state_dict})."""
    state, storages = tensors({"decoder.ln.weight": (8,), "encoder.conv1.weight": (8, 80, 3)}, HalfStorage)
    dims = {"n_mels": 80, "n_vocab": 51865, "n_audio_ctx": 1500, "n_audio_state": 768, "n_audio_head": 12,
            "n_audio_layer": 12, "n_text_ctx": 448, "n_text_state": 768, "n_text_head": 12, "n_text_layer": 12}
    return torch_zip({"dims": dims, "model_state_dict": state}, storages, archive="small")


def legacy_checkpoint(obj=None, storages: list[Storage] | None = None) -> bytes:
    """torch.save(..., _use_new_zipfile_serialization=False): five pickles, then each storage's raw bytes."""
    if obj is None:
        obj, storages = tensors({"w": (2, 2)})
    buf = io.BytesIO()
    for value in (MAGIC_NUMBER, PROTOCOL_VERSION, {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                                                   "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(value, buf, protocol=2)
    buf.write(dump(obj, legacy=True))
    pickle.dump(sorted(s.key for s in storages or []), buf, protocol=2)
    for s in storages or []:
        buf.write(struct.pack("<q", s.numel) + s.data)
    return buf.getvalue()


def torchscript_archive() -> bytes:
    """What torch.jit.save writes for a scripted module (CLIP's ViT-B-32.pt is one)."""
    state, storages = tensors({"visual.proj": (4, 2)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("ViT-B-32/data.pkl", dump(CLIP({"training": False, "visual_proj": state["visual.proj"]})))
        z.writestr("ViT-B-32/code/__torch__/clip/model.py", "class CLIP(Module):\n  __parameters__ = []\n")
        z.writestr("ViT-B-32/code/__torch__/clip/model.py.debug_pkl", pickle.dumps((), protocol=2))
        z.writestr("ViT-B-32/constants.pkl", dump(()))
        for s in storages:
            z.writestr(f"ViT-B-32/data/{s.key}", s.data)
        z.writestr("ViT-B-32/version", "3\n")
    return buf.getvalue()


def legacy_tar() -> bytes:
    """The tar format of torch before 0.4: sys_info, pickle, storages, tensors."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("sys_info", pickle.dumps({}, 2)), ("pickle", pickle.dumps({}, 2)),
                           ("storages", pickle.dumps(0, 2)), ("tensors", pickle.dumps(0, 2))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_of(members: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


# ----------------------------------------------------------------------------- how torch finds what it unpickles


def probe(tag: str) -> bytes:
    """A harmless payload that says it ran: protocol 2, GLOBAL lp_probe.ran, called with `tag`.
    The torch oracle test provides lp_probe (it appends the tag to a log); preflight refuses it
    as an import a state dict never needs."""
    raw = tag.encode()
    return b"\x80\x02clp_probe\nran\nX" + struct.pack("<I", len(raw)) + raw + b"\x85R."


def probe_text(tag: str) -> bytes:
    """The same in protocol 0, with no PROTO (what fits a tar header's name field)."""
    return b"clp_probe\nran\n(S'" + tag.encode() + b"'\ntR."


def zip_entries(entries: list[tuple[str, bytes]], compress: int = zipfile.ZIP_STORED) -> bytes:
    """A zip of exactly these entries, in this order, duplicates and all."""
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buf, "w", compress) as z:
            for name, data in entries:
                z.writestr(name, data)
    return buf.getvalue()


def tar_entries(entries: list[tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def legacy_tar_after(junk: int, payload: bytes) -> bytes:
    """torch's tar format with `junk` empty entries before its `storages` member, whose first
    pickle (the storage count, read with plain pickle.load) is `payload`."""
    return tar_entries([(f"junk{i}", b"") for i in range(junk)]
                       + [("storages", payload), ("tensors", pickle.dumps(0, 2)), ("pickle", pickle.dumps({}, 2))])


def tar_then_broken(first_name: bytes) -> bytes:
    """A tar whose first entry is named `first_name`, then an extended header followed by a block
    that is no header. tarfile reads the first entry, then raises while listing the rest, so
    torch.load gives up on the tar format and unpickles the file from its first byte: the name."""
    head = tarfile.TarInfo(first_name.decode("latin-1")).tobuf(tarfile.USTAR_FORMAT, "latin-1", "strict")
    pax = tarfile.TarInfo._create_pax_generic_header({"comment": "x"}, tarfile.XHDTYPE, "utf-8")
    return head + pax + b"\x01" * 512 + bytes(1024)


def legacy_with(slot: int, payload: bytes) -> bytes:
    """torch's legacy (non-zip) format with its pickle number `slot` (0: the magic number,
    1: the protocol version, ...) replaced by `payload`."""
    state, storages = tensors({"w": (2, 2)})
    parts = [pickle.dumps(MAGIC_NUMBER, 2), pickle.dumps(PROTOCOL_VERSION, 2),
             pickle.dumps({"protocol_version": PROTOCOL_VERSION, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}, 2),
             dump(state, legacy=True), pickle.dumps(sorted(s.key for s in storages), 2)]
    parts[slot] = payload
    return b"".join(parts) + b"".join(struct.pack("<q", s.numel) + s.data for s in storages)
