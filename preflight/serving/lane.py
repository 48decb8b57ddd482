"""Fit for a lane on the volume: the facts its format checks already read, its `serve:`, this node.

Called by check once a lane's files are checked. For a folder lane the facts are config.json
and the safetensors headers (already parsed by the format checks, or read again on a warm
restart that skipped them: headers only, never tensor data); for a GGUF lane the header.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import problems as P
from .accel import Accelerator, AcceleratorError, resolve


class NodeAccelerator:
    """The accelerator of this run, resolved once and only when a lane asks (NVML is not imported otherwise)."""

    def __init__(self, declared: Any = None) -> None:
        self.declared = declared
        self._value: Accelerator | None = None
        self.error: str | None = None

    def get(self) -> Accelerator | None:
        if self._value is None and self.error is None:
            try:
                self._value = resolve(self.declared)
            except AcceleratorError as exc:
                self.error = str(exc)
        return self._value


def fit_folder(root: Path, files: list[str], info: Any, spec, accel: Accelerator | None):
    """Fit of a vLLM folder lane from its config.json and tensor headers."""
    from ..formats.hfdir import INDEX_NAME, read_json_object
    from .fit import vllm_fit
    from .model import config_facts

    config = getattr(info, "config", None) if info is not None else None
    if config is None:
        config, problem = read_json_object(root / "config.json", "config.json")
        if config is None:
            return None
    tensors = _tensors(root, files, info)
    tok_max = _tokenizer_max(root)
    return vllm_fit(config_facts(config), tensors, spec.parsed(), accel, tokenizer_max_len=tok_max)


def _tensors(root: Path, files: list[str], info: Any) -> dict[str, tuple[str, tuple[int, ...]]] | None:
    if info is not None and getattr(info, "tensors", None):
        return {n: (d, tuple(s)) for n, (d, s) in info.tensors.items()}
    from ..formats.safetensors import check_safetensors

    names = [f for f in files if f.endswith(".safetensors") and "/" not in f and f != "adapter_model.safetensors"]
    if not names:
        return None
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name in names:
        st = check_safetensors(root / name, name=name)
        if not st.header_parsed:
            return None
        out.update((n, (t.dtype, tuple(t.shape))) for n, t in st.tensors.items())
    return out


def _tokenizer_max(root: Path) -> int | None:
    """tokenizer_config.json's model_max_length, which vLLM takes into the derived maximum."""
    p = root / "tokenizer_config.json"
    try:
        if p.stat().st_size > 4 << 20:
            return None
        value = json.loads(p.read_text(encoding="utf-8")).get("model_max_length")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1 << 40 else None


def fit_gguf(path: Path, info: Any, spec, accel: Accelerator | None):
    """Fit of a llama.cpp lane from its GGUF header (split parts: the first holds the metadata)."""
    from ..formats.gguf import check_gguf, split_sibling_names
    from .fit import llama_fit
    from .model import gguf_facts

    if info is None or not getattr(info, "metadata", None):
        info = check_gguf(path, name=path.name)
    facts = gguf_facts(info.metadata)
    if facts is None:
        return None
    parts = split_sibling_names(path.name) or [path.name]
    weights = sum((path.parent / n).stat().st_size for n in parts if (path.parent / n).exists())
    return llama_fit(facts, weights, info.vocab_size or 0, spec.parsed(), accel)


def attach(result, fit, where: str) -> None:
    """The fit's findings on the lane (path: where they apply) and its figures on the report."""
    if fit is None:
        result.problems.append(P.warning(where, P.FIT_UNKNOWN, "fit not judged: no model configuration to read"))
        return
    for p in fit.problems:
        result.problems.append(P.Problem(where, p.code, p.message, p.severity))
    result.fit = fit.to_dict()
    result.fit.pop("problems", None)


def fit_plan(ctx, plan, info) -> None:
    """check's hook: judge a checked lane's fit and put it on the lane's result."""
    if ctx.accelerator is None:
        ctx.accelerator = NodeAccelerator(ctx.manifest.accelerator)
    node = ctx.accelerator
    accel = node.get()
    lane = plan.lane
    if node.error:
        plan.result.problems.append(P.error("serve", P.SERVE_INVALID, f"the declared accelerator cannot be read: {node.error}"))
        return
    present = [rel for rel, obs in plan.files.items() if obs.st is not None]
    if lane.kind == "gguf":
        first = sorted(present)[0] if present else None
        fit = fit_gguf(plan.root / first, info, lane.serve, accel) if first else None
    elif lane.kind in ("hf-dir", "hf-cache"):
        fit = fit_folder(plan.root, present, info, lane.serve, accel)
    else:
        return
    attach(plan.result, fit, "serve")
    if fit is not None and accel is not None:
        plan.result.fit["node"] = accel.describe()
