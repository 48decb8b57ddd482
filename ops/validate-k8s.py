#!/usr/bin/env python3
"""Validate the Kubernetes manifests offline: every resource against the Kubernetes API's
own schemas (bundled by kubernetes-validate, no cluster and no network), and every
preflight manifest a ConfigMap carries with preflight's own loader.

    pip install kubernetes-validate          # once (the test extra has it)
    python ops/validate-k8s.py [FOLDER ...] [--k8s-version 1.29.0]

FOLDER defaults to ops/k8s and each overlay in it (every folder holding a
kustomization.yaml). Resources are the files a kustomization lists under `resources`;
strategic-merge patches (`patches`) are partial by nature and are parsed, not validated
on their own. Exits 1 when anything is invalid, 2 when the tools are missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VERSION = "1.29.0"


def folders(given: list[str]) -> list[Path]:
    if given:
        return [Path(g) for g in given]
    base = ROOT / "ops" / "k8s"
    return sorted({p.parent for p in base.rglob("kustomization.yaml")})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*")
    parser.add_argument("--k8s-version", default=DEFAULT_VERSION)
    ns = parser.parse_args()
    try:
        import kubernetes_validate
        import yaml
    except ImportError as exc:
        print(f"validate-k8s: {exc.name} is not installed: pip install kubernetes-validate pyyaml", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from preflight.errors import ManifestError
    from preflight.manifest import load_manifest

    bad = 0
    checked = 0
    for folder in folders(ns.folders):
        kfile = folder / "kustomization.yaml"
        kust = yaml.safe_load(kfile.read_text()) if kfile.exists() else {}
        resources = kust.get("resources") or sorted(p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")
        patches = [p["path"] if isinstance(p, dict) else p for p in kust.get("patches") or kust.get("patchesStrategicMerge") or []]
        for name in resources:
            path = folder / name
            if path.is_dir():
                continue  # another kustomization: validated as a folder of its own
            for doc in yaml.safe_load_all(path.read_text()):
                if not doc:
                    continue
                checked += 1
                what = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
                try:
                    kubernetes_validate.validate(doc, ns.k8s_version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    bad += 1
                    print(f"INVALID {what}: {exc.message} (at {'/'.join(map(str, exc.path))})")
                    continue
                except kubernetes_validate.utils.SchemaNotFoundError:
                    print(f"skip    {what}: no bundled schema for this kind (a custom resource)")
                    continue
                bad += _manifests(doc, what, load_manifest, ManifestError)
                print(f"ok      {what}")
        for name in patches:
            path = folder / name
            for doc in yaml.safe_load_all(path.read_text()):
                if doc:
                    bad += _manifests(doc, f"{path.relative_to(ROOT)} (patch)", load_manifest, ManifestError)
            print(f"parsed  {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} (a patch)")
    print(f"validate-k8s: {checked} resources, {bad} invalid (Kubernetes {ns.k8s_version} schemas, offline)")
    return 1 if bad else 0


def _manifests(doc: dict, what: str, load_manifest, ManifestError) -> int:
    """The preflight manifests a ConfigMap carries, loaded as preflight loads them."""
    import tempfile

    if doc.get("kind") != "ConfigMap":
        return 0
    bad = 0
    for key, text in (doc.get("data") or {}).items():
        if not key.endswith((".yaml", ".yml", ".json")) or "lanes:" not in text and '"lanes"' not in text:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / key
            p.write_text(text)
            try:
                load_manifest(p, env={})
            except ManifestError as exc:
                bad += 1
                print(f"INVALID {what}: data.{key}: {exc}")
    return bad


if __name__ == "__main__":
    sys.exit(main())
