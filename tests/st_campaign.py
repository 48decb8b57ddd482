"""The safetensors / model-folder mutation campaign: our verdict against the real loaders'.

Files: mutants of real safetensors files (made by the safetensors writer, and the
`model.safetensors` transformers' `save_pretrained` writes for a tiny Llama) are
judged by `check_safetensors` and by the library (`safe_open` + `get_tensor` of every
tensor). Folders: mutants of tiny models saved by transformers from a config (no hub)
are judged by `check_hf_dir` and by `from_pretrained(local_files_only=True,
output_loading_info=True)`, where missing, unexpected or mismatched keys count as a
refusal, as vLLM refuses them. The oracles run in subprocess batches, so a crash in
a loader is contained (and reported as a refusal).

Every mutant comes from a fixed seed. A disagreement fails the campaign unless its
kind is listed in DELIBERATE with the reason.

Run the campaign and print its figures:  python -m tests.st_campaign
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEED = 20261130
ORACLE_ENV = "PREFLIGHT_TORCH_ORACLE"

# Mutation kinds where our verdict differs from the loader's on purpose.
DELIBERATE = {
    "entry-as-array": "the library's serde derive reads [dtype, shape, data_offsets]; no writer emits it and Python "
                      "readers of headers index entry['dtype'], so we refuse it",
}


@dataclass
class Mutant:
    kind: str
    path: Path  # a file (file campaign) or a folder (folder campaign)
    ours: bool | None = None  # True: we pass it
    theirs: bool | None = None  # True: the loader takes it
    detail: str = ""


# ----------------------------------------------------------------------------- oracles

def oracle_python() -> str | None:
    """The interpreter with torch + transformers (ops/oracle-torch.sh), when it is installed."""
    venv = os.environ.get(ORACLE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lane-preflight", "oracle-torch")
    python = os.path.join(venv, "bin", "python")
    if not os.access(python, os.X_OK):
        return None
    r = subprocess.run([python, "-c", "import torch, transformers"], capture_output=True)
    return python if r.returncode == 0 else None


FILE_ORACLE = r"""
import json, sys
from safetensors import safe_open
out = {}
for path in json.load(sys.stdin):
    try:
        with safe_open(path, "np") as f:
            for k in f.keys():
                f.get_tensor(k)
        out[path] = [True, ""]
    except BaseException as e:
        out[path] = [False, f"{type(e).__name__}: {str(e)[:200]}"]
print(json.dumps(out))
"""

FOLDER_ORACLE = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
from transformers import AutoModel, AutoModelForCausalLM
from transformers.utils import logging
logging.set_verbosity_error()
out = {}
for path, causal in json.load(sys.stdin):
    try:
        cls = AutoModelForCausalLM if causal else AutoModel
        _m, info = cls.from_pretrained(path, local_files_only=True, output_loading_info=True)
        bad = {k: v for k, v in info.items() if v}
        out[path] = [not bad, json.dumps(bad)[:300]]
    except BaseException as e:
        out[path] = [False, f"{type(e).__name__}: {str(e)[:200]}"]
print(json.dumps(out))
"""


def _run_batch(python: str, script: str, items: list, env: dict[str, str] | None = None) -> dict[str, list]:
    """One subprocess for the batch; if it dies, each item again alone (the one that kills it is a refusal)."""
    r = subprocess.run([python, "-c", script], input=json.dumps(items), capture_output=True, text=True, env=env, timeout=600)
    if r.returncode == 0:
        return json.loads(r.stdout.strip().splitlines()[-1])
    if len(items) == 1:
        key = items[0][0] if isinstance(items[0], list) else items[0]
        return {key: [False, f"loader process died ({r.returncode}): {r.stderr[-200:]}"]}
    out: dict[str, list] = {}
    for item in items:
        out.update(_run_batch(python, script, [item], env))
    return out


