"""The model-folder campaign: config fields, tensor shapes, tokenizer and config files, index entries.

Tiny models of several families are written by transformers' own `save_pretrained` (in the
oracle venv, ops/oracle-torch.sh: transformers 4.44.2), each with a tokenizer written by the
`tokenizers` library through `PreTrainedTokenizerFast.save_pretrained`. Every mutant changes
one config field, one tensor, one tokenizer/config file or one index entry (or nothing: the
good variants). The loader's verdict is transformers': `from_pretrained` with
`output_loading_info` (a missing, unexpected or mismatched key is a refusal, as vLLM refuses
them), a forward pass whose output is finite, and `AutoTokenizer.from_pretrained`. Ours is
`check_hf_dir`. A disagreement fails the campaign unless its kind is in DELIBERATE.

Run it and print the figures:  python -m tests.folder_campaign
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.st_campaign import _load, _oracle_env, _run_batch, oracle_python

# Mutation kinds where our verdict differs from transformers 4.44's on purpose.
DELIBERATE = {
    "head-dim-changed (4.44 ignores it)": "transformers 4.44's Qwen2, Phi-3 and Mixtral build q/k/v from hidden_size // heads "
                                          "and ignore head_dim; 5.x and vLLM build them from config.head_dim, so the weights no "
                                          "longer fit (4.44's Llama, Mistral and Gemma read head_dim too, and refuse)",
    "rope (4.44 ignores it)": "transformers 4.44's Mistral, Qwen2, Gemma and Mixtral never read rope_scaling; 5.x validates it for "
                              "every family (KeyError on a missing factor, ROPE_INIT_FUNCTIONS on an unknown type) and vLLM's "
                              "get_rope raises 'Unknown RoPE scaling type'",
}
HEAD_DIM_IGNORED = ("qwen2", "phi3", "mixtral")
ROPE_IGNORED = ("mistral", "qwen2", "gemma", "mixtral")

MAKE = r"""
import json, os, sys, torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (PreTrainedTokenizerFast, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
    Qwen2Config, Qwen2ForCausalLM, GemmaConfig, GemmaForCausalLM, Phi3Config, Phi3ForCausalLM, MixtralConfig,
    MixtralForCausalLM, GPT2Config, GPT2LMHeadModel, BertConfig, BertModel)
torch.manual_seed(0)
root = sys.argv[1]
vocab = {"<unk>": 0, "a": 1, "b": 2, "ab": 3, "c": 4, "abc": 5, **{f"w{i}": i for i in range(6, 60)}}
tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b"), ("ab", "c")], unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
             vocab_size=64, max_position_embeddings=64)
models_ = {
    "llama": LlamaForCausalLM(LlamaConfig(**small, tie_word_embeddings=False)),
    "llama-tied": LlamaForCausalLM(LlamaConfig(**small, tie_word_embeddings=True)),
    "mistral": MistralForCausalLM(MistralConfig(**small, head_dim=8)),
    "qwen2": Qwen2ForCausalLM(Qwen2Config(**small, tie_word_embeddings=False)),
    "gemma": GemmaForCausalLM(GemmaConfig(**small, head_dim=8)),
    "phi3": Phi3ForCausalLM(Phi3Config(**small, pad_token_id=0)),
    "mixtral": MixtralForCausalLM(MixtralConfig(**small, num_local_experts=2, num_experts_per_tok=1)),
    "gpt2": GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=64, n_positions=64)),
    "bert": BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                 vocab_size=64, max_position_embeddings=64)),
}
for name, model in models_.items():
    path = os.path.join(root, name)
    model.save_pretrained(path, max_shard_size="12KB" if name == "qwen2" else "5GB")
    fast.save_pretrained(path)
