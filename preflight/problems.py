"""Findings: what a check observed that makes a file or lane not ready.

Problem codes are stable kebab-case words (they are part of the JSON report
contract); add new ones, never rename.
"""

from __future__ import annotations

from dataclasses import asdict

from .record import record

# Stable problem codes.
MISSING = "missing"
EMPTY_FILE = "empty-file"
TRUNCATED = "truncated"
TRAILING_DATA = "trailing-data"
HEADER_TOO_LARGE = "header-too-large"
HEADER_INVALID = "header-invalid"
BAD_OFFSETS = "bad-offsets"
BAD_DTYPE = "bad-dtype"
BAD_SHAPE = "bad-shape"
SHARD_MISSING = "shard-missing"
INDEX_INVALID = "index-invalid"
INDEX_MISMATCH = "index-mismatch"
TOTAL_SIZE_MISMATCH = "total-size-mismatch"
BAD_MAGIC = "bad-magic"
UNSUPPORTED_VERSION = "unsupported-version"
COUNT_TOO_LARGE = "count-too-large"
BAD_VALUE_TYPE = "bad-value-type"
BAD_TENSOR_TYPE = "bad-tensor-type"
MISALIGNED = "misaligned"
TENSOR_OUT_OF_BOUNDS = "tensor-out-of-bounds"
SPLIT_MISSING = "split-missing"
SPLIT_INVALID = "split-invalid"
CONFIG_MISSING = "config-missing"
CONFIG_INVALID = "config-invalid"
WEIGHTS_MISSING = "weights-missing"
TOKENIZER_MISSING = "tokenizer-missing"
CHECKSUM_MISMATCH = "checksum-mismatch"
SIZE_MISMATCH = "size-mismatch"
UNSAFE_PICKLE = "unsafe-pickle"
DANGEROUS_PICKLE = "dangerous-pickle"
PATH_ESCAPE = "path-escape"
ADAPTER_BASE_MISMATCH = "adapter-base-mismatch"
ADAPTER_INVALID = "adapter-invalid"
NOT_A_FILE = "not-a-file"
NOT_A_DIRECTORY = "not-a-directory"
UNREADABLE = "unreadable"
LOCK_DRIFT = "lock-drift"
FETCH_FAILED = "fetch-failed"
# Post-deploy smoke checks of inference endpoints.
ENDPOINT_UNREACHABLE = "endpoint-unreachable"
ENDPOINT_NOT_READY = "endpoint-not-ready"
ENDPOINT_AUTH = "endpoint-auth"
MODEL_MISMATCH = "model-mismatch"
COMPLETION_FAILED = "completion-failed"
EMBEDDING_FAILED = "embedding-failed"
BAD_RESPONSE = "bad-response"
# config.json disagrees with the weights beside it (layers, vocabulary, hidden size, LM head).
CONFIG_MISMATCH = "config-mismatch"
# Pickle-bearing files.
ARCHIVE_INVALID = "archive-invalid"  # an archive its loader cannot read (a torch zip whose data.pkl is no pickle)
TORCHSCRIPT = "torchscript"  # a TorchScript archive: a program as well as weights
ARCHIVE_BOMB = "archive-bomb"  # a model archive (.tar, .tar.gz, .zip, ...) past a member, size or expansion bound

# Model-level GGUF checks: what llama.cpp's model loader needs beyond a readable file.
ARCHITECTURE_MISSING = "architecture-missing"
UNKNOWN_ARCHITECTURE = "unknown-architecture"  # refused as llama.cpp refuses it; a warning when the lane runs a newer llama.cpp
HPARAM_MISSING = "hparam-missing"
HPARAM_INVALID = "hparam-invalid"
KV_TYPE_MISMATCH = "kv-type-mismatch"
TENSOR_MISSING = "tensor-missing"
TENSOR_UNEXPECTED = "tensor-unexpected"
BLOCK_COUNT_MISMATCH = "block-count-mismatch"
VOCAB_INVALID = "vocab-invalid"
UNKNOWN_TENSOR_TYPE = "unknown-tensor-type"  # a ggml type newer than the tables' llama.cpp: refused, a warning when the lane runs a newer one

