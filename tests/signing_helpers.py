"""Keys, a test CA and model signatures made with the reference library (model_signing),
all offline; and a real keyless Sigstore bundle for the trusted-root path."""

from __future__ import annotations

import datetime
import json
import pathlib
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = datetime.timezone.utc


@dataclass
class KeyPair:
    private: Path
    public: Path


def ec_key_pair(folder: Path, name: str = "publisher", curve: ec.EllipticCurve | None = None) -> KeyPair:
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(curve or ec.SECP256R1())
    priv = folder / f"{name}.key"
    pub = folder / f"{name}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(priv, pub)


@dataclass
class Pki:
    """A root CA, an intermediate and a code-signing leaf, as PEM files."""

    root: Path  # the trust anchor a policy names in certificate_chain
    intermediate: Path
    leaf: Path
    leaf_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Models Inc"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool, start: datetime.datetime, end: datetime.datetime) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer)).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    else:
        b = (b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False))
    b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if issuer_key is not key:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path, *, name: str = "Test", leaf_start: datetime.datetime | None = None,
             leaf_end: datetime.datetime | None = None) -> Pki:
    """Root → intermediate → leaf. The leaf's validity can be set (an expired leaf)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(UTC)
    root_key, inter_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    long_ago, far = now - datetime.timedelta(days=3650), now + datetime.timedelta(days=3650)
    root = _cert(f"{name} Root CA", root_key, f"{name} Root CA", root_key, ca=True, start=long_ago, end=far)
    inter = _cert(f"{name} Intermediate CA", inter_key, f"{name} Root CA", root_key, ca=True, start=long_ago, end=far)
    leaf = _cert(f"{name} Model Publisher", leaf_key, f"{name} Intermediate CA", inter_key, ca=False,
                 start=leaf_start or now - datetime.timedelta(days=1), end=leaf_end or now + datetime.timedelta(days=365))
    pem = serialization.Encoding.PEM
    out = Pki(folder / "root.pem", folder / "intermediate.pem", folder / "leaf.pem", folder / "leaf.key")
    out.root.write_bytes(root.public_bytes(pem))
    out.intermediate.write_bytes(inter.public_bytes(pem))
    out.leaf.write_bytes(leaf.public_bytes(pem))
    out.leaf_key.write_bytes(leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return out


def _hashing(model: Path, sig: Path, ignore: Iterable[str | Path], shards: int | None = None, algorithm: str = "sha256"):
    import model_signing

    config = model_signing.hashing.Config()
    if shards:
        config.use_shard_serialization(hashing_algorithm=algorithm, shard_size=shards)
    else:
        config.use_file_serialization(hashing_algorithm=algorithm)
    # as the CLI does: the signature file and the given paths, relative to the model
    paths = [p for p in (Path(x) if Path(x).is_absolute() else model / x for x in [*ignore, sig])
             if model.is_dir() and p.resolve().is_relative_to(model.resolve())]
    return config.set_ignored_paths(paths=[p.resolve().relative_to(model.resolve()) for p in paths], ignore_git_paths=True)


def sign_with_key(model: Path, sig: Path, key: KeyPair, *, ignore: Iterable[str] = (), shards: int | None = None,
                  algorithm: str = "sha256") -> Path:
    import model_signing

    (model_signing.signing.Config().use_elliptic_key_signer(private_key=key.private)
     .set_hashing_config(_hashing(model, sig, ignore, shards, algorithm)).sign(model, sig))
    return sig


def sign_with_certificate(model: Path, sig: Path, pki: Pki, *, ignore: Iterable[str] = ()) -> Path:
    import model_signing

    (model_signing.signing.Config()
     .use_certificate_signer(private_key=pki.leaf_key, signing_certificate=pki.leaf, certificate_chain=[pki.intermediate])
     .set_hashing_config(_hashing(model, sig, ignore)).sign(model, sig))
    return sig


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The reference command line (`model_signing sign|verify ...`)."""
    return subprocess.run([sys.executable, "-m", "model_signing", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


def statement_of(sig: Path) -> dict:
    import base64

    return json.loads(base64.b64decode(json.loads(sig.read_text())["dsseEnvelope"]["payload"]))


def sigstore_production_root() -> Path:
    """The Sigstore public-good trusted root that sigstore-python ships (its offline copy)."""
    import sigstore

    root = pathlib.Path(sigstore.__file__).parent / "_store" / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev" / "trusted_root.json"
    assert root.is_file(), f"sigstore no longer ships {root}"
    return root
