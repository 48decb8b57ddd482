"""The flags of a server command line that decide whether a model fits, parsed as the engine parses them.

A lane says how it is served with the argument string its compose or Kubernetes command
already uses; only the flags below change fit, every other flag is kept aside (listed by
`inspect`, ignored by the arithmetic). Defaults are the engine's own where a flag is absent:

- vLLM 0.19.1 (`vllm/engine/arg_utils.py`, `vllm/config/cache.py`, `vllm/config/parallel.py`):
  argparse semantics (`--flag value`, `--flag=value`, a unique prefix of a long flag is
  not accepted: vLLM's parser turns abbreviation off), underscores in long names read as
  dashes (`--max_model_len`), short aliases `-tp`, `-pp`, `-q`, `-dp`; `--max-model-len`
  takes `32768`, `32k` (x1000), `32K` (x1024), `-1`/`auto` (fit to memory);
  gpu_memory_utilization 0.9, kv_cache_dtype auto (the model dtype), dtype auto,
  block_size 16 (CUDA), max_num_seqs 256 (informational: it sizes activations, not the
  KV check), tensor/pipeline parallel 1.
- llama.cpp server as vendored by llama-cpp-python 0.3.36 (`common/arg.cpp`, `common/common.h`,
  `tools/server/server.cpp`): `-c/--ctx-size` 0 = the model's trained context; `-np/--parallel`
  auto = 4 slots with a unified KV cache (`-kvu`); `-ngl/--gpu-layers/--n-gpu-layers` auto
  (`all`, `auto` or a number); `-ctk/-ctv` f16; `-fa/--flash-attn` auto (`on|off|auto`;
  older servers took a bare `-fa`); `-ub/--ubatch-size` 512; `--swa-full` off; weights
  memory-mapped unless `--no-mmap` (older servers) or `-lm/--load-mode none|mlock|dio`.

An argument value the engine would refuse (`-tp two`) is an ArgsError: a usage error with
the flag named, as the engine's own parser would stop on it.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from ..record import record

ENGINES = ("vllm", "llama.cpp")
VLLM_VERSION = "0.19.1"
LLAMA_CPP_VERSION = "llama.cpp as vendored by llama-cpp-python 0.3.36"

VLLM_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
VLLM_KV_DTYPES = ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla")
# ggml cache types llama.cpp's -ctk/-ctv accept (common/arg.cpp kv_cache_types)
LLAMA_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


class ArgsError(ValueError):
    """A flag value the engine's own parser would refuse."""


@record(frozen=True)
class ServeArgs:
    """What fit needs from a command line: values (defaults filled in), which were given, the rest."""

    engine: str
    values: dict[str, Any]
    given: frozenset[str]
    ignored: tuple[str, ...] = ()
    defaults_from: str = ""

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def flag(self, name: str) -> str:
        """The spelling to name in a message: the engine's long flag for `name`."""
        return _SPELLING[self.engine][name]

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "values": dict(self.values), "given": sorted(self.given),
                "ignored": list(self.ignored), "defaults_from": self.defaults_from}


def _int(v: str) -> int:
    return int(v, 10)