def _oracle_env(home: Path) -> dict[str, str]:
    return {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------- file mutants

def _header(blob: bytes) -> tuple[int, dict]:
    (n,) = struct.unpack_from("<Q", blob)
    return n, json.loads(blob[8 : 8 + n])


def _with_header(blob: bytes, text: str, *, pad: bool = True) -> bytes:
    n, _ = _header(blob)
    raw = text.encode("utf-8", "surrogatepass")
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + blob[8 + n :]


def _join(pairs: list[tuple[str, str]]) -> str:
    """An object from (raw key text, raw value text) pairs, written as the writer writes them."""
    return "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"


def structural_edits(blob: bytes) -> dict[str, bytes]:
    """Header rewrites Python's json accepts and the library may not (and a few it does)."""
    _n, h = _header(blob)
    pairs = [(json.dumps(k), json.dumps(v, separators=(",", ":"))) for k, v in h.items()]
    tensors = [(k, v) for k, v in pairs if k != '"__metadata__"']
    rest = [(k, v) for k, v in pairs if k != tensors[0][0]]
    first = tensors[0][0]
    entry = json.loads(tensors[0][1])
    b, e = entry["data_offsets"]

    def entry_with(*extra: tuple[str, str], **fields: str) -> str:
        items = [('"dtype"', json.dumps(entry["dtype"])), ('"shape"', json.dumps(entry["shape"])), ('"data_offsets"', json.dumps([b, e]))]
        items = [(k, fields.get(k.strip('"'), v)) for k, v in items] + list(extra)
        return _join(items)

    def with_first(body: str, key: str | None = None) -> str:
        return _join([(key or first, body)] + rest)

    out = {
        "duplicate-__metadata__": _join(pairs + [('"__metadata__"', '{"format":"pt"}')]),
        "duplicate-dtype": with_first(entry_with(('"dtype"', json.dumps(entry["dtype"])))),
        "duplicate-shape": with_first(entry_with(('"shape"', json.dumps(entry["shape"])))),
        "duplicate-tensor-name": _join(pairs + [tensors[0]]),
        "lone-surrogate-name": with_first(tensors[0][1], first[:-1] + '\\ud800"'),
        "surrogate-pair-name": with_first(tensors[0][1], first[:-1] + '\\ud83d\\ude00"'),
        "minus-zero-offset": with_first(entry_with(data_offsets=f"[-0,{e}]")) if b == 0 else None,
        "fraction-offset": with_first(entry_with(data_offsets=f"[{b}.0,{e}]")),
        "exponent-offset": with_first(entry_with(data_offsets=f"[{b},{e}e0]")),
        "metadata-number": _join([('"__metadata__"', '{"format":1}')] + tensors),
        "metadata-null": _join([('"__metadata__"', "null")] + tensors),
        "extra-field": with_first(entry_with(('"extra"', '{"k":[1,2,{"x":null}]}'))),
        "extra-field-nested-127": with_first(entry_with(('"extra"', "[" * 125 + "]" * 125))),
        "extra-field-nested-128": with_first(entry_with(('"extra"', "[" * 126 + "]" * 126))),
        "extra-field-double-overflow": with_first(entry_with(('"extra"', "1e400"))),
        "leading-whitespace": " \n" + _join(pairs),
        "entry-as-array": with_first(json.dumps([entry["dtype"], entry["shape"], [b, e]])),
        "dtype-lowercase": with_first(entry_with(dtype=json.dumps(entry["dtype"].lower()))),
        "shape-off-by-one": with_first(entry_with(shape=json.dumps([*entry["shape"][:-1], entry["shape"][-1] + 1]))),
        "reordered-entries": _join(list(reversed(pairs))),
    }
    result = {k: _with_header(blob, v) for k, v in out.items() if v is not None}
    result["trailing-nul-in-header"] = _with_header(blob, _join(pairs) + "\0", pad=False)
    return result


def file_mutants(base: dict[str, bytes], folder: Path, rng: random.Random, *, truncations: int, flips: int) -> list[Mutant]:
    out: list[Mutant] = []

    def add(kind: str, name: str, data: bytes) -> None:
        p = folder / f"{len(out):04d}-{kind}-{name}"
        p.write_bytes(data)
        out.append(Mutant(kind, p))

    for name, blob in base.items():
        add("original", name, blob)
        n, _ = _header(blob)
        for _ in range(truncations):
            add("truncation", name, blob[: rng.randrange(0, len(blob))])
        for _ in range(flips):
            pos = rng.randrange(0, 8 + n)
            add("header-flip", name, blob[:pos] + bytes([rng.randrange(256)]) + blob[pos + 1 :])
        add("trailing-byte", name, blob + b"\0")
        for kind, data in structural_edits(blob).items():
            add(kind, name, data)
    return out


def judge_files(mutants: list[Mutant]) -> None:
    from preflight.formats.safetensors import check_safetensors

    theirs = _run_batch(sys.executable, FILE_ORACLE, [str(m.path) for m in mutants])
    for m in mutants:
        info = check_safetensors(m.path)
        m.ours = info.ok
        m.theirs, why = theirs[str(m.path)]
        m.detail = f"ours: {[p.code for p in info.problems if p.is_error]}; theirs: {why}"


# ----------------------------------------------------------------------------- folder mutants

MAKE_MODELS = r"""
import sys, torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM
torch.manual_seed(0)
root = sys.argv[1]
LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, vocab_size=64, tie_word_embeddings=False)).save_pretrained(root + "/llama")
LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, vocab_size=64, tie_word_embeddings=True)).save_pretrained(root + "/llama-tied")
GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(root + "/gpt2")
GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=4, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(root + "/gpt2-4")
# Heterogeneous layers: layer 0 dense (mlp_only_layers), layers 1-3 MoE with a shared expert.
Qwen2MoeForCausalLM(Qwen2MoeConfig(hidden_size=16, intermediate_size=32, moe_intermediate_size=8, shared_expert_intermediate_size=16,
                                   num_experts=4, num_experts_per_tok=2, num_hidden_layers=4, num_attention_heads=2,
                                   num_key_value_heads=1, vocab_size=64, mlp_only_layers=[0], tie_word_embeddings=False)).save_pretrained(root + "/qwen2moe")
BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, vocab_size=64,
                     max_position_embeddings=32)).save_pretrained(root + "/bert")
"""


def make_models(python: str, root: Path) -> dict[str, Path]:
    subprocess.run([python, "-c", MAKE_MODELS, str(root)], check=True, capture_output=True, env=_oracle_env(root / ".hf"))
    return {name: root / name for name in ("llama", "llama-tied", "gpt2", "bert", "gpt2-4", "qwen2moe")}


def _load(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str] | None]:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _save(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata=metadata)


