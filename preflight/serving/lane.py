"""Fit for a lane on the volume: the facts its format checks already read, its `serve:`, this node.

Called by check once a lane's files are checked. For a folder lane the facts are config.json
and the safetensors headers (already parsed by the format checks, or read again when they were
skipped and the receipts hold no fit inputs: headers only, never tensor data); for a GGUF lane
the header. What was read is returned as `FitInputs`, which check keeps in the receipts beside
the lane's fingerprint: a warm re-check reads no header for fit either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import problems as P
from .accel import Accelerator, AcceleratorError, node_key, resolve
from .inputs import FitInputs, evaluate, folder_inputs, gguf_inputs, tokenizer_max_len


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

    def key(self) -> str | None:
        """What identifies this node for a remembered variant choice (None when it cannot be read)."""
        value = self.get()
        return node_key(value) if value is not None else None


def folder_fit_inputs(root: Path, files: list[str], info: Any) -> FitInputs | None:
    """A vLLM folder's fit inputs: config.json, tokenizer_config.json, the safetensors headers."""
    from ..formats.hfdir import read_json_object

    config = getattr(info, "config", None) if info is not None else None
    if config is None:
        config, _problem = read_json_object(root / "config.json", "config.json")
        if config is None:
            return None
    return folder_inputs(config, _tensors(root, files, info), _tokenizer_max(root))


def _tensors(root: Path, files: list[str], info: Any) -> dict[str, tuple[str, tuple[int, ...]]] | None:
    if info is not None and getattr(info, "tensors", None):
        return {n: (d, tuple(s)) for n, (d, s) in info.tensors.items()}
    from ..formats.safetensors import check_safetensors

    names = weight_files(files)
    if not names:
        return None
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name in names:
        st = check_safetensors(root / name, name=name)
        if not st.header_parsed:
            return None
        out.update((n, (t.dtype, tuple(t.shape))) for n, t in st.tensors.items())
    return out


def weight_files(files: list[str]) -> list[str]:
    """The safetensors files vLLM reads from a folder: the top-level ones, not an adapter's."""
    return sorted(f for f in files if f.endswith(".safetensors") and "/" not in f and f != "adapter_model.safetensors")


def _tokenizer_max(root: Path) -> int | None:
    p = root / "tokenizer_config.json"
    try:
        if p.stat().st_size > 4 << 20:
            return None
        return tokenizer_max_len(p.read_bytes())
    except OSError:
        return None


def gguf_fit_inputs(path: Path, info: Any) -> FitInputs | None:
    """A GGUF lane's fit inputs from its header (split parts: the first holds the metadata)."""
    from ..formats.gguf import check_gguf, split_sibling_names

    if info is None or not getattr(info, "metadata", None):
        info = check_gguf(path, name=path.name)
    parts = split_sibling_names(path.name) or [path.name]
    weights = sum((path.parent / n).stat().st_size for n in parts if (path.parent / n).exists())
    return gguf_inputs(info.metadata, weights, info.vocab_size or 0)


def fit_folder(root: Path, files: list[str], info: Any, spec, accel: Accelerator | None):
    """Fit of a vLLM folder lane from its config.json and tensor headers."""
    return evaluate(folder_fit_inputs(root, files, info), spec, accel)


def fit_gguf(path: Path, info: Any, spec, accel: Accelerator | None):
    """Fit of a llama.cpp lane from its GGUF header."""
    return evaluate(gguf_fit_inputs(path, info), spec, accel)


def attach(result, fit, where: str) -> None:
    """The fit's findings on the lane (path: where they apply) and its figures on the report."""
    if fit is None:
        result.problems.append(P.warning(where, P.FIT_UNKNOWN, "fit not judged: no model configuration to read"))
        return
    for p in fit.problems:
        result.problems.append(P.Problem(where, p.code, p.message, p.severity))
    result.fit = fit.to_dict()
    result.fit.pop("problems", None)


def remembered_inputs(ctx, name: str, fingerprint: str | None) -> FitInputs | None:
    """The fit inputs kept in the receipts with the lane's fingerprint (its files unchanged since)."""
    if fingerprint is None:
        return None
    return FitInputs.from_dict(ctx.receipts.lane_fit(name, fingerprint), "receipts")


def node_of(ctx) -> NodeAccelerator:
    if ctx.accelerator is None:
        ctx.accelerator = NodeAccelerator(ctx.manifest.accelerator)
    return ctx.accelerator


def fit_plan(ctx, plan, info, remembered: FitInputs | None = None) -> FitInputs | None:
    """check's hook: judge a checked lane's fit and put it on the lane's result. Returns the
    inputs it read (None when they came from `remembered`, or when there were none)."""
    node = node_of(ctx)
    accel = node.get()
    lane = plan.lane
    if node.error:
        plan.result.problems.append(P.error("serve", P.SERVE_INVALID, f"the declared accelerator cannot be read: {node.error}"))
        return None
    fresh = None
    inputs = remembered
    if inputs is None or inputs.engine != lane.serve.engine:
        present = [rel for rel, obs in plan.files.items() if obs.st is not None]
        if lane.kind == "gguf":
            first = sorted(present)[0] if present else None
            inputs = fresh = gguf_fit_inputs(plan.root / first, info) if first else None
        elif lane.kind in ("hf-dir", "hf-cache"):
            inputs = fresh = folder_fit_inputs(plan.root, present, info)
        else:
            return None
    fit = evaluate(inputs, lane.serve, accel)
    attach(plan.result, fit, "serve")
    if fit is not None and accel is not None:
        plan.result.fit["node"] = accel.describe()
    return fresh
