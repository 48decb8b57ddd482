"""Warm re-check of a model-lanes volume: a restarted init container must cost about a Python start.

Run from the repository root:  python bench/bench_recheck.py [--rounds N]
Builds, as sparse files under build/, a volume of six lanes whose models are structurally
complete, so the model-level checks (config.json against the tensors, GGUF hyper-parameters
against llama.cpp's architecture tables) are part of the first check and of what the
re-check relies on: a Llama-3-70B-shaped and a Qwen2.5-32B-shaped (q/k/v biases) sharded
bf16 folder, a Llama-3.1-8B folder (config, generation config, tokenizer, index), two 8B
Q4_K_M GGUF files of other architectures (llama, qwen2) with their full BPE vocabularies,
and a bge-m3-shaped XLM-RoBERTa embeddings folder; 74 files, 218 GiB in all. The manifest
gives every file's size and the sha256 of the files under 64 MiB (with --all-digests, of
every file: the first check then hashes 218 GiB of zeros, which takes most of an hour on
2 cores). A first `preflight check` hashes what has a digest, runs the format and model
checks, and records receipts. Then, with the page cache warm, the re-check is measured
against `python -c "import click, yaml"` (the floor for any click + YAML tool), interleaved:
  - wall time of the whole process                 <= 1.3x the reference
  - bytes it reads (/proc/<pid>/io rchar)          <= 0.1% of the volume
  - numpy, gguf, httpx, docker, huggingface_hub.file_download not imported
  - peak RSS                                        <= 100 MB
The same volume is checked again with every lane declaring how it is served (`serve:`, a node
of 4 GPUs declared): fit is judged from the inputs the receipts keep, so that re-check reads no
header either and costs at most 1.1x the plain one (user + system CPU time, median of interleaved
rounds; the wall-time ratio is printed beside it: on a shared machine it wanders with the load).
Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PY, Targets, compile_package, interleave, median, preflight_cmd, run, scratch  # noqa: E402
from tests.builders import write_sparse_gguf_decoder, write_sparse_safetensors_layout  # noqa: E402

TARGET_WALL = 1.3
TARGET_READ_FRACTION = 0.001
TARGET_RSS_MB = 100.0
TARGET_SERVE = 1.1  # warm re-check with serve: lanes / without
TARGET_LINEAR = 1.25  # per-lane cost of a warm re-check of 5,000 lanes / of 1,000 lanes
MANY = (1000, 5000)  # single-file lanes in the volumes of many lanes
NODE = "4x80GiB,cc=9.0,memory_limit=64GiB"
FORBIDDEN = ("numpy", "gguf", "httpx", "httpx2", "docker", "huggingface_hub.file_download")


@dataclass(frozen=True)
class Decoder:
    """A dense decoder's config.json facts, as its safetensors hold them (BF16)."""

    architecture: str  # LlamaForCausalLM | Qwen2ForCausalLM
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    max_len: int
    rope_theta: float
    qkv_bias: bool = False  # Qwen2 always has q/k/v biases


# name, folder, model, shards, how vLLM serves it (the node has 4 GPUs of 80 GiB)
FOLDER_LANES = [
    ("orchestrator", "vllm/orchestrator/bf16", Decoder("LlamaForCausalLM", 8192, 28672, 80, 64, 8, 128256, 8192, 500000.0), 30,
     "--tensor-parallel-size 4 --max-model-len 8192"),
    ("coder", "vllm/coder/bf16", Decoder("Qwen2ForCausalLM", 5120, 27648, 64, 40, 8, 152064, 32768, 1000000.0, qkv_bias=True), 17,
     "--tensor-parallel-size 2 --max-model-len 32768"),
    ("fast_rag", "vllm/fast_rag/bf16", Decoder("LlamaForCausalLM", 4096, 14336, 32, 32, 8, 128256, 131072, 500000.0), 4,
     "--max-model-len 32768"),
]
# name, file, llama.cpp architecture and hyper-parameters (write_sparse_gguf_decoder), Q4_K
GGUF_LANES = [
    ("super_reader", "gguf/Llama-3.1-Nemotron-8B-UltraLong-4M-Instruct-q4_k_m.gguf",
     dict(arch="llama", n_embd=4096, n_ff=14336, n_layer=32, n_head=32, n_head_kv=8, n_vocab=128256, pre="llama-bpe")),
    ("governance", "gguf/Qwen2.5-7B-Instruct-q4_k_m.gguf",
     dict(arch="qwen2", n_embd=3584, n_ff=18944, n_layer=28, n_head=28, n_head_kv=4, n_vocab=152064, qkv_bias=True, pre="qwen2")),
]
# an XLM-RoBERTa encoder shaped like bge-m3 (568M parameters, F32, one file) in a sentence-transformers folder
EMBED_LANE = ("embeddings", "embeddings/bge-m3", dict(layers=24, hidden=1024, inner=4096, vocab=250002, positions=8194, heads=16))
LANES = len(FOLDER_LANES) + len(GGUF_LANES) + 1
SMALL_LIMIT = 64 * 2**20  # below this a file's digest is in the manifest by default


