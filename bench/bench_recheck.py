"""Warm re-check of a model-lanes volume: a restarted init container must cost about a Python start.

Run from the repository root:  python bench/bench_recheck.py [--rounds N]
Builds, as sparse files under build/, a volume shaped like the model-lanes layout:
three vLLM bf16 folders (config, tokenizer and sharded safetensors with an index)
and two GGUF files with a 32k vocabulary, over 50 GB in all, and a manifest giving
every file's size and the sha256 of the config, tokenizer and index files (with
--all-digests, of every file: the first check then hashes 51 GB of zeros, which
takes minutes on 2 cores). A first `preflight check` hashes what has a digest and
records receipts. Then, with
the page cache warm, the re-check is measured against `python -c "import click, yaml"`
(the floor for any click + YAML tool), interleaved:
  - wall time of the whole process                 <= 1.5x the reference
  - bytes it reads (/proc/<pid>/io rchar)          <= 0.1% of the volume
  - numpy, gguf, httpx, docker, huggingface_hub.file_download not imported
  - peak RSS                                        <= 100 MB
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PY, Targets, compile_package, interleave, median, preflight_cmd, run, scratch  # noqa: E402
from tests.builders import write_sparse_gguf, write_sparse_safetensors_layout  # noqa: E402

TARGET_WALL = 1.5
TARGET_READ_FRACTION = 0.001
TARGET_RSS_MB = 100.0
FORBIDDEN = ("numpy", "gguf", "httpx", "httpx2", "docker", "huggingface_hub.file_download")

# name, folder, (hidden, ffn, kv, layers, vocab, tied embeddings), shards
VLLM_LANES = [
    ("orchestrator", "vllm/orchestrator/bf16", (5120, 13824, 1024, 36, 152064, False), 12),
    ("coder", "vllm/coder/bf16", (3584, 18944, 512, 28, 152064, False), 10),
    ("fast_rag", "vllm/fast_rag/bf16", (3072, 8192, 1024, 28, 128256, True), 8),
]
GGUF_LANES = [
    ("super_reader", "gguf/Llama-3.1-Nemotron-8B-UltraLong-4M-Instruct-q4_k_m.gguf", 3 * 2**30),
    ("governance", "gguf/granite-guardian-3.2-5b-q4_k_m.gguf", 3 * 2**30),
]
SMALL_LIMIT = 64 * 2**20  # below this a file's digest is in the manifest by default
SMALL_FILES = ("generation_config.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
               "vocab.json", "merges.txt", "README.md", "LICENSE")


def transformer(hidden: int, ffn: int, kv: int, layers: int, vocab: int, tied: bool) -> dict[str, tuple[str, tuple[int, ...]]]:
    out: dict[str, tuple[str, tuple[int, ...]]] = {"model.embed_tokens.weight": ("BF16", (vocab, hidden))}
    for i in range(layers):
        p = f"model.layers.{i}"
        out |= {
            f"{p}.input_layernorm.weight": ("BF16", (hidden,)),
            f"{p}.mlp.down_proj.weight": ("BF16", (hidden, ffn)),
            f"{p}.mlp.gate_proj.weight": ("BF16", (ffn, hidden)),
            f"{p}.mlp.up_proj.weight": ("BF16", (ffn, hidden)),
            f"{p}.post_attention_layernorm.weight": ("BF16", (hidden,)),
            f"{p}.self_attn.k_proj.weight": ("BF16", (kv, hidden)),
            f"{p}.self_attn.o_proj.weight": ("BF16", (hidden, hidden)),
            f"{p}.self_attn.q_proj.weight": ("BF16", (hidden, hidden)),
            f"{p}.self_attn.v_proj.weight": ("BF16", (kv, hidden)),
            f"{p}.self_attn.q_proj.bias": ("BF16", (hidden,)),  # Qwen2 always has q/k/v biases
            f"{p}.self_attn.k_proj.bias": ("BF16", (kv,)),
            f"{p}.self_attn.v_proj.bias": ("BF16", (kv,)),
        }
    out["model.norm.weight"] = ("BF16", (hidden,))
    if not tied:
        out["lm_head.weight"] = ("BF16", (vocab, hidden))
    return out


def nbytes(shape: tuple[int, ...]) -> int:
    n = 2
    for d in shape:
        n *= d
    return n


def write_vllm_folder(folder: Path, dims: tuple[int, int, int, int, int, bool], n_shards: int) -> None:
    """config, tokenizer files and `n_shards` sparse safetensors shards with their index, split by size."""
    hidden, ffn, kv, layers, vocab, tied = dims
    folder.mkdir(parents=True)
    tensors = transformer(*dims)
    total = sum(nbytes(s) for _d, s in tensors.values())
    per_shard = total / n_shards
    shards: list[dict[str, tuple[str, tuple[int, ...]]]] = [{}]
    filled = 0
    for name, spec in tensors.items():
        if filled >= per_shard * len(shards) and len(shards) < n_shards:
            shards.append({})
        shards[-1][name] = spec
        filled += nbytes(spec[1])
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        write_sparse_safetensors_layout(folder / fname, shard)
        weight_map |= {t: fname for t in shard}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": hidden, "intermediate_size": ffn,
        "num_hidden_layers": layers, "num_attention_heads": hidden // 128, "num_key_value_heads": kv // 128,
        "vocab_size": vocab, "max_position_embeddings": 32768, "tie_word_embeddings": tied, "torch_dtype": "bfloat16",
    }, indent=2))
    pairs = [(f"p{2 * i}", f"p{2 * i + 1}") for i in range(vocab // 3)]  # every merge and its result in the vocabulary
    pieces = [t for pair in pairs for t in (*pair, pair[0] + pair[1])]
    vocab_map = {t: i for i, t in enumerate(pieces + [f"tok{i}" for i in range(vocab - len(pieces))])}
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": vocab_map, "merges": [f"{a} {b}" for a, b in pairs]}}))
    for name in SMALL_FILES:
        (folder / name).write_text(json.dumps({"name": name, "folder": folder.name}) if name.endswith(".json") else f"{name} of {folder.name}\n" * 50)


def build_volume(models: Path) -> list[Path]:
    for _name, rel, dims, n_shards in VLLM_LANES:
        write_vllm_folder(models / rel, dims, n_shards)
    for _name, rel, size in GGUF_LANES:
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        write_sparse_gguf(models / rel, size, n_tensors=8, n_vocab=32000)
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

    lanes = []
    for name, rel, _dims, _n in VLLM_LANES:
        folder = models / rel
        lanes.append({"name": name, "kind": "hf-dir", "path": rel,
                      "files": {p.relative_to(folder).as_posix(): expect(p) for p in files if folder in p.parents}})
    for name, rel, _size in GGUF_LANES:
        lanes.append({"name": name, "kind": "gguf", "path": rel, **expect(models / rel)})
    path.write_text(json.dumps({"version": 1, "models_dir": str(models), "lanes": lanes}, indent=1))
    return sum(p.stat().st_size for p in hashed)


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
                        help="give every file's sha256 (the first check then hashes 50 GB of zeros: minutes on 2 cores)")
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
        print(f"volume: {len(files)} files, {volume / 1e9:.1f} GB (sparse) in 5 lanes; built in {t1 - t0:.1f}s; "
              f"sha256 in the manifest for {with_digest / 1e9:.2f} GB, computed in {t2 - t1:.1f}s", flush=True)
        check = [*preflight_cmd(), "check", "-m", str(manifest), "--termination-log", ""]
        first = run([*check, "--quiet"])
        print(f"first check (hashes {with_digest / 1e9:.2f} GB, records receipts): {first.wall_s:.1f}s, "
              f"peak RSS {first.maxrss_mb:.0f} MB", flush=True)
        json_run = run([*check, "--quiet", "--json", "--report", str(root / "report.json")])
        report = json.loads((root / "report.json").read_text())
        hashed = sum(lane.get("hashed_bytes", 0) for lane in report["lanes"])
        targets.holds("warm re-check is ready and hashes nothing",
                      report["status"] == "ready" and hashed == 0 and len(report["lanes"]) == 5,
                      f"status {report['status']}, {len(report['lanes'])} lanes, hashed {hashed} bytes")

        procs = []

        def recheck() -> float:
            proc = run([*check, "--quiet"])
            procs.append(proc)
            return proc.wall_s

        times = interleave({
            "preflight check": recheck,
            "python -c 'import click, yaml'": lambda: run([PY, "-c", "import click, yaml"]).wall_s,
            "python -c 'pass'": lambda: run([PY, "-c", "pass"]).wall_s,
        }, args.rounds)
        med = {k: median(v) for k, v in times.items()}
        for k, v in med.items():
            print(f"  {k:32s} median {v * 1e3:.0f} ms  (min {min(times[k]) * 1e3:.0f}, max {max(times[k]) * 1e3:.0f})")
        ref = med["python -c 'import click, yaml'"]
        targets.at_most("warm re-check wall vs python -c 'import click, yaml'", med["preflight check"] / ref, TARGET_WALL,
                        f"{med['preflight check'] * 1e3:.0f} ms vs {ref * 1e3:.0f} ms")
        procs.append(json_run)
        rchar = max(p.rchar for p in procs)
        read_bytes = max(p.read_bytes for p in procs)
        targets.at_most("bytes read by the re-check / volume", rchar / volume * 100, TARGET_READ_FRACTION * 100,
                        f"rchar {rchar / 2**20:.2f} MiB (storage reads {read_bytes / 2**20:.2f} MiB) of {volume / 1e9:.1f} GB", unit="%")
        rss = max(p.maxrss_mb for p in procs)
        targets.at_most("peak RSS of the re-check", rss, TARGET_RSS_MB, unit=" MB")

        timed = run([PY, "-X", "importtime", *preflight_cmd()[1:], "check", "-m", str(manifest), "--quiet", "--termination-log", ""])
        mods = imported_modules(timed.stderr)
        bad = sorted(m for m in mods if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
        targets.holds("heavy modules not imported by check", not bad and len(mods) > 0,
                      f"{len(mods)} modules imported" + (f"; imported: {', '.join(bad)}" if bad else ""))
        top = sorted(((us, m) for m, us in mods.items() if "." not in m), reverse=True)[:8]
        print("info slowest top-level imports (cumulative ms): " + ", ".join(f"{m} {us / 1e3:.1f}" for us, m in top))
    return targets.finish()


if __name__ == "__main__":
    sys.exit(main())