# Model folders as the loaders read them (config values, tensor shapes, tokenizer files); a
# folder's missing or unexpected tensors are `tensor-missing` / `tensor-unexpected` too.
TENSOR_SHAPE_MISMATCH = "tensor-shape-mismatch"  # a tensor's shape is not what config.json makes the loader build
UNKNOWN_MODEL_TYPE = "unknown-model-type"  # model_type no transformers release (or vLLM) configures
UNKNOWN_ACTIVATION = "unknown-activation"  # hidden_act not in transformers' ACT2FN
ROPE_SCALING_INVALID = "rope-scaling-invalid"  # a RoPE type no loader builds, or a required key missing
DTYPE_INVALID = "dtype-invalid"  # torch_dtype / dtype that names no torch dtype
HEADS_INDIVISIBLE = "heads-indivisible"  # attention heads that do not divide as the attention code needs
TOKENIZER_INVALID = "tokenizer-invalid"  # tokenizer.json the tokenizers library refuses
TOKENIZER_CONFIG_INVALID = "tokenizer-config-invalid"  # tokenizer_config.json not a JSON object
UNKNOWN_TOKENIZER_CLASS = "unknown-tokenizer-class"  # tokenizer_class AutoTokenizer (4.x) cannot resolve
GENERATION_CONFIG_INVALID = "generation-config-invalid"  # generation_config.json that is no JSON object


NOT_SWITCHED = "not-switched"  # warning: a folder lane still serves its previous revision

# OpenSSF model signatures (see signing.py).
SIGNATURE_MISSING = "signature-missing"
SIGNATURE_INVALID = "signature-invalid"  # bad signature, wrong signer, expired or untrusted certificate, damaged bundle
SIGNATURE_MISMATCH = "signature-mismatch"  # a file's digest differs from the signed statement
UNSIGNED_FILE = "unsigned-file"  # a file of the lane the statement does not cover
SIGNED_FILE_MISSING = "signed-file-missing"  # a file the statement covers is not in the lane

# Serving fit (serving/fit.py): will the engine start this lane on this node.
ENGINE_UNSUPPORTED = "engine-unsupported"  # architecture, pipeline parallelism, dtype or quantization the engine refuses here
PARALLEL_INVALID = "parallel-invalid"  # heads not divisible by TP, more ranks than GPUs
CONTEXT_TOO_LONG = "context-too-long"  # --max-model-len above what the model derives
WEIGHTS_TOO_LARGE = "weights-too-large"  # weights per GPU above the memory the engine may use
KV_CACHE_TOO_LARGE = "kv-cache-too-large"  # one max-length sequence's KV cache does not fit beside the weights
MEMORY_LIMIT_EXCEEDED = "memory-limit-exceeded"  # llama.cpp on the CPU above the container's memory limit
GPU_MEMORY_BUSY = "gpu-memory-busy"  # other processes hold the memory vLLM wants
FIT_MARGIN = "fit-margin"  # warning: fits by the exact figures, not by the estimated overhead
FIT_UNKNOWN = "fit-unknown"  # warning: something fit could not judge (no GPU seen, no headers)
SERVE_INVALID = "serve-invalid"  # the lane's serve args cannot be parsed as the engine parses them


@record(frozen=True)
class Problem:
    """One finding. `path` is relative to the lane (or the file name) when known."""

    path: str
    code: str
    message: str
    severity: str = "error"  # "error" makes the lane not ready; "warning" does not

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.severity == "error":
            d.pop("severity")
        return d


def error(path: str, code: str, message: str) -> Problem:
    return Problem(path, code, message)


def warning(path: str, code: str, message: str) -> Problem:
    return Problem(path, code, message, "warning")


def number_ranges(nums: list[int], most: int = 6) -> str:
    """[0, 1, 2, 5] -> '0-2, 5': sorted numbers as runs, the first `most` of them, for messages."""
    runs: list[str] = []
    start = prev = nums[0]
    for x in [*nums[1:], None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ", ".join(runs[:most]) + (f" and {len(runs) - most} more ranges" if len(runs) > most else "")
