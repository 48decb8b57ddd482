"""`preflight inspect PATH`: what a file or folder is, and what is wrong with it."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from . import problems as P
from .check import discover, gguf_split_names
from .problems import Problem


def _problems(problems: list[Problem]) -> list[dict]:
    out = []
    for p in problems:
        d = {**p.to_dict(), "severity": p.severity}
        if p.code == P.UNSAFE_PICKLE:  # here the switch is the command's flag, not a lane setting
            from .formats.pickle import ACCEPT_ON_LANE

            d["message"] = d["message"].replace(ACCEPT_ON_LANE, "pass --allow-pickle to scan it")
        out.append(d)
    return out


def inspect_path(path: Path, *, allow_pickle: bool = False) -> dict[str, Any]:
    if path.is_dir():
        files = discover(path)
        if "adapter_config.json" in files:
            from .formats.adapter import check_adapter

            info = check_adapter(path, files)
        else:
            from .formats.hfdir import check_hf_dir

            info = check_hf_dir(path, files, serves_text="config.json" in files, allow_pickle=allow_pickle)
        out = info.to_dict()
        out.update(path=str(path), files=len(files), problems=_problems(info.problems))
        return out
    name = path.name
    low = name.lower()
    if low.endswith(".safetensors"):
        from .formats.safetensors import check_safetensors

        st = check_safetensors(path, name=name)
        return {
            "path": str(path), "format": "safetensors", "size": st.file_size, "header_size": st.header_size,
            "tensor_count": len(st.tensors), "parameter_count": st.parameter_count, "dtypes": dict(st.dtypes),
            "metadata": st.metadata, "problems": _problems(st.problems),
        }
    if low.endswith(".gguf"):
        from .formats.gguf import check_gguf, check_gguf_split

        g = check_gguf(path, name=name)
        problems = list(g.problems)
        names = gguf_split_names(name)
        if len(names) > 1:
            siblings = [path.parent / n for n in names]
            missing = [s for s in siblings if not s.exists()]
            if missing:
                problems += [P.error(m.name, P.SPLIT_MISSING, f"split {m.name} is missing") for m in missing]
            else:
                problems += check_gguf_split(siblings)
        return {
            "path": str(path), "format": f"gguf v{g.version}" if g.version else "gguf", "architecture": g.architecture,
            "context_length": g.context_length, "file_type": g.file_type, "quant_types": dict(g.quant_types),
            "tensor_count": g.tensor_count, "parameter_count": g.parameter_count, "kv_count": g.kv_count,
            "split": {"files": names} if len(names) > 1 else None, "problems": _problems(problems),
        }
    from .check import check_single_file

    return {"path": str(path), "format": "file", "size": path.stat().st_size, "problems": _problems(check_single_file(path, name, allow_pickle))}


def _fmt_params(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def render_inspect(result: dict[str, Any], out: IO[str]) -> None:
    keys = ("path", "format", "architecture", "model_type", "dtype", "quantization", "file_type", "context_length",
            "tensor_count", "parameter_count", "dtypes", "quant_types", "tokenizer", "weights", "rank", "target_modules",
            "base_model", "files", "size", "split")
    for key in keys:
        value = result.get(key)
        if value in (None, [], {}, ""):
            continue
        if key == "parameter_count":
            value = f"{_fmt_params(value)} ({value})"
        elif key == "split":
            value = f"{len(value['files'])} parts: " + ", ".join(value["files"])
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        print(f"{key.replace('_', ' ') + ':':<17} {value}", file=out)
    problems = result.get("problems", [])
    if not problems:
        print("problems:         none", file=out)
    for p in problems:
        print(f"{p.get('severity', 'error')}: {p['path']}: {p['code']}: {p['message']}", file=out)