def folder_mutants(models: dict[str, Path], folder: Path) -> list[tuple[Mutant, bool]]:
    """(mutant, causal LM) pairs: each a copy of a model folder with one defect (or none)."""
    import shutil

    out: list[tuple[Mutant, bool]] = []

    def add(kind: str, base: str, *, tensors: Callable[[dict], dict] | None = None, config: Callable[[dict], dict] | None = None,
            raw: Callable[[Path], None] | None = None) -> None:
        dst = folder / f"{len(out):03d}-{base}-{kind}"
        shutil.copytree(models[base], dst)
        st = dst / "model.safetensors"
        if tensors is not None:
            t, meta = _load(st)
            _save(st, tensors(t), meta)
        if config is not None:
            cfg = json.loads((dst / "config.json").read_text())
            (dst / "config.json").write_text(json.dumps(config(cfg)))
        if raw is not None:
            raw(dst)
        out.append((Mutant(kind, dst), base != "bert"))

    def drop(pattern: str) -> Callable[[dict], dict]:
        return lambda t: {k: v for k, v in t.items() if pattern not in k}

    def rename(old: str, new: str) -> Callable[[dict], dict]:
        return lambda t: {k.replace(old, new): v for k, v in t.items()}

    def rows(name: str, delta: int) -> Callable[[dict], dict]:
        def edit(t: dict) -> dict:
            a = t[name]
            t[name] = np.zeros((a.shape[0] + delta, *a.shape[1:]), a.dtype) if delta > 0 else a[: a.shape[0] + delta].copy()
            return t
        return edit

    def extra_layer(stem: str) -> Callable[[dict], dict]:
        return lambda t: {**t, **{k.replace(f"{stem}.1.", f"{stem}.2."): v for k, v in t.items() if f"{stem}.1." in k}}

    def cfg(**over) -> Callable[[dict], dict]:
        return lambda c: {**c, **over}

    for base in models:
        add("original", base)
        add("truncated-weights", base, raw=lambda d: os.truncate(d / "model.safetensors", (d / "model.safetensors").stat().st_size - 4))
    add("layer-dropped", "llama", tensors=drop("model.layers.1."))
    add("layer-dropped", "gpt2", tensors=drop("h.1."))
    add("layer-dropped", "bert", tensors=drop("encoder.layer.1."))
    add("layer-extra", "llama", tensors=extra_layer("model.layers"))
    add("layer-extra", "bert", tensors=extra_layer("encoder.layer"))
    add("config-more-layers", "llama", config=cfg(num_hidden_layers=3))
    add("config-more-layers", "gpt2", config=cfg(n_layer=3))
    add("config-fewer-layers", "llama", config=cfg(num_hidden_layers=1))
    add("vocab-rows-more", "llama", tensors=rows("model.embed_tokens.weight", 8))
    add("vocab-rows-fewer", "llama", tensors=rows("model.embed_tokens.weight", -8))
    add("vocab-rows-more", "bert", tensors=rows("embeddings.word_embeddings.weight", 8))
    add("vocab-rows-both-more", "llama", tensors=lambda t: rows("lm_head.weight", 8)(rows("model.embed_tokens.weight", 8)(t)))
    add("config-vocab-padded", "llama", config=cfg(vocab_size=128), tensors=lambda t: rows("lm_head.weight", 64)(rows("model.embed_tokens.weight", 64)(t)))
    add("config-vocab-off", "gpt2", config=cfg(vocab_size=72))
    add("config-hidden-off", "bert", config=cfg(hidden_size=32, intermediate_size=32))
    add("lm-head-missing-untied", "llama", tensors=drop("lm_head."))
    add("lm-head-missing-tied", "llama-tied", tensors=drop("lm_head."))
    add("config-untied-no-head", "llama-tied", config=cfg(tie_word_embeddings=False), tensors=drop("lm_head."))
    add("renamed-tensor-in-layer", "llama", tensors=rename("model.layers.0.mlp.up_proj", "model.layers.0.mlp.upp_proj"))
    add("renamed-tensor-in-layer", "llama", tensors=rename("model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.kk_proj"))
    add("renamed-tensor-in-layer", "gpt2-4", tensors=rename("transformer.h.2.mlp.c_fc", "transformer.h.2.mlp.c_fcc"))
    add("renamed-tensor-in-layer", "qwen2moe", tensors=rename("model.layers.2.mlp.shared_expert.up_proj", "model.layers.2.mlp.shared_expert.upp_proj"))
    add("renamed-tensor-in-layer", "qwen2moe", tensors=rename("model.layers.1.input_layernorm", "model.layers.1.input_layernorn"))
    add("renamed-norm-in-layer", "llama", tensors=rename("model.layers.0.input_layernorm", "model.layers.0.input_layernorn"))
    add("layer-dropped", "qwen2moe", tensors=drop("model.layers.3."))
    add("renamed-embedding", "llama", tensors=rename("model.embed_tokens.", "model.embed_tokenz."))
    add("renamed-embedding", "llama-tied", tensors=rename("model.embed_tokens.", "model.embed_tokenz."))
    add("renamed-embedding", "qwen2moe", tensors=rename("model.embed_tokens.", "model.embed_tokenz."))
    add("renamed-layer-list", "llama", tensors=rename("model.layers.1.", "model.layers.7."))
    return out


