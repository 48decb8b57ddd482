"""OpenSSF model signatures: a lane is ready only when its publisher signed exactly its files.

The format (sigstore/model-transparency, `model_signing` on PyPI): a Sigstore bundle whose
DSSE envelope holds an in-toto statement listing every file of the model with its digest,
signed with a key pair, a certificate (PKI) or keylessly through Sigstore.

The work is split so that no model byte is read twice:
  - `verify_statement` hands the signature file to model_signing's verifiers, which check
    the envelope, the signer (key, certificate chain, Sigstore identity under an offline
    trusted root) and the statement's own consistency, and return the signed list of files
    and digests. The model itself is not hashed there.
  - `compare` (pure) holds that list against the sha256 digests check already has (from
    receipts or the digest pass). Only a file with no sha256 yet is hashed, once, and its
    receipt kept.
  - `verify_lane` ties both to a lane and remembers a passed verification in the receipts
    ("sig:<lane>", keyed by the stat keys of the lane's files, of the signature and trust
    files, and by the policy), so a warm re-check neither imports the library nor reads a byte.

A statement made with shard serialization or another hash than sha256 cannot be compared
with file digests; the library then hashes the lane's files itself (a second read, said in
the lane's note).

model_signing (and sigstore, cryptography, pyOpenSSL) come with the `signing` extra and are
imported only when a lane has a signature policy and its verification is not remembered.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import posixpath
import stat as stat_mod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import problems as P
from .errors import ManifestError
from .manifest import SignaturePolicy, signature_file
from .problems import Problem
from .record import record

if TYPE_CHECKING:
    from .check import Context, LanePlan

MAX_BUNDLE = 4 * 2**20  # a bundle whose statement lists 10 000 files is about 2.2 MB (215 bytes a file)
MAX_RESOURCES = 10_000  # files (or shards) one signed statement may list
MAX_BUNDLE_ITEMS = 400_000  # JSON members and items of a bundle or its statement (':' and ',', an upper bound)
RECEIPT_PREFIX = "sig:"


class SignatureError(Exception):
    """The signature does not prove what the policy asks (reported as signature-invalid)."""


@record(frozen=True)
class Resource:
    name: str  # a path in the model ('.' when a single file was signed); with shards, PATH:START:END
    algorithm: str
    digest: str


@record(frozen=True)
class Statement:
    """What a verified signature covers."""

    model_name: str
    method: str  # "files" or "shards"
    hash_type: str
    ignore_paths: tuple[str, ...]
    resources: tuple[Resource, ...]
    signer: str = ""
    shard_size: int | None = None

    @property
    def by_file(self) -> bool:
        """Digests comparable with plain sha256 file digests."""
        return self.method == "files" and all(r.algorithm == "sha256" for r in self.resources)

    def file_digests(self) -> dict[str, str]:
        """Per file: its digest, or with shards the file's shard list as one comparable string."""
        if self.method != "shards":
            return {r.name: f"{r.algorithm}:{r.digest}" for r in self.resources}
        shards: dict[str, list[str]] = {}
        for r in self.resources:
            path, _, span = _split_shard(r.name)
            shards.setdefault(path, []).append(f"{span}={r.algorithm}:{r.digest}")
        return {path: ",".join(sorted(parts, key=_span_key)) for path, parts in shards.items()}


def _split_shard(name: str) -> tuple[str, str, str]:
    parts = name.rsplit(":", 2)
    if len(parts) != 3:
        return name, "", ""
    return parts[0], ":", f"{parts[1]}:{parts[2]}"


def _span_key(part: str) -> tuple[int, str]:
    start = part.split(":", 1)[0]
    return (int(start), part) if start.isdigit() else (-1, part)


# ---------------------------------------------------------------- compare (pure)


def ignored(rel: str, ignore_paths: Iterable[str]) -> bool:
    """As model_signing reads `ignore_paths`: a path, or everything under a folder."""
    for p in ignore_paths:
        p = posixpath.normpath(p.strip("/")) if p.strip("/") else ""
        if p and (rel == p or rel.startswith(p + "/")):
            return True
    return False


