"""YAML → plain Python values, keeping the line of every node and expanding ${VAR}.

PyYAML's safe loader drops positions and silently keeps the last of duplicate
keys; a manifest error must name file, line and field, so we walk the node
graph ourselves.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import ManifestError

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")

PathKey = tuple  # ("lanes", 0, "path")


@dataclass
class Located:
    """A loaded document plus the line (1-based) of every value, by key path."""

    value: Any
    file: str
    lines: dict[PathKey, int] = field(default_factory=dict)

    def line(self, *key: Any) -> int | None:
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.lines.get(())

    def error(self, key: PathKey, message: str, hint: str | None = None) -> ManifestError:
        return ManifestError(message, file=self.file, line=self.line(*key), field=dotted(key), hint=hint)


def dotted(key: PathKey) -> str:
    out = ""
    for part in key:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def expand_vars(text: str, env: Mapping[str, str], *, on_missing) -> str:
    """Expand ${VAR}, ${VAR:-default} (default when unset or empty), ${VAR-default}
    (default when unset); `$$` is a literal `$`."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        colon = m.group(0).startswith("${" + name + ":-")
        if value is None or (colon and value == ""):
            if default is not None:
                return expand_vars(default, env, on_missing=on_missing)
            on_missing(name)
            return ""
        return value

    return _VAR.sub(sub, text)


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml composes ~10x faster, same marks
    pass


def load_yaml(text: str, file: str, env: Mapping[str, str] | None = None) -> Located:
    """Parse one YAML (or JSON) document with positions and variable expansion."""
    env = os.environ if env is None else env
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ManifestError(f"not valid YAML: {exc.problem or exc}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"not valid YAML: {exc}", file=file) from None
    except RecursionError:
        raise ManifestError("not valid YAML: nested too deeply", file=file) from None
    doc = Located(None, file)
    if node is None:
        return doc
    resolver = _Loader("")
    try:
        doc.value = _Walk(doc, env, resolver).convert(node, ())
    except RecursionError:
        raise ManifestError("nested too deeply", file=file) from None
    return doc


MAX_NODES = 200_000


@dataclass
class _Walk:
    """Node graph → values. Aliases are followed, but a cycle or an alias bomb
    (a few lines expanding to millions of nodes) is a manifest error, not a hang."""

    doc: Located
    env: Mapping[str, str]
    loader: yaml.SafeLoader
    count: int = 0
    active: set = field(default_factory=set)

    def convert(self, node: yaml.Node, key: PathKey) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise ManifestError(f"more than {MAX_NODES} values (anchors and aliases expand too far)", file=self.doc.file, line=node.start_mark.line + 1)
        if id(node) in self.active:
            raise ManifestError("an alias refers to a node that contains it", file=self.doc.file, line=node.start_mark.line + 1, field=dotted(key) or None)
        if not isinstance(node, yaml.ScalarNode):
            self.active.add(id(node))
        try:
            return _convert(node, key, self.doc, self.env, self.loader, self.convert)
        finally:
            self.active.discard(id(node))


def _convert(node: yaml.Node, key: PathKey, doc: Located, env: Mapping[str, str], loader: yaml.SafeLoader, walk) -> Any:
    doc.lines[key] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        try:
            loader.flatten_mapping(node)
        except yaml.MarkedYAMLError as exc:
            raise ManifestError(f"bad merge key '<<': {exc.problem}", file=doc.file, line=node.start_mark.line + 1, field=dotted(key) or None) from None
        for k_node, v_node in node.value:
            if not isinstance(k_node, yaml.ScalarNode):
                raise ManifestError("mapping keys must be plain strings", file=doc.file, line=k_node.start_mark.line + 1, field=dotted(key) or None)
            k = str(k_node.value)
            if k in out:
                raise ManifestError(f"duplicate key {k!r}", file=doc.file, line=k_node.start_mark.line + 1, field=dotted(key + (k,)))
            out[k] = walk(v_node, key + (k,))
            doc.lines[key + (k,)] = k_node.start_mark.line + 1  # errors point at `key:`, not at a block value below it
        return out
    if isinstance(node, yaml.SequenceNode):
        return [walk(v, key + (i,)) for i, v in enumerate(node.value)]
    value = node.value
    if "$" in value:

        def missing(name: str) -> None:
            raise ManifestError(
                f"environment variable {name} is not set and has no default",
                file=doc.file,
                line=node.start_mark.line + 1,
                field=dotted(key) or None,
                hint=f"set {name}, or write ${{{name}:-default}}",
            )

        value = expand_vars(value, env, on_missing=missing)
        if node.style:  # quoted or block scalar (libyaml says "" for plain, the Python parser None)
            return value
        # plain scalar: re-resolve so `${X:-true}` becomes a bool
        node = yaml.ScalarNode(loader.resolve(yaml.ScalarNode, value, (True, False)), value, node.start_mark, node.end_mark)
    try:
        return loader.construct_object(node)
    except yaml.constructor.ConstructorError as exc:
        raise ManifestError(f"cannot read value: {exc.problem}", file=doc.file, line=node.start_mark.line + 1, field=dotted(key) or None) from None
    except (ValueError, TypeError, AttributeError, OverflowError, IndexError, KeyError):
        # explicit tags such as `!!int xx` or `!!timestamp xx` fail inside PyYAML's constructors
        raise ManifestError(f"cannot read value {node.value!r} as {node.tag.rsplit(':', 1)[-1]}", file=doc.file, line=node.start_mark.line + 1, field=dotted(key) or None) from None