def judge_folders(pairs: list[tuple[Mutant, bool]], python: str, home: Path) -> None:
    from preflight.check import discover
    from preflight.formats.hfdir import check_hf_dir

    theirs = _run_batch(python, FOLDER_ORACLE, [[str(m.path), causal] for m, causal in pairs], env=_oracle_env(home))
    for m, _causal in pairs:
        info = check_hf_dir(m.path, discover(m.path), serves_text=False)
        m.ours = info.ok
        m.theirs, why = theirs[str(m.path)]
        m.detail = f"ours: {[p.code for p in info.problems if p.is_error]}; theirs: {why}"


# ----------------------------------------------------------------------------- the campaign

def writer_files() -> dict[str, bytes]:
    """Real files from the safetensors writer: several dtypes, metadata, a zero-size tensor.

    Only dtypes numpy holds: the file oracle runs `get_tensor` through safetensors' numpy
    API, in this interpreter (no torch needed for the file campaign)."""
    from tests.builders import write_safetensors

    with tempfile.TemporaryDirectory() as d:
        p = write_safetensors(Path(d) / "w.safetensors", {
            "embed.weight": np.arange(64, dtype=np.float32).reshape(8, 8), "norm.weight": ("F16", (8,)),
            "head.weight": ("F64", (4, 8)), "empty": ("U8", (0,)), "ids": ("I64", (2, 4)), "mask": ("BOOL", (3,)),
        }, metadata={"format": "pt"})
        return {"writer.safetensors": p.read_bytes()}