def compare(statement: Statement, present: Mapping[str, str], *, wanted: Callable[[str], bool], absent: Iterable[str] = (),
            single: str | None = None, skip: Iterable[str] = ()) -> list[Problem]:
    """The lane's files against the signed list.

    `present`: each file of the lane that is there and readable → its digest as
    `Statement.file_digests` spells it ("sha256:<hex>", or a shard list). `wanted(name)`:
    whether the lane serves a signed file (its include/exclude, or a single-file lane's
    names): a signed file the lane does not select is not required. `absent`: files already
    reported missing. `single`: the file a single-file lane holds, which a statement made
    by signing that one file calls '.'. `skip`: files not to judge (the signature itself,
    files already found broken)."""
    signed = statement.file_digests()
    if single is not None and "." in signed and len(signed) == 1:
        signed = {single: signed["."]}
    skip = set(skip)
    absent = set(absent)
    out: list[Problem] = []
    for rel in sorted(present):
        if rel in skip or ignored(rel, statement.ignore_paths):
            continue
        want = signed.get(rel)
        if want is None:
            out.append(P.error(rel, P.UNSIGNED_FILE, f"{rel} is not covered by the signature (the signed statement lists "
                                                     f"{len(signed)} files; a file added or swapped in is not the publisher's)"))
        elif present[rel] != want:
            got = present[rel]
            out.append(P.error(rel, P.SIGNATURE_MISMATCH, f"{rel}: {_short(got)} differs from the signed {_short(want)}"))
    for name in sorted(signed):
        if name in present or name in skip or name in absent or not wanted(name):
            continue
        out.append(P.error(name, P.SIGNED_FILE_MISSING, f"{name} is signed but not in the lane"))
    return out


def _short(digest: str) -> str:
    return digest if len(digest) <= 90 else digest[:87] + "…"


# ---------------------------------------------------------------- the library


@record(frozen=True)
class Trust:
    """The policy's files, resolved (absolute, or relative to the manifest)."""

    policy: SignaturePolicy
    key: Path | None = None
    chain: tuple[Path, ...] = ()
    root: Path | None = None

    @classmethod
    def of(cls, policy: SignaturePolicy, manifest_file: str) -> Trust:
        base = Path(manifest_file).parent

        def res(p: str | None) -> Path | None:
            return None if p is None else (Path(p) if os.path.isabs(p) else base / p)

        return cls(policy, res(policy.key), tuple(res(p) for p in policy.certificate_chain), res(policy.trusted_root))

    def files(self) -> list[tuple[str, Path]]:
        out = [("key", self.key)] if self.key else []
        out += [(f"certificate_chain[{i}]", p) for i, p in enumerate(self.chain)]
        out += [("trusted_root", self.root)] if self.root else []
        return out


def _library():
    try:
        from model_signing._signing import signing as ms_signing
    except ImportError as exc:
        from .errors import MissingExtra

        raise MissingExtra("a lane that requires a model signature", "signing", exc.name) from None
    return ms_signing


def make_verifier(trust: Trust, where: str):
    """model_signing's verifier for the policy. Trust files that cannot be used are the
    manifest's mistake (exit 2), not the lane's."""
    _library()
    policy = trust.policy
    try:
        if policy.method == "key":
            from model_signing._signing import sign_ec_key

            return sign_ec_key.Verifier(trust.key)
        if policy.method == "certificate":
            from model_signing._signing import sign_certificate

            return sign_certificate.Verifier(list(trust.chain))
        return _sigstore_verifier(trust.root, policy.identity, policy.issuer)
    except ImportError as exc:
        from .errors import MissingExtra

        raise MissingExtra(f"verifying {policy.method} signatures", "signing", exc.name) from None
    except OSError as exc:
        raise ManifestError(f"cannot read the signature's {policy.method} trust file: {exc.strerror} ({exc.filename})", field=where) from None
    except Exception as exc:  # the library's parse errors have no common base
        raise ManifestError(f"the signature's {policy.method} trust file cannot be used: {_reason(exc)}", field=where) from None


