#!/usr/bin/env python3
"""Trim the image's virtualenv to what preflight runs, and fail if what it must keep is gone.

    /opt/preflight/bin/python ops/slim-venv.py [VENV]       default VENV: this interpreter's prefix

Run by the Dockerfile's builder stage after the dependencies are installed (whatever
EXTRAS chose), with the venv's own interpreter. Each step prints what it removed and the
bytes freed; the reasons are in the tables below. What it removes:

  - botocore's data for every AWS service but the few the S3 client and the credential
    chain create clients for (a folder per service, 20+ MB of the image), the usage examples
    of those it keeps, and its copy of certifi's CA bundle when certifi is installed;
  - distributions that packages declare but that nothing preflight runs imports;
  - other distributions' command-line scripts, type stubs, test folders, SBOMs;
  - the symbol tables and debug sections of native modules (never loaded at run time).

It fails (exit 1) when a botocore data file it keeps is missing, when a kept module
starts importing a removed distribution, or when a stripped native module no longer
imports: a dependency upgrade that moves things is noticed at build time, not in a pod.
Byte code is not touched: the Dockerfile compiles the venv after this step.
"""

from __future__ import annotations

import ast
import csv
import gzip
import importlib.machinery
import importlib.metadata as md
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

# --------------------------------------------------------------------------- botocore data

# Services whose clients botocore creates for preflight: s3 itself; sts for AssumeRole and
# AssumeRoleWithWebIdentity (IRSA, role_arn profiles); sso and sso-oidc for SSO profiles and
# their token refresh; signin for `aws login` profiles. Every other service's folder goes.
BOTOCORE_SERVICES = ("s3", "sts", "sso", "sso-oidc", "signin")
# Read when a session or client is made: endpoints and partitions (endpoint resolution),
# sdk-default-configuration (defaults mode), _retry (retry handlers).
BOTOCORE_TOP_FILES = ("endpoints.json", "partitions.json", "sdk-default-configuration.json", "_retry.json")
# Files the clients above load; a botocore release that renames or moves one fails the build.
BOTOCORE_REQUIRED = (
    *BOTOCORE_TOP_FILES,
    "s3/2006-03-01/service-2.json.gz",
    "s3/2006-03-01/service-2.sdk-extras.json",
    "s3/2006-03-01/endpoint-rule-set-1.json.gz",
    "s3/2006-03-01/paginators-1.json",
    "sts/2011-06-15/service-2.json.gz",
    "sts/2011-06-15/endpoint-rule-set-1.json.gz",
    "sso/2019-06-10/service-2.json.gz",
    "sso/2019-06-10/endpoint-rule-set-1.json.gz",
    "sso-oidc/2019-06-10/service-2.json.gz",
    "sso-oidc/2019-06-10/endpoint-rule-set-1.json.gz",
)
# A service's usage examples (examples-1.json) are read by botocore.docs only, which writes
# the SDK's documentation; the build fails if another botocore module names them.
BOTOCORE_EXAMPLES = "examples-1"
# botocore.httpsession verifies TLS against certifi.where() when certifi imports, and against
# its own cacert.pem (a copy of certifi's) only when it does not: with certifi installed (the
# gcs extra's requests brings it) the copy goes. The build fails if another module names it.
BOTOCORE_CA_BUNDLE = "cacert.pem"

# --------------------------------------------------------------------------- unused code

