"""A tiny GGUF for (almost) every architecture llama.cpp knows, built from what its loader asks for.

For the sweep in tests/test_gguf_sweep.py: start from a small llama-like set of key/values and an
SPM vocabulary; run the architecture's load path (gguf_eval) over it; a key it requires and does
not find is added (a small value of the C type it is read into), a tensor it requires and does not
find is added with the shape it asks for; repeat until the load path goes through. Whether the
result is a model llama.cpp accepts is for llama.cpp to say: the sweep only holds preflight to
never refusing a file llama.cpp loads and decodes.
"""

from __future__ import annotations

from gguf.constants import GGUFValueType as VT

from preflight.formats import gguf_eval
from tests import gguf_families as F
from tests.gguf_mutants import Spec

MAX_ELEMENTS = 1 << 22  # per tensor (16 MiB as F32)
_VT_ID = {VT.UINT8: 0, VT.INT8: 1, VT.UINT16: 2, VT.INT16: 3, VT.UINT32: 4, VT.INT32: 5, VT.FLOAT32: 6, VT.BOOL: 7,
          VT.STRING: 8, VT.ARRAY: 9, VT.UINT64: 10, VT.INT64: 11, VT.FLOAT64: 12}
_CTYPE_VT = {"uint32_t": VT.UINT32, "int32_t": VT.INT32, "float": VT.FLOAT32, "bool": VT.BOOL, "uint64_t": VT.UINT64,
             "llama_pooling_type": VT.UINT32, "std::string": VT.STRING}


def header(kvs: list[tuple[str, VT, object]]) -> tuple[dict[str, object], dict[str, tuple[int, int | None]]]:
    """The metadata and value types preflight's parser would read from these key/values."""
    meta: dict[str, object] = {}
    types: dict[str, tuple[int, int | None]] = {}
    for key, vt, value in kvs:
        if vt == VT.ARRAY:
            item, items = value  # type: ignore[misc]
            types[key] = (9, _VT_ID[item])
            meta[key] = list(items)
        else:
            types[key] = (_VT_ID[vt], None)
            meta[key] = value
    return meta, types


def _default(key: str, ctype: str) -> tuple[VT, object] | None:
    if ctype.startswith("array:"):
        vt = _CTYPE_VT.get(ctype[len("array:"):])
        return (VT.ARRAY, (vt, [2, 2, 0, 0] if "sections" in key else [1, 1])) if vt in (VT.UINT32, VT.INT32) else None
    vt = _CTYPE_VT.get(ctype)
    if vt is None:
        return None
    if vt == VT.FLOAT32:
        return vt, 1e-5 if "epsilon" in key or "eps" in key else 1.0
    if vt == VT.BOOL:
        return vt, False
    if vt == VT.STRING:
        return None
    return vt, 4


def build(arch: str, vocab: str = "spm", rounds: int = 40) -> tuple[Spec | None, str]:
    """The model, or None and why it could not be built."""
    base = F.Model("llama", vocab, n_head_kv=4)
    kvs = [(k.replace("llama.", f"{arch}.", 1) if k.startswith("llama.") else k, t, arch if k == "general.architecture" else v)
           for k, t, v in F.key_values(base)]
    n_vocab = len(F.vocabulary(vocab)[0])
    experts = False
    for _ in range(rounds):
        meta, types = header(kvs)
        built: dict[str, tuple[int, ...]] = {}

        def on_missing(name: str, dims: list) -> bool:
            n = 1
            for d in dims:
                n *= d
            if not dims or any(d < 1 for d in dims) or n > MAX_ELEMENTS:
                return False
            built[name] = tuple(dims)
            return True

        out = gguf_eval.run(arch, meta, types, {}, n_vocab, 0, on_missing)
        if out.fault:
            return None, f"evaluator fault: {out.fault}"
        err = out.hparams or out.tensors
        if err is not None and err.kind == "key-missing":
            value = _default(err.key, err.detail)
            if value is None:
                return None, f"needs {err.key} ({err.detail or '?'})"
            kvs.append((err.key, *value))
            continue
        if err is not None and err.kind == "tensor-missing" and not experts:
            # a loader that needs experts: give it some
            experts = True
            kvs += [(f"{arch}.expert_count", VT.UINT32, 4), (f"{arch}.expert_used_count", VT.UINT32, 2)]
            continue
        if err is not None:
            return None, f"{err.kind}: {err.message}"
        if not out.followed:
            return None, "load path not followed"
        if not built:
            return None, "no tensors"
        return Spec(kvs, [(n, tuple(reversed(d)), "F32") for n, d in built.items()]), ""
    return None, "too many keys"