def _sigstore_verifier(root: Path, identity: str, issuer: str):
    """model_signing's Sigstore verifier over a trusted root read from a file, never from
    the network: a `trusted_root.json` or a client trust config holding one."""
    from model_signing._signing import sign_sigstore
    from sigstore.models import ClientTrustConfig, TrustedRoot
    from sigstore.verify import Verifier, policy

    text = root.read_text(encoding="utf-8")
    media = str(json.loads(text).get("mediaType", ""))
    trusted = ClientTrustConfig.from_json(text).trusted_root if "clienttrustconfig" in media.lower() else TrustedRoot.from_file(str(root))

    class OfflineVerifier(sign_sigstore.Verifier):
        def __init__(self) -> None:  # the parent would build a production config (a TUF fetch) first
            self._verifier = Verifier(trusted_root=trusted)
            self._policy = policy.Identity(identity=identity, issuer=issuer)

    return OfflineVerifier()


def verify_statement(trust: Trust, sig: Path, verifier=None, where: str = "signature") -> Statement:
    """Check the signature at `sig` under the policy; the statement it signs. Reads only `sig`."""
    import contextlib
    import io

    _precheck(sig)
    _library()
    verifier = verifier or make_verifier(trust, where)
    method = trust.policy.method
    try:
        if method == "sigstore":
            from model_signing._signing import sign_sigstore as fmt
        else:
            from model_signing._signing import sign_sigstore_pb as fmt
        signature = fmt.Signature.read(sig)
    except OSError as exc:
        raise SignatureError(f"cannot read the signature: {exc.strerror}") from None
    except Exception as exc:
        raise SignatureError(f"not a Sigstore bundle ({_reason(exc)})") from None
    # ec_key's verifier prints a warning for old bundles on stdout, which may be the JSON report
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            manifest = verifier.verify(signature)
        except Exception as exc:
            raise SignatureError(_verify_reason(method, exc)) from None
    signer = describe_signer(signature, trust)
    if method == "certificate":
        _not_expired(signature)
    return _statement(manifest, signer)


def _bounded_json(raw: bytes, what: str) -> object:
    from .formats.jsonfile import Limits, parse_json

    value, err = parse_json(raw, Limits(max_bytes=MAX_BUNDLE, max_items=MAX_BUNDLE_ITEMS))
    if err is not None:
        raise SignatureError(f"{what} {err.message}")
    return value


def _precheck(sig: Path) -> None:
    """The bundle read within bounds before the library parses it: model_signing holds a
    bundle as JSON, then protobuf and pydantic objects (about 8 times its size, and a second
    per 60 000 files) and parses the whole statement even when the signature over it does
    not verify. Refused here: a bundle over MAX_BUNDLE bytes, JSON that does not read within
    bounds, a statement listing more than MAX_RESOURCES files. Anything else odd is left to
    the library to name."""
    try:
        with open(sig, "rb") as f:
            raw = f.read(MAX_BUNDLE + 1)
    except OSError as exc:
        raise SignatureError(f"cannot read the signature: {exc.strerror}") from None
    if len(raw) > MAX_BUNDLE:
        raise SignatureError(f"more than {MAX_BUNDLE} bytes: not a signature")
    bundle = _bounded_json(raw, "not a Sigstore bundle: it")
    envelope = bundle.get("dsseEnvelope") if isinstance(bundle, dict) else None
    payload = envelope.get("payload") if isinstance(envelope, dict) else None
    if not isinstance(payload, str):
        return
    try:
        decoded = base64.b64decode(payload, validate=True)
    except ValueError:
        return
    statement = _bounded_json(decoded, "the signed statement")
    predicate = statement.get("predicate") if isinstance(statement, dict) else None
    resources = predicate.get("resources") if isinstance(predicate, dict) else None
    if isinstance(resources, list) and len(resources) > MAX_RESOURCES:
        raise SignatureError(f"the statement lists {len(resources)} files (at most {MAX_RESOURCES}); not read further")


def _statement(manifest, signer: str) -> Statement:
    args = dict(manifest.serialization_type)
    resources = tuple(Resource(str(rd.identifier), str(rd.digest.algorithm), rd.digest.digest_hex) for rd in manifest.resource_descriptors())
    for r in resources:
        path = _split_shard(r.name)[0] if args.get("method") == "shards" else r.name
        if path != "." and (path.startswith("/") or ".." in path.split("/") or "\x00" in path):
            raise SignatureError(f"the signed statement names {path[:80]!r}, which is not a path inside a model")
    shard = args.get("shard_size")
    return Statement(str(manifest.model_name), str(args.get("method", "files")), str(args.get("hash_type", "sha256")),
                     tuple(str(p) for p in args.get("ignore_paths") or ()), resources, signer,
                     int(shard) if isinstance(shard, (int, float)) and shard >= 1 else None)