# Declared by a dependency, imported by nothing preflight runs. Each entry: why it goes,
# and the kept files that still import it, each on a path preflight never takes (an
# import under `if TYPE_CHECKING:` never runs and needs no entry). Any other kept
# module that imports it fails the build.
UNUSED_DISTRIBUTIONS = {
    "rich": ("sigstore's command line; verification never prints through it",
             {"sigstore/_cli.py", "pydantic/_internal/_core_utils.py", "tqdm/rich.py", "httpx2/_main.py"}),
    "pygments": ("rich's syntax highlighting", {"httpx2/_main.py"}),
    "markdown-it-py": ("rich's Markdown rendering", set()),
    "mdurl": ("markdown-it-py's URL helpers", set()),
    "email-validator": ("pydantic[email], asked by sigstore-rekor-types, which declares no e-mail field",
                        {"pydantic/networks.py"}),
    "dnspython": ("email-validator's deliverability check", set()),
    "asn1crypto": ("model_signing's PKCS #11 signer; preflight only verifies", {"model_signing/_signing/sign_pkcs11.py"}),
    "pycparser": ("cffi's C parser, for bindings defined at run time; none is", set()),
    "pyasn1": ("google-auth's path for keys of the pure-Python rsa package, which is not installed",
               {"google/auth/crypt/_python_rsa.py"}),
    "pyasn1-modules": ("as pyasn1", {"google/auth/crypt/_python_rsa.py"}),
    "fsspec": ("huggingface_hub's HfFileSystem; preflight reads the Hub through its own client", set()),
    "packaging": ("huggingface_hub's framework integrations and google-auth's urllib3 transport; "
                  "preflight uses neither (google-auth goes through requests)",
                  {"google/auth/transport/urllib3.py"}),
}

# Parts of kept distributions that preflight never imports (paths under site-packages).
UNUSED_PARTS = {
    "huggingface_hub/cli": ("the hf command line; the image runs preflight", set()),
    "huggingface_hub/inference": ("Inference API clients; preflight reads repositories only",
                                  {"huggingface_hub/_inference_endpoints.py"}),
    "huggingface_hub/serialization": ("framework state-dict helpers (torch and others)", set()),
    "huggingface_hub/hub_mixin.py": ("framework model mixins", set()),
    "huggingface_hub/fastai_utils.py": ("fastai integration", set()),
    "huggingface_hub/hf_file_system.py": ("the fsspec file system over the Hub (needs fsspec)", set()),
    "huggingface_hub/_sandbox.py": ("Spaces sandboxes, for the hf command line", set()),
    "pydantic/v1": ("the pydantic 1 API; sigstore's models are pydantic 2",
                    {"pydantic/_internal/_generate_schema.py"}),  # only for a type with __get_validators__
    "pydantic/mypy.py": ("pydantic's mypy plugin", set()),
    "cffi": ("cffi's Python API for bindings defined at run time (none is); the compiled bindings "
             "load only _cffi_backend, which stays", {"OpenSSL/debug.py"}),
    "securesystemslib/_vendor/ed25519/test_data": ("test vectors of the vendored ed25519", set()),
    "google/protobuf/testdata": ("protobuf's test messages", set()),
}

# The one distribution whose command-line scripts the image keeps.
OWN = "lane-preflight"
# Installers the Dockerfile still runs after this step and then uninstalls: left alone.
BUILD_TOOLS = {"pip", "setuptools", "wheel"}
BUILD_TOOL_MODULES = ("pip/", "setuptools/", "pkg_resources/", "_distutils_hack/", "wheel/")

MB = 1e6


