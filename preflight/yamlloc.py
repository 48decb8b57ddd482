"""YAML → plain Python values, keeping the line of every value and expanding ${VAR}, within bounds.

PyYAML's safe loader drops positions, silently keeps the last of duplicate keys, and
composes the whole node graph before anything can count it (a 4 MiB file of `[1,1,…]`
becomes 600 MB of nodes). We read libyaml's event stream instead and build the values
as the events arrive, so every bound below is enforced before the memory is spent:

- MAX_BYTES   the manifest text (4 MiB; a 10 000-lane manifest is about 2 MiB)
- MAX_VALUES  values and keys, counting each alias as the values it stands for
- MAX_STRING  characters in one value or key, after ${VAR} expansion
- MAX_TEXT    characters in all values together, after alias and ${VAR} expansion
- MAX_DEPTH   nesting of mappings and lists

An alias shares the value of its anchor (as PyYAML does), so it costs no memory, but it
counts as everything it stands for: a few lines that stand for millions of values, or
one `$$…` string referenced 40 000 times, are refused at once.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Mapping
from dataclasses import field
from typing import Any

import yaml

from .errors import ManifestError
from .record import record

MAX_BYTES = 4 << 20
MAX_VALUES = 250_000
MAX_STRING = 64 << 10
MAX_TEXT = 16 << 20
MAX_DEPTH = 64

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")

PathKey = tuple  # ("lanes", 0, "path")

# The line of every value: an int for a scalar, (line, children) for a mapping (a dict
# of key → record) or a list (a list of records). A mapping entry's line is its key's.
Lines = Any


@record
class Located:
    """A loaded document plus the line (1-based) of every value, by key path."""

    value: Any
    file: str
    tree: Lines = None
    retyped: dict[PathKey, Any] = field(default_factory=dict)  # quoted `"${X:-true}"` as a plain scalar would read

    def line(self, *key: Any) -> int | None:
        """The line of `key`, or of the nearest enclosing value the document has."""
        rec = self.tree
        if rec is None:
            return None
        best = rec if isinstance(rec, int) else rec[0]
        for part in key:
            if isinstance(rec, int):
                break
            try:
                rec = rec[1][part]
            except (KeyError, IndexError, TypeError):
                break
            best = rec if isinstance(rec, int) else rec[0]
        return best

    def error(self, key: PathKey, message: str, hint: str | None = None) -> ManifestError:
        return ManifestError(message, file=self.file, line=self.line(*key), field=dotted(key) or None, hint=hint)


def dotted(key: PathKey) -> str:
    out = ""
    for part in key:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class ExpansionTooLong(ValueError):
    """${VAR} expansion made a value longer than the limit."""


def expand_vars(text: str, env: Mapping[str, str], *, on_missing, limit: int | None = None) -> str:
    """Expand ${VAR}, ${VAR:-default} (default when unset or empty), ${VAR-default}
    (default when unset); `$$` is a literal `$`. Past `limit` characters, ExpansionTooLong."""
    grown = 0

    def sub(m: re.Match) -> str:
        nonlocal grown
        if m.group(0) == "$$":
            out = "$"
        else:
            name, default = m.group(1), m.group(2)
            value = env.get(name)
            colon = m.group(0).startswith("${" + name + ":-")
            if value is None or (colon and value == ""):
                if default is not None:
                    out = expand_vars(default, env, on_missing=on_missing)
                else:
                    on_missing(name)
                    out = ""
            else:
                out = value
        if limit is not None:
            grown += len(out) - (m.end() - m.start())
            if len(text) + grown > limit:
                raise ExpansionTooLong(f"longer than {limit} characters once variables are expanded")
        return out

    return _VAR.sub(sub, text)


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml parses ~10x faster, same marks
    pass


def load_yaml(text: str, file: str, env: Mapping[str, str] | None = None, *, expand: bool = True) -> Located:
    """Parse one YAML (or JSON) document with positions and variable expansion (none with
    `expand=False`: the caller expands the fields it reads, as `smoke` does), within the
    same bounds either way."""
    env = os.environ if env is None else env
    doc = Located(None, file)
    if len(text) > MAX_BYTES:
        raise ManifestError(f"the manifest is larger than {_size(MAX_BYTES)}", file=file, hint="a manifest lists lanes, not data")
    try:
        loader = _Loader(text)
        try:
            build = _Build(doc, env, loader)
            build.expand = expand
            doc.value, doc.tree = build.document()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = str(exc.problem or exc)
        if "nesting" in problem.lower():
            # libyaml (PyYAML 6.0.4 on) has a nesting limit of its own, which its look-ahead
            # may reach before our MAX_DEPTH does: one message whichever layer refuses.
            raise ManifestError(f"nested more than {MAX_DEPTH} levels deep", file=file, line=line) from None
        column = mark.column + 1 if mark else None
        raise ManifestError(f"not valid YAML: {problem}" + _caret(text, mark), file=file, line=line, column=column,
                            hint=_syntax_hint(problem, exc.context or "", _char_at(text, mark))) from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"not valid YAML: {exc}", file=file) from None
    except RecursionError:  # MAX_DEPTH keeps us far from it; a last line of defence
        raise ManifestError("nested too deeply", file=file) from None
    return doc


def _caret(text: str, mark) -> str:
    """The offending line with a caret under the column, for a syntax error."""
    if mark is None:
        return ""
    lines = text.splitlines()
    if not 0 <= mark.line < len(lines):
        return f" (column {mark.column + 1})"
    shown = lines[mark.line].replace("\t", " ")
    if len(shown) > 160:
        start = max(0, mark.column - 80)
        shown, col = shown[start:start + 160], mark.column - start
    else:
        col = mark.column
    return f" (column {mark.column + 1}):\n    {shown}\n    {' ' * col}^"


def _char_at(text: str, mark) -> str:
    lines = text.splitlines() if mark is not None else []
    if mark is not None and 0 <= mark.line < len(lines) and 0 <= mark.column < len(lines[mark.line]):
        return lines[mark.line][mark.column]
    return ""


def _syntax_hint(problem: str, context: str, char: str = "") -> str:
    """What usually causes PyYAML's complaint, in the manifest's terms."""
    p = f"{context} {problem}".lower()
    if char == "\t" or "\\t" in problem or "tab" in p:
        return "YAML indents with spaces, not tabs"
    if "mapping values are not allowed" in p:
        return "a value that holds ': ' must be quoted (\"...\"), or this line is indented deeper than its key"
    if "block end" in p or "block mapping" in p or "block collection" in p or "indentation" in p:
        return "check the indentation: the keys of one lane line up under its first key (`- name:`), with spaces"
    if "found undefined alias" in p or "anchor" in p:
        return "an alias (*name) needs an anchor (&name) above it"
    if "flow" in p or "expected ','" in p or "expected ']'" in p or "expected '}'" in p:
        return "a [list] or {mapping} written on one line is missing a comma or its closing bracket"
    if "quoted scalar" in p or "end of stream" in p:
        return "a quoted value is missing its closing quote"
    return "check the indentation and quoting of that line (YAML indents with spaces; quote values that hold ': ' or '#')"


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_BOOLS = yaml.constructor.SafeConstructor.bool_values
_MERGE = "tag:yaml.org,2002:merge"
_RETYPE = (_BOOL, _INT)


@record
class _Anchor:
    """An anchored node, and what each alias of it adds to the document's bounds."""

    value: Any
    lines: Lines
    values: int  # what one alias of it counts as
    chars: int
    depth: int


