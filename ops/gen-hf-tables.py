#!/usr/bin/env python3
"""Regenerate preflight/formats/hf_tables.py from transformers' (and vLLM's) own sources.

    python ops/gen-hf-tables.py TRANSFORMERS... [--vllm-config FILE] [--vllm-rope FILE] [--out FILE] [--check]

Each TRANSFORMERS is a transformers wheel (`pip download --no-deps transformers==X`) or an
installed `transformers` package folder (the oracle venv's site-packages/transformers). The
tables are read from every version given, so a value is refused only when every version
refuses it: the tests' oracle (4.44.2, the last release that runs on the oracle's torch 1.13)
and the newest release (which current vLLM requires).

What is read, with Python's ast (nothing is imported or run):
- model types: the keys of `CONFIG_MAPPING_NAMES` (models/auto/configuration_auto.py, and
  models/auto/auto_mappings.py where newer releases generate it), with every later
  `CONFIG_MAPPING_NAMES.update({...})`;
- architectures: the model classes of every `*_MAPPING_NAMES` in models/auto/modeling_auto.py;
- activations: the keys of `ACT2CLS` (activations.py), what `ACT2FN[config.hidden_act]` takes;
- RoPE types: the keys of `ROPE_INIT_FUNCTIONS` (modeling_rope_utils.py) plus "default",
  and per type the `required_keys` set of its validation function (`_check_received_keys`
  raises KeyError on a missing one). Keys a release fills in itself before validating
  (5.x `standardize_rope_params`: `rope_theta` always, `original_max_position_embeddings`
  for the types it lists) are not required of the file by that release; a key is
  required here only when every release requires it;
- tokenizer classes: every class name in `TOKENIZER_MAPPING_NAMES`'s values
  (models/auto/tokenization_auto.py) and the names `tokenizer_class_from_name` compares
  `class_name` with (`PreTrainedTokenizerFast`, `TokenizersBackend`, ...).
- vLLM (optional): the keys of `_CONFIG_REGISTRY` (vllm/transformers_utils/config.py: model
  types vLLM configures itself) and the RoPE types `get_rope` builds
  (vllm/model_executor/layers/rotary_embedding/__init__.py), from a copy of those files or
  an excerpt of them whose first line names the commit.

`--check` writes nothing and exits 1 when the module differs from what the sources give.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "preflight" / "formats" / "hf_tables.py"


class Source:
    """One transformers release: a wheel or a package folder."""

    def __init__(self, where: str) -> None:
        self.where = where
        p = Path(where)
        self._zip = zipfile.ZipFile(p) if p.is_file() else None
        self._dir = None if self._zip else p
        self.version = self._version()

    def read(self, rel: str) -> str | None:
        if self._zip is not None:
            try:
                return self._zip.read("transformers/" + rel).decode("utf-8")
            except KeyError:
                return None
        f = self._dir / rel
        return f.read_text("utf-8") if f.is_file() else None

    def _version(self) -> str:
        text = self.read("__init__.py") or ""
        m = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.M)
        if not m:
            raise SystemExit(f"{self.where}: no transformers __version__ found")
        return m.group(1)


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _dict_keys(node: ast.AST) -> list[str]:
    """String keys of a dict literal, an OrderedDict([...pairs]) or OrderedDict(**{...})."""
    keys: list[str] = []
    if isinstance(node, ast.Dict):
        for k, v in zip(node.keys, node.values):
            if k is None:
                keys += _dict_keys(v)
            elif isinstance(k, ast.Constant) and isinstance(k.value, str):
                keys.append(k.value)
    elif isinstance(node, ast.Call):
        for arg in node.args:
            if isinstance(arg, (ast.List, ast.Tuple)):
                for elt in arg.elts:
                    if isinstance(elt, ast.Tuple) and elt.elts and isinstance(elt.elts[0], ast.Constant):
                        keys.append(elt.elts[0].value)
            else:
                keys += _dict_keys(arg)
        for kw in node.keywords:
            if kw.arg is None:
                keys += _dict_keys(kw.value)
            else:
                keys.append(kw.arg)
    return keys


def _assigned(tree: ast.AST, name: str) -> list[ast.AST]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            out.append(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name and node.value:
            out.append(node.value)
    return out


def _updates(tree: ast.AST, name: str) -> list[ast.AST]:
    return [node.args[0] for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == name and node.args]


def model_types(src: Source) -> set[str]:
    out: set[str] = set()
    for rel in ("models/auto/auto_mappings.py", "models/auto/configuration_auto.py"):
        text = src.read(rel)
        if text is None:
            continue
        tree = ast.parse(text)
        for value in _assigned(tree, "CONFIG_MAPPING_NAMES") + _updates(tree, "CONFIG_MAPPING_NAMES"):
            out.update(_dict_keys(value))
    if not out:
        raise SystemExit(f"{src.where}: CONFIG_MAPPING_NAMES not found")
    return out


def architectures(src: Source) -> set[str]:
    """Every model class the auto classes map a model type to (models/auto/modeling_auto.py)."""
    text = src.read("models/auto/modeling_auto.py") or ""
    tree = ast.parse(text)
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.endswith("_MAPPING_NAMES") for t in node.targets):
            for call in ast.walk(node.value):
                if isinstance(call, ast.Tuple) and len(call.elts) == 2:
                    out.update(s for s in _strings(call.elts[1]) if re.fullmatch(r"[A-Z]\w+", s))
    if not out:
        raise SystemExit(f"{src.where}: no *_MAPPING_NAMES in modeling_auto.py")
    return out


def activations(src: Source) -> set[str]:
    tree = ast.parse(src.read("activations.py") or "")
    (value,) = _assigned(tree, "ACT2CLS")
    return set(_dict_keys(value))


def rope(src: Source) -> tuple[set[str], dict[str, set[str]]]:
    """(rope types a model can build, required keys per type as this release reads a file)."""
    text = src.read("modeling_rope_utils.py") or ""
    tree = ast.parse(text)
    (init,) = _assigned(tree, "ROPE_INIT_FUNCTIONS")
    types = set(_dict_keys(init)) | {"default"}
    by_function: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("_validate_"):
            for value in _assigned(node, "required_keys"):
                by_function[node.name] = set(_strings(value))
    table = _assigned(tree, "ROPE_VALIDATION_FUNCTIONS")
    required: dict[str, set[str]] = {}
    if table:  # 4.x: {"linear": _validate_linear_scaling_rope_parameters, ...}
        d = table[0]
        assert isinstance(d, ast.Dict)
        for k, v in zip(d.keys, d.values):
            if isinstance(k, ast.Constant) and isinstance(v, ast.Name) and v.id in by_function:
                required[k.value] = by_function[v.id]
    else:  # 5.x: methods named _validate_{rope_type}_rope_parameters
        for fn, keys in by_function.items():
            m = re.fullmatch(r"_validate_(\w+)_rope_parameters", fn)
            if m:
                required[m.group(1)] = keys
    filled: dict[str, set[str]] = {}
    if re.search(r'rope_parameters\.setdefault\("rope_theta"', text):
        for t in required:
            filled.setdefault(t, set()).add("rope_theta")
    m = re.search(r'if rope_parameters\["rope_type"\] in (\[[^\]]*\]):\s*\n(?:.*\n){0,8}?.*original_max_position_embeddings', text)
    if m:
        for t in ast.literal_eval(m.group(1)):
            filled.setdefault(t, set()).add("original_max_position_embeddings")
    return types, {t: keys - {"rope_type"} - filled.get(t, set()) for t, keys in required.items()}


def tokenizer_classes(src: Source) -> set[str]:
    text = src.read("models/auto/tokenization_auto.py") or ""
    tree = ast.parse(text)
    out: set[str] = set()
    for value in _assigned(tree, "TOKENIZER_MAPPING_NAMES"):
        if isinstance(value, ast.Call):
            for arg in value.args:
                for elt in getattr(arg, "elts", []):
                    if isinstance(elt, ast.Tuple) and len(elt.elts) == 2:
                        out.update(s for s in _strings(elt.elts[1]) if s[:1].isupper())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "tokenizer_class_from_name":
            for cmp in ast.walk(node):
                if isinstance(cmp, ast.Compare) and isinstance(cmp.left, ast.Name) and cmp.left.id == "class_name":
                    for c in cmp.comparators:
                        out.update(_strings(c))
    if not out:
        raise SystemExit(f"{src.where}: TOKENIZER_MAPPING_NAMES not found")
    return out


def vllm_config_types(path: str) -> tuple[str, set[str]]:
    text = Path(path).read_text("utf-8")
    tree = ast.parse(text)
    (value,) = _assigned(tree, "_CONFIG_REGISTRY")
    return _origin(text), set(_dict_keys(value))


def vllm_rope_types(path: str) -> tuple[str, set[str]]:
    text = Path(path).read_text("utf-8")
    types = set(re.findall(r'scaling_type == "([^"]+)"', text))
    for group in re.findall(r"scaling_type in \[([^\]]+)\]", text):
        types.update(re.findall(r'"([^"]+)"', group))
    types.update(re.findall(r'rope_parameters\.get\("rope_type", "([^"]+)"\)', text))
    return _origin(text), types


def _origin(text: str) -> str:
    first = text.splitlines()[0] if text else ""
    m = re.search(r"vllm-project/vllm@([0-9a-f]{7,40})", first)
    return m.group(1)[:12] if m else "unknown"


def _fmt_set(name: str, values: set[str], doc: str) -> str:
    items = sorted(values)
    lines = [f"# {doc}", f"{name}: frozenset[str] = frozenset({{"]
    row = "   "
    for v in items:
        piece = f" {v!r},"
        if len(row) + len(piece) > 110:
            lines.append(row)
            row = "   "
        row += piece
    lines.append(row)
    lines.append("})")
    return "\n".join(lines)


def render(sources: list[Source], vllm_cfg: tuple[str, set[str]] | None, vllm_rope: tuple[str, set[str]] | None) -> str:
    versions = [s.version for s in sources]
    types = set().union(*(model_types(s) for s in sources))
    acts = set().union(*(activations(s) for s in sources))
    archs = set().union(*(architectures(s) for s in sources))
    ropes = [rope(s) for s in sources]
    rope_types = set().union(*(r[0] for r in ropes))
    required: dict[str, set[str]] = {}
    for t in sorted(rope_types):
        sets = [r[1][t] for r in ropes if t in r[1]]
        if sets:
            required[t] = set.intersection(*sets)
    toks = set().union(*(tokenizer_classes(s) for s in sources))
    vllm_note = ""
    vllm_types: set[str] = set()
    if vllm_cfg:
        vllm_note += f"; vLLM {vllm_cfg[0]} `_CONFIG_REGISTRY`"
        vllm_types = vllm_cfg[1] - types
    vllm_rope_only: set[str] = set()
    if vllm_rope:
        vllm_note += f"; vLLM {vllm_rope[0]} `get_rope`"
        vllm_rope_only = vllm_rope[1] - rope_types
    out = [
        '"""What transformers (and vLLM) accept in a model folder\'s configs: data read by hfconfig.py and tokenizers.py.',
        "",
        f"Generated by ops/gen-hf-tables.py from transformers {', '.join(versions)}{vllm_note}.",
        "Do not edit by hand: rerun the generator with a newer release. A value is in a table when",
        "any of those versions accepts it, so only what every one of them refuses is refused.",
        '"""',
        "",
        f"TRANSFORMERS_VERSIONS = {tuple(versions)!r}",
        "",
        _fmt_set("MODEL_TYPES", types, "`model_type` values AutoConfig knows (CONFIG_MAPPING_NAMES keys)."),
        "",
        _fmt_set("VLLM_MODEL_TYPES", vllm_types, "model types vLLM configures itself (its _CONFIG_REGISTRY), beyond MODEL_TYPES."),
        "",
        _fmt_set("ARCHITECTURES", archs, "model classes the auto classes build (modeling_auto.py *_MAPPING_NAMES values)."),
        "",
        _fmt_set("ACTIVATIONS", acts, "`hidden_act` values ACT2FN takes (ACT2CLS keys)."),
        "",
        _fmt_set("ROPE_TYPES", rope_types, "RoPE types transformers builds (ROPE_INIT_FUNCTIONS keys and \"default\")."),
        "",
        _fmt_set("VLLM_ROPE_TYPES", vllm_rope_only, "RoPE types only vLLM's get_rope builds."),
        "",
        "# Keys of rope_scaling each RoPE type requires in every version (besides rope_type / type).",
        "ROPE_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {",
        *(f"    {t!r}: {tuple(sorted(k))!r}," for t, k in sorted(required.items())),
        "}",
        "",
        _fmt_set("TOKENIZER_CLASSES", toks, "`tokenizer_class` names AutoTokenizer resolves (TOKENIZER_MAPPING_NAMES values and specials)."),
        "",
    ]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("transformers", nargs="+", help="transformers wheels or package folders")
    ap.add_argument("--vllm-config", help="vllm/transformers_utils/config.py (or an excerpt holding _CONFIG_REGISTRY)")
    ap.add_argument("--vllm-rope", help="vllm/model_executor/layers/rotary_embedding/__init__.py (or an excerpt of get_rope)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    sources = [Source(w) for w in args.transformers]
    text = render(sources, vllm_config_types(args.vllm_config) if args.vllm_config else None,
                  vllm_rope_types(args.vllm_rope) if args.vllm_rope else None)
    out = Path(args.out)
    if args.check:
        same = out.is_file() and out.read_text("utf-8") == text
        print("up to date" if same else f"{out} differs from the sources")
        return 0 if same else 1
    out.write_text(text, "utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