def human_int(value: str) -> int:
    """vLLM's human_readable_int: '32k' -> 32000, '32K' -> 32768, '25.6k' -> 25600."""
    value = value.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", value)
    if m:
        number, suffix = m.groups()
        if suffix.islower():
            return int(float(number) * {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}[suffix])
        if "." in number:
            raise ValueError(f"decimals are not allowed with binary suffixes like {suffix}")
        return int(number) * {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[suffix]
    return int(value)


def _max_len(value: str) -> int:
    v = value.strip()
    return -1 if v == "-1" or v.lower() == "auto" else human_int(v)


def _choice(options: tuple[str, ...]):
    def conv(v: str) -> str:
        if v not in options:
            raise ValueError(f"invalid choice {v!r} (choose from {', '.join(options)})")
        return v
    return conv


def _util(v: str) -> float:
    f = float(v)
    if not 0 < f <= 1:
        raise ValueError("must be greater than 0 and at most 1")
    return f


def _positive(v: str) -> int:
    n = int(v, 10)
    if n < 1:
        raise ValueError("must be at least 1")
    return n


def _ngl(v: str) -> int | str:
    low = v.strip().lower()
    if low in ("auto", "all"):
        return low
    n = int(v, 10)
    return "auto" if n == -1 else "all" if n <= -2 else n


def _parallel(v: str) -> int | str:
    n = int(v, 10)
    if n == 0:
        raise ValueError("invalid value for n_parallel")
    return "auto" if n < 0 else n


def _fa(v: str) -> str:
    low = v.strip().lower()
    if low in ("on", "off", "auto"):
        return low
    if low in ("1", "true", "enabled"):
        return "on"
    if low in ("0", "false", "disabled"):
        return "off"
    raise ValueError("expected on, off or auto")


def _load_mode(v: str) -> str:
    if v not in ("auto", "none", "mmap", "mlock", "mmap+mlock", "dio"):
        raise ValueError("expected auto, none, mmap, mlock, mmap+mlock or dio")
    return v


# name -> (spellings, converter or None for a switch, default)
_VLLM: dict[str, tuple[tuple[str, ...], Any, Any]] = {
    "tensor_parallel_size": (("--tensor-parallel-size", "-tp"), _positive, 1),
    "pipeline_parallel_size": (("--pipeline-parallel-size", "-pp"), _positive, 1),
    "data_parallel_size": (("--data-parallel-size", "-dp"), _positive, 1),
    "max_model_len": (("--max-model-len",), _max_len, None),
    "gpu_memory_utilization": (("--gpu-memory-utilization",), _util, 0.9),
    "kv_cache_memory_bytes": (("--kv-cache-memory-bytes",), human_int, None),
    "kv_cache_dtype": (("--kv-cache-dtype",), _choice(VLLM_KV_DTYPES), "auto"),
    "dtype": (("--dtype",), _choice(VLLM_DTYPES), "auto"),
    "quantization": (("--quantization", "-q"), str, None),
    "max_num_seqs": (("--max-num-seqs",), _positive, 256),
    "block_size": (("--block-size",), _positive, 16),
    "trust_remote_code": (("--trust-remote-code",), None, False),
    "enforce_eager": (("--enforce-eager",), None, False),
    "enable_expert_parallel": (("--enable-expert-parallel", "-ep"), None, False),
    "cpu_offload_gb": (("--cpu-offload-gb",), float, 0.0),
    "disable_sliding_window": (("--disable-sliding-window",), None, False),
    "model": (("--model",), str, None),
}
_LLAMA: dict[str, tuple[tuple[str, ...], Any, Any]] = {
    "ctx_size": (("--ctx-size", "-c"), _int, 0),
    "parallel": (("--parallel", "-np"), _parallel, "auto"),
    "gpu_layers": (("--gpu-layers", "-ngl", "--n-gpu-layers"), _ngl, "auto"),
    "cache_type_k": (("--cache-type-k", "-ctk"), _choice(LLAMA_CACHE_TYPES), "f16"),
    "cache_type_v": (("--cache-type-v", "-ctv"), _choice(LLAMA_CACHE_TYPES), "f16"),
    "flash_attn": (("--flash-attn", "-fa"), _fa, "auto"),
    "ubatch_size": (("--ubatch-size", "-ub"), _positive, 512),
    "batch_size": (("--batch-size", "-b"), _positive, 2048),
    "swa_full": (("--swa-full",), None, False),
    "kv_unified": (("--kv-unified", "-kvu"), None, None),
    "no_kv_unified": (("--no-kv-unified", "-no-kvu"), None, False),
    "no_mmap": (("--no-mmap",), None, False),
    "mlock": (("--mlock",), None, False),
    "load_mode": (("--load-mode", "-lm"), _load_mode, "auto"),
    "model": (("--model", "-m"), str, None),
}
_TABLES = {"vllm": _VLLM, "llama.cpp": _LLAMA}
_SPELLING = {engine: {name: spec[0][0] for name, spec in table.items()} for engine, table in _TABLES.items()}
_BARE_FA = "flash_attn"  # llama.cpp before the on|off|auto form took `-fa` alone


def split_args(args: str | list[str] | tuple[str, ...]) -> list[str]:
    """A string is split as a POSIX shell would (quotes kept together); a list is taken as is."""
    if isinstance(args, str):
        try:
            return shlex.split(args)
        except ValueError as exc:
            raise ArgsError(f"cannot split the arguments as a shell would: {exc}") from None
    return [str(a) for a in args]


def parse_args(engine: str, args: str | list[str] | tuple[str, ...] = ()) -> ServeArgs:
    """The fit-relevant flags of `args` as `engine` reads them, its defaults for the rest."""
    if engine not in _TABLES:
        raise ArgsError(f"unknown engine {engine!r} (engines: {', '.join(ENGINES)})")
    table = _TABLES[engine]
    lookup = {sp: name for name, (spellings, _c, _d) in table.items() for sp in spellings}
    words = split_args(args)
    values: dict[str, Any] = {name: default for name, (_s, _c, default) in table.items()}
    given: set[str] = set()
    ignored: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        key, eq, inline = word.partition("=") if word.startswith("-") else (word, "", "")
        if engine == "vllm" and key.startswith("--"):
            key = "--" + key[2:].replace("_", "-")
        name = lookup.get(key)
        if name is None:
            ignored.append(word)
            if not eq and word.startswith("-") and i < len(words) and not words[i].startswith("-"):
                # an unknown flag's value (best effort: a switch followed by a positional model is rare)
                ignored.append(words[i])
                i += 1
            continue
        spellings, conv, _default = table[name]
        if conv is None:
            if eq:
                low = inline.strip().lower()
                if low not in ("true", "false", "1", "0"):
                    raise ArgsError(f"{key} is a switch and takes no value (found {inline!r})")
                values[name] = low in ("true", "1")
            else:
                values[name] = True
            given.add(name)
            continue
        if eq:
            raw = inline
        elif name == _BARE_FA and (i >= len(words) or words[i].startswith("-")):
            raw = "on"
        else:
            if i >= len(words):
                raise ArgsError(f"{key} expects a value")
            raw = words[i]
            i += 1
        try:
            values[name] = conv(raw)
        except (ValueError, TypeError) as exc:
            raise ArgsError(f"{key} {raw!r}: {exc}") from None
        given.add(name)
    if engine == "llama.cpp":
        _llama_resolve(values, given)
    src = f"vLLM {VLLM_VERSION}" if engine == "vllm" else LLAMA_CPP_VERSION
    return ServeArgs(engine, values, frozenset(given), tuple(ignored), src)


def _llama_resolve(values: dict[str, Any], given: set[str]) -> None:
    """llama-server's own resolution: -np auto is 4 slots with a unified cache; mmap unless told."""
    if values["parallel"] == "auto":
        values["parallel"] = 4
        if values["kv_unified"] is None:
            values["kv_unified"] = True
    if values.pop("no_kv_unified"):
        values["kv_unified"] = False
    if values["kv_unified"] is None:
        values["kv_unified"] = False
    mode = values["load_mode"]
    values["mmap"] = not values.pop("no_mmap") and mode in ("auto", "mmap", "mmap+mlock")
