"""Will the engine start this model on this node? Pure arithmetic: model facts, flags and accelerator in, findings out.

Only what the engine would certainly refuse is an error: a rule it checks (divisibility,
--max-model-len, dtype and quantization against the GPU, the architecture registry) or
memory it would certainly run out of, counted from lower bounds (the weights exactly from
the tensor headers, the KV cache of one max-length sequence). What rests on estimates
(activation peak, CUDA graphs, the CUDA context, llama.cpp's compute buffers) is a
`fit-margin` warning that states the margin, never a refusal.

vLLM (0.19.1, V1 engine): usable memory per GPU = gpu_memory_utilization x total
(`requested_memory`); weights per rank as the engine splits them: layers across pipeline
stages by `get_pp_indices`, every matrix split by tensor parallelism except what vLLM
replicates (norms and other 1-D tensors, MoE routers, MLA's `q_a_proj` and
`kv_a_proj_with_mqa`, K/V projections when there are fewer KV heads than ranks: one head
per rank), the vocabulary padded to 64 and split; float tensors at the served dtype. KV
bytes per token per layer: 2 x max(1, kv_heads // TP) x head_size x dtype, or for MLA
(kv_lora_rank + qk_rope_head_dim) x dtype, not split by TP (fp8_ds_mla: 656 bytes). The
"GPU KV cache size: N tokens" vLLM logs is reproduced by `vllm_logged_tokens` (its hybrid
grouping of full and sliding-window layers included), the V0 "# GPU blocks" by
`vllm_v0_blocks`.

llama.cpp (as vendored by llama-cpp-python 0.3.36): `llama_kv_bytes` is the KV cache
llama_kv_cache allocates: n_ctx padded to 256, per-slot contexts (-np without -kvu) padded
to 256 each, per layer ggml_row_size(type_k, n_embd_k_gqa) + ggml_row_size(type_v,
n_embd_v_gqa) per cell, the SWA layers of the interleaved cache at min(n_ctx, n_swa x
(unified ? n_seq : 1) + n_ubatch) padded to 256 unless --swa-full.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import field
from typing import Any

from .. import problems as P
from ..problems import Problem
from .accel import GiB, MiB, Accelerator
from .args import ServeArgs
from .model import ConfigFacts, GGUFFacts, dtype_bytes
from ..record import record

# Problem codes of the fit checks (also in problems.py).
ENGINE_UNSUPPORTED = "engine-unsupported"
PARALLEL_INVALID = "parallel-invalid"
CONTEXT_TOO_LONG = "context-too-long"
WEIGHTS_TOO_LARGE = "weights-too-large"
KV_CACHE_TOO_LARGE = "kv-cache-too-large"
MEMORY_LIMIT = "memory-limit-exceeded"
GPU_MEMORY_BUSY = "gpu-memory-busy"
FIT_MARGIN = "fit-margin"
FIT_UNKNOWN = "fit-unknown"

FP8_DS_MLA_BYTES = 656  # vLLM's fp8_ds_mla page: 512 fp8 + 4 x fp32 scales + 64 bf16 rope dims per token
_FLOAT = {"F16", "BF16", "F32"}
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|decoder\.layers)\.(\d+)\.")
_EMBED = ("embed_tokens", "wte.", "word_embeddings", "tok_embeddings", "embeddings.word")
_REPLICATED = ("kv_a_proj_with_mqa", "q_a_proj", "mlp.gate.weight", "router.weight", "e_score_correction_bias", "shared_expert_gate")


@record
class Fit:
    """What fit found for one lane on one node: figures and findings."""

    engine: str
    verdict: str = "unknown"  # fits | tight | does-not-fit | unknown
    problems: list[Problem] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def error(self, code: str, message: str, path: str = "serve") -> None:
        self.problems.append(P.error(path, code, message))

    def warning(self, code: str, message: str, path: str = "serve") -> None:
        self.problems.append(P.warning(path, code, message))

    @property
    def fits(self) -> bool:
        return not any(p.is_error for p in self.problems)

    def settle(self) -> Fit:
        if any(p.is_error for p in self.problems):
            self.verdict = "does-not-fit"
        elif any(p.code == FIT_MARGIN for p in self.problems):
            self.verdict = "tight"
        elif "headroom_bytes" in self.figures:
            self.verdict = "fits"
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "verdict": self.verdict, **self.figures,
                "problems": [{**p.to_dict(), "severity": p.severity} for p in self.problems]}


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


# --------------------------------------------------------------------------- vLLM

def pp_partitions(layers: int, pp: int) -> list[int]:
    """vLLM's get_pp_indices: even split, the remainder on the stages before the last."""
    base = [layers // pp] * pp
    for i in range(2, layers % pp + 2):
        base[-i] += 1
    return base


def served_dtype(facts: ConfigFacts, args: ServeArgs, cc: tuple[int, int] | None) -> str:
    """--dtype, else the config's dtype; float32 checkpoints and bf16 on pre-Ampere GPUs are served in 16 bits."""
    d = args["dtype"]
    if d in ("half", "float16"):
        return "float16"
    if d in ("float", "float32"):
        return "float32"
    if d == "bfloat16":
        return "bfloat16"
    cfg = (facts.dtype or "bfloat16").replace("torch.", "")
    if cfg in ("float32", "float"):
        cfg = "bfloat16"
    if cfg == "bfloat16" and cc is not None and cc < (8, 0):
        return "float16"
    return cfg if cfg in ("float16", "bfloat16") else "bfloat16"


def kv_layer_bytes(facts: ConfigFacts, args: ServeArgs, model_dtype: str) -> int:
    """vLLM's KV bytes per token for one attention layer on one rank."""
    kvd = args["kv_cache_dtype"]
    if facts.mla and kvd == "fp8_ds_mla":
        return FP8_DS_MLA_BYTES
    size = 1 if kvd.startswith("fp8") else dtype_bytes(kvd) if kvd in ("float16", "bfloat16") else dtype_bytes(model_dtype)
    if facts.mla:
        return facts.head_size * size
    kv_rank = max(1, facts.kv_heads // args["tensor_parallel_size"])
    return 2 * kv_rank * facts.head_size * size


def stage_layers(facts: ConfigFacts, pp: int) -> list[list[str]]:
    """Per pipeline stage, the kind of each of its layers."""
    types = facts.layer_types or ["full"] * facts.layers
    out, start = [], 0
    for n in pp_partitions(facts.layers, pp):
        out.append(types[start:start + n])
        start += n
    return out


def weights_per_rank(facts: ConfigFacts, tensors: Mapping[str, tuple[str, tuple[int, ...]]] | WeightGroups, args: ServeArgs,
                     model_dtype: str) -> list[int]:
    """Bytes of weights on one GPU of each pipeline stage (the largest rank of the stage).

    `tensors` is the tensor headers (name -> (dtype, shape)) or their summary (`WeightGroups`,
    what the lock and the receipts keep): both give the same figure."""
    groups = tensors if isinstance(tensors, WeightGroups) else WeightGroups.of(tensors)
    tp, pp = args["tensor_parallel_size"], args["pipeline_parallel_size"]
    parts = pp_partitions(facts.layers, pp)
    bounds = [sum(parts[:i]) for i in range(pp + 1)]
    size = dtype_bytes(model_dtype)
    quant = facts.quant_method is not None
    stages = [0] * pp
    for (where, split, dtype, rows), (numel, stored) in groups.items():
        nbytes = numel * size if dtype in _FLOAT and not (quant and dtype == "F32") else stored
        if isinstance(where, int):
            if where >= facts.layers:
                continue  # MTP / draft layers vLLM does not load for serving
            on = [next(i for i in range(pp) if bounds[i] <= where < bounds[i + 1])]
        elif where == "embed":
            on = [0] + ([pp - 1] if facts.tied and pp > 1 else [])
        elif where == "last":
            on = [pp - 1]
        else:
            on = [0]
        per_rank = _split(split, rows, nbytes, tp, facts)
        for s in on:
            stages[s] += per_rank
    return stages


class WeightGroups(dict):
    """Tensor headers summed by what decides their place and split in vLLM: (where, split,
    dtype, rows) -> (elements, stored bytes). `where` is a layer index or embed / last / first;
    `split` is rep (replicated), vocab (embeddings and LM head: `rows` is their first
    dimension), kv (K/V projections) or tp (split by tensor parallelism). A 70B model's
    723 tensors make ~250 groups: small enough for the lock and the receipts."""

    @classmethod
    def of(cls, tensors: Mapping[str, tuple[str, tuple[int, ...]]]) -> WeightGroups:
        from ..formats.safetensors import DTYPE_BITS

        out = cls()
        for name, (dtype, shape) in tensors.items():
            out.add(name, dtype, tuple(shape), DTYPE_BITS.get(dtype, 16))
        return out

    def add(self, name: str, dtype: str, shape: tuple[int, ...], bits: int) -> None:
        numel = math.prod(shape) if shape else 1
        m = _LAYER.search(name)
        embed = any(e in name for e in _EMBED)
        if m:
            where: int | str = int(m.group(1))
        elif embed:
            where = "embed"
        elif "lm_head" in name or name.endswith("norm.weight") or name.endswith("ln_f.weight"):
            where = "last"
        else:
            where = "first"
        rows = 0
        if len(shape) <= 1 or any(r in name for r in _REPLICATED):
            split = "rep"
        elif embed or "lm_head" in name:
            split, rows = "vocab", shape[0]
        elif ".k_proj." in name or ".v_proj." in name:
            split = "kv"
        else:
            split = "tp"
        key = (where, split, dtype, rows)
        numel0, bytes0 = self.get(key, (0, 0))
        self[key] = (numel0 + numel, bytes0 + numel * bits // 8)

    def merge(self, other: WeightGroups) -> None:
        for key, (numel, nbytes) in other.items():
            n0, b0 = self.get(key, (0, 0))
            self[key] = (n0 + numel, b0 + nbytes)

    def to_list(self) -> list[list[Any]]:
        """Rows [where, split, dtype, rows, elements, stored bytes], layers in order, then the rest."""
        def order(key: tuple) -> tuple:
            where, split, dtype, rows = key
            return (0, where, "", split, dtype, rows) if isinstance(where, int) else (1, 0, where, split, dtype, rows)

        return [[w, s, d, r, n, c] for (w, s, d, r), (n, c) in sorted(self.items(), key=lambda kv: order(kv[0]))]

    @classmethod
    def from_list(cls, rows: Any, limit: int = 1_000_000) -> WeightGroups | None:
        """From the lock or the receipts (files a user may edit): None unless every row is well formed."""
        if not isinstance(rows, list) or len(rows) > limit:
            return None
        out = cls()
        for row in rows:
            if not (isinstance(row, list) and len(row) == 6):
                return None
            where, split, dtype, nrows, numel, nbytes = row
            ok_where = (isinstance(where, int) and not isinstance(where, bool) and 0 <= where < 1 << 20) or where in ("embed", "last", "first")
            ints = all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 62 for x in (nrows, numel, nbytes))
            if not (ok_where and split in ("rep", "vocab", "kv", "tp") and isinstance(dtype, str) and len(dtype) <= 16 and ints):
                return None
            key = (where, split, dtype, nrows)
            numel0, bytes0 = out.get(key, (0, 0))
            out[key] = (numel0 + numel, bytes0 + nbytes)
        return out


def _split(split: str, rows: int, nbytes: int, tp: int, facts: ConfigFacts) -> int:
    if tp == 1 or split == "rep":
        return nbytes
    if split == "vocab" and facts.vocab and rows >= facts.vocab - 64:
        padded = -(-rows // 64) * 64
        per = -(-padded // tp)
        return nbytes * per // rows
    if split == "kv" and facts.kv_heads < tp and facts.kv_heads:
        return nbytes // facts.kv_heads
    return -(-nbytes // tp)


def vllm_fit(facts: ConfigFacts, tensors: Mapping[str, tuple[str, tuple[int, ...]]] | WeightGroups | None, args: ServeArgs, accel: Accelerator | None,
             registry: Mapping[str, tuple[str, str, bool | None]] | None = None, quant_min: Mapping[str, int] | None = None,
             tokenizer_max_len: int | None = None) -> Fit:
    """Every check vLLM would make before serving, and the memory figures per GPU."""
    from . import vllm_arch

    registry = vllm_arch.ARCHITECTURES if registry is None else registry
    quant_min = vllm_arch.QUANT_MIN_CAPABILITY if quant_min is None else quant_min
    fit = Fit("vllm")
    fl = args.flag
    tp, pp = args["tensor_parallel_size"], args["pipeline_parallel_size"]
    dev = accel.devices[0] if accel and accel.devices else None
    cc = dev.cc if dev else None
    # the architecture registry
    entry = registry.get(facts.architecture or "")
    if facts.architecture and entry is None:
        if facts.auto_map and not args["trust_remote_code"]:
            fit.error(ENGINE_UNSUPPORTED, f"architecture {facts.architecture} is not in vLLM {vllm_arch.VERSION}'s registry and config.json "
                      f"loads it through auto_map (remote code): vLLM stops with \"The repository ... contains custom code which must be "
                      f"executed\"; add --trust-remote-code to the lane's serve args, or serve a natively supported variant")
        else:
            fit.warning(ENGINE_UNSUPPORTED, f"architecture {facts.architecture} is not in vLLM {vllm_arch.VERSION}'s registry: vLLM tries its "
                        "Transformers backend, which serves only models whose Transformers class supports it (\"Model architectures "
                        f"['{facts.architecture}'] are not supported for now\" otherwise); check the lane's vLLM version")
    if pp > 1 and entry is not None and entry[2] is False:
        fit.error(ENGINE_UNSUPPORTED, f"{fl('pipeline_parallel_size')} {pp}: \"Pipeline parallelism is not supported for this model. "
                  f"Supported models implement the `SupportsPP` interface.\" ({facts.architecture} in vLLM {vllm_arch.VERSION}); "
                  f"use {fl('tensor_parallel_size')} instead")
    # divisibility
    if facts.heads and facts.heads % tp:
        fit.error(PARALLEL_INVALID, f"\"Total number of attention heads ({facts.heads}) must be divisible by tensor parallel size ({tp}).\" "
                  f"change {fl('tensor_parallel_size')} to a divisor of {facts.heads} ({', '.join(str(d) for d in _divisors(facts.heads, 16))})")
    if accel is not None and accel.source != "cgroup" and accel.gpus and tp * pp > accel.gpus:
        fit.error(PARALLEL_INVALID, f"{fl('tensor_parallel_size')} {tp} x {fl('pipeline_parallel_size')} {pp} needs {tp * pp} GPUs, "
                  f"this node has {accel.gpus} ({accel.describe()}): vLLM stops with \"The number of required GPUs exceeds the total number "
                  "of available GPUs\"")
    if pp > facts.layers > 0:
        fit.error(PARALLEL_INVALID, f"{fl('pipeline_parallel_size')} {pp} is more than the model's {facts.layers} layers")
    # dtype and quantization against the GPU
    if cc is not None:
        if args["dtype"] == "bfloat16" and cc < (8, 0):
            fit.error(ENGINE_UNSUPPORTED, f"\"Bfloat16 is only supported on GPUs with compute capability of at least 8.0. Your {dev.name} GPU has "
                      f"compute capability {cc[0]}.{cc[1]}. You can use float16 instead by explicitly setting the `dtype` flag in CLI, for "
                      "example: --dtype=half.\"")
        method = args["quantization"] or facts.quant_method
        need = quant_min.get(method) if method else None
        if need is not None and cc[0] * 10 + cc[1] < need:
            fit.error(ENGINE_UNSUPPORTED, f"\"The quantization method {method} is not supported for the current GPU. Minimum capability: {need}. "
                      f"Current capability: {cc[0] * 10 + cc[1]}.\" serve a variant quantized for this GPU (or another GPU)")
    # context length
    max_len = args["max_model_len"]
    derived = facts.derived_max_len
    if tokenizer_max_len:
        derived = min(derived, tokenizer_max_len)
    if derived == float("inf"):
        derived = 2048
    if max_len is not None and max_len != -1 and max_len > derived:
        fit.error(CONTEXT_TOO_LONG, f"\"User-specified max_model_len ({max_len}) is greater than the derived max_model_len ({facts.max_len_key}="
                  f"{_fmt(derived)} ...)\": lower {fl('max_model_len')} to at most {int(derived)}")
    auto_len = max_len == -1  # vLLM fits the length to the memory it finds
    length = int(derived) if max_len is None or auto_len else max_len
    fit.figures.update(max_model_len=length, max_model_len_source="model" if max_len is None else "auto-fit" if max_len == -1 else "flag")
    if facts.hybrid_unknown:
        fit.warning(FIT_UNKNOWN, "this hybrid model's attention layers could not be told from config.json: the KV figures count every layer")
    model_dtype = served_dtype(facts, args, cc)
    per_layer = kv_layer_bytes(facts, args, model_dtype)
    stages = stage_layers(facts, pp)
    kv_token = [per_layer * sum(1 for t in st if t != "other") for st in stages]
    fit.figures.update(dtype=model_dtype, kv_cache_dtype=args["kv_cache_dtype"] if args["kv_cache_dtype"] != "auto" else model_dtype,
                       kv_bytes_per_token=max(kv_token), kv_bytes_per_token_per_layer=per_layer)
    if tensors is None:
        fit.warning(FIT_UNKNOWN, "no tensor headers: weights per GPU not computed (config.json alone gives the KV figures)")
        return fit.settle()
    weights = weights_per_rank(facts, tensors, args, model_dtype)
    fit.figures["weights_bytes_per_gpu"] = max(weights)
    if dev is None:
        fit.warning(FIT_UNKNOWN, "no GPU seen on this node: fit against GPU memory not judged (declare it: --accelerator 1x80GiB,cc=9.0)")
        return fit.settle()
    usable = int(dev.total * args["gpu_memory_utilization"])
    if args["kv_cache_memory_bytes"]:
        usable = max(weights) + args["kv_cache_memory_bytes"]
    fit.figures.update(usable_bytes_per_gpu=usable, gpu_total_bytes=dev.total)
    if dev.free is not None and dev.free < int(dev.total * args["gpu_memory_utilization"]) and not args["kv_cache_memory_bytes"]:
        fit.error(GPU_MEMORY_BUSY, f"\"Free memory on device ({dev.free / GiB:.2f}/{dev.total / GiB:.2f} GiB) on startup is less than desired GPU "
                  f"memory utilization ({args['gpu_memory_utilization']}, {usable / GiB:.2f} GiB). Decrease GPU memory utilization or reduce GPU "
                  f"memory used by other processes.\" lower {fl('gpu_memory_utilization')} or free the GPU")
    worst = 0
    for s in range(pp):
        w = weights[s]
        kv_needed = _one_request(stages[s], per_layer, length, facts.sliding_window, args["block_size"])
        budget = usable - w
        if w >= usable:
            fit.error(WEIGHTS_TOO_LARGE, f"the weights take {gib(w)} per GPU{_stage(s, pp)} (tensor headers, {model_dtype}, split over "
                      f"{fl('tensor_parallel_size')} {tp}), above the {gib(usable)} vLLM may use ({args['gpu_memory_utilization']} x {gib(dev.total)}): "
                      f"\"No available memory for the cache blocks\"; raise {fl('tensor_parallel_size')}, or serve a quantized variant")
            worst = max(worst, 1)
            continue
        if not auto_len and kv_needed > budget:
            longest = _longest(stages[s], per_layer, budget, facts.sliding_window, args["block_size"], length)
            fit.error(KV_CACHE_TOO_LARGE, f"\"To serve at least one request with the models's max seq len ({length}), ({kv_needed / GiB:.2f} GiB KV "
                      f"cache is needed, which is larger than the available KV cache memory ({budget / GiB:.2f} GiB).\" (at most: weights "
                      f"{gib(w)} already leave only that of {gib(usable)}{_stage(s, pp)}); lower {fl('max_model_len')} to {longest} or less, "
                      f"or raise {fl('gpu_memory_utilization')} / {fl('tensor_parallel_size')}, or set {fl('kv_cache_dtype')} fp8")
    overhead = estimate_overhead(facts, args, model_dtype)
    s = max(range(pp), key=lambda i: weights[i] + kv_token[i])
    budget = usable - weights[s]
    one = _one_request(stages[s], per_layer, length, facts.sliding_window, args["block_size"])
    after = budget - overhead
    fit.figures.update(overhead_estimate_bytes=overhead, kv_budget_bytes=max(0, after), headroom_bytes=budget - one - overhead)
    if budget > 0:
        fit.figures["longest_context"] = _longest(stages[s], per_layer, max(0, after), facts.sliding_window, args["block_size"], int(derived))
        fit.figures["concurrency_at_max_len"] = round(max(0, after) / one, 2) if one else None
    if fit.fits and one + overhead > budget:
        fit.warning(FIT_MARGIN, f"one {length}-token request needs {gib(one)} of KV cache; after the weights ({gib(weights[s])}) {gib(budget)} is "
                    f"left, and vLLM's activations, CUDA graphs and context take an estimated {gib(overhead)} of it (an estimate: "
                    f"{'' if args['enforce_eager'] else 'CUDA graphs included; '}measured at startup). The server may stop with "
                    f"\"larger than the available KV cache memory\"; lower {fl('max_model_len')} to {fit.figures.get('longest_context')} for margin")
    return fit.settle()


def _stage(s: int, pp: int) -> str:
    return f" on pipeline stage {s}" if pp > 1 else ""


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _divisors(n: int, most: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0 and d <= most]


def _blocks(tokens: int, block: int) -> int:
    return -(-tokens // block) * block


def _one_request(types: list[str], per_layer: int, length: int, window: int | None, block: int) -> int:
    """KV bytes one request of `length` tokens needs at least: full layers hold every token,
    sliding-window layers at least the window."""
    total = 0
    for t in types:
        if t == "full":
            total += _blocks(length, block) * per_layer
        elif t == "sliding":
            total += _blocks(min(length, window or length), block) * per_layer
    return total


def _longest(types: list[str], per_layer: int, budget: int, window: int | None, block: int, cap: int) -> int:
    lo, hi = 0, max(cap, 0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _one_request(types, per_layer, mid, window, block) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def estimate_overhead(facts: ConfigFacts, args: ServeArgs, model_dtype: str) -> int:
    """What vLLM takes beside weights and KV cache (an estimate for the warning band): the
    CUDA context and allocator (~0.75 GiB), the profiling run's activations for a batch of
    max_num_batched_tokens (8192), logits of max_num_seqs rows in fp32, CUDA graphs (~0.5 GiB)."""
    tp = args["tensor_parallel_size"]
    size = dtype_bytes(model_dtype)
    tokens = 8192
    act = tokens * (facts.hidden * 4 + 2 * facts.intermediate // tp) * size
    logits = min(args["max_num_seqs"], tokens) * -(-facts.vocab // tp) * 4
    graphs = 0 if args["enforce_eager"] else GiB // 2
    return int(0.75 * GiB) + act + logits + graphs


def vllm_logged_tokens(facts: ConfigFacts, args: ServeArgs, available: int, stage: int = 0) -> int:
    """The "GPU KV cache size: N tokens" vLLM V1 logs for `available` bytes of KV cache memory
    (kv_cache_utils: one group per layer kind, groups of equal size, blocks shared)."""
    model_dtype = served_dtype(facts, args, None)
    per_layer = kv_layer_bytes(facts, args, model_dtype)
    block = args["block_size"]
    page = per_layer * block
    types = [t for t in stage_layers(facts, args["pipeline_parallel_size"])[stage] if t != "other"]
    counts = {k: types.count(k) for k in ("full", "sliding") if types.count(k)}
    if len(counts) <= 1:
        n = len(types)
        return (available // page // n) * block
    lo, hi = min(counts.values()), max(counts.values())
    group = hi if hi < lo * 1.5 else lo
    groups = sum(-(-c // group) for c in counts.values())
    blocks = available // page // group
    return blocks // groups * block


def vllm_v0_blocks(facts: ConfigFacts, args: ServeArgs, available: int, stage: int = 0) -> int:
    """The "# GPU blocks" vLLM V0 logged: every attention layer holds every token."""
    model_dtype = served_dtype(facts, args, None)
    per_layer = kv_layer_bytes(facts, args, model_dtype)
    layers = sum(1 for t in stage_layers(facts, args["pipeline_parallel_size"])[stage] if t != "other")
    return available // (per_layer * layers * args["block_size"])


# --------------------------------------------------------------------------- llama.cpp

def _pad(n: int, k: int = 256) -> int:
    return -(-n // k) * k


# (elements per block, bytes per block) of the cache types -ctk/-ctv accept (ggml-common.h; the
# same figures as formats.gguf.GGML_TYPES, which a test holds them to)
CACHE_TYPES = {"f32": (1, 4), "f16": (1, 2), "bf16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18), "q4_1": (32, 20),
               "iq4_nl": (32, 18), "q5_0": (32, 22), "q5_1": (32, 24)}


def row_size(type_name: str, n: int) -> int:
    block, size = CACHE_TYPES[type_name.lower()]
    return n // block * size


def llama_kv_bytes(facts: GGUFFacts, args: ServeArgs) -> dict[str, int]:
    """The KV cache llama.cpp allocates for these flags: cells, layers and K/V bytes (see the module docstring)."""
    n_seq = int(args["parallel"])
    raw = int(args["ctx_size"]) or facts.ctx_train
    n_ctx = _pad(raw)
    unified = bool(args["kv_unified"])
    if unified:
        n_ctx_seq, streams = n_ctx, 1
    else:
        n_ctx_seq = _pad(n_ctx // n_seq)
        n_ctx, streams = n_ctx_seq * n_seq, n_seq
    batch = min(raw, int(args["batch_size"]))
    ubatch = min(batch, int(args["ubatch_size"]))
    swa_cells = n_ctx_seq
    if facts.n_swa and not args["swa_full"]:
        swa_cells = _pad(min(n_ctx_seq, facts.n_swa * (n_seq if unified else 1) + ubatch))
    v_trans = args["flash_attn"] == "off"
    k_bytes = v_bytes = 0
    v_max = max(kv * facts.value_length for kv in facts.kv_heads)
    for il in range(facts.layers):
        kv = facts.kv_heads[il]
        if kv == 0:
            continue
        cells = swa_cells if facts.swa[il] else n_ctx_seq
        k_bytes += row_size(args["cache_type_k"], kv * facts.key_length) * cells * streams
        if not facts.mla:
            v_bytes += row_size(args["cache_type_v"], v_max if v_trans else kv * facts.value_length) * cells * streams
    return {"n_ctx": n_ctx, "n_ctx_seq": n_ctx_seq, "streams": streams, "cells": n_ctx_seq, "swa_cells": swa_cells if facts.n_swa else 0,
            "k_bytes": k_bytes, "v_bytes": v_bytes, "total": k_bytes + v_bytes}


def llama_compute_estimate(facts: GGUFFacts, n_vocab: int, args: ServeArgs, n_ctx_seq: int) -> int:
    """llama.cpp's compute buffer (an estimate for the warning band): logits and the
    attention scores of one ubatch against the context, plus the ubatch's activations."""
    ub = min(int(args["ubatch_size"]), int(args["batch_size"]))
    heads = max(facts.heads)
    scores = ub * n_ctx_seq * heads * 4 if args["flash_attn"] == "off" else ub * facts.n_embd * 4 * 4
    return n_vocab * ub * 4 + scores + ub * facts.n_embd * 4 * 8 + 32 * MiB


def llama_fit(facts: GGUFFacts, weights: int, n_vocab: int, args: ServeArgs, accel: Accelerator | None, per_layer_weights: list[int] | None = None) -> Fit:
    """llama.cpp on this node: the KV cache for -c/-np and the weights against GPU memory
    (offloaded layers) and the container's memory limit (the rest)."""
    fit = Fit("llama.cpp")
    fl = args.flag
    kv = llama_kv_bytes(facts, args)
    per_token = kv["total"] // max(1, kv["n_ctx_seq"] * kv["streams"])
    fit.figures.update(n_ctx=kv["n_ctx"], n_ctx_per_slot=kv["n_ctx_seq"], slots=int(args["parallel"]), kv_unified=bool(args["kv_unified"]),
                       kv_cache_bytes=kv["total"], kv_bytes_per_token=per_token, weights_bytes=weights, mmap=bool(args["mmap"]),
                       cache_type_k=args["cache_type_k"], cache_type_v=args["cache_type_v"])
    if facts.estimate:
        fit.warning(FIT_UNKNOWN, facts.estimate)
    if args["cache_type_v"] not in ("f16", "f32", "bf16") and args["flash_attn"] == "off":
        fit.error(ENGINE_UNSUPPORTED, f"{fl('cache_type_v')} {args['cache_type_v']} with {fl('flash_attn')} off: llama.cpp stops with "
                  f"\"quantized V cache requires flash_attn to be enabled\"; set {fl('flash_attn')} on (or auto), or keep the V cache f16")
    if args["ctx_size"] and facts.ctx_train and kv["n_ctx_seq"] > facts.ctx_train:
        fit.warning(CONTEXT_TOO_LONG, f"{fl('ctx_size')} {args['ctx_size']} gives each slot {kv['n_ctx_seq']} tokens, above the {facts.ctx_train} the "
                    "model was trained with: llama.cpp starts (\"possible training context overflow\") but quality past it is not assured")
    if accel is None:
        return fit.settle()
    compute = llama_compute_estimate(facts, n_vocab, args, kv["n_ctx_seq"])
    fit.figures["compute_estimate_bytes"] = compute
    gpu = accel.devices[0] if accel.devices else None
    ngl = args["gpu_layers"]
    offloaded = 0
    if gpu is not None:
        offloaded = facts.layers + 1 if ngl in ("all", "auto") else min(int(ngl), facts.layers + 1)
    frac = offloaded / (facts.layers + 1) if facts.layers else 0
    gpu_weights = int(weights * frac)
    gpu_kv = int(kv["total"] * min(1.0, offloaded / max(1, facts.layers)))
    host_weights = weights - gpu_weights
    host_kv = kv["total"] - gpu_kv
    if gpu is not None and offloaded:
        total_gpu = sum(d.total for d in accel.devices)
        need = gpu_weights + gpu_kv
        fit.figures.update(gpu_layers=offloaded, gpu_bytes=need, gpu_total_bytes=total_gpu)
        if ngl == "auto":
            fit.figures["gpu_layers_note"] = "-ngl auto: llama.cpp offloads what fits (--fit on) and keeps the rest on the CPU"
        elif need > total_gpu:
            fit.error(KV_CACHE_TOO_LARGE if gpu_weights <= total_gpu else WEIGHTS_TOO_LARGE,
                      f"{offloaded} offloaded layers need {gib(gpu_weights)} of weights + {gib(gpu_kv)} of KV cache ({fl('ctx_size')} {kv['n_ctx']}, "
                      f"{args['cache_type_k']}/{args['cache_type_v']}) = {gib(need)}, above the {gib(total_gpu)} of GPU memory: llama.cpp fails "
                      f"with \"failed to allocate buffer\"; lower {fl('gpu_layers')} or {fl('ctx_size')}, or use {fl('cache_type_k')} q8_0")
        elif need + compute > total_gpu:
            fit.warning(FIT_MARGIN, f"GPU: {gib(need)} of weights and KV cache + an estimated {gib(compute)} of compute buffers is above "
                        f"{gib(total_gpu)}; lower {fl('gpu_layers')} for margin")
    limit = accel.memory_limit
    host = accel.host_memory
    if host is None:
        return fit.settle()
    anon = host_kv + (0 if args["mmap"] else host_weights)
    fit.figures.update(host_memory_bytes=host, host_bytes_needed=anon, headroom_bytes=host - anon - compute)
    where = f"the container's memory limit ({gib(limit)})" if limit is not None and limit == host else f"the memory available ({gib(host)})"
    if anon > host and accel.swap and anon <= host + accel.swap:
        fit.warning(FIT_MARGIN, f"llama.cpp on the CPU needs {gib(anon)}, above {where}; {gib(accel.swap)} of swap lets it start, "
                    f"swapping (slow); lower {fl('ctx_size')} to stay in memory")
    elif anon > host:
        what = f"{gib(host_kv)} of KV cache" + ("" if args["mmap"] else f" + {gib(host_weights)} of weights read into memory ({fl('no_mmap')})")
        fit.error(MEMORY_LIMIT, f"llama.cpp on the CPU needs {what} = {gib(anon)}, above {where}: the kernel kills it (OOM) while it "
                  f"allocates or fills the cache; lower {fl('ctx_size')} (or {fl('parallel')}), use {fl('cache_type_k')}/{fl('cache_type_v')} "
                  "q8_0, or raise the limit")
    elif anon + compute > host:
        fit.warning(FIT_MARGIN, f"the CPU side needs {gib(anon)} (KV cache{'' if args['mmap'] else ' and weights'}) + an estimated {gib(compute)} of "
                    f"compute buffers, above {where}: llama.cpp may be killed while it decodes; lower {fl('ctx_size')} for margin")
    elif args["mmap"] and host_weights + anon + compute > host:
        fit.warning(FIT_MARGIN, f"the memory-mapped weights ({gib(host_weights)}) do not stay in {where} beside the cache: the kernel keeps "
                    "re-reading them from disk (slow, not killed)")
    if fit.fits and per_token:
        free = host - compute - (0 if args["mmap"] else host_weights)
        fit.figures["longest_context"] = max(0, free // per_token)
    return fit.settle()