def _not_expired(signature) -> None:
    """Key and certificate bundles carry no trusted time: model_signing checks the chain as
    of the signing certificate's start. Without a timestamp to prove the signature was made
    while the certificate was valid, an expired certificate proves nothing now."""
    import datetime

    from cryptography import x509

    now = datetime.datetime.now(datetime.timezone.utc)
    for raw in signature.bundle.verification_material.x509_certificate_chain.certificates:
        cert = x509.load_der_x509_certificate(raw.raw_bytes)
        if cert.not_valid_after_utc < now:
            raise SignatureError(f"certificate {cert.subject.rfc4514_string() or '(no subject)'} expired on "
                                 f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; re-sign with a valid certificate")
        if cert.not_valid_before_utc > now:
            raise SignatureError(f"certificate {cert.subject.rfc4514_string() or '(no subject)'} is not valid before "
                                 f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if type(exc).__name__ == "ValidationError":
        text = text.split(" For further information")[0]
    return text if len(text) <= 300 else text[:297] + "…"


def _verify_reason(method: str, exc: BaseException) -> str:
    name = type(exc).__name__
    text = _reason(exc)
    if name == "InvalidSignature" or not str(exc):
        return "the signature does not verify with " + {"key": "this public key", "certificate": "the signing certificate",
                                                        "sigstore": "the Sigstore certificate"}[method]
    if name == "X509StoreContextError":
        return f"the signing certificate is not trusted by certificate_chain ({text})"
    if "Key mismatch" in text:
        return "signed by another key than the policy's public key"
    return text


def describe_signer(signature, trust: Trust | None) -> str:
    """Who signed, in words, from the bundle (after verification, or unverified for inspect)."""
    try:
        return _describe_material(signature.bundle)
    except Exception:  # a display detail: never fails a check
        return trust.policy.method if trust else "unknown"


def _describe_material(bundle) -> str:
    from cryptography import x509

    material = bundle.verification_material
    chain = getattr(material, "x509_certificate_chain", None)
    certs = list(chain.certificates) if chain is not None and chain.certificates else []
    if certs:
        cert = x509.load_der_x509_certificate(certs[0].raw_bytes)
        return f"certificate {cert.subject.rfc4514_string() or '(no subject)'} issued by {cert.issuer.rfc4514_string()}"
    cert_obj = getattr(material, "certificate", None)
    if cert_obj is not None and getattr(cert_obj, "raw_bytes", None):
        return _sigstore_identity(x509.load_der_x509_certificate(cert_obj.raw_bytes))
    if hasattr(bundle, "signing_certificate"):
        return _sigstore_identity(bundle.signing_certificate)
    key = getattr(material, "public_key", None)
    hint = getattr(key, "hint", None) if key is not None else None
    return f"public key sha256:{hint}" if hint else "a public key (no key hint in the bundle)"


_OIDC_ISSUER = ("1.3.6.1.4.1.57264.1.8", "1.3.6.1.4.1.57264.1.1")


def _sigstore_identity(cert) -> str:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in san]
    except x509.ExtensionNotFound:
        names = []
    issuer = None
    for oid in _OIDC_ISSUER:
        for ext in cert.extensions:
            if ext.oid.dotted_string == oid:
                raw = ext.value.value
                issuer = (raw[2:] if oid.endswith(".8") and len(raw) > 2 else raw).decode("utf-8", "replace")
                break
        if issuer:
            break
    return f"sigstore {', '.join(names) or '(no identity)'}" + (f" via {issuer}" if issuer else "")


# ---------------------------------------------------------------- a lane


@record
class _Seen:
    present: dict[str, str] = field(default_factory=dict)
    absent: set[str] = field(default_factory=set)
    skip: set[str] = field(default_factory=set)


def signature_path(plan: LanePlan) -> tuple[str | None, Path]:
    """(the signature's name among the lane's files or None when it lives elsewhere, its path)."""
    name = signature_file(plan.lane)
    if name.startswith("/"):
        return None, Path(name)
    return name, plan.root / name


def fingerprint(ctx: Context, plan: LanePlan, sig: Path, trust: Trust) -> str | None:
    """What a passed verification depends on; None when a file cannot be stat'ed."""
    h = hashlib.sha256(repr((plan.lane.kind, plan.lane.path, plan.lane.include, plan.lane.exclude, str(plan.root), trust.policy)).encode())
    for rel, obs in sorted(plan.files.items()):
        st = obs.st
        h.update(repr((rel, None if st is None else (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))).encode())
    for label, p in [("signature", sig), *trust.files()]:
        try:
            st = os.stat(p)
        except OSError:
            return None
        h.update(repr((label, str(p), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)).encode())
    return h.hexdigest()


def verify_lane(ctx: Context, plan: LanePlan) -> list[Problem]:
    """The lane's signature findings (empty when it verifies, or verified before)."""
    from .check import inside

    policy = plan.lane.signature
    if policy is None or plan.escaped:
        return []
    if any(p.is_error and p.code == P.MISSING and p.path == plan.lane.path for p in plan.result.problems):
        return []  # the lane is not there at all: nothing to verify yet
    where = f"lanes.{plan.lane.name}.signature"
    rel, sig = signature_path(plan)
    label = rel or str(sig)
    obs = plan.files.get(rel) if rel else None
    if rel is not None and not inside(ctx.real_models_dir, os.path.realpath(sig)):
        return [P.error(rel, P.SIGNATURE_INVALID, f"{rel} resolves outside the models folder; not read")]
    try:
        st = os.stat(sig)
    except FileNotFoundError:
        if obs is not None and any(p.path == rel and p.is_error for p in plan.result.problems):
            return []  # reported missing already (sync fetches it with the lane's other files)
        if not policy.required:
            return [P.warning(label, P.SIGNATURE_MISSING, f"no signature at {label}; the lane is accepted unsigned (signature.required: false)")]
        return [P.error(label, P.SIGNATURE_MISSING, f"no signature at {label}: the lane requires one signed with {_policy_words(policy)}")]
    except OSError as exc:
        return [P.error(label, P.SIGNATURE_INVALID, f"cannot read the signature {label}: {exc.strerror}")]
    if not stat_mod.S_ISREG(st.st_mode):
        return [P.error(label, P.SIGNATURE_INVALID, f"the signature {label} is not a regular file")]
    if st.st_size > MAX_BUNDLE:
        return [P.error(label, P.SIGNATURE_INVALID, f"the signature {label} is {st.st_size} bytes (at most {MAX_BUNDLE}): not a signature")]
    trust = Trust.of(policy, ctx.manifest.file)
    for name, path in trust.files():
        if not path.is_file():
            raise ManifestError(f"the signature's {name} {path} " + ("is not a file" if path.exists() else "does not exist"),
                                field=f"{where}.{name.split('[')[0]}", hint="mount the key or trust root as a file (see the README, 'Signed models')")
    fp = fingerprint(ctx, plan, sig, trust) if ctx.verify != "full" else None
    key = RECEIPT_PREFIX + plan.lane.name
    if fp is not None and ctx.receipts.lane_ok(key, fp) is not None:
        info, at = ctx.receipts.lane_info(key)
        plan.result.signature = {"policy": policy.method, "trusted": _policy_words(policy), "signer": info.get("signer"),
                                 "file": label, "verified": "receipt", "verified_at": at}
        return []
    try:
        statement = verify_statement(trust, sig, where=where)
    except SignatureError as exc:
        return [P.error(label, P.SIGNATURE_INVALID, f"{label}: {exc}")]
    seen = _observe(plan, rel)
    single = None if plan.lane.is_dir else posixpath.basename(plan.lane.path)
    wanted = _wanted(plan)
    found: list[Problem] = []
    if statement.by_file:
        _hash_missing(ctx, plan, seen, statement, single)
    else:
        try:
            seen.present = _library_digests(plan, seen, statement, single)
        except SignatureError as exc:
            return [P.error(label, P.SIGNATURE_INVALID, f"{label}: {exc}")]
        plan.result.note = plan.result.note or (f"signed with {statement.method} serialization and {statement.hash_type}: "
                                                "the files were read again to verify it (sha256 per file needs no second read)")
    found += compare(statement, seen.present, wanted=wanted, absent=seen.absent, single=single, skip=seen.skip)
    if not any(p.is_error for p in found):
        plan.result.signature = {"policy": policy.method, "trusted": _policy_words(policy), "signer": statement.signer,
                                 "file": label, "verified": "now"}
    if not found and not plan.result.errors and fp is not None:
        ctx.receipts.mark_lane(key, fp, [], {"signer": statement.signer})
    return found


def _policy_words(policy: SignaturePolicy) -> str:
    if policy.method == "key":
        return f"the key {policy.key}"
    if policy.method == "certificate":
        return "a certificate under " + ", ".join(policy.certificate_chain)
    return f"{policy.identity} (issuer {policy.issuer})"


def _wanted(plan: LanePlan) -> Callable[[str], bool]:
    from .check import gguf_split_names, selected

    lane = plan.lane
    if lane.is_dir:
        return lambda name: selected(name, lane)
    name = posixpath.basename(lane.path)
    names = set(gguf_split_names(name) if lane.kind == "gguf" else [name])
    return lambda n: n in names


def _observe(plan: LanePlan, sig_rel: str | None) -> _Seen:
    seen = _Seen()
    # files whose bytes are not worth a read for a finding already made (a format error is not one of these)
    broken = {p.path for p in plan.result.problems if p.is_error and p.code in (P.UNREADABLE, P.SIZE_MISMATCH, P.PATH_ESCAPE, P.NOT_A_FILE)}
    for rel, obs in plan.files.items():
        if rel == sig_rel:
            seen.skip.add(rel)
        elif obs.st is None:
            seen.absent.add(rel)
        else:
            sha = (obs.digests or {}).get("sha256")
            if rel in broken and not sha:
                seen.skip.add(rel)
            else:
                seen.present[rel] = f"sha256:{sha}" if sha else ""
    return seen


def _hash_missing(ctx: Context, plan: LanePlan, seen: _Seen, statement: Statement, single: str | None) -> None:
    """sha256 of the files the statement covers that have none yet: a receipt if one vouches
    for it, else one read (in parallel), and the receipt kept for next time."""
    from .integrity import hash_files

    signed = set(statement.file_digests())
    todo = []
    for rel, digest in seen.present.items():
        if digest or ignored(rel, statement.ignore_paths):
            continue
        if rel not in signed and not (single == rel and "." in signed):
            continue  # unsigned whatever its bytes
        obs = plan.files[rel]
        rec = ctx.receipts.lookup(plan.state_key(rel), obs.st) if ctx.verify != "full" else None
        if rec and rec.get("sha256"):
            seen.present[rel] = f"sha256:{rec['sha256']}"
        else:
            todo.append(rel)
    results = hash_files([(str(plan.files[rel].abs), ("sha256",)) for rel in todo])
    for rel, res in zip(todo, results):
        obs = plan.files[rel]
        if isinstance(res, OSError):
            plan.result.problems.append(P.error(rel, P.UNREADABLE, f"{rel}: read failed ({res.strerror})"))
            seen.present.pop(rel)
            seen.skip.add(rel)
            continue
        seen.present[rel] = f"sha256:{res['sha256']}"
        plan.result.hashed_bytes += obs.st.st_size
        try:
            now = os.stat(obs.abs)
        except OSError:
            continue
        if (now.st_size, now.st_mtime_ns) == (obs.st.st_size, obs.st.st_mtime_ns):
            ctx.receipts.record(plan.state_key(rel), now, {**(obs.digests or {}), **res})


def _library_digests(plan: LanePlan, seen: _Seen, statement: Statement, single: str | None) -> dict[str, str]:
    """Shards, or another hash than sha256: the library hashes the lane's files as the
    statement says they were serialized (one more read of each)."""
    from model_signing import hashing

    args = {"hashing_algorithm": _ALGORITHMS.get(statement.hash_type, statement.hash_type), "allow_symlinks": False}
    rels = [rel for rel in seen.present if not ignored(rel, statement.ignore_paths)]
    try:
        config = hashing.Config()
        if statement.method == "shards":
            if statement.shard_size is None:
                raise ValueError("no shard size in the statement")
            config.use_shard_serialization(shard_size=statement.shard_size, **args)
        else:
            config.use_file_serialization(**args)
        config.set_ignored_paths(paths=[], ignore_git_paths=False)
        if single is not None and rels == [single] and list(statement.file_digests()) == ["."]:
            manifest = config.hash(plan.files[single].abs)
        else:
            manifest = config.hash(plan.root, files_to_hash=[plan.files[rel].abs for rel in rels])
    except OSError as exc:
        raise SignatureError(f"cannot read the lane's files to compare them with the statement: {exc.strerror}") from None
    except Exception as exc:
        raise SignatureError(f"the statement's serialization ({statement.method}, {statement.hash_type}) cannot be "
                             f"recomputed: {_reason(exc)}") from None
    actual = Statement("", statement.method, statement.hash_type, (), tuple(
        Resource(str(rd.identifier), str(rd.digest.algorithm), rd.digest.digest_hex) for rd in manifest.resource_descriptors())).file_digests()
    if single is not None and "." in actual:
        actual = {single: actual.pop(".")}
    for rel in rels:
        plan.result.hashed_bytes += plan.files[rel].st.st_size
    return {rel: actual.get(rel, "") for rel in seen.present}


_ALGORITHMS = {"blake2b": "blake2"}  # a statement's hash_type → model_signing's name for the hasher


# ---------------------------------------------------------------- inspect (unverified)


def describe(sig: Path, files: Iterable[str] = (), single: str | None = None) -> dict[str, Any]:
    """What a signature file says, read without verifying it (inspect has no policy):
    its format, signer, the model it names and how its list compares with `files`."""
    try:
        st = sig.stat()
        if st.st_size > MAX_BUNDLE:
            return {"file": sig.name, "error": f"{st.st_size} bytes: too large for a signature"}
        bundle = _bounded_json(sig.read_bytes(), "it")
        envelope = bundle["dsseEnvelope"]
        statement = _bounded_json(base64.b64decode(envelope["payload"]), "its statement")
    except (OSError, ValueError, KeyError, TypeError, SignatureError) as exc:
        return {"file": sig.name, "error": f"not a model signature bundle ({_reason(exc)})"}
    if not isinstance(statement, dict):
        return {"file": sig.name, "error": "the envelope's payload is not an in-toto statement"}
    out: dict[str, Any] = {"file": sig.name, "verified": False, "signer": _describe_json(bundle.get("verificationMaterial") or {})}
    predicate = statement.get("predicate") or {}
    subjects = statement.get("subject") or [{}]
    out["model"] = subjects[0].get("name") if isinstance(subjects[0], dict) else None
    out["predicate"] = statement.get("predicateType")
    resources = predicate.get("resources") if isinstance(predicate, dict) else None
    if not isinstance(resources, list):
        return out
    serialization = predicate.get("serialization") or {}
    names = sorted({str(r.get("name")) for r in resources if isinstance(r, dict)})
    if serialization.get("method") == "shards":
        names = sorted({_split_shard(n)[0] for n in names})
    ignore = [str(p) for p in serialization.get("ignore_paths") or []]
    out["serialization"] = f"{serialization.get('method', '?')}, {serialization.get('hash_type', '?')}"
    out["covers"] = len(names)
    if single is not None and names == ["."]:
        names = [single]
    files = [f for f in files if f != sig.name and not ignored(f, ignore)]
    out["unsigned"] = sorted(set(files) - set(names))
    out["not_present"] = sorted(set(names) - set(files)) if files else []
    return out


def _describe_json(material: Mapping) -> str:
    try:
        from cryptography import x509
    except ImportError:
        x509 = None
    chain = (material.get("x509CertificateChain") or {}).get("certificates") or []
    raw = chain[0].get("rawBytes") if chain else (material.get("certificate") or {}).get("rawBytes")
    if raw:
        if x509 is None:
            return "a certificate"
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(raw))
        except ValueError:
            return "a certificate (unreadable)"
        if chain:
            return f"certificate {cert.subject.rfc4514_string() or '(no subject)'} issued by {cert.issuer.rfc4514_string()}"
        return _sigstore_identity(cert)
    hint = (material.get("publicKey") or {}).get("hint")
    return f"public key sha256:{hint}" if hint else "a public key"
