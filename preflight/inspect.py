"""`preflight inspect PATH`: what a file or folder is, and what is wrong with it."""

from __future__ import annotations

import re
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
    out = _inspect_path(path, allow_pickle=allow_pickle)
    # an OpenSSF model signature beside the model (unverified here: inspect has no policy)
    folder = Path(out.get("snapshot") or path)
    sig = folder / "model.sig" if folder.is_dir() else path.with_name(path.name + ".sig")
    if sig.is_file():
        from .signing import describe

        files = discover(folder) if folder.is_dir() else [path.name]
        out["signature"] = describe(sig, files, single=None if folder.is_dir() else path.name)
    return out


def _inspect_path(path: Path, *, allow_pickle: bool = False) -> dict[str, Any]:
    if path.is_dir():
        cache = cache_snapshot(path)
        if cache is not None:
            snapshot, repo, revision, problems = cache
            if snapshot is None:
                return {"path": str(path), "format": "hf-cache", "repo": repo, "problems": _problems(problems)}
            out = _inspect_folder(snapshot, allow_pickle)
            out.update(path=str(path), format="hf-cache", repo=repo, revision=revision, snapshot=str(snapshot))
            return out
        out = _inspect_folder(path, allow_pickle)
        out["path"] = str(path)
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
        from .formats.gguf_arch import ENGINE

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
            "split": {"files": names} if len(names) > 1 else None,
            # the model-level facts the checks judged (formats/gguf_model.py)
            "blocks": getattr(g, "block_count", None), "vocabulary_size": getattr(g, "vocab_size", None),
            "tied_embeddings": getattr(g, "tied_embeddings", None), "vocabulary_only": getattr(g, "vocab_only", None) or None,
            # the llama.cpp whose loader the checks follow (names it does not know are refused as it refuses them)
            "checked_against": f"llama.cpp {ENGINE['llama.cpp']} (llama-cpp-python {ENGINE['llama-cpp-python']})",
            "problems": _problems(problems),
        }
    from .check import check_single_file

    return {"path": str(path), "format": "file", "size": path.stat().st_size, "problems": _problems(check_single_file(path, name, allow_pickle))}


def _inspect_folder(path: Path, allow_pickle: bool) -> dict[str, Any]:
    files = discover(path)
    serves: tuple[bool, str] | None = None
    if "adapter_config.json" in files:
        from .formats.adapter import check_adapter

        info = check_adapter(path, files)
    else:
        from .formats.hfdir import check_hf_dir, infer_serves_text, read_json_object

        config = read_json_object(path / "config.json", "config.json")[0] if "config.json" in files else None
        serves = infer_serves_text(config, files)
        info = check_hf_dir(path, files, serves_text=serves[0], allow_pickle=allow_pickle)
    out = info.to_dict()
    out.update(files=len(files), problems=_problems(info.problems))
    if serves is not None:
        out["serves_text"] = {"value": serves[0], "because": serves[1]}
    return out


_COMMIT = re.compile(r"[0-9a-f]{40}")


def cache_snapshot(path: Path) -> tuple[Path | None, str, str | None, list[Problem]] | None:
    """A Hugging Face cache tree (`hub/` or one `models--org--name/`): the snapshot `check` would read.

    As for an hf-cache lane: `refs/main` names the commit; without it, the one snapshot
    there is. None when `path` is not a cache tree. A hub folder holding several repos
    is not guessed at: say which are there."""
    repo_dir = path
    if not (path.name.startswith(("models--", "datasets--")) and (path / "snapshots").is_dir()):
        repos = sorted(p for p in path.glob("models--*") if (p / "snapshots").is_dir())
        if not repos:
            return None
        if len(repos) > 1:
            names = ", ".join(r.name for r in repos)
            return None, "", None, [P.error(".", P.MISSING, f"{path} holds {len(repos)} cached repos ({names}); inspect one of them")]
        repo_dir = repos[0]
    repo = repo_dir.name.split("--", 1)[1].replace("--", "/")
    snapshots = sorted(p.name for p in (repo_dir / "snapshots").iterdir() if p.is_dir())
    try:
        ref = (repo_dir / "refs" / "main").read_text().strip()
    except OSError:
        ref = None
    if ref is not None and _COMMIT.fullmatch(ref) and ref in snapshots:
        return repo_dir / "snapshots" / ref, repo, ref, []
    if len(snapshots) == 1:
        return repo_dir / "snapshots" / snapshots[0], repo, snapshots[0], []
    why = f"refs/main says {ref!r}, which has no snapshot" if ref is not None else "no refs/main"
    found = f"{len(snapshots)} snapshots" if snapshots else "no snapshot"
    return None, repo, None, [P.error(repo_dir.name, P.MISSING, f"{repo}: {found} in the cache and {why}; nothing to inspect")]