def decoder_tensors(m: Decoder) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor transformers' class for `m.architecture` builds, untied head included."""
    head = m.hidden // m.heads
    q, kv = m.heads * head, m.kv_heads * head
    out: dict[str, tuple[str, tuple[int, ...]]] = {"model.embed_tokens.weight": ("BF16", (m.vocab, m.hidden))}
    for i in range(m.layers):
        p = f"model.layers.{i}"
        out |= {
            f"{p}.input_layernorm.weight": ("BF16", (m.hidden,)),
            f"{p}.mlp.down_proj.weight": ("BF16", (m.hidden, m.ffn)),
            f"{p}.mlp.gate_proj.weight": ("BF16", (m.ffn, m.hidden)),
            f"{p}.mlp.up_proj.weight": ("BF16", (m.ffn, m.hidden)),
            f"{p}.post_attention_layernorm.weight": ("BF16", (m.hidden,)),
            f"{p}.self_attn.k_proj.weight": ("BF16", (kv, m.hidden)),
            f"{p}.self_attn.o_proj.weight": ("BF16", (m.hidden, q)),
            f"{p}.self_attn.q_proj.weight": ("BF16", (q, m.hidden)),
            f"{p}.self_attn.v_proj.weight": ("BF16", (kv, m.hidden)),
        }
        if m.qkv_bias:
            out |= {f"{p}.self_attn.q_proj.bias": ("BF16", (q,)), f"{p}.self_attn.k_proj.bias": ("BF16", (kv,)),
                    f"{p}.self_attn.v_proj.bias": ("BF16", (kv,))}
    out["model.norm.weight"] = ("BF16", (m.hidden,))
    out["lm_head.weight"] = ("BF16", (m.vocab, m.hidden))
    return out


def encoder_tensors(layers: int, hidden: int, inner: int, vocab: int, positions: int, heads: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor XLMRobertaModel builds (no prefix, as bge-m3 stores them), F32."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {
        "embeddings.word_embeddings.weight": ("F32", (vocab, hidden)), "embeddings.position_embeddings.weight": ("F32", (positions, hidden)),
        "embeddings.token_type_embeddings.weight": ("F32", (1, hidden)),
        "embeddings.LayerNorm.weight": ("F32", (hidden,)), "embeddings.LayerNorm.bias": ("F32", (hidden,))}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for module, rows, cols in (("attention.self.query", hidden, hidden), ("attention.self.key", hidden, hidden),
                                   ("attention.self.value", hidden, hidden), ("attention.output.dense", hidden, hidden),
                                   ("intermediate.dense", inner, hidden), ("output.dense", hidden, inner)):
            out |= {p + module + ".weight": ("F32", (rows, cols)), p + module + ".bias": ("F32", (rows,))}
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            out |= {p + norm + ".weight": ("F32", (hidden,)), p + norm + ".bias": ("F32", (hidden,))}
    out |= {"pooler.dense.weight": ("F32", (hidden, hidden)), "pooler.dense.bias": ("F32", (hidden,))}
    return out


def nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    n = 2 if dtype == "BF16" else 4
    for d in shape:
        n *= d
    return n


def write_shards(folder: Path, tensors: dict[str, tuple[str, tuple[int, ...]]], n_shards: int) -> None:
    """`n_shards` sparse safetensors shards split by size, with their index (one shard: model.safetensors)."""
    if n_shards == 1:
        write_sparse_safetensors_layout(folder / "model.safetensors", tensors)
        return
    total = sum(nbytes(*spec) for spec in tensors.values())
    shards: list[dict[str, tuple[str, tuple[int, ...]]]] = [{}]
    filled = 0
    for name, spec in tensors.items():
        if filled >= total / n_shards * len(shards) and len(shards) < n_shards:
            shards.append({})
        shards[-1][name] = spec
        filled += nbytes(*spec)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        write_sparse_safetensors_layout(folder / fname, shard)
        weight_map |= dict.fromkeys(shard, fname)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def write_tokenizer(folder: Path, vocab: int, max_len: int) -> None:
    """A BPE tokenizer.json of `vocab` entries (every merge and its result in the vocabulary) and its config."""
    pairs = [(f"p{2 * i}", f"p{2 * i + 1}") for i in range(vocab // 3)]
    pieces = [t for pair in pairs for t in (*pair, pair[0] + pair[1])]
    vocab_map = {t: i for i, t in enumerate(pieces + [f"tok{i}" for i in range(vocab - len(pieces))])}
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": vocab_map, "merges": [f"{a} {b}" for a, b in pairs]}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_len, "tokenizer_class": "PreTrainedTokenizerFast",
                                                              "bos_token": "p0", "eos_token": "p1"}, indent=2))


