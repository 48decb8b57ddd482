"""Pickle-based weights (.bin .pt .pth .ckpt .pkl): refused unless the lane allows
them, and then scanned for dangerous imports with picklescan."""

from __future__ import annotations

import os
from pathlib import Path

from .. import problems as P
from ..problems import Problem

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def is_pickle_name(name: str) -> bool:
    return name.lower().endswith(PICKLE_SUFFIXES)


ACCEPT_ON_LANE = "set `allow_pickle: true` on the lane to accept it"  # `inspect` names its flag instead


def refuse(name: str) -> Problem:
    return P.error(
        name, P.UNSAFE_PICKLE,
        f"{name} is a pickle file, which can run code when loaded; {ACCEPT_ON_LANE} (it is then scanned)",
    )


def _parse_error(path: str | os.PathLike) -> str | None:
    """Why a raw pickle does not parse up to its STOP opcode, or None.

    picklescan reports bytes that are not a pickle at all as clean; such a file
    is refused too. Zip (PyTorch) and tar archives are left to picklescan."""
    import pickletools

    try:
        with open(path, "rb") as f:
            head = f.read(512)
            if head.startswith(b"PK\x03\x04") or head[257:262] == b"ustar":
                return None
            f.seek(0)
            for _op in pickletools.genops(f):
                pass
    except Exception as exc:  # pickletools raises ValueError and friends on garbage
        return str(exc) or type(exc).__name__
    return None


def scan_pickle(path: str | os.PathLike, *, name: str | None = None) -> list[Problem]:
    """Findings for one pickle (raw, or a PyTorch zip/tar). Dangerous globals are errors."""
    from picklescan.scanner import SafetyLevel, scan_file_path

    name = name or Path(path).name
    import logging  # only when a pickle is scanned: keeps logging off the warm check path

    logging.getLogger("picklescan").setLevel(logging.CRITICAL)
    try:
        result = scan_file_path(os.fspath(path))
    except Exception as exc:  # picklescan raises assorted errors on hostile input
        return [P.error(name, P.DANGEROUS_PICKLE, f"{name}: cannot be scanned as a pickle ({type(exc).__name__}: {exc}); refusing it")]
    out: list[Problem] = []
    dangerous = sorted({f"{g.module}.{g.name}" for g in result.globals if g.safety == SafetyLevel.Dangerous})
    if dangerous:
        out.append(P.error(name, P.DANGEROUS_PICKLE, f"{name} imports dangerous callables: {', '.join(dangerous[:8])}"))
    elif result.scan_err or _parse_error(path) is not None:
        out.append(P.error(name, P.DANGEROUS_PICKLE, f"{name}: the pickle could not be parsed completely, so it cannot be shown to be safe"))
    suspicious = sorted({f"{g.module}.{g.name}" for g in result.globals if g.safety == SafetyLevel.Suspicious})
    if suspicious and not dangerous:
        out.append(P.warning(name, P.DANGEROUS_PICKLE, f"{name} imports callables outside the known-safe list: {', '.join(suspicious[:8])}"))
    return out
