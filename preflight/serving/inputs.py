"""What fit needs of a model, wherever it was read: the volume, the source (ranged reads before a
download), the lock, or the receipts of an earlier check.

vLLM lanes: config.json (the keys config_facts reads: `slim_config`), tokenizer_config.json's
model_max_length, and the tensor headers summed into `WeightGroups`. llama.cpp lanes: the GGUF
metadata llama.cpp sizes its cache by (`general.architecture` and the `{arch}.*` keys), the
vocabulary size and the bytes of every part. A few KiB of JSON either way, so the lock and the
receipts carry them and a warm re-check or `sync --locked` judges fit without reading a header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .fit import Fit, WeightGroups
from ..record import record

SOURCES = ("volume", "source", "lock", "receipts")
FORMAT = 1  # of the dict kept in the lock and the receipts; another value is ignored (read again)
_MAX_ARRAY = 4096  # per-layer GGUF arrays (head counts, SWA patterns) are a few hundred long


@record
class FitInputs:
    """The model facts of one lane, independent of the node and the serve flags."""

    engine: str  # vllm | llama.cpp
    config: dict[str, Any] | None = None  # vLLM: slim config.json
    tokenizer_max_len: int | None = None
    weights: WeightGroups | None = None  # vLLM: tensor headers summed
    gguf: dict[str, Any] | None = None  # llama.cpp: general.architecture and the {arch}.* keys
    weights_bytes: int | None = None  # llama.cpp: bytes of every part
    n_vocab: int = 0
    read_from: str = "volume"  # one of SOURCES
    partial: str | None = None  # what of the header was not read (a GGUF's tokenizer arrays before a download)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": FORMAT, "engine": self.engine}
        if self.engine == "vllm":
            d.update(config=self.config, tokenizer_max_len=self.tokenizer_max_len,
                     weights=self.weights.to_list() if self.weights is not None else None)
        else:
            d.update(gguf=self.gguf, weights_bytes=self.weights_bytes, n_vocab=self.n_vocab)
        if self.partial:
            d["partial"] = self.partial
        return d

    @classmethod
    def from_dict(cls, raw: Any, read_from: str) -> FitInputs | None:
        """From the lock or the receipts (files a user may edit): None unless well formed."""
        if not isinstance(raw, Mapping) or raw.get("format") != FORMAT or raw.get("engine") not in ("vllm", "llama.cpp"):
            return None
        partial = raw.get("partial") if isinstance(raw.get("partial"), str) else None
        if raw["engine"] == "vllm":
            config = raw.get("config")
            tok = raw.get("tokenizer_max_len")
            weights = raw.get("weights")
            groups = WeightGroups.from_list(weights) if weights is not None else None
            if not isinstance(config, dict) or (weights is not None and groups is None) or not (tok is None or _count(tok)):
                return None
            return cls("vllm", config=config, tokenizer_max_len=tok, weights=groups, read_from=read_from, partial=partial)
        gguf, size, vocab = raw.get("gguf"), raw.get("weights_bytes"), raw.get("n_vocab", 0)
        if not isinstance(gguf, dict) or not (size is None or _count(size)) or not _count(vocab):
            return None
        return cls("llama.cpp", gguf=gguf, weights_bytes=size, n_vocab=vocab, read_from=read_from, partial=partial)


def _count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 62


def folder_inputs(config: Mapping[str, Any], tensors: Mapping[str, tuple[str, tuple[int, ...]]] | WeightGroups | None,
                  tokenizer_max_len: int | None, read_from: str = "volume") -> FitInputs:
    from .model import slim_config

    groups = None if tensors is None else tensors if isinstance(tensors, WeightGroups) else WeightGroups.of(tensors)
    return FitInputs("vllm", config=slim_config(config), tokenizer_max_len=tokenizer_max_len, weights=groups, read_from=read_from)


def gguf_inputs(metadata: Mapping[str, Any], weights_bytes: int | None, n_vocab: int, read_from: str = "volume",
                partial: str | None = None) -> FitInputs | None:
    """The metadata keys gguf_facts reads, as JSON values; None for a file with no architecture."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        return None
    kept: dict[str, Any] = {"general.architecture": arch}
    for key, value in metadata.items():
        if not key.startswith(arch + "."):
            continue
        if isinstance(value, (bool, int, float, str)) or (isinstance(value, list) and len(value) <= _MAX_ARRAY
                                                          and all(isinstance(x, (bool, int, float)) for x in value)):
            kept[key] = value
    return FitInputs("llama.cpp", gguf=kept, weights_bytes=weights_bytes, n_vocab=n_vocab, read_from=read_from, partial=partial)


def tokenizer_max_len(raw: bytes | None) -> int | None:
    """tokenizer_config.json's model_max_length, which vLLM takes into the derived maximum."""
    import json

    if raw is None or len(raw) > 4 << 20:
        return None
    try:
        value = json.loads(raw.decode("utf-8")).get("model_max_length")
    except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
        return None
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1 << 40 else None


def evaluate(inputs: FitInputs | None, spec, accel) -> Fit | None:
    """Fit of `inputs` served as `spec` (a manifest ServeSpec) on `accel`; None when nothing can be judged."""
    from .fit import llama_fit, vllm_fit
    from .model import config_facts, gguf_facts

    if inputs is None or inputs.engine != spec.engine:
        return None
    if inputs.engine == "vllm":
        if inputs.config is None:
            return None
        try:
            facts = config_facts(inputs.config)
        except (TypeError, ValueError, AttributeError):
            return None  # a config.json fit cannot read (the format checks say why on the volume)
        fit = vllm_fit(facts, inputs.weights, spec.parsed(), accel, tokenizer_max_len=inputs.tokenizer_max_len)
    else:
        try:
            facts = gguf_facts(inputs.gguf or {})
        except (TypeError, ValueError):
            return None
        if facts is None:
            return None
        if inputs.weights_bytes is None:
            fit = Fit("llama.cpp")
            fit.warning("fit-unknown", "the size of the GGUF file is not known: fit not judged")
            return fit.settle()
        fit = llama_fit(facts, inputs.weights_bytes, inputs.n_vocab, spec.parsed(), accel)
    fit.figures["inputs_from"] = inputs.read_from
    if inputs.partial:
        fit.figures["inputs_partial"] = inputs.partial
    return fit