def write_decoder_folder(folder: Path, m: Decoder, n_shards: int) -> None:
    """A vLLM bf16 folder: config, generation config, tokenizer, sharded weights with their index."""
    folder.mkdir(parents=True)
    write_shards(folder, decoder_tensors(m), n_shards)
    qwen = m.architecture.startswith("Qwen2")
    (folder / "config.json").write_text(json.dumps({
        "architectures": [m.architecture], "model_type": "qwen2" if qwen else "llama", "hidden_size": m.hidden,
        "intermediate_size": m.ffn, "num_hidden_layers": m.layers, "num_attention_heads": m.heads,
        "num_key_value_heads": m.kv_heads, "vocab_size": m.vocab, "max_position_embeddings": m.max_len, "rope_theta": m.rope_theta,
        "rms_norm_eps": 1e-6 if qwen else 1e-5, "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "bos_token_id": 0, "eos_token_id": 1,
    }, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1, "do_sample": True, "temperature": 0.6}))
    write_tokenizer(folder, m.vocab, m.max_len)


def write_embeddings_folder(folder: Path, dims: dict[str, int]) -> None:
    """A sentence-transformers folder around an XLM-RoBERTa encoder: config, one F32 safetensors file, tokenizer, pooling."""
    folder.mkdir(parents=True)
    write_shards(folder, encoder_tensors(**dims), 1)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta", "hidden_size": dims["hidden"],
        "intermediate_size": dims["inner"], "num_hidden_layers": dims["layers"], "num_attention_heads": dims["heads"],
        "vocab_size": dims["vocab"], "max_position_embeddings": dims["positions"], "type_vocab_size": 1,
        "hidden_act": "gelu", "layer_norm_eps": 1e-5, "pad_token_id": 1, "torch_dtype": "float32",
    }, indent=2))
    write_tokenizer(folder, dims["vocab"], dims["positions"] - 2)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": dims["hidden"], "pooling_mode_cls_token": True}))


def build_volume(models: Path) -> list[Path]:
    for _name, rel, model, n_shards, _args in FOLDER_LANES:
        write_decoder_folder(models / rel, model, n_shards)
    for _name, rel, shape in GGUF_LANES:
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        write_sparse_gguf_decoder(models / rel, **shape)
    write_embeddings_folder(models / EMBED_LANE[1], EMBED_LANE[2])
    return sorted(p for p in models.rglob("*") if p.is_file())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(128 * 2**10)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def write_manifest(path: Path, models: Path, files: list[Path], *, all_digests: bool) -> int:
    """Every file's size; the sha256 of the small files, or of all files. Returns the bytes with a digest."""
    hashed = [p for p in files if all_digests or p.stat().st_size < SMALL_LIMIT]
    with ThreadPoolExecutor(2) as pool:
        digests = dict(zip(hashed, pool.map(sha256, hashed)))

    def expect(p: Path) -> dict[str, object]:
        return {"size": p.stat().st_size, **({"sha256": digests[p]} if p in digests else {})}

    def folder(name: str, rel: str) -> dict[str, object]:
        root = models / rel
        return {"name": name, "kind": "hf-dir", "path": rel,
                "files": {p.relative_to(root).as_posix(): expect(p) for p in files if root in p.parents}}

    lanes = [folder(name, rel) for name, rel, *_ in FOLDER_LANES]
    lanes += [{"name": name, "kind": "gguf", "path": rel, **expect(models / rel)} for name, rel, _shape in GGUF_LANES]
    lanes.append(folder(*EMBED_LANE[:2]))
    path.write_text(json.dumps({"version": 1, "models_dir": str(models), "lanes": lanes}, indent=1))
    return sum(p.stat().st_size for p in hashed)


