#!/usr/bin/env python3
"""Regenerate preflight/serving/vllm_arch.py from vLLM's own source.

    python ops/gen-vllm-arch.py SOURCE [--version X.Y.Z] [--out FILE] [--check]

SOURCE is a vLLM wheel (`pip download vllm==X.Y.Z --no-deps --only-binary :all:`; the .whl
holds the Python sources) or a folder holding the `vllm/` package (a checkout). The version
is read from `vllm/_version.py` when there, else from --version. `--check` writes nothing
and exits 1 when the module differs from what the source gives.

What is read:
- `vllm/model_executor/models/registry.py`: every `_*_MODELS = {...}` dict merged into
  `_VLLM_MODELS` (architecture name -> (module, class)); entries built by a comprehension
  copy names already listed;
- `vllm/model_executor/models/<module>.py`: whether the class (or a class it derives from in
  the same file) lists `SupportsPP` among its bases (vLLM refuses --pipeline-parallel-size > 1
  otherwise: "Pipeline parallelism is not supported for this model");
- `vllm/model_executor/layers/quantization/__init__.py`: the method -> config class map, and
  each class's `get_min_capability` (a literal `return NN`) in its module: vLLM refuses a GPU
  below it ("The quantization method X is not supported for the current GPU").
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "preflight" / "serving" / "vllm_arch.py"


class Tree:
    def __init__(self, source: Path) -> None:
        self.zip = zipfile.ZipFile(source) if source.is_file() else None
        self.root = source

    def read(self, rel: str) -> str | None:
        try:
            if self.zip is not None:
                return self.zip.read(rel).decode()
            return (self.root / rel).read_text()
        except (KeyError, OSError):
            return None


def registry(tree: Tree) -> dict[str, tuple[str, str]]:
    text = tree.read("vllm/model_executor/models/registry.py")
    if text is None:
        sys.exit("vllm/model_executor/models/registry.py not found in the source")
    mod = ast.parse(text)
    out: dict[str, tuple[str, str]] = {}
    for node in mod.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        if not (name.startswith("_") and name.endswith("_MODELS")) or name in ("_VLLM_MODELS", "_PREVIOUSLY_SUPPORTED_MODELS", "_OOT_SUPPORTED_MODELS"):
            continue
        if not isinstance(node.value, ast.Dict):
            continue
        for k, v in zip(node.value.keys, node.value.values):
            if k is None:
                continue  # `**{...}`: a comprehension over names listed elsewhere
            try:
                key, val = ast.literal_eval(k), ast.literal_eval(v)
            except ValueError:
                continue
            if isinstance(key, str) and isinstance(val, tuple) and len(val) == 2:
                out.setdefault(key, val)
    return out


def classes(text: str) -> dict[str, list[str]]:
    """class name -> base names, for every class in a module."""
    out = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            out[node.name] = [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases]
    return out


def supports_pp(tree: Tree, module: str, cls: str, cache: dict) -> bool | None:
    if module not in cache:
        text = tree.read(f"vllm/model_executor/models/{module}.py")
        cache[module] = classes(text) if text is not None else None
    table = cache[module]
    if table is None or cls not in table:
        return None
    seen: set[str] = set()
    todo = [cls]
    while todo:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        bases = table.get(c, [])
        if "SupportsPP" in bases:
            return True
        todo.extend(b for b in bases if b in table)
    return False


def quant_min_capability(tree: Tree) -> dict[str, int]:
    base = "vllm/model_executor/layers/quantization"
    text = tree.read(f"{base}/__init__.py")
    if text is None:
        return {}
    where: dict[str, str] = {}
    for m in re.finditer(r"from \.([\w.]+) import \(([^)]*)\)|from \.([\w.]+) import ([\w, ]+)", text):
        module = m[1] or m[3]
        for name in re.split(r"[,\s]+", m[2] or m[4]):
            if name:
                where[name] = module
    methods = dict(re.findall(r'"([\w-]+)": (\w+Config),', text))
    out: dict[str, int] = {}
    for method, cls in sorted(methods.items()):
        module = where.get(cls)
        if module is None:
            continue
        src = tree.read(f"{base}/{module.replace('.', '/')}.py")
        if src is None:
            continue
        value = _min_cap(src, cls)
        if value is not None:
            out[method] = value
    return out


def _min_cap(src: str, cls: str) -> int | None:
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "get_min_capability":
                    rets = [n for n in ast.walk(item) if isinstance(n, ast.Return)]
                    if len(rets) == 1 and isinstance(rets[0].value, ast.Constant) and isinstance(rets[0].value.value, int):
                        return rets[0].value.value
    return None


def render(version: str, archs: dict[str, tuple[str, str, bool | None]], quant: dict[str, int]) -> str:
    buf = io.StringIO()
    buf.write(f'''"""What vLLM {version} knows: its architecture registry and the GPUs its quantization methods need.

Generated by ops/gen-vllm-arch.py from vLLM {version}'s own source
(vllm/model_executor/models/registry.py, the model modules, and
vllm/model_executor/layers/quantization/). Do not edit by hand: rerun the generator on a
newer vLLM.

ARCHITECTURES: config.json `architectures[0]` -> (vLLM module, vLLM class, whether the class
implements SupportsPP; None when the class could not be found).
QUANT_MIN_CAPABILITY: `quantization_config.quant_method` / --quantization -> the lowest
compute capability (major*10 + minor) vLLM accepts.
"""

VERSION = {version!r}

ARCHITECTURES: dict[str, tuple[str, str, bool | None]] = {{
''')
    for name in sorted(archs):
        buf.write(f"    {name!r}: {archs[name]!r},\n")
    buf.write("}\n\nQUANT_MIN_CAPABILITY: dict[str, int] = {\n")
    for name in sorted(quant):
        buf.write(f"    {name!r}: {quant[name]},\n")
    buf.write("}\n")
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("--version")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    tree = Tree(args.source)
    version = args.version
    vtext = tree.read("vllm/_version.py")
    if vtext:
        m = re.search(r"(?:__version__|version)\s*(?::\s*str)?\s*=\s*['\"]([^'\"]+)['\"]", vtext)
        if m:
            version = version or m[1]
    if not version:
        sys.exit("the source does not say its version: pass --version")
    cache: dict = {}
    archs = {name: (mod, cls, supports_pp(tree, mod, cls, cache)) for name, (mod, cls) in registry(tree).items()}
    text = render(version, archs, quant_min_capability(tree))
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} differs from what vLLM {version} gives: rerun without --check", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}: {len(archs)} architectures, {sum(1 for a in archs.values() if a[2])} with pipeline parallelism, "
          f"{len(text.splitlines())} lines, from vLLM {version}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