def _fmt_params(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def render_inspect(result: dict[str, Any], out: IO[str]) -> None:
    keys = ("path", "format", "repo", "revision", "architecture", "model_type", "dtype", "quantization", "file_type", "context_length",
            "tensor_count", "parameter_count", "blocks", "vocabulary_size", "tied_embeddings", "vocabulary_only",
            "dtypes", "quant_types", "tokenizer", "serves_text", "weights", "rank", "target_modules",
            "base_model", "files", "size", "split", "checked_against")
    for key in keys:
        value = result.get(key)
        if value in (None, [], {}, ""):
            continue
        if key == "serves_text":
            value = f"{'yes' if value['value'] else 'no'} ({value['because']})"
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        elif key == "parameter_count":
            value = f"{_fmt_params(value)} ({value})"
        elif key == "split":
            value = f"{len(value['files'])} parts: " + ", ".join(value["files"])
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        print(f"{key.replace('_', ' ') + ':':<17} {value}", file=out)
    model = result.get("model")
    if model:
        for label, value in _model_lines(model):
            print(f"{label + ':':<17} {value}", file=out)
    fit = result.get("fit")
    if fit:
        from .report import fit_line

        print(f"{'fit:':<17} {fit_line(fit)}", file=out)
        for p in fit.get("problems", []):
            print(f"  {p['severity']}: {p['code']}: {p['message']}", file=out)
        if fit.get("ignored_args"):
            print(f"{'ignored flags:':<17} {' '.join(fit['ignored_args'])} (they do not change fit)", file=out)
    sig = result.get("signature")
    if sig:
        for label, value in _signature_lines(sig):
            print(f"{label + ':':<17} {value}", file=out)
    problems = result.get("problems", [])
    if not problems:
        print("problems:         none", file=out)
    for p in problems:
        print(f"{p.get('severity', 'error')}: {p['path']}: {p['code']}: {p['message']}", file=out)


def _model_lines(model: dict[str, Any]) -> list[tuple[str, str]]:
    """The model-level facts compared with config.json (see formats/modelcheck.py)."""
    if not model.get("checked"):
        return [("model checks", f"none ({model.get('reason', 'not done')})")]
    lines = [("layout", f"{model['layout']} under {model['prefix'] or '(root)'}")]
    if model.get("layers") is not None:
        lines.append(("layers", f"{model['layers']} (found {model['layers_found']})"))
    if model.get("vocab_size") is not None:
        lines.append(("vocabulary size", str(model["vocab_size"])))
    if model.get("hidden_size") is not None:
        lines.append(("hidden size", str(model["hidden_size"])))
    if "lm_head" in model:
        tied = {True: "yes", False: "no", None: "not set in config.json"}[model.get("tied_embeddings")]
        lines.append(("tied embeddings", f"{tied}; LM head {'present' if model['lm_head'] else 'absent'}"))
    if model.get("quantized_layout"):
        lines.append(("quantized layout", model["quantized_layout"]))
    lines.append(("model checks", ", ".join(model["checks"]) or "none (config.json gives no sizes)"))
    return lines


def _signature_lines(sig: dict[str, Any]) -> list[tuple[str, str]]:
    if sig.get("error"):
        return [("signature", f"{sig['file']}: {sig['error']}")]
    lines = [("signature", f"{sig['file']} (not verified here: `preflight check` verifies it under the lane's policy)"),
             ("signed by", str(sig.get("signer")))]
    if "covers" in sig:
        lines.append(("signed files", f"{sig['covers']} ({sig.get('serialization')}), model {sig.get('model')!r}"))
        if sig.get("unsigned"):
            lines.append(("unsigned files", ", ".join(sig["unsigned"][:10]) + (" …" if len(sig["unsigned"]) > 10 else "")))
        if sig.get("not_present"):
            lines.append(("signed, absent", ", ".join(sig["not_present"][:10]) + (" …" if len(sig["not_present"]) > 10 else "")))
    else:
        lines.append(("statement", f"{sig.get('predicate')} (not a model signature)"))
    return lines


def inspect_fit(path: Path, result: dict[str, Any], serve: str, accelerator: str | None) -> dict[str, Any]:
    """Fit figures for `--serve ENGINE[:ARGS]`: config.json alone gives the KV figures; tensor
    headers add the weights; the node (declared or detected) adds the verdict."""
    from .errors import UsageError
    from .manifest import SERVE_ENGINES, ServeSpec
    from .serving.accel import AcceleratorError, resolve
    from .serving.args import ArgsError, split_args
    from .serving.lane import fit_folder, fit_gguf

    engine, _, args = serve.partition(":")
    if engine not in SERVE_ENGINES:
        raise UsageError(f"--serve {serve!r}: the engine is one of {', '.join(SERVE_ENGINES)} (write ENGINE or ENGINE:ARGS)")
    try:
        spec = ServeSpec(engine, tuple(split_args(args)))
        parsed = spec.parsed()
        accel = resolve(accelerator)
    except (ArgsError, AcceleratorError) as exc:
        raise UsageError(f"--serve/--accelerator: {exc}") from None
    folder = Path(result.get("snapshot") or path)
    if folder.is_dir():
        fit = fit_folder(folder, discover(folder), None, spec, accel)
    else:
        fit = fit_gguf(path, None, spec, accel) if path.name.lower().endswith(".gguf") else None
    if fit is None:
        return {"engine": engine, "verdict": "unknown", "problems": [{"path": "serve", "code": P.FIT_UNKNOWN, "severity": "warning",
                                                                      "message": "no config.json or GGUF model header to read"}]}
    out = fit.to_dict()
    out["node"] = accel.describe()
    out["ignored_args"] = list(parsed.ignored)
    out["defaults_from"] = parsed.defaults_from
    return out