def canon(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


class Slim:
    def __init__(self, venv: Path) -> None:
        self.venv = venv
        found = sorted(venv.glob("lib/python3*/site-packages"))
        if len(found) != 1:
            fail(f"{venv}: expected one lib/python3*/site-packages, found {[str(p) for p in found]}")
        self.site = found[0]
        self.dists = {canon(d.metadata["Name"]): d for d in md.distributions(path=[str(self.site)])}
        self.total = 0

    def remove(self, paths: list[Path], what: str) -> None:
        freed, count = 0, 0
        for path in paths:
            if path.is_dir() and not path.is_symlink():
                for f in path.rglob("*"):
                    if f.is_file():
                        freed += f.stat().st_size
                        count += 1
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                freed += path.lstat().st_size
                count += 1
                path.unlink()
        self.total += freed
        print(f"  {what}: {count} files, {freed / MB:.1f} MB")

    def files_of(self, dist: md.Distribution) -> list[Path]:
        return [Path(str(f.locate())) for f in dist.files or []]

    # ------------------------------------------------------------------ steps

    def botocore_data(self) -> None:
        if "botocore" not in self.dists:
            print("  botocore: not installed (no s3 extra)")
            return
        data = self.site / "botocore" / "data"
        missing = [name for name in BOTOCORE_REQUIRED if not (data / name).is_file()]
        if missing:
            fail(f"botocore {self.dists['botocore'].version}: expected data files are missing: {missing}; "
                 "check what its loader reads now and update BOTOCORE_REQUIRED")
        keep = {*BOTOCORE_SERVICES, *BOTOCORE_TOP_FILES}
        self.remove(sorted(p for p in data.iterdir() if p.name not in keep),
                    f"botocore data of every service but {', '.join(BOTOCORE_SERVICES)}")
        # botocore reads NAME.json.gz where NAME.json is absent, as it does for its service models.
        big = [p for p in sorted(data.rglob("*.json")) if p.stat().st_size > 100_000]
        freed = 0
        for path in big:
            packed = path.with_name(path.name + ".gz")
            packed.write_bytes(gzip.compress(path.read_bytes(), mtime=0))
            freed += path.stat().st_size - packed.stat().st_size
            path.unlink()
        self.total += freed
        print(f"  gzipped {', '.join(p.name for p in big)}: {freed / MB:.1f} MB")
        code = self.site / "botocore"
        readers = sorted(py.relative_to(self.site).as_posix() for py in code.rglob("*.py")
                         if BOTOCORE_EXAMPLES in py.read_text(errors="replace") and "docs" not in py.relative_to(code).parts)
        if readers:
            fail(f"botocore {self.dists['botocore'].version}: {', '.join(readers)} name {BOTOCORE_EXAMPLES}, "
                 "which only botocore.docs read before; check what reads them before removing them")
        self.remove(sorted(data.glob(f"*/*/{BOTOCORE_EXAMPLES}.json*")), "botocore's usage examples (read by botocore.docs only)")
        self.ca_bundle()
        probe = (
            "import botocore.session, sys\n"
            "s = botocore.session.get_session()\n"
            "for name in sys.argv[1:]:\n"
            "    s.create_client(name, region_name='us-east-1', aws_access_key_id='k', aws_secret_access_key='s')\n"
            "s.create_client('s3', region_name='us-east-1', aws_access_key_id='k', aws_secret_access_key='s')"
            ".get_paginator('list_objects_v2')\n"
        )
        done = subprocess.run([str(self.venv / "bin" / "python"), "-c", probe, *BOTOCORE_SERVICES], capture_output=True, text=True)
        if done.returncode != 0:
            fail(f"botocore no longer makes a client from the data kept:\n{done.stderr[-2000:]}")
        print(f"  botocore makes {', '.join(BOTOCORE_SERVICES)} clients from the data kept")

    def ca_bundle(self) -> None:
        bundle = self.site / "botocore" / BOTOCORE_CA_BUNDLE
        if not bundle.is_file():
            return
        code = self.site / "botocore"
        readers = sorted(py.relative_to(self.site).as_posix() for py in code.rglob("*.py")
                         if BOTOCORE_CA_BUNDLE in py.read_text(errors="replace") and py.name != "httpsession.py")
        if readers:
            fail(f"botocore {self.dists['botocore'].version}: {', '.join(readers)} name {BOTOCORE_CA_BUNDLE}; "
                 "check what reads it before removing it")
        probe = ("import os, botocore.httpsession as h\n"
                 "print(h.where() != h.DEFAULT_CA_BUNDLE and os.path.isfile(h.get_cert_path(True)))\n")
        done = subprocess.run([str(self.venv / "bin" / "python"), "-c", probe], capture_output=True, text=True)
        if done.returncode != 0:
            fail(f"botocore.httpsession does not import:\n{done.stderr[-2000:]}")
        if done.stdout.strip() != "True":
            print(f"  botocore/{BOTOCORE_CA_BUNDLE}: kept (no certifi: botocore verifies TLS with it)")
            return
        self.remove([bundle], f"botocore/{BOTOCORE_CA_BUNDLE} (botocore verifies TLS with certifi's bundle instead)")
        done = subprocess.run([str(self.venv / "bin" / "python"), "-c", probe], capture_output=True, text=True)
        if done.stdout.strip() != "True":
            fail(f"botocore has no CA bundle left after removing its {BOTOCORE_CA_BUNDLE}:\n{done.stdout}{done.stderr[-2000:]}")

    def unused_code(self) -> None:
        """Remove UNUSED_DISTRIBUTIONS and UNUSED_PARTS, after checking that no other kept
        module imports them."""
        plan: list[tuple[str, list[Path], set[str], str]] = []  # (what, paths, modules, allowed key)
        for name, (why, _) in UNUSED_DISTRIBUTIONS.items():
            dist = self.dists.get(name)
            if dist is None:
                continue
            files = self.files_of(dist)
            tops = {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}
            modules = {t.split(".")[0] for t in tops if t != "__pycache__" and not t.endswith((".dist-info", ".data"))}
            folders = sorted(self.site / t for t in tops if (self.site / t).is_dir() and t != "__pycache__")
            plan.append((f"{name} {dist.version} ({why})", files + folders, modules, name))
        for part, (why, _) in UNUSED_PARTS.items():
            path = self.site / part
            if not path.exists():
                if (self.site / part.split("/")[0]).is_dir():
                    fail(f"{part} is not there any more: check that entry of UNUSED_PARTS")
                continue
            module = part.removesuffix(".py").replace("/", ".")
            is_module = path.suffix == ".py" or (path / "__init__.py").is_file()
            paths = [path]
            if path.suffix == ".py":
                paths += sorted((path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"))
            plan.append((f"{part} ({why})", paths, {module} if is_module else set(), part))

        removed = {p.resolve() for _, paths, _, _ in plan for p in paths if p.is_file()}
        removed_dirs = [p.resolve() for _, paths, _, _ in plan for p in paths if p.is_dir()]
        owner = {m: key for _, _, modules, key in plan for m in modules}
        allowed = {**{k: v[1] for k, v in UNUSED_DISTRIBUTIONS.items()}, **{k: v[1] for k, v in UNUSED_PARTS.items()}}
        surprises = []
        for py in self.site.rglob("*.py"):
            real = py.resolve()
            if real in removed or any(d in real.parents for d in removed_dirs):
                continue
            rel = py.relative_to(self.site).as_posix()
            if rel.startswith(BUILD_TOOL_MODULES):
                continue
            for name in imported_modules(py, self.site):
                for module, key in owner.items():
                    if (name == module or name.startswith(module + ".")) and rel not in allowed[key]:
                        surprises.append(f"{rel} imports {name} ({key})")
        if surprises:
            fail("kept modules import code this script removes as unused:\n    " + "\n    ".join(sorted(set(surprises)))
                 + "\n  check whether preflight now reaches it, then keep it or list the file as an allowed importer")
        for what, paths, _, _ in plan:
            self.remove(paths, what)

    def scripts(self) -> None:
        bin_dir = (self.venv / "bin").resolve()
        scripts = []
        for name, dist in self.dists.items():
            if name == OWN or name in UNUSED_DISTRIBUTIONS or name in BUILD_TOOLS:
                continue
            scripts += [p for p in self.files_of(dist) if p.resolve().parent == bin_dir]
        self.remove(sorted(set(scripts)), "other distributions' command lines (the image runs preflight)")

    def extras(self) -> None:
        tests = [p for p in self.site.glob("*/tests") if p.is_dir()]
        self.remove(tests, f"test folders ({', '.join(sorted(p.parent.name for p in tests)) or 'none'})")
        self.remove(sorted(self.site.rglob("*.pyi")), "type stubs (*.pyi)")
        self.remove(sorted(self.site.glob("*.dist-info/sboms")), "SBOM files in dist-info (the wheels' own SBOMs)")

    def native(self) -> None:
        stripped, freed = [], 0
        for so in sorted(self.site.rglob("*.so*")):
            if not so.is_file() or so.is_symlink():
                continue
            before = so.stat().st_size
            if strip_elf(so):
                stripped.append(so)
                freed += before - so.stat().st_size
        self.total += freed
        print(f"  symbol tables and debug sections of {len(stripped)} native files: {freed / MB:.1f} MB")
        suffixes = importlib.machinery.EXTENSION_SUFFIXES
        names = []
        for so in stripped:
            rel = so.relative_to(self.site).as_posix()
            for suffix in suffixes:
                if rel.endswith(suffix):
                    names.append(rel[: -len(suffix)].replace("/", "."))
                    break
        probe = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
        done = subprocess.run([str(self.venv / "bin" / "python"), "-c", probe, *names], capture_output=True, text=True)
        if done.returncode != 0:
            fail(f"a stripped native module no longer imports:\n{done.stderr[-2000:]}")
        print(f"  the {len(names)} stripped extension modules import: {', '.join(names)}")


def records(site: Path) -> None:
    """Drop the rows of removed files from every RECORD, so it lists what is installed."""
    for record in sorted(site.glob("*.dist-info/RECORD")):
        with open(record, newline="") as f:
            rows = list(csv.reader(f))
        kept = [r for r in rows if r and (site / r[0]).exists()]
        if len(kept) != len(rows):
            with open(record, "w", newline="") as f:
                csv.writer(f, lineterminator="\n").writerows(kept)


def imported_modules(py: Path, site: Path) -> set[str]:
    """Absolute names of the modules a file imports anywhere in it (relative imports
    resolved; `from a import b` also names a.b), except under `if TYPE_CHECKING:`."""
    try:
        tree = ast.parse(py.read_bytes(), str(py))
    except (SyntaxError, ValueError):
        return set()
    parts = list(py.relative_to(site).with_suffix("").parts)
    package = parts[:-1]
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def strip_elf(path: Path) -> bool:
    """Cut a 64-bit little-endian ELF file after its last segment and drop its section
    header table: what lies there (.symtab, .strtab, .debug_*, .comment) is never mapped,
    and the dynamic loader reads program headers only. False for anything else."""
    with open(path, "r+b") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return False
        phoff, shoff = struct.unpack_from("<QQ", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        if shoff == 0 or phnum == 0:
            return False
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        end = phoff + phentsize * phnum
        for i in range(phnum):
            offset, _vaddr, _paddr, filesz = struct.unpack_from("<QQQQ", table, i * phentsize + 8)
            end = max(end, offset + filesz)
        size = os.fstat(f.fileno()).st_size
        if end >= size:
            return False
        f.seek(0x28)
        f.write(struct.pack("<Q", 0))  # e_shoff
        f.seek(0x3C)
        f.write(struct.pack("<HH", 0, 0))  # e_shnum, e_shstrndx
        f.truncate(end)
    return True


def fail(message: str) -> None:
    print(f"slim-venv: {message}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    venv = Path(sys.argv[1] if len(sys.argv) > 1 else sys.prefix)
    slim = Slim(venv)
    print(f"slimming {slim.site}")
    slim.botocore_data()
    slim.unused_code()
    slim.scripts()
    slim.extras()
    slim.native()
    records(slim.site)
    print(f"  freed {slim.total / MB:.1f} MB in all")


if __name__ == "__main__":
    main()