"""

ORACLE = r"""
import json, math, sys, warnings
warnings.filterwarnings("ignore")
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging
logging.set_verbosity_error()
out = {}
ids = torch.tensor([[1, 2, 3, 4]])
for path, causal in json.load(sys.stdin):
    try:
        cls = AutoModelForCausalLM if causal else AutoModel
        model, info = cls.from_pretrained(path, local_files_only=True, output_loading_info=True)
        bad = {k: v for k, v in info.items() if v}
        if bad:
            out[path] = [False, json.dumps(bad)[:300]]
            continue
        with torch.no_grad():
            res = model(input_ids=ids)
        t = res.logits if causal else res.last_hidden_state
        if not torch.isfinite(t).all():
            out[path] = [False, "forward pass is not finite"]
            continue
        AutoTokenizer.from_pretrained(path, local_files_only=True)("ab c")
        out[path] = [True, ""]
    except BaseException as e:
        out[path] = [False, f"{type(e).__name__}: {str(e)[:200]}"]
print(json.dumps(out))
"""

FAMILIES = ("llama", "llama-tied", "mistral", "qwen2", "gemma", "phi3", "mixtral", "gpt2", "bert")


@dataclass
class Mutant:
    family: str
    kind: str
    path: Path
    causal: bool
    ours: bool | None = None
    theirs: bool | None = None
    detail: str = ""

    @property
    def label(self) -> str:
        if self.kind.startswith("head-dim-changed") and self.family in HEAD_DIM_IGNORED:
            return "head-dim-changed (4.44 ignores it)"
        if self.kind.startswith("rope-") and "(good)" not in self.kind and self.family in ROPE_IGNORED:
            return "rope (4.44 ignores it)"
        return self.kind


def _edit_tensors(root: Path, fn: Callable[[dict], dict], only: str | None = None, reindex: bool = True) -> None:
    """Apply `fn` to every shard's tensors (or to `only`); the index follows the shards unless `reindex` is false."""
    from safetensors.numpy import save_file

    where: dict[str, str] = {}
    for f in sorted(root.glob("*.safetensors")):
        t, meta = _load(f)
        if only is None or f.name == only:
            t = fn(t)
            save_file(t, str(f), metadata=meta)
        where.update(dict.fromkeys(t, f.name))
    index = root / "model.safetensors.index.json"
    if reindex and index.exists():
        doc = json.loads(index.read_text())
        doc["weight_map"] = where
        index.write_text(json.dumps(doc))


def _json(root: Path, name: str, fn: Callable[[object], object]) -> None:
    p = root / name
    p.write_text(json.dumps(fn(json.loads(p.read_text()))))


