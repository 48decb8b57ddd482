"""Bounded reading of the small JSON files of a model folder: config.json,
adapter_config.json, model.safetensors.index.json.

Python's json holds every value as an object (a short string costs about 55 bytes,
an object member about 150 with its key), so a file of tiny values costs twenty
times its size, and nesting beyond the interpreter's recursion limit raises
RecursionError. Each file kind therefore has a size cap, read from the file's size
before a byte is read, a cap on members and items (counted as `:` and `,` in the
raw text, an upper bound), checked before parsing, and a nesting cap. Under these
limits a hostile file is refused in milliseconds and a few tens of MB; real files
sit far below them (a 100k-tensor index is about 10 MB and 100k members).

The loaders themselves (transformers, vLLM, PEFT) read these files with Python's
json, so what parses here parses there: no stricter grammar than that.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..record import record

MAX_DEPTH = 64  # real configs nest 3-6 levels (text_config.rope_scaling...); PEFT and index files 2


@record(frozen=True)
class Limits:
    max_bytes: int
    max_items: int  # members + items: ':' and ',' in the raw text
    max_depth: int = MAX_DEPTH


# config.json: the largest real ones carry id2label/label2id maps of ~22k labels (1-2 MB).
CONFIG_LIMITS = Limits(max_bytes=8 * 2**20, max_items=250_000)
# model.safetensors.index.json: one member per tensor; the largest MoE repos list ~100k.
INDEX_LIMITS = Limits(max_bytes=32 * 2**20, max_items=500_000)


@record(frozen=True)
class JsonError:
    kind: str  # "missing", "unreadable", "empty", "too-large", "invalid"
    message: str


def read_json(path: Path | str, limits: Limits) -> tuple[object, JsonError | None]:
    """Parse a JSON file within `limits`; every failure is a JsonError, never an exception."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limits.max_bytes:
                return None, JsonError("too-large", f"is {size} bytes, above the limit of {limits.max_bytes} bytes for this file")
            raw = f.read(limits.max_bytes + 1)
    except FileNotFoundError:
        return None, JsonError("missing", "is missing")
    except IsADirectoryError:
        return None, JsonError("unreadable", "is a directory, expected a file")
    except OSError as exc:
        return None, JsonError("unreadable", f"cannot be read ({exc.strerror or exc})")
    if len(raw) > limits.max_bytes:
        return None, JsonError("too-large", f"is more than {limits.max_bytes} bytes (it grew while read), above the limit for this file")
    return parse_json(raw, limits)


def parse_json(raw: bytes, limits: Limits) -> tuple[object, JsonError | None]:
    if not raw.strip():
        return None, JsonError("empty", "is empty")
    items = raw.count(b":") + raw.count(b",")
    if items > limits.max_items:
        return None, JsonError("too-large", f"holds {items} members or items (':' and ','), above the limit of {limits.max_items}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, JsonError("invalid", f"is not UTF-8 (bad byte at offset {exc.start})")
    del raw
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, JsonError("invalid", f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})")
    except RecursionError:
        return None, JsonError("invalid", f"nests deeper than {limits.max_depth} levels")
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        return None, JsonError("invalid", f"is not valid JSON ({exc})")
    if too_deep(value, limits.max_depth):
        return None, JsonError("invalid", f"nests deeper than {limits.max_depth} levels")
    return value, None


def too_deep(value: object, max_depth: int) -> bool:
    """True when arrays/objects nest more than `max_depth` levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False