class _Build:
    """libyaml events → values and their lines, counting as it goes."""

    def __init__(self, doc: Located, env: Mapping[str, str], loader: yaml.SafeLoader) -> None:
        self.doc = doc
        self.env = env
        self.loader = loader
        self.next = loader.get_event
        self.expand = True
        self.values = 0
        self.chars = 0
        self.depth = 0
        self.aliases = 0
        self.peak = 0  # deepest nesting inside the anchored node being built
        self.anchors: dict[str, _Anchor] = {}
        self.opening: dict[str, int] = {}  # anchors whose node is being built → their line

    def fail(self, message: str, line: int | None, key: PathKey = (), hint: str | None = None) -> ManifestError:
        return ManifestError(message, file=self.doc.file, line=line, field=dotted(key) or None, hint=hint)

    def document(self) -> tuple[Any, Lines]:
        self.next()  # stream start
        ev = self.next()
        if isinstance(ev, yaml.StreamEndEvent):
            return None, None
        value, lines = self.node(self.next(), ())
        self.next()  # document end
        ev = self.next()
        if not isinstance(ev, yaml.StreamEndEvent):
            raise self.fail("not valid YAML: expected a single document, found a second one", ev.start_mark.line + 1)
        return value, lines

    def count(self, values: int, chars: int, line: int, key: PathKey) -> None:
        self.values += values
        self.chars += chars
        why = "anchors and aliases expand too far" if self.aliases else "far more than any manifest needs"
        if self.values > MAX_VALUES:
            raise self.fail(f"more than {MAX_VALUES} values ({why})", line, key)
        if self.chars > MAX_TEXT:
            why = "anchors, aliases or variables expand too far" if self.aliases else "far more than any manifest needs"
            raise self.fail(f"the values add up to more than {_size(MAX_TEXT)} of text ({why})", line, key)

    def node(self, ev: yaml.Event, key: PathKey) -> tuple[Any, Lines]:
        line = ev.start_mark.line + 1
        cls = type(ev)
        if cls is yaml.AliasEvent:
            return self.alias(ev.anchor, line, key)
        self.values += 1
        if self.values > MAX_VALUES:
            self.count(0, 0, line, key)
        anchor = ev.anchor
        if anchor is not None:
            first = self.anchors[anchor].lines if anchor in self.anchors else self.opening.get(anchor)
            if first is not None:
                first = first if isinstance(first, int) else first[0]
                raise self.fail(f"anchor &{anchor} is defined twice (first at line {first})", line, key)
            self.opening[anchor] = line
            start = (self.values - 1, self.chars, self.depth, self.peak)
            self.peak = self.depth
        if cls is yaml.ScalarEvent:
            value, lines = self.scalar(ev, key, line), line
        elif cls is yaml.MappingStartEvent:
            value, lines = self.mapping(key, line)
        elif cls is yaml.SequenceStartEvent:
            value, lines = self.sequence(key, line)
        else:  # libyaml reports malformed streams itself; this is a guard, not a path
            raise self.fail(f"not valid YAML: unexpected {cls.__name__}", line, key)
        if anchor is not None:
            del self.opening[anchor]
            self.anchors[anchor] = _Anchor(value, lines, self.values - start[0], self.chars - start[1], self.peak - start[2])
            self.peak = max(self.peak, start[3])
        return value, lines

    def alias(self, name: str, line: int, key: PathKey) -> tuple[Any, Lines]:
        a = self.anchors.get(name)
        if a is None:
            if name in self.opening:
                raise self.fail(f"an alias refers to a node that contains it (*{name} inside &{name}, line {self.opening[name]})", line, key)
            raise self.fail(f"alias *{name} has no anchor &{name} before it", line, key)
        self.aliases += 1
        self.count(a.values, a.chars, line, key)
        if self.depth + a.depth > MAX_DEPTH:
            raise self.fail(f"nested more than {MAX_DEPTH} levels deep", line, key)
        self.peak = max(self.peak, self.depth + a.depth)
        return a.value, (line if isinstance(a.lines, int) else (line, a.lines[1]))

    def enter(self, line: int, key: PathKey) -> None:
        self.depth += 1
        self.peak = max(self.peak, self.depth)
        if self.depth > MAX_DEPTH:
            raise self.fail(f"nested more than {MAX_DEPTH} levels deep", line, key)

    def mapping(self, key: PathKey, line: int) -> tuple[dict, Lines]:
        self.enter(line, key)
        out: dict[str, Any] = {}
        lines: dict[str, Lines] = {}
        merges: list[tuple[Any, Lines, int]] = []
        while True:
            kev = self.next()
            if isinstance(kev, yaml.MappingEndEvent):
                break
            kline = kev.start_mark.line + 1
            if not isinstance(kev, yaml.ScalarEvent):
                raise self.fail("mapping keys must be plain strings", kline, key)
            k = str(kev.value)
            if len(k) > MAX_STRING:
                raise self.fail(f"a key longer than {MAX_STRING} characters", kline, key)
            self.count(1, len(k), kline, key)
            if kev.anchor is not None:
                self.anchors[kev.anchor] = _Anchor(k, kline, 1, len(k), 0)
            merge = kev.tag == _MERGE or (kev.tag is None and not kev.style and k == "<<")
            if k in out or (merge and merges):
                raise self.fail(f"duplicate key {k!r}", kline, key + (k,))
            value, vlines = self.node(self.next(), key + (k,))
            if merge:
                merges.append((value, vlines, kline))
                continue
            out[k] = value
            lines[k] = kline if isinstance(vlines, int) else (kline, vlines[1])
        self.depth -= 1
        if merges:
            out, lines = self.merged(out, lines, merges[0], key, line)
        return out, (line, lines)

    def merged(self, out: dict, lines: dict, merge: tuple[Any, Lines, int], key: PathKey, line: int) -> tuple[dict, dict]:
        """`<<: *base` or `<<: [*a, *b]`: keys given here win, then the first mapping listed."""
        value, vlines, kline = merge
        if isinstance(value, dict):
            sources = [(value, vlines)]
        elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
            sources = list(zip(value, vlines[1]))
        else:
            raise self.fail(f"bad merge key '<<': expected a mapping or a list of mappings, found {type(value).__name__}", kline, key)
        new: dict[str, Any] = {}
        new_lines: dict[str, Lines] = {}
        for src, src_lines in sources:
            for k, v in src.items():
                if k not in out and k not in new:
                    new[k] = v
                    new_lines[k] = src_lines[1][k]
        new.update(out)
        new_lines.update(lines)
        return new, new_lines

    def sequence(self, key: PathKey, line: int) -> tuple[list, Lines]:
        self.enter(line, key)
        out: list[Any] = []
        lines: list[Lines] = []
        append, append_line, nxt = out.append, lines.append, self.next
        while True:
            ev = nxt()
            if isinstance(ev, yaml.SequenceEndEvent):
                break
            value, vlines = self.node(ev, key + (len(out),))
            append(value)
            append_line(vlines)
        self.depth -= 1
        return out, (line, lines)

    def scalar(self, ev: yaml.ScalarEvent, key: PathKey, line: int) -> Any:
        value, tag, implicit = ev.value, ev.tag, ev.implicit
        if len(value) > MAX_STRING:
            raise self.fail(f"a value longer than {MAX_STRING} characters", line, key)
        expanded = self.expand and "$" in value
        if expanded:

            def missing(name: str) -> None:
                raise self.fail(f"environment variable {name} is not set and has no default", line, key, hint=f"set {name}, or write ${{{name}:-default}}")

            try:
                value = expand_vars(value, self.env, on_missing=missing, limit=MAX_STRING)
            except ExpansionTooLong as exc:
                raise self.fail(f"a value {exc}", line, key) from None
            implicit = (True, False) if not ev.style else implicit  # `${X:-true}` reads as a bool
        self.chars += len(value)
        if self.chars > MAX_TEXT:
            self.count(0, 0, line, key)
        if tag is None or tag == "!":
            tag = self.loader.resolve(yaml.ScalarNode, value, implicit)
            if expanded and ev.style and ev.tag is None:  # quoted: a string, and what it reads as unquoted
                typed = self.loader.resolve(yaml.ScalarNode, value, (True, False))
                if typed in _RETYPE:
                    try:
                        self.doc.retyped[key] = self.construct(typed, value, ev, key, line)
                    except ManifestError:
                        pass
        if tag == _STR:
            return value
        if tag == _NULL:
            return None
        if tag == _BOOL and value.lower() in _BOOLS:
            return _BOOLS[value.lower()]
        if tag == _INT and value.isdecimal() and value.isascii() and len(value) < 100 and (value[0] != "0" or value == "0"):
            return int(value)
        return self.construct(tag, value, ev, key, line)

    def construct(self, tag: str, value: str, ev: yaml.ScalarEvent, key: PathKey, line: int) -> Any:
        name = tag.rsplit(":", 1)[-1]
        fn = type(self.loader).yaml_constructors.get(tag)
        if fn is None:
            raise self.fail(f"cannot read value {value!r}: unknown tag {tag}", line, key)
        node = yaml.ScalarNode(tag, value, ev.start_mark, ev.end_mark, ev.style)
        try:
            data = fn(self.loader, node)
        except yaml.constructor.ConstructorError as exc:
            raise self.fail(f"cannot read value: {exc.problem}", line, key) from None
        except (ValueError, TypeError, AttributeError, OverflowError, IndexError, KeyError):
            # explicit tags such as `!!int xx` or `!!timestamp xx` fail inside PyYAML's constructors
            raise self.fail(f"cannot read value {value!r} as {name}", line, key) from None
        if isinstance(data, types.GeneratorType):  # `!!seq x`, `!!map x`: a collection tag on a scalar
            data.close()
            raise self.fail(f"cannot read value {value!r} as {name}", line, key)
        return data