def mutants(models: Path, work: Path) -> list[Mutant]:
    out: list[Mutant] = []

    def add(family: str, kind: str, *, config: Callable[[dict], dict] | None = None, tensors: Callable[[dict], dict] | None = None,
            raw: Callable[[Path], None] | None = None) -> None:
        dst = work / f"{len(out):03d}-{family}-{kind.split(' ')[0]}"
        shutil.copytree(models / family, dst)
        if config is not None:
            _json(dst, "config.json", config)
        if tensors is not None:
            _edit_tensors(dst, tensors)
        if raw is not None:
            raw(dst)
        out.append(Mutant(family, kind, dst, family != "bert"))

    def cfg(**over) -> Callable[[dict], dict]:
        return lambda c: {**c, **over}

    def without(*keys: str) -> Callable[[dict], dict]:
        return lambda c: {k: v for k, v in c.items() if k not in keys}

    def drop(name: str) -> Callable[[dict], dict]:
        return lambda t: {k: v for k, v in t.items() if k != name}

    def grow(name: str, axis: int = 0) -> Callable[[dict], dict]:
        def edit(t: dict) -> dict:
            if name in t:
                a = t[name]
                shape = list(a.shape)
                shape[axis] += 1
                t[name] = np.zeros(shape, a.dtype)
            return t
        return edit

    def extra(name: str, like: str) -> Callable[[dict], dict]:
        return lambda t: {**t, name: t[like].copy()} if like in t else t

    decoders = ("llama", "llama-tied", "mistral", "qwen2", "gemma", "phi3", "mixtral")
    for fam in FAMILIES:
        add(fam, "original")
        add(fam, "extra-config-key (good)", config=cfg(my_note="kept by the loaders", preflight_test=1))
        add(fam, "torch-dtype-float16 (good)", config=cfg(torch_dtype="float16"))
        add(fam, "torch-dtype-unknown", config=cfg(torch_dtype="bfloat17"))
        add(fam, "model-type-unknown", config=cfg(model_type="llama_x9"))
        add(fam, "tokenizer-truncated", raw=lambda d: (d / "tokenizer.json").write_bytes((d / "tokenizer.json").read_bytes()[:200]))
        add(fam, "tokenizer-model-type-unknown", raw=lambda d: _json(d, "tokenizer.json", lambda j: {**j, "model": {**j["model"], "type": "BPX"}}))
        add(fam, "tokenizer-merge-outside-vocab", raw=lambda d: _json(d, "tokenizer.json", lambda j: {
            **j, "model": {**j["model"], "merges": [*j["model"]["merges"], "zz qq"]}}))
        add(fam, "tokenizer-merged-token-outside-vocab", raw=lambda d: _json(d, "tokenizer.json", lambda j: {
            **j, "model": {**j["model"], "merges": [*j["model"]["merges"], "w6 w7"]}}))
        add(fam, "tokenizer-config-not-json", raw=lambda d: (d / "tokenizer_config.json").write_text("{\"tokenizer_class\": "))
        add(fam, "tokenizer-config-a-list", raw=lambda d: (d / "tokenizer_config.json").write_text("[]"))
        add(fam, "tokenizer-class-unknown", raw=lambda d: _json(d, "tokenizer_config.json", lambda j: {**j, "tokenizer_class": "NoSuchTokenizerX9"}))
        if fam != "bert":  # BertTokenizerFast wants a normalizer our tiny tokenizer does not have
            add(fam, "tokenizer-class-absent (good)", raw=lambda d: _json(d, "tokenizer_config.json",
                                                                      lambda j: {k: v for k, v in j.items() if k != "tokenizer_class"}))
        add(fam, "tokenizer-class-llama (good)", raw=lambda d: _json(d, "tokenizer_config.json", lambda j: {**j, "tokenizer_class": "LlamaTokenizer"}))
    for fam in decoders:
        hd = 8
        add(fam, "generation-config-a-list", raw=lambda d: (d / "generation_config.json").write_text("[1, 2]"))
        add(fam, "generation-config-not-json (good)", raw=lambda d: (d / "generation_config.json").write_text("{\"bos"))
        add(fam, "kv-heads-changed", config=cfg(num_key_value_heads=2))
        add(fam, "heads-changed", config=cfg(num_attention_heads=4))
        add(fam, "heads-not-dividing-kv", config=cfg(num_attention_heads=3, num_key_value_heads=2, head_dim=hd))
        add(fam, "intermediate-size-changed", config=cfg(intermediate_size=40))
        add(fam, "head-dim-changed", config=cfg(head_dim=2 * hd))
        add(fam, "hidden-act-unknown", config=cfg(hidden_act="gelu_x9", hidden_activation="gelu_x9") if fam == "gemma" else cfg(hidden_act="gelu_x9"))
        add(fam, "rope-type-unknown", config=cfg(rope_scaling={"rope_type": "fancy_x9", "factor": 2.0}))
        add(fam, "rope-a-string", config=cfg(rope_scaling="linear"))
        add(fam, "rope-linear (good)", config=cfg(rope_scaling={"type": "linear", "factor": 2.0}) if fam != "phi3" else cfg(max_position_embeddings=64))
        add(fam, "rope-linear-without-factor", config=cfg(rope_scaling={"rope_type": "linear"}))
        add(fam, "layer-norm-missing", tensors=drop("model.layers.1.input_layernorm.weight"))
        add(fam, "final-norm-missing", tensors=drop("model.norm.weight"))
        add(fam, "extra-tensor-in-layer", tensors=extra("model.layers.0.self_attn.extra_proj.weight", "model.layers.0.self_attn.o_proj.weight"))
        add(fam, "extra-tensor-at-root", tensors=extra("model.extra_norm.weight", "model.norm.weight"))
        add(fam, "rotary-inv-freq-present (good)", tensors=lambda t: {**t, "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4, np.float32)})
        add(fam, "o-proj-wider", tensors=grow("model.layers.1.self_attn.o_proj.weight", 1))
        add(fam, "norm-longer", tensors=grow("model.layers.0.post_attention_layernorm.weight"))
    for fam in ("llama", "mistral", "qwen2", "gemma", "mixtral"):
        add(fam, "k-proj-missing", tensors=drop("model.layers.0.self_attn.k_proj.weight"))
        add(fam, "k-proj-rows", tensors=grow("model.layers.0.self_attn.k_proj.weight"))
    for fam in ("llama", "mistral", "qwen2", "gemma"):
        add(fam, "up-proj-rows", tensors=grow("model.layers.1.mlp.up_proj.weight"))
        add(fam, "down-proj-cols", tensors=grow("model.layers.1.mlp.down_proj.weight", 1))
    add("llama", "attention-bias-declared", config=cfg(attention_bias=True))
    add("llama", "mlp-bias-declared", config=cfg(mlp_bias=True))
    add("llama", "bias-without-declaration", tensors=extra("model.layers.0.self_attn.q_proj.bias", "model.layers.0.input_layernorm.weight"))
    add("llama", "untied-config-on-untied (good)", config=cfg(tie_word_embeddings=False))
    add("llama-tied", "lm-head-stored (good)", tensors=lambda t: {**t, "lm_head.weight": t["model.embed_tokens.weight"].copy()})
    add("qwen2", "q-bias-missing", tensors=drop("model.layers.0.self_attn.q_proj.bias"))
    add("qwen2", "k-bias-longer", tensors=grow("model.layers.1.self_attn.k_proj.bias"))
    add("phi3", "qkv-rows", tensors=grow("model.layers.0.self_attn.qkv_proj.weight"))
    add("phi3", "gate-up-rows", tensors=grow("model.layers.1.mlp.gate_up_proj.weight"))
    add("phi3", "qkv-missing", tensors=drop("model.layers.1.self_attn.qkv_proj.weight"))
    add("mixtral", "experts-changed", config=cfg(num_local_experts=3))
    add("mixtral", "expert-missing", tensors=drop("model.layers.1.block_sparse_moe.experts.1.w2.weight"))
    add("mixtral", "expert-rows", tensors=grow("model.layers.0.block_sparse_moe.experts.0.w1.weight"))
    add("mixtral", "router-rows", tensors=grow("model.layers.0.block_sparse_moe.gate.weight"))
    add("mixtral", "expert-extra", tensors=extra("model.layers.0.block_sparse_moe.experts.2.w1.weight",
                                                  "model.layers.0.block_sparse_moe.experts.0.w1.weight"))
    g = "transformer.h."
    add("gpt2", "n-inner-changed", config=cfg(n_inner=40))
    add("gpt2", "heads-not-dividing", config=cfg(n_head=3))
    add("gpt2", "positions-changed", config=cfg(n_positions=48))
    add("gpt2", "activation-unknown", config=cfg(activation_function="gelu_x9"))
    add("gpt2", "c-attn-cols", tensors=grow(g + "0.attn.c_attn.weight", 1))
    add("gpt2", "c-fc-bias-missing", tensors=drop(g + "1.mlp.c_fc.bias"))
    add("gpt2", "ln-f-missing", tensors=drop("transformer.ln_f.weight"))
    add("gpt2", "extra-tensor-in-layer", tensors=extra(g + "0.mlp.c_extra.weight", g + "0.mlp.c_fc.weight"))
    add("gpt2", "attn-bias-buffer-present (good)", tensors=lambda t: {**t, g + "0.attn.bias": np.ones((1, 1, 4, 4), np.float32)})
    b = "encoder.layer."
    add("bert", "intermediate-size-changed", config=cfg(intermediate_size=40))
    add("bert", "heads-not-dividing", config=cfg(num_attention_heads=3))
    add("bert", "positions-changed", config=cfg(max_position_embeddings=48))
    add("bert", "type-vocab-changed", config=cfg(type_vocab_size=3))
    add("bert", "hidden-act-unknown", config=cfg(hidden_act="gelu_x9"))
    add("bert", "query-rows", tensors=grow(b + "0.attention.self.query.weight"))
    add("bert", "value-missing", tensors=drop(b + "1.attention.self.value.weight"))
    add("bert", "output-dense-missing", tensors=drop(b + "0.output.dense.weight"))
    add("bert", "token-type-missing", tensors=drop("embeddings.token_type_embeddings.weight"))
    _index_mutants(add)
    return out


def _index_mutants(add) -> None:
    """The sharded qwen2: index entries that disagree with the shards."""
    def index_edit(fn: Callable[[dict, Path], None]) -> Callable[[Path], None]:
        def edit(d: Path) -> None:
            p = d / "model.safetensors.index.json"
            idx = json.loads(p.read_text())
            fn(idx, d)
            p.write_text(json.dumps(idx))
        return edit

    def wrong_shard(idx: dict, _d: Path) -> None:
        files = sorted(set(idx["weight_map"].values()))
        name = next(k for k, v in idx["weight_map"].items() if v == files[0])
        idx["weight_map"][name] = files[-1]

    def unlisted(idx: dict, _d: Path) -> None:
        idx["weight_map"].pop("model.layers.0.post_attention_layernorm.weight")

    def in_two_shards(_idx: dict, d: Path) -> None:
        files = sorted(d.glob("model-*.safetensors"))
        t0, _ = _load(files[0])
        name = next(iter(t0))
        _edit_tensors(d, lambda t: {**t, name: t0[name].copy()}, only=files[-1].name, reindex=False)

    add("qwen2", "index-wrong-shard (good)", raw=index_edit(wrong_shard))
    add("qwen2", "index-tensor-unlisted", raw=index_edit(unlisted))
    add("qwen2", "index-tensor-in-two-shards (good)", raw=index_edit(in_two_shards))


def make_models(python: str, root: Path) -> Path:
    import subprocess

    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([python, "-c", MAKE, str(root)], check=True, capture_output=True, env=_oracle_env(root / ".hf"))
    return root


def judge(ms: list[Mutant], python: str, home: Path) -> None:
    from preflight.check import discover
    from preflight.formats.hfdir import check_hf_dir

    theirs = _run_batch(python, ORACLE, [[str(m.path), m.causal] for m in ms], env=_oracle_env(home))
    for m in ms:
        info = check_hf_dir(m.path, discover(m.path))
        m.ours = info.ok
        m.theirs, why = theirs[str(m.path)]
        m.detail = f"ours: {[p.code for p in info.problems if p.is_error]}; theirs: {why}"


def run(workdir: Path) -> list[Mutant] | None:
    python = oracle_python()
    if python is None:
        return None
    models = make_models(python, workdir / "models")
    work = workdir / "mutants"
    work.mkdir()
    ms = mutants(models, work)
    judge(ms, python, workdir / "models" / ".hf")
    return ms


def disagreements(ms: list[Mutant]) -> list[Mutant]:
    return [m for m in ms if m.ours != m.theirs and m.label not in DELIBERATE]


def figures(ms: list[Mutant]) -> str:
    lines = ["| family | mutants | loader refuses | false OK | false alarm | deliberate |", "| --- | --- | --- | --- | --- | --- |"]
    by: dict[str, Counter] = {}
    for m in ms:
        c = by.setdefault(m.family, Counter())
        c["n"] += 1
        c["refused"] += not m.theirs
        deliberate = m.label in DELIBERATE
        c["deliberate"] += deliberate and m.ours != m.theirs
        c["false_ok"] += (not deliberate) and m.ours and not m.theirs
        c["false_alarm"] += (not deliberate) and m.theirs and not m.ours
    for fam in FAMILIES:
        c = by.get(fam, Counter())
        lines.append(f"| {fam} | {c['n']} | {c['refused']} | {c['false_ok']} | {c['false_alarm']} | {c['deliberate']} |")
    return "\n".join(lines)


def main() -> int:
    import time

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="folder-campaign-") as d:
        ms = run(Path(d))
        if ms is None:
            print("no torch oracle (ops/oracle-torch.sh): campaign not run")
            return 1
        print(figures(ms))
        bad = disagreements(ms)
        print(f"\n{len(ms)} mutants, {sum(not m.theirs for m in ms)} refused by transformers, "
              f"{len(bad)} unexplained disagreements, {time.perf_counter() - start:.0f} s")
        for m in ms:
            if m.ours != m.theirs:
                mark = "DELIBERATE" if m.label in DELIBERATE else "DISAGREE"
                print(f"{mark} {m.family} {m.kind}: {m.detail}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