def served_manifest(plain: Path, out: Path) -> None:
    """The same lanes, each served: vLLM for the folders (TP 4 for the 70B, 2 for the 32B), llama.cpp for the GGUF files."""
    doc = json.loads(plain.read_text())
    vllm_args = {name: args for name, _rel, _m, _n, args in FOLDER_LANES} | {EMBED_LANE[0]: "--max-model-len 8192"}
    for lane in doc["lanes"]:
        lane["serve"] = ({"engine": "vllm", "args": vllm_args[lane["name"]]} if lane["kind"] == "hf-dir"
                         else {"engine": "llama.cpp", "args": "-c 16384 -np 2 -ngl 99"})
    doc["accelerator"] = NODE
    out.write_text(json.dumps(doc, indent=1))


def many_lanes(root: Path, n: int) -> Path:
    """A volume of `n` single-file lanes (one small file each, size given) and its manifest."""
    models = root / f"many-{n}"
    models.mkdir()
    lanes = []
    for i in range(n):
        (models / f"w{i:05d}.bin").write_bytes(b"w" * 64)
        lanes.append({"name": f"l{i:05d}", "kind": "file", "path": f"w{i:05d}.bin", "size": 64})
    manifest = root / f"many-{n}.json"
    manifest.write_text(json.dumps({"version": 1, "models_dir": str(models), "lanes": lanes}))
    return manifest


