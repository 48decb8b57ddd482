"""What each extra of lane-preflight adds to the venv it runs in: the installed size of the
distributions it brings over the runtime's (shared ones counted in each), from RECORD.

    docker run --rm --entrypoint /opt/preflight/bin/python -v "$PWD/bench:/bench:ro" lane-preflight /bench/extras_size.py
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import sys


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


DISTS = {canon(d.metadata["Name"]): d for d in md.distributions() if d.metadata["Name"]}


def size(name: str) -> int:
    total = 0
    for f in DISTS[name].files or []:
        try:
            total += os.path.getsize(f.locate())
        except OSError:
            pass
    return total


def closure(name: str, extra: str | None = None) -> set[str]:
    """Installed distributions reached from NAME[EXTRA]; markers other than `extra` are taken
    as true (what is not installed is not counted)."""
    seen: set[tuple[str, str | None]] = set()
    todo = [(canon(name), extra)]
    while todo:
        dist, ex = todo.pop()
        if dist not in DISTS or (dist, ex) in seen:
            continue
        seen.add((dist, ex))
        for req in DISTS[dist].requires or []:
            spec, _, marker = req.partition(";")
            wanted = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
            if (wanted.group(1) if wanted else None) != ex and not (wanted is None and ex is not None):
                continue
            m = re.match(r"\s*([A-Za-z0-9._-]+)\s*(?:\[([^\]]*)\])?", spec)
            todo.append((canon(m.group(1)), None))
            todo += [(canon(m.group(1)), e.strip()) for e in (m.group(2) or "").split(",") if e.strip()]
    return {d for d, _ in seen}


def main() -> None:
    core = closure("lane-preflight")
    print(f"runtime: {sum(map(size, core)) / 1e6:.1f} MB ({len(core)} distributions)")
    for extra in sys.argv[1:] or ["s3", "gcs", "signing"]:
        brings = closure("lane-preflight", extra) - core
        if not brings:
            print(f"{extra}: not installed")
            continue
        parts = ", ".join(f"{d} {size(d) / 1e6:.1f}" for d in sorted(brings, key=size, reverse=True))
        print(f"{extra}: +{sum(map(size, brings)) / 1e6:.1f} MB: {parts}")
    print(f"all distributions: {sum(map(size, DISTS)) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
