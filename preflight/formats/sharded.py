"""Sharded safetensors: `model.safetensors.index.json` checked against its shards' headers.

The index is {"metadata": {"total_size": int, ...}, "weight_map": {tensor: shard file}}.
Shards are checked by `check_safetensors`; this module only says whether they fit
together: every shard named exists, each tensor lives where the index says, no shard
holds a tensor the index does not list. A shard whose header could not be parsed
is reported by its own check and skipped here, so one defect is reported once.

What the loaders do with an index that disagrees with its shards decides what is an error
(transformers 4.44 and 5.x `_load_pretrained_model`: the expected keys come from the
index's weight_map, then every tensor of every shard file the index names is loaded;
vLLM: the shard files named in weight_map's values, every tensor of each):
  - a tensor mapped to the wrong shard, but held by another shard the index names: both
    load it (a warning);
  - a tensor held by two named shards: both read both copies (a warning);
  - a tensor a shard holds that the index does not list: transformers reports it as a
    missing key (its key list is the index's) - an error;
  - a tensor the index maps that no named shard holds: missing for both - an error.

Typical use::

    names, problem = index_shard_names(index_path)   # problem: the index is unusable
    shards = {n: check_safetensors(folder / n) if (folder / n).is_file() else None for n in names}
    info = check_index(index_path, shards)
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import field

from preflight import problems as P
from preflight.formats.jsonfile import INDEX_LIMITS, parse_json
from preflight.formats.safetensors import Findings, PathOrFile, SafetensorsInfo, Source, os_problem
from preflight.problems import Problem

from ..record import record

INDEX_NAME = "model.safetensors.index.json"
MAX_INDEX_BYTES = INDEX_LIMITS.max_bytes  # a 100k-tensor index is about 10 MB


@record
class IndexInfo:
    name: str
    total_size: int | None = None
    weight_map: dict[str, str] = field(default_factory=dict)
    shard_names: list[str] = field(default_factory=list)  # in first-seen order, only safe names
    data_size: int | None = None  # sum of tensor bytes over the shards, when all were readable
    parameter_count: int = 0
    dtypes: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.is_error for p in self.problems)

    @property
    def tensor_count(self) -> int:
        return len(self.weight_map)


def shard_name_escapes(shard: str) -> bool:
    """True when a shard name in an index could point outside the model folder."""
    return (
        not shard
        or shard in (".", "..")
        or "/" in shard
        or "\\" in shard
        or "\0" in shard
        or os.path.isabs(shard)
        or (len(shard) > 1 and shard[1] == ":")  # drive-qualified Windows path
    )


def read_index(index_path: PathOrFile, *, name: str | None = None) -> IndexInfo:
    """Parse the index file only: structure, total_size, shard names (with `path-escape`)."""
    with Source(index_path, name) as src:
        info = IndexInfo(src.name)
        if src.problem:
            info.problems.append(src.problem)
            return info
        out = Findings(src.name)
        try:
            _parse(src, info, out)
        except OSError as e:
            info.problems.append(os_problem(src.name, e))
        info.problems[:0] = out.problems()
        return info


def index_shard_names(index_path: PathOrFile) -> tuple[list[str], Problem | None]:
    """The shard files an index names (each once, first-seen order), and why there are none.

    The problem is set only when the index cannot be used at all (unreadable, not
    JSON, no weight_map); finer findings such as `path-escape` or a bad
    total_size come from `check_index`. Names that would escape the folder are
    left out of the list.
    """
    info = read_index(index_path)
    if info.weight_map:
        return info.shard_names, None
    errors = [p for p in info.problems if p.is_error]
    return [], errors[0] if errors else None


def _parse(src: Source, info: IndexInfo, out: Findings) -> None:
    if src.size == 0:
        out.error(P.INDEX_INVALID, "index is empty (0 bytes)")
        return
    if src.size > INDEX_LIMITS.max_bytes:
        out.error(P.INDEX_INVALID, f"index is {src.size} bytes, above the limit of {INDEX_LIMITS.max_bytes}")
        return
    doc, err = parse_json(src.read_at(0, src.size), INDEX_LIMITS)
    if err is not None:
        out.error(P.INDEX_INVALID, f"index {err.message}")
        return
    if not isinstance(doc, dict):
        out.error(P.INDEX_INVALID, f"index is a JSON {type(doc).__name__}, expected an object with 'weight_map'")
        return
    meta = doc.get("metadata", {})
    if not isinstance(meta, dict):
        out.error(P.INDEX_INVALID, f"'metadata' is a JSON {type(meta).__name__}, expected an object")
    elif "total_size" in meta:
        total = meta["total_size"]
        # transformers writes an int; some converters wrote a float such as 1.5e10.
        if type(total) is float and total.is_integer() and total >= 0:
            total = int(total)
        if type(total) is int and total >= 0:
            info.total_size = total
        else:
            out.error(P.INDEX_INVALID, f"metadata.total_size is {total!r}, expected a non-negative integer")
    wmap = doc.get("weight_map")
    if not isinstance(wmap, dict):
        found = "missing" if wmap is None else f"a JSON {type(wmap).__name__}"
        out.error(P.INDEX_INVALID, f"'weight_map' is {found}, expected an object of tensor name -> shard file")
        return
    if not wmap:
        out.error(P.INDEX_INVALID, "'weight_map' is empty: the index names no tensors")
    seen: dict[str, None] = {}
    escaping: dict[str, None] = {}
    for tensor, shard in wmap.items():
        if not isinstance(shard, str):
            out.error(P.INDEX_INVALID, f"weight_map[{tensor!r}] is {shard!r}, expected a shard file name")
            continue
        if shard_name_escapes(shard):
            escaping.setdefault(shard)
            continue
        info.weight_map[tensor] = shard
        seen.setdefault(shard)
    for shard in escaping:
        out.error(P.PATH_ESCAPE, f"shard name {shard!r} is not a plain file name in the model folder")
    info.shard_names = list(seen)


def check_index(index_path: PathOrFile, shards: Mapping[str, SafetensorsInfo | None], *, name: str | None = None) -> IndexInfo:
    """Check an index against its shards' header checks (None = the shard file is absent).

    `metadata.total_size` that disagrees with the shards is a *warning*
    (`total-size-mismatch`), not an error: the Hub holds repos whose index
    counts tied or shared weights once or twice, or padding, depending on the
    transformers version that wrote it, and vLLM and transformers ignore the value
    when loading. Truncated or padded shards are caught exactly by each shard's
    own size check, so the total adds no safety worth blocking a lane for.
    """
    info = read_index(index_path, name=name)
    if not info.weight_map:
        return info
    out = Findings(info.name)
    parsed: dict[str, SafetensorsInfo] = {}
    for shard in info.shard_names:
        sinfo = shards.get(shard)
        if sinfo is None:
            mapped = sum(1 for s in info.weight_map.values() if s == shard)
            out.error(P.SHARD_MISSING, f"shard {shard} is missing ({mapped} tensors are mapped to it)")
        elif sinfo.header_parsed:
            parsed[shard] = sinfo
    _match_tensors(info, parsed, out)
    if len(parsed) == len(info.shard_names):
        _totals(info, parsed, out)
    info.problems.extend(out.problems())
    return info


def _match_tensors(info: IndexInfo, parsed: Mapping[str, SafetensorsInfo], out: Findings) -> None:
    holders: dict[str, list[str]] = {}
    for shard, sinfo in parsed.items():
        for tensor in sinfo.tensors:
            holders.setdefault(tensor, []).append(shard)
    for tensor, shard in info.weight_map.items():
        if shard not in parsed or tensor in parsed[shard].tensors:
            continue
        elsewhere = holders.get(tensor)
        if elsewhere:
            out.warning(P.INDEX_MISMATCH, f"index maps tensor {tensor!r} to {shard}, but it is in {', '.join(elsewhere)} "
                        "(the loaders read every tensor of every shard the index names, so it loads)")
        else:
            out.error(P.INDEX_MISMATCH, f"index maps tensor {tensor!r} to {shard}, which does not hold it")
    for tensor, where in holders.items():
        mapped = info.weight_map.get(tensor)
        if mapped is None:
            for shard in where:
                out.error(P.INDEX_MISMATCH, f"shard {shard} holds tensor {tensor!r}, which the index does not list")
        elif len(where) > 1 and mapped in where:
            others = [s for s in where if s != mapped]
            out.warning(P.INDEX_MISMATCH, f"tensor {tensor!r} is in {mapped} as the index says, and also in {', '.join(others)} "
                        "(the loaders read both; the copy read last is used)")


def _totals(info: IndexInfo, parsed: Mapping[str, SafetensorsInfo], out: Findings) -> None:
    info.data_size = sum(s.data_size for s in parsed.values())
    for sinfo in parsed.values():
        info.parameter_count += sinfo.parameter_count
        info.dtypes.update(sinfo.dtypes)
    if info.total_size is not None and info.total_size != info.data_size:
        diff = info.data_size - info.total_size
        out.warning(
            P.TOTAL_SIZE_MISMATCH,
            f"metadata.total_size says {info.total_size} bytes, the shards hold {info.data_size} bytes of tensors "
            f"({diff:+d}); loaders ignore this value",
        )