def imported_modules(importtime_stderr: str) -> dict[str, int]:
    """Module name → cumulative import microseconds, from `python -X importtime` output."""
    out = {}
    for m in re.finditer(r"^import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)$", importtime_stderr, re.M):
        out[m[3]] = int(m[1])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--all-digests", action="store_true",
                        help="give every file's sha256 (the first check then hashes 218 GiB of zeros: most of an hour on 2 cores)")
    args = parser.parse_args()
    targets = Targets()
    compile_package()
    with scratch("bench-recheck") as root:
        models = root / "models"
        manifest = root / "lanes.yaml"
        t0 = time.perf_counter()
        files = build_volume(models)
        volume = sum(p.stat().st_size for p in files)
        t1 = time.perf_counter()
        with_digest = write_manifest(manifest, models, files, all_digests=args.all_digests)
        t2 = time.perf_counter()
        print(f"volume: {len(files)} files, {volume / 2**30:.0f} GiB (sparse) in {LANES} lanes; built in {t1 - t0:.1f}s; "
              f"sha256 in the manifest for {with_digest / 1e9:.2f} GB, computed in {t2 - t1:.1f}s", flush=True)
        check = [*preflight_cmd(), "check", "-m", str(manifest), "--termination-log", ""]
        first = run([*check, "--quiet"])
        print(f"first check (hashes {with_digest / 1e9:.2f} GB, records receipts): {first.wall_s:.1f}s, "
              f"peak RSS {first.maxrss_mb:.0f} MB", flush=True)
        json_run = run([*check, "--quiet", "--json", "--report", str(root / "report.json")])
        report = json.loads((root / "report.json").read_text())
        hashed = sum(lane.get("hashed_bytes", 0) for lane in report["lanes"])
        targets.holds("warm re-check is ready and hashes nothing",
                      report["status"] == "ready" and hashed == 0 and len(report["lanes"]) == LANES,
                      f"status {report['status']}, {len(report['lanes'])} lanes, hashed {hashed} bytes")

        procs = []
        cpu: dict[str, list[float]] = {"plain": [], "served": []}

        def recheck() -> float:
            proc = run([*check, "--quiet"])
            procs.append(proc)
            cpu["plain"].append(proc.cpu_s)
            return proc.wall_s

        served = root / "lanes-served.json"
        served_manifest(manifest, served)
        check_served = [*preflight_cmd(), "check", "-m", str(served), "--termination-log", ""]
        cold_served = run([*check_served, "--quiet", "--json", "--report", str(root / "served-cold.json")])
        warm_served = run([*check_served, "--quiet", "--json", "--report", str(root / "served.json")])
        fits = [lane.get("fit") or {} for lane in json.loads((root / "served.json").read_text())["lanes"]]
        targets.holds("warm re-check with serve: lanes judges fit from the receipts",
                      cold_served.returncode == warm_served.returncode == 0 and all(f.get("inputs_from") == "receipts" for f in fits),
                      ", ".join(f"{f.get('engine')} {f.get('verdict')} from {f.get('inputs_from')}" for f in fits))

        def recheck_served() -> float:
            proc = run([*check_served, "--quiet"])
            procs.append(proc)
            cpu["served"].append(proc.cpu_s)
            return proc.wall_s

        times = interleave({
            "preflight check": recheck,
            "preflight check (serve: lanes)": recheck_served,
            "python -c 'import click, yaml'": lambda: run([PY, "-c", "import click, yaml"]).wall_s,
            "python -c 'pass'": lambda: run([PY, "-c", "pass"]).wall_s,
        }, args.rounds)
        med = {k: median(v) for k, v in times.items()}
        for k, v in med.items():
            print(f"  {k:32s} median {v * 1e3:.0f} ms  (min {min(times[k]) * 1e3:.0f}, max {max(times[k]) * 1e3:.0f})")
        ref = med["python -c 'import click, yaml'"]
        targets.at_most("warm re-check wall vs python -c 'import click, yaml'", med["preflight check"] / ref, TARGET_WALL,
                        f"{med['preflight check'] * 1e3:.0f} ms vs {ref * 1e3:.0f} ms")
        served_cpu, plain_cpu = median(cpu["served"]), median(cpu["plain"])
        targets.at_most("warm re-check with serve: lanes vs without (CPU time)", served_cpu / plain_cpu, TARGET_SERVE,
                        f"{served_cpu * 1e3:.0f} ms vs {plain_cpu * 1e3:.0f} ms; wall {med['preflight check (serve: lanes)'] * 1e3:.0f} ms vs "
                        f"{med['preflight check'] * 1e3:.0f} ms ({med['preflight check (serve: lanes)'] / med['preflight check']:.2f}x)")
        procs.append(json_run)
        rchar = max(p.rchar for p in procs)
        read_bytes = max(p.read_bytes for p in procs)
        targets.at_most("bytes read by the re-check / volume", rchar / volume * 100, TARGET_READ_FRACTION * 100,
                        f"rchar {rchar / 2**20:.2f} MiB (storage reads {read_bytes / 2**20:.2f} MiB) of {volume / 2**30:.0f} GiB", unit="%")
        rss = max(p.maxrss_mb for p in procs)
        targets.at_most("peak RSS of the re-check", rss, TARGET_RSS_MB, unit=" MB")

        timed = run([PY, "-X", "importtime", *preflight_cmd()[1:], "check", "-m", str(manifest), "--quiet", "--termination-log", ""])
        mods = imported_modules(timed.stderr)
        timed_served = run([PY, "-X", "importtime", *preflight_cmd()[1:], "check", "-m", str(served), "--quiet", "--termination-log", ""])
        mods_served = imported_modules(timed_served.stderr)
        heavy = sorted(m for m in mods_served if any(m == f or m.startswith(f + ".") for f in (*FORBIDDEN, "pynvml")))
        targets.holds("heavy modules not imported by check with serve: lanes", not heavy and len(mods_served) > 0,
                      f"{len(mods_served)} modules imported" + (f"; imported: {', '.join(heavy)}" if heavy else ""))
        bad = sorted(m for m in mods if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
        targets.holds("heavy modules not imported by check", not bad and len(mods) > 0,
                      f"{len(mods)} modules imported" + (f"; imported: {', '.join(bad)}" if bad else ""))
        # Many lanes: the cost of a warm re-check grows with the lanes and no faster.
        many = {n: [*preflight_cmd(), "check", "-m", str(many_lanes(root, n)), "--quiet", "--termination-log", ""] for n in MANY}
        for cmd in many.values():
            run(cmd)  # records receipts
        many_times = interleave({n: (lambda cmd=cmd: run(cmd).wall_s) for n, cmd in many.items()}, max(3, args.rounds // 3))
        start = med["python -c 'import click, yaml'"]
        per_lane = {n: (median(many_times[n]) - start) / n for n in MANY}
        small, large = MANY
        for n in MANY:
            print(f"  warm re-check of {n:,} lanes      median {median(many_times[n]) * 1e3:.0f} ms")
        targets.at_most(f"per-lane cost, {large:,} lanes vs {small:,} lanes (linear)", per_lane[large] / per_lane[small], TARGET_LINEAR,
                        f"{per_lane[large] * 1e6:.0f} us vs {per_lane[small] * 1e6:.0f} us a lane above the click + yaml start")
        top = sorted(((us, m) for m, us in mods.items() if "." not in m), reverse=True)[:8]
        print("info slowest top-level imports (cumulative ms): " + ", ".join(f"{m} {us / 1e3:.1f}" for us, m in top))
    return targets.finish()


if __name__ == "__main__":
    sys.exit(main())