def run(workdir: Path, *, truncations: int = 40, flips: int = 400) -> dict[str, list[Mutant]]:
    rng = random.Random(SEED)
    python = oracle_python()
    base = writer_files()
    results: dict[str, list[Mutant]] = {}
    models: dict[str, Path] = {}
    if python is not None:
        models = make_models(python, workdir / "models")
        base["transformers-llama.safetensors"] = (models["llama"] / "model.safetensors").read_bytes()
    files = workdir / "files"
    files.mkdir(parents=True)
    mutants = file_mutants(base, files, rng, truncations=truncations, flips=flips)
    judge_files(mutants)
    results["files"] = mutants
    if python is not None:
        folders = workdir / "folders"
        folders.mkdir()
        pairs = folder_mutants(models, folders)
        judge_folders(pairs, python, workdir / "models" / ".hf")
        results["folders"] = [m for m, _ in pairs]
    return results


def disagreements(results: dict[str, list[Mutant]]) -> list[Mutant]:
    return [m for ms in results.values() for m in ms if m.ours != m.theirs and m.kind not in DELIBERATE]


def figures(results: dict[str, list[Mutant]]) -> str:
    lines = ["| campaign | kind | mutants | loader takes | we pass | agree |", "| --- | --- | --- | --- | --- | --- |"]
    for campaign, ms in results.items():
        by: dict[str, Counter] = {}
        for m in ms:
            c = by.setdefault(m.kind, Counter())
            c["n"] += 1
            c["theirs"] += bool(m.theirs)
            c["ours"] += bool(m.ours)
            c["agree"] += m.ours == m.theirs
        for kind, c in sorted(by.items()):
            mark = " (deliberate)" if kind in DELIBERATE else ""
            lines.append(f"| {campaign} | {kind}{mark} | {c['n']} | {c['theirs']} | {c['ours']} | {c['agree']} |")
    return "\n".join(lines)


def main() -> int:
    import time

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="st-campaign-") as d:
        results = run(Path(d))
    total = sum(len(ms) for ms in results.values())
    print(figures(results))
    bad = disagreements(results)
    print(f"\n{total} mutants, {len(bad)} unexplained disagreements, {time.perf_counter() - start:.0f} s"
          + ("" if "folders" in results else " (no torch oracle: folder campaign not run)"))
    for m in bad:
        print(f"DISAGREE {m.kind} {m.path.name}: {m.detail}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
