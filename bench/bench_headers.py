"""Header-check benchmark: cost independent of file size, per-shard time, GGUF vocabulary parse.

Run from the repository root:  python bench/bench_headers.py
Prints each figure with its target, measured in this run, and exits 1 when a
target is missed. Files are built in a temporary folder (sparse, so the 8 GiB
model costs no disk) and removed afterwards; the page cache is warm, as it is
for a restart of the init container.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gguf  # noqa: E402

from preflight.formats.gguf import check_gguf  # noqa: E402
from preflight.formats.safetensors import check_safetensors  # noqa: E402
from tests.builders import write_gguf, write_sparse_safetensors_layout  # noqa: E402

TARGET_SIZE_RATIO = 1.1
TARGET_SHARD_MS = 2.0
TARGET_GGUF_MS = 15.0


def best_ms(fn: Callable[[], object], *, batches: int = 7, per_batch: int = 30) -> float:
    """CPU milliseconds per call: the best batch mean.

    CPU time of this process (plus the best of several batches) keeps other work
    on a shared machine out of the figure; the checks are CPU-bound on a warm cache.
    """
    means = []
    for _ in range(batches):
        start = time.process_time()
        for _ in range(per_batch):
            fn()
        means.append((time.process_time() - start) / per_batch * 1e3)
    return min(means)


def llama_shard_layout(layers: range, hidden: int, ffn: int, kv: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes as in a Llama-style transformers shard (9 tensors per layer)."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for i in layers:
        p = f"model.layers.{i}"
        out |= {
            f"{p}.input_layernorm.weight": ("BF16", (hidden,)),
            f"{p}.post_attention_layernorm.weight": ("BF16", (hidden,)),
            f"{p}.self_attn.q_proj.weight": ("BF16", (hidden, hidden)),
            f"{p}.self_attn.k_proj.weight": ("BF16", (kv, hidden)),
            f"{p}.self_attn.v_proj.weight": ("BF16", (kv, hidden)),
            f"{p}.self_attn.o_proj.weight": ("BF16", (hidden, hidden)),
            f"{p}.mlp.gate_proj.weight": ("BF16", (ffn, hidden)),
            f"{p}.mlp.up_proj.weight": ("BF16", (ffn, hidden)),
            f"{p}.mlp.down_proj.weight": ("BF16", (hidden, ffn)),
        }
    return out


def size_independence(folder: Path) -> tuple[float, float, float, int, int]:
    """The same 256 tensors at 8 GiB (32 MiB each) and 0.25 GiB (1 MiB each); time both, interleaved."""
    big = {f"model.layers.{i}.mlp.up_proj.weight": ("BF16", (4096, 4096)) for i in range(256)}
    small = {name: (dtype, (128, 4096)) for name, (dtype, _) in big.items()}
    big_path = write_sparse_safetensors_layout(folder / "big.safetensors", big)
    small_path = write_sparse_safetensors_layout(folder / "small.safetensors", small)
    assert big_path.stat().st_size > 8 * 2**30 and small_path.stat().st_size > 2**28
    headers = []
    for p in (big_path, small_path):
        info = check_safetensors(p)
        assert info.ok, info.problems
        headers.append(info.header_size)
    big_ms, small_ms = [], []
    for _ in range(400):  # call by call, interleaved, so load from other processes hits both alike
        t0 = time.perf_counter()
        check_safetensors(big_path)
        t1 = time.perf_counter()
        check_safetensors(small_path)
        t2 = time.perf_counter()
        big_ms.append((t1 - t0) * 1e3)
        small_ms.append((t2 - t1) * 1e3)
    b, s = statistics.median(big_ms), statistics.median(small_ms)
    return b, s, b / s, headers[0], headers[1]


def shard_ms(folder: Path) -> tuple[int, float]:
    """A shard of a Llama-3-8B-sized model: 33 layers x 9 tensors = 297 tensors, ~14 GiB (sparse)."""
    layout = llama_shard_layout(range(33), hidden=4096, ffn=14336, kv=1024)
    path = write_sparse_safetensors_layout(folder / "model-00001-of-00002.safetensors", layout)
    info = check_safetensors(path)
    assert info.ok, info.problems
    return len(info.tensors), best_ms(lambda: check_safetensors(path))


def gguf_vocab(folder: Path) -> tuple[float, float]:
    """A GGUF with a 32k vocabulary (tokens, scores, token types): our check vs gguf.GGUFReader."""
    path = write_gguf(folder / "vocab32k.gguf", n_vocab=32000, quant="Q4_K", file_type=15)
    info = check_gguf(path)
    assert info.ok, info.problems
    ours = best_ms(lambda: check_gguf(path), batches=5, per_batch=10)
    runs = []
    for _ in range(2):
        start = time.perf_counter()
        reader = gguf.GGUFReader(str(path))
        runs.append((time.perf_counter() - start) * 1e3)
        assert len(reader.tensors) == info.tensor_count
    return ours, min(runs)


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="No options: about 10 seconds.").parse_args()
    failures = []
    with tempfile.TemporaryDirectory(prefix="bench-headers-") as tmp:
        folder = Path(tmp)
        big, small, ratio, big_header, small_header = size_independence(folder)
        print(f"safetensors 8 GiB vs 0.25 GiB, same 256 tensors: {big:.3f} ms vs {small:.3f} ms (median), ratio {ratio:.2f} "
              f"(target <= {TARGET_SIZE_RATIO}; headers {big_header} vs {small_header} bytes, longer offsets)")
        if ratio > TARGET_SIZE_RATIO:
            failures.append("size ratio")
        n, ms = shard_ms(folder)
        print(f"safetensors shard with {n} tensors: {ms:.3f} ms per check (target <= {TARGET_SHARD_MS} ms)")
        if ms > TARGET_SHARD_MS:
            failures.append("shard ms")
        ours, theirs = gguf_vocab(folder)
        print(f"GGUF with 32k vocabulary: check_gguf {ours:.2f} ms, gguf.GGUFReader {theirs:.0f} ms, "
              f"{theirs / ours:.0f}x faster (target <= {TARGET_GGUF_MS} ms)")
        if ours > TARGET_GGUF_MS:
            failures.append("gguf ms")
    if failures:
        print("MISSED: " + ", ".join(failures))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
