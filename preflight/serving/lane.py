"""Fit for a lane on the volume: the facts its format checks already read, its `serve:`, this node.

Called by check once a lane's files are checked. For a folder lane the facts are config.json
and the safetensors headers (already parsed by the format checks, or read again when they were
skipped and the receipts hold no fit inputs: headers only, never tensor data); for a GGUF lane
the header. The receipts keep, beside the lane's fingerprint, what was read (`FitInputs`) and
the verdict for these serve flags on this node: a warm re-check on the same node takes the
verdict (not even the arithmetic is imported), on another node it judges the kept inputs;
neither reads a header.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import problems as P
from .accel import Accelerator, AcceleratorError, node_key, resolve

if TYPE_CHECKING:
    from .inputs import FitInputs


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
    from .inputs import folder_inputs

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
    from .inputs import tokenizer_max_len

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
    from .inputs import gguf_inputs

    if info is None or not getattr(info, "metadata", None):
        info = check_gguf(path, name=path.name)
    parts = split_sibling_names(path.name) or [path.name]
    weights = sum((path.parent / n).stat().st_size for n in parts if (path.parent / n).exists())
    return gguf_inputs(info.metadata, weights, info.vocab_size or 0)


def fit_folder(root: Path, files: list[str], info: Any, spec, accel: Accelerator | None):
    """Fit of a vLLM folder lane from its config.json and tensor headers."""
    from .inputs import evaluate

    return evaluate(folder_fit_inputs(root, files, info), spec, accel)


def fit_gguf(path: Path, info: Any, spec, accel: Accelerator | None):
    """Fit of a llama.cpp lane from its GGUF header."""
    from .inputs import evaluate

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
    from .inputs import FitInputs

    if fingerprint is None:
        return None
    return FitInputs.from_dict(ctx.receipts.lane_fit(name, fingerprint), "receipts")


def verdict_key(spec, accel: Accelerator | None) -> str:
    """What a verdict depends on besides the files: the engine and its flags, and this node as
    it is now (free memory included: vLLM's startup check reads it)."""
    node = accel.to_dict() if accel is not None else None
    return hashlib.sha256(json.dumps([spec.engine, list(spec.args), spec.version, node], sort_keys=True).encode()).hexdigest()[:24]


def node_of(ctx) -> NodeAccelerator:
    if ctx.accelerator is None:
        ctx.accelerator = NodeAccelerator(ctx.manifest.accelerator)
    return ctx.accelerator


def fit_plan(ctx, plan, info, fingerprint: str | None = None, warm: bool = False) -> None:
    """check's hook: judge a checked lane's fit and put it on the lane's result. `fingerprint`
    names the lane's files as the receipts know them (None: not kept); `warm`: the format checks
    were skipped, so `info` holds nothing and the receipts are asked first."""
    node = node_of(ctx)
    accel = node.get()
    lane = plan.lane
    if node.error:
        plan.result.problems.append(P.error("serve", P.SERVE_INVALID, f"the declared accelerator cannot be read: {node.error}"))
        return
    key = verdict_key(lane.serve, accel)
    if warm and fingerprint is not None:
        kept = ctx.receipts.lane_verdict(lane.name, fingerprint, key)
        if kept is not None and isinstance(kept.get("problems"), list) and (kept.get("fit") is None or isinstance(kept["fit"], dict)):
            plan.result.problems.extend(P.Problem(p["path"], p["code"], p["message"], p.get("severity", "error"))
                                        for p in kept["problems"] if isinstance(p, dict))
            plan.result.fit = kept["fit"]
            return
    from .inputs import evaluate

    inputs = remembered_inputs(ctx, lane.name, fingerprint) if warm else None
    fresh = None
    if inputs is None or inputs.engine != lane.serve.engine:
        present = [rel for rel, obs in plan.files.items() if obs.st is not None]
        if lane.kind == "gguf":
            first = sorted(present)[0] if present else None
            inputs = fresh = gguf_fit_inputs(plan.root / first, info) if first else None
        elif lane.kind in ("hf-dir", "hf-cache"):
            inputs = fresh = folder_fit_inputs(plan.root, present, info)
        else:
            return
    fit = evaluate(inputs, lane.serve, accel)
    before = len(plan.result.problems)
    attach(plan.result, fit, "serve")
    if fit is not None and accel is not None:
        plan.result.fit["node"] = accel.describe()
    if fingerprint is not None and not any(p.is_error for p in plan.result.problems[:before]):
        if fresh is not None:
            ctx.receipts.keep_fit(lane.name, fingerprint, fresh.to_dict())
        if inputs is not None:
            found = [{**p.to_dict(), "severity": p.severity} for p in plan.result.problems[before:]]
            fit_out = dict(plan.result.fit, inputs_from="receipts") if plan.result.fit else None
            ctx.receipts.keep_verdict(lane.name, fingerprint, key, {"problems": found, "fit": fit_out})
