#!/usr/bin/env python3
"""Write tests/data/kserve_crd_fields.json: the fields KServe's CRDs define for the kinds
ops/k8s/kserve/ uses, as a flat table the offline check in tests/test_kserve_manifests.py
reads (no third-party file is copied into the project; this table is data read from one).

    python ops/gen-kserve-crd-fields.py /path/to/kserve-checkout [--out tests/data/kserve_crd_fields.json]

Reads, from a checkout of github.com/kserve/kserve:
  config/crd/full/clusterstoragecontainer/serving.kserve.io_clusterstoragecontainers.yaml
  config/crd/full/serving.kserve.io_inferenceservices.yaml
and records the commit it read (git rev-parse HEAD, and the nearest tag).

Each row is a field path (`.spec.container.env[].name`; `[]` an array's items, `{}` a map's
values) with its type, the required fields of an object, an enum, and whether it is
int-or-string or keeps unknown fields. ClusterStorageContainer is recorded whole; for
InferenceService (12 000+ paths, most of them a whole PodSpec) the table holds the top,
`.spec`, every direct field of `.spec.predictor` and everything under
`.spec.predictor.model`; the check refuses a field below what the table covers, so an
example that grows past it makes this generator run again with a wider COVER.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

CRDS = {
    "ClusterStorageContainer": "config/crd/full/clusterstoragecontainer/serving.kserve.io_clusterstoragecontainers.yaml",
    "InferenceService": "config/crd/full/serving.kserve.io_inferenceservices.yaml",
}
# InferenceService paths kept: these prefixes whole, and the direct children of these.
COVER_WHOLE = {"InferenceService": (".spec.predictor.model",), "ClusterStorageContainer": ("",)}
COVER_CHILDREN = {"InferenceService": ("", ".spec", ".spec.predictor"), "ClusterStorageContainer": ()}


def flatten(node: dict, path: str, out: dict[str, dict]) -> None:
    row: dict = {"type": node.get("type", "any")}
    if node.get("x-kubernetes-int-or-string"):
        row["type"] = "int-or-string"
    if node.get("x-kubernetes-preserve-unknown-fields"):
        row["preserve"] = True
    if node.get("required"):
        row["required"] = sorted(node["required"])
    if node.get("enum"):
        row["enum"] = node["enum"]
    out[path] = row
    for key, child in (node.get("properties") or {}).items():
        flatten(child, f"{path}.{key}", out)
    if isinstance(node.get("items"), dict):
        flatten(node["items"], f"{path}[]", out)
    if isinstance(node.get("additionalProperties"), dict):
        flatten(node["additionalProperties"], f"{path}{{}}", out)


def covered(kind: str, path: str) -> bool:
    if any(path == p or path.startswith(p + ".") or path.startswith(p + "[") or path.startswith(p + "{") or p == ""
           for p in COVER_WHOLE[kind]):
        return True
    for parent in COVER_CHILDREN[kind]:
        if path == parent:
            return True
        rest = path[len(parent):] if path.startswith(parent + ".") else None
        if rest is not None and rest.count(".") == 1 and "[" not in rest and "{" not in rest:
            return True
    return False


def git(checkout: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a checkout of github.com/kserve/kserve")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "data" / "kserve_crd_fields.json")
    args = parser.parse_args(argv)
    table: dict = {"source": "github.com/kserve/kserve", "commit": git(args.checkout, "rev-parse", "HEAD"),
                   "describe": git(args.checkout, "describe", "--tags", "--always"), "kinds": {}}
    for kind, rel in CRDS.items():
        crd = yaml.safe_load((args.checkout / rel).read_text())
        version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
        rows: dict[str, dict] = {}
        flatten(version["schema"]["openAPIV3Schema"], "", rows)
        kept = {p: r for p, r in sorted(rows.items()) if covered(kind, p)}
        for p, r in kept.items():  # an object whose children the table leaves out says so
            if r["type"] == "object" and any(q.startswith(p + ".") for q in rows) and not any(q.startswith(p + ".") for q in kept):
                r["uncovered"] = True
        table["kinds"][kind] = {"group": crd["spec"]["group"], "version": version["name"], "crd": rel, "fields": kept}
        print(f"{kind}: {len(kept)} of {len(rows)} field paths", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
