"""LoRA adapters (PEFT layout): adapter_config.json + adapter_model.safetensors,
optionally checked against the base model they are applied to."""

from __future__ import annotations

import re
from dataclasses import field
from pathlib import Path
from typing import Any

from .. import problems as P
from ..problems import Problem
from .hfdir import FolderInfo, check_hf_dir, read_json_object
from ..record import record

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_LORA = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
_LAYER = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")


@record
class AdapterInfo(FolderInfo):
    peft_type: str | None = None
    rank: int | None = None
    target_modules: list[str] = field(default_factory=list)
    base_model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update(format="adapter", peft_type=self.peft_type, rank=self.rank, target_modules=self.target_modules, base_model=self.base_model)
        return d


def check_adapter(root: Path, files: list[str], *, base: FolderInfo | None = None) -> AdapterInfo:
    """Validate an adapter folder; with `base`, check modules and shapes fit the base."""
    info = AdapterInfo(format="adapter")
    config, problem = read_json_object(root / CONFIG, CONFIG, P.ADAPTER_INVALID)
    if problem:
        info.problems.append(problem)
    if WEIGHTS not in files:
        info.problems.append(P.error(WEIGHTS, P.MISSING, f"{WEIGHTS} is missing"))
    inner = check_hf_dir(root, files, serves_text=False, require_config=False, require_weights=False, model_checks=False)
    info.problems.extend(inner.problems)
    info.tensors, info.tensor_count, info.parameter_count, info.dtypes = inner.tensors, inner.tensor_count, inner.parameter_count, inner.dtypes
    info.weights = [WEIGHTS] if WEIGHTS in files else []
    if config is not None:
        info.peft_type = config.get("peft_type") if isinstance(config.get("peft_type"), str) else None
        r = config.get("r")
        info.rank = r if isinstance(r, int) and not isinstance(r, bool) else None
        tm = config.get("target_modules")
        if isinstance(tm, str):
            info.target_modules = [tm]
        elif isinstance(tm, list):
            info.target_modules = [m for m in tm if isinstance(m, str)]
        info.base_model = config.get("base_model_name_or_path") if isinstance(config.get("base_model_name_or_path"), str) else None
        if info.peft_type not in (None, "LORA"):
            info.problems.append(P.warning(CONFIG, P.ADAPTER_INVALID, f"peft_type is {info.peft_type!r}; only LORA is checked in depth"))
        if info.rank is None or info.rank <= 0:
            info.problems.append(P.error(CONFIG, P.ADAPTER_INVALID, f"{CONFIG}: 'r' must be a positive integer, found {r!r}"))
        if not info.target_modules:
            info.problems.append(P.error(CONFIG, P.ADAPTER_INVALID, f"{CONFIG}: 'target_modules' must list module names"))
    if info.rank and info.tensors:
        info.problems.extend(_check_ranks(info))
    if base is not None and info.tensors:
        info.problems.extend(_check_against_base(info, base))
    return info


def _check_ranks(info: AdapterInfo) -> list[Problem]:
    out = []
    for name, (_dtype, shape) in info.tensors.items():
        m = _LORA.match(name)
        if not m or len(shape) != 2:
            continue
        dim = shape[0] if m["ab"] == "A" else shape[1]
        if dim != info.rank:
            out.append(P.error(WEIGHTS, P.ADAPTER_INVALID, f"{name} has rank {dim}, adapter_config.json says r={info.rank}"))
            break
    return out


def _check_against_base(info: AdapterInfo, base: FolderInfo) -> list[Problem]:
    """lora_A is [r, in], lora_B is [out, r]; the base weight is [out, in]."""
    out: list[Problem] = []
    base_shapes = {name.removesuffix(".weight"): shape for name, (_d, shape) in base.tensors.items() if name.endswith(".weight")}
    base_leafs = {name.rsplit(".", 1)[-1] for name in base_shapes}
    for module in info.target_modules:
        leaf = module.rsplit(".", 1)[-1]
        if base_shapes and leaf not in base_leafs and module not in base_shapes:
            out.append(P.error(CONFIG, P.ADAPTER_BASE_MISMATCH, f"target module {module!r} does not exist in the base model ({base.architecture or 'base lane'})"))
    n_layers = None
    if base.config:
        text = base.config.get("text_config") if isinstance(base.config.get("text_config"), dict) else base.config
        n_layers = text.get("num_hidden_layers") if isinstance(text.get("num_hidden_layers"), int) else None
    mismatches = 0
    for name, (_dtype, shape) in info.tensors.items():
        m = _LORA.match(name)
        if not m or len(shape) != 2:
            continue
        module = m["module"]
        layer = _LAYER.search("." + module + ".")
        if n_layers is not None and layer and int(layer.group(1)) >= n_layers:
            out.append(P.error(WEIGHTS, P.ADAPTER_BASE_MISMATCH, f"{name} is for layer {layer.group(1)}, the base has {n_layers} layers"))
            mismatches += 1
        target = _find_base(module, base_shapes)
        if target is None or len(target) != 2:
            continue
        b_out, b_in = target
        if m["ab"] == "A" and shape[1] != b_in:
            out.append(P.error(WEIGHTS, P.ADAPTER_BASE_MISMATCH, f"{name}: input dim {shape[1]}, the base's {module} takes {b_in}"))
            mismatches += 1
        if m["ab"] == "B" and shape[0] != b_out:
            out.append(P.error(WEIGHTS, P.ADAPTER_BASE_MISMATCH, f"{name}: output dim {shape[0]}, the base's {module} gives {b_out}"))
            mismatches += 1
        if mismatches >= 5:
            break
    return out


def _find_base(module: str, base_shapes: dict[str, list[int]]) -> list[int] | None:
    """Adapters name modules from the PEFT wrapper down; strip prefixes until one matches."""
    parts = module.split(".")
    for i in range(len(parts)):
        cand = ".".join(parts[i:])
        if cand in base_shapes:
            return base_shapes[cand]
    return None
