"""Signed models: OpenSSF model signatures made with the reference library and command line
(model_signing) verify in `preflight check`; every way a signed lane can be wrong is refused
with its code and nothing is reported ready; a warm re-check neither hashes nor imports the
library. Key pairs and a test CA are made here, offline; the keyless path uses a real
Sigstore bundle and the trusted root sigstore-python ships."""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("model_signing")

from preflight.cli import main  # noqa: E402
from tests.repos import gguf_file, hf_model, write_tree  # noqa: E402
from tests.signing_helpers import (  # noqa: E402
    cli, ec_key_pair, sign_with_certificate, sign_with_key, sigstore_production_root, statement_of, make_pki,
)

LANE = "vllm/tiny"
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    code: int
    report: dict
    stderr: str

    @property
    def lane(self) -> dict:
        return self.report["lanes"][0]

    def codes(self) -> list[str]:
        return [p["code"] for p in self.lane["problems"]]

    def problems(self, code: str) -> list[dict]:
        return [p for p in self.lane["problems"] if p["code"] == code]


class Signed:
    """A models folder with one lane, a manifest requiring its signature, and the keys."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models = root / "models"
        self.keys = root / "keys"
        self.manifest = root / "lanes.yaml"
        self.key = ec_key_pair(self.keys)

    @property
    def lane(self) -> Path:
        return self.models / LANE

    def folder(self, files: dict[str, bytes] | None = None) -> Path:
        return write_tree(self.lane, files if files is not None else hf_model())

    def policy(self, policy: str, lane: str | None = None) -> Signed:
        lane = lane or f"{{name: tiny, kind: hf-dir, path: {LANE}}}"
        body = lane.rstrip("}") + f", signature: {policy}}}" if policy else lane
        self.manifest.write_text(f"version: 1\nlanes:\n  - {body}\n")
        return self

    def check(self, *args: str) -> Run:
        result = CliRunner().invoke(main, ["check", "-m", str(self.manifest), "-d", str(self.models), "--json", "--termination-log", "", *args])
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert "Traceback" not in result.output, result.output
        report = json.loads(result.stdout)
        assert report["exit_code"] == result.exit_code
        return Run(result.exit_code, report, result.stderr)

    def receipts(self) -> dict:
        return json.loads((self.models / ".preflight" / "receipts.json").read_text())


@pytest.fixture()
def signed(tmp_path: Path) -> Signed:
    return Signed(tmp_path)


KEY_POLICY = "{method: key, key: keys/publisher.pub}"


def not_ready(run: Run, code: str) -> list[dict]:
    assert run.code == 1, run.report
    assert run.report["status"] == "not-ready" and run.lane["status"] == "invalid"
    found = run.problems(code)
    assert found, run.codes()
    return found


def flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------ key pairs


def test_a_signed_ready_lane_says_which_policy_held_who_signed_and_when(signed: Signed) -> None:
    """A signed lane does not look like an unsigned one: the report (and the summary)
    carries the policy, the signer, and whether it was verified now or remembered."""
    lane = signed.folder()
    sign_with_key(lane, lane / "model.sig", signed.key)
    signed.policy(KEY_POLICY)
    first = signed.check()
    sig = first.lane["signature"]
    assert sig["policy"] == "key" and sig["verified"] == "now" and "publisher.pub" in sig["trusted"], sig
    assert sig["signer"] and sig["signer"] != "?"
    assert "signed by" in first.stderr and "verified now" in first.stderr
    again = signed.check()
    remembered = again.lane["signature"]
    assert remembered["verified"] == "receipt" and remembered["signer"] == sig["signer"] and remembered["verified_at"]
    assert "(receipt)" in again.stderr
    signed.policy("")  # the same lane unsigned: no signature claim
    assert "signature" not in signed.check().lane



def test_key_signed_lane_is_ready_and_a_warm_recheck_reads_nothing(signed: Signed) -> None:
    lane = signed.folder()
    sign_with_key(lane, lane / "model.sig", signed.key)
    signed.policy(KEY_POLICY)

    first = signed.check()
    assert first.code == 0 and first.lane["status"] == "ready", first.report
    assert first.lane["problems"] == []
    size = sum(p.stat().st_size for p in lane.iterdir() if p.name != "model.sig")
    assert first.lane["hashed_bytes"] == size  # every signed file read once, the signature not hashed
    receipts = signed.receipts()
    assert "sig:tiny" in receipts["lanes"]
    assert all(f"{LANE}/{name}" in receipts["files"] for name in hf_model())

    again = signed.check()
    assert again.code == 0 and again.lane["hashed_bytes"] == 0


def test_warm_recheck_does_not_import_the_library(signed: Signed) -> None:
    lane = signed.folder()
    sign_with_key(lane, lane / "model.sig", signed.key)
    signed.policy(KEY_POLICY)
    probe = textwrap.dedent(f"""
        import json, sys
        from preflight.cli import main
        try:
            main(["check", "-m", {str(signed.manifest)!r}, "-d", {str(signed.models)!r}, "--json", "--termination-log", ""])
        except SystemExit as exc:
            code = exc.code
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("model_signing", "sigstore", "OpenSSL", "in_toto_attestation"))
        print(json.dumps({{"code": code, "loaded": loaded}}), file=sys.stderr)
    """)

    def run() -> tuple[dict, dict]:
        p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
        return json.loads(p.stdout), json.loads(p.stderr.strip().splitlines()[-1])

    cold_report, cold = run()
    assert cold["code"] == 0 and "model_signing" in cold["loaded"], cold
    assert cold_report["lanes"][0]["hashed_bytes"] > 0
    warm_report, warm = run()
    assert warm["code"] == 0 and warm["loaded"] == [], warm
    assert warm_report["lanes"][0]["hashed_bytes"] == 0


def test_the_reference_command_line_signs_what_preflight_verifies_and_the_reverse(signed: Signed) -> None:
    lane = signed.folder()
    made = cli("sign", "key", "--private_key", signed.key.private, "--signature", lane / "model.sig", lane)
    assert made.returncode == 0, made.stderr
    signed.policy(KEY_POLICY)
    run = signed.check()
    assert run.code == 0, run.report
    checked = cli("verify", "key", "--public_key", signed.key.public, "--signature", lane / "model.sig", lane)
    assert checked.returncode == 0, checked.stderr

    flip_byte(lane / "tokenizer.json", 5)
    refused = cli("verify", "key", "--public_key", signed.key.public, "--signature", lane / "model.sig", lane)
    assert refused.returncode != 0
    found = not_ready(signed.check(), "signature-mismatch")
    assert [p["path"] for p in found] == ["tokenizer.json"]


@pytest.mark.parametrize("name", sorted(hf_model()))
def test_one_byte_changed_in_any_file_is_a_signature_mismatch(signed: Signed, name: str) -> None:
    lane = signed.folder()
    sign_with_key(lane, lane / "model.sig", signed.key)
    signed.policy(KEY_POLICY)
    flip_byte(lane / name, -2)  # inside the data of the weights, inside the JSON of the others
    found = not_ready(signed.check(), "signature-mismatch")
    assert [p["path"] for p in found] == [name]
    assert "differs from the signed" in found[0]["message"]


def test_a_change_after_a_ready_check_is_caught_by_stat_and_digest(signed: Signed) -> None:
    lane = signed.folder()
    sign_with_key(lane, lane / "model.sig", signed.key)
    signed.policy(KEY_POLICY)
    assert signed.check().code == 0
    flip_byte(lane / "model.safetensors", -3)
    run = signed.check()
    assert not_ready(run, "signature-mismatch") and "checksum-mismatch" in run.codes()  # the receipt's digest too
    assert signed.check().code == 1  # and stays refused: nothing was remembered


def test_a_file_added_is_unsigned(signed: Signed) -> None:
    lane = signed.folder()
    sign_with_key(lane, lane / "model.sig", signed.key)
    (lane / "chat_template.jinja").write_text("{{ evil }}")
    signed.policy(KEY_POLICY)
    found = not_ready(signed.check(), "unsigned-file")
    assert [p["path"] for p in found] == ["chat_template.jinja"]


def test_a_swapped_tokenizer_is_a_mismatch(signed: Signed) -> None:
    lane = signed.folder()
    sign_with_key(lane, lane / "model.sig", signed.key)
    other = json.loads((lane / "tokenizer.json").read_text())
    other["model"]["vocab"] = {f"x{i}": i for i in range(32)}
    (lane / "tokenizer.json").write_text(json.dumps(other))
    signed.policy(KEY_POLICY)
    assert [p["path"] for p in not_ready(signed.check(), "signature-mismatch")] == ["tokenizer.json"]


def test_a_file_removed_is_signed_but_missing(signed: Signed) -> None:
    lane = signed.folder(hf_model(extra={"generation_config.json": b'{"temperature": 0.6}'}))
    sign_with_key(lane, lane / "model.sig", signed.key)
    (lane / "generation_config.json").unlink()
    signed.policy(KEY_POLICY)
    found = not_ready(signed.check(), "signed-file-missing")
    assert [p["path"] for p in found] == ["generation_config.json"]


def test_signed_files_the_lane_does_not_select_are_not_required(signed: Signed) -> None:
    lane = signed.folder(hf_model(extra={"README.md": b"# tiny\n"}))
    sign_with_key(lane, lane / "model.sig", signed.key)
    (lane / "README.md").unlink()
    signed.policy(KEY_POLICY, f'{{name: tiny, kind: hf-dir, path: {LANE}, include: ["*.json", "*.safetensors"]}}')
    run = signed.check()
    assert run.code == 0, run.report  # model.sig is kept by the include, README.md was not selected


def test_paths_the_signer_ignored_may_differ(signed: Signed) -> None:
    lane = signed.folder(hf_model(extra={"NOTES.txt": b"draft"}))
    sign_with_key(lane, lane / "model.sig", signed.key, ignore=["NOTES.txt"])
    (lane / "NOTES.txt").write_text("rewritten later")
    assert "NOTES.txt" in statement_of(lane / "model.sig")["predicate"]["serialization"]["ignore_paths"]
    assert signed.policy(KEY_POLICY).check().code == 0


def test_a_signature_by_another_key_is_invalid(signed: Signed) -> None:
    lane = signed.folder()
    sign_with_key(lane, lane / "model.sig", ec_key_pair(signed.root / "other", "intruder"))
    found = not_ready(signed.policy(KEY_POLICY).check(), "signature-invalid")
    assert "another key" in found[0]["message"]


def test_a_bundle_whose_key_hint_was_removed_still_needs_the_right_key(signed: Signed) -> None:
    lane = signed.folder()
    sig = sign_with_key(lane, lane / "model.sig", ec_key_pair(signed.root / "other", "intruder"))
    bundle = json.loads(sig.read_text())
    bundle["verificationMaterial"]["publicKey"].pop("hint", None)  # an old-format bundle: no hint to compare
    sig.write_text(json.dumps(bundle))
    run = signed.policy(KEY_POLICY).check()
    assert "does not verify" in not_ready(run, "signature-invalid")[0]["message"]
    assert "WARNING" not in json.dumps(run.report)


def test_a_statement_changed_after_signing_is_invalid(signed: Signed) -> None:
    lane = signed.folder()
    sig = sign_with_key(lane, lane / "model.sig", signed.key)
    (lane / "model.safetensors").write_bytes((lane / "model.safetensors").read_bytes()[:-2] + b"\0\0")
    bundle = json.loads(sig.read_text())
    statement = statement_of(sig)
    import hashlib

    for r in statement["predicate"]["resources"]:
        if r["name"] == "model.safetensors":
            r["digest"] = hashlib.sha256((lane / "model.safetensors").read_bytes()).hexdigest()
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    sig.write_text(json.dumps(bundle))
    assert not_ready(signed.policy(KEY_POLICY).check(), "signature-invalid")


@pytest.mark.parametrize("cut", [0, 1, 100, -40, -1])
def test_a_truncated_or_damaged_bundle_is_invalid(signed: Signed, cut: int) -> None:
    lane = signed.folder()
    sig = sign_with_key(lane, lane / "model.sig", signed.key)
    data = sig.read_bytes()
    sig.write_bytes(data[:cut] if cut else b"")
    found = not_ready(signed.policy(KEY_POLICY).check(), "signature-invalid")
    assert found[0]["path"] == "model.sig"


@pytest.mark.parametrize("bundle", [
    "[]", '{"mediaType": 3}', '{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "verificationMaterial": {}}',
    '{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "verificationMaterial": {"publicKey": {"hint": "x"}, '
    '"tlogEntries": []}, "dsseEnvelope": {"payload": "!!!", "payloadType": "x", "signatures": []}}',
    "\udcff".encode("utf-8", "surrogatepass").decode("latin-1"),
])
def test_hostile_bundles_are_invalid_never_a_traceback(signed: Signed, bundle: str) -> None:
    lane = signed.folder()
    (lane / "model.sig").write_text(bundle, encoding="latin-1")
    assert not_ready(signed.policy(KEY_POLICY).check(), "signature-invalid")


def test_a_statement_naming_paths_outside_the_model_is_invalid(signed: Signed) -> None:
    from model_signing import manifest as ms_manifest
    from model_signing._hashing import hashing
    from model_signing._signing import sign_ec_key, signing

    lane = signed.folder()
    serialization = ms_manifest.SerializationType.from_args({"method": "files", "hash_type": "sha256", "allow_symlinks": False})
    items = [serialization.new_item("../../etc/passwd", hashing.Digest("sha256", b"\0" * 32))]
    payload = signing.Payload(ms_manifest.Manifest("tiny", items, serialization))
    sign_ec_key.Signer(signed.key.private).sign(payload).write(lane / "model.sig")
    found = not_ready(signed.policy(KEY_POLICY).check(), "signature-invalid")
    assert "not a path inside a model" in found[0]["message"]


def test_a_missing_signature_is_refused_unless_optional(signed: Signed) -> None:
    signed.folder()
    found = not_ready(signed.policy(KEY_POLICY).check(), "signature-missing")
    assert "keys/publisher.pub" in found[0]["message"]
    run = signed.policy("{method: key, key: keys/publisher.pub, required: false}").check()
    assert run.code == 0 and run.codes() == ["signature-missing"]
    assert run.lane["problems"][0]["severity"] == "warning"


def test_a_lane_not_there_yet_is_missing_not_invalid(signed: Signed) -> None:
    signed.models.mkdir()
    run = signed.policy(KEY_POLICY).check()
    assert run.code == 1 and run.lane["status"] == "missing" and run.codes() == ["missing"]


def test_an_optional_signature_that_is_there_must_verify(signed: Signed) -> None:
    lane = signed.folder()
    sign_with_key(lane, lane / "model.sig", ec_key_pair(signed.root / "other", "intruder"))
    assert not_ready(signed.policy("{method: key, key: keys/publisher.pub, required: false}").check(), "signature-invalid")


def test_a_signature_mounted_outside_the_lane(signed: Signed) -> None:
    lane = signed.folder()
    mounted = signed.root / "signatures" / "tiny.sig"
    mounted.parent.mkdir()
    sign_with_key(lane, mounted, signed.key)
    run = signed.policy(f"{{method: key, key: {signed.key.public}, file: {mounted}}}").check()
    assert run.code == 0, run.report


def test_a_default_policy_applies_to_every_lane_and_a_lane_can_opt_out(signed: Signed) -> None:
    lane = signed.folder()
    sign_with_key(lane, lane / "model.sig", signed.key)
    write_tree(signed.models / "scratch", hf_model())
    signed.manifest.write_text(textwrap.dedent(f"""\
        version: 1
        defaults:
          signature: {KEY_POLICY}
        lanes:
          - {{name: tiny, kind: hf-dir, path: {LANE}}}
          - {{name: scratch, kind: hf-dir, path: scratch}}
    """))
    run = signed.check()
    assert run.code == 1 and [p["code"] for p in run.report["lanes"][1]["problems"]] == ["signature-missing"]
    signed.manifest.write_text(signed.manifest.read_text().replace("path: scratch}", "path: scratch, signature: false}"))
    assert signed.check().code == 0


def test_a_missing_trust_file_is_a_manifest_error(signed: Signed) -> None:
    lane = signed.folder()
    sign_with_key(lane, lane / "model.sig", signed.key)
    run = signed.policy("{method: key, key: keys/absent.pub}").check()
    assert run.code == 2 and "keys/absent.pub" in run.report["reason"]
    (signed.keys / "garbage.pub").write_text("not a key")
    run = signed.policy("{method: key, key: keys/garbage.pub}").check()
    assert run.code == 2 and "cannot be used" in run.report["reason"]


def test_a_key_rotation_is_noticed_on_a_warm_recheck(signed: Signed) -> None:
    lane = signed.folder()
    sign_with_key(lane, lane / "model.sig", signed.key)
    assert signed.policy(KEY_POLICY).check().code == 0
    other = ec_key_pair(signed.root / "other", "next")
    shutil.copy(other.public, signed.key.public)  # the mounted key now names another publisher
    assert not_ready(signed.check(), "signature-invalid")


def test_a_replaced_signature_is_verified_again(signed: Signed) -> None:
    lane = signed.folder()
    sign_with_key(lane, lane / "model.sig", signed.key)
    assert signed.policy(KEY_POLICY).check().code == 0
    sign_with_key(lane, lane / "model.sig", ec_key_pair(signed.root / "other", "intruder"))
    assert not_ready(signed.check(), "signature-invalid")


def test_shard_serialized_signatures_are_verified_by_the_library(signed: Signed) -> None:
    lane = signed.folder()
    sign_with_key(lane, lane / "model.sig", signed.key, shards=4096)
    run = signed.policy(KEY_POLICY).check()
    assert run.code == 0, run.report
    assert "read again" in run.lane["note"]
    flip_byte(lane / "model.safetensors", -5)
    assert [p["path"] for p in not_ready(signed.check(), "signature-mismatch")] == ["model.safetensors"]


def test_blake2_file_signatures_are_verified_by_the_library(signed: Signed) -> None:
    lane = signed.folder()
    sign_with_key(lane, lane / "model.sig", signed.key, algorithm="blake2")
    assert signed.policy(KEY_POLICY).check().code == 0
    (lane / "extra.json").write_text("{}")
    assert not_ready(signed.check(), "unsigned-file")


def test_a_single_gguf_file_signed_on_its_own(signed: Signed) -> None:
    folder = write_tree(signed.models / "gguf", {**gguf_file("tiny.Q8_0.gguf"), "other.txt": b"not in the lane"})
    sign_with_key(folder / "tiny.Q8_0.gguf", folder / "tiny.Q8_0.gguf.sig", signed.key)
    assert statement_of(folder / "tiny.Q8_0.gguf.sig")["predicate"]["resources"][0]["name"] == "."
    signed.policy(KEY_POLICY, "{name: tiny, kind: gguf, path: gguf/tiny.Q8_0.gguf}")
    assert signed.check().code == 0
    flip_byte(folder / "tiny.Q8_0.gguf", -7)
    assert not_ready(signed.check(), "signature-mismatch")


# ------------------------------------------------------------------------ certificates


def test_certificate_signed_lane_is_ready(signed: Signed) -> None:
    lane = signed.folder()
    pki = make_pki(signed.root / "pki")
    sign_with_certificate(lane, lane / "model.sig", pki)
    run = signed.policy(f"{{method: certificate, certificate_chain: [{pki.root}]}}").check()
    assert run.code == 0, run.report


def test_the_reference_command_line_certificate_signature_verifies(signed: Signed) -> None:
    lane = signed.folder()
    pki = make_pki(signed.root / "pki")
    made = cli("sign", "certificate", "--private_key", pki.leaf_key, "--signing_certificate", pki.leaf,
               "--certificate_chain", pki.intermediate, "--signature", lane / "model.sig", lane)
    assert made.returncode == 0, made.stderr
    assert signed.policy(f"{{method: certificate, certificate_chain: [{pki.root}]}}").check().code == 0


def test_a_certificate_from_another_ca_is_invalid(signed: Signed) -> None:
    lane = signed.folder()
    sign_with_certificate(lane, lane / "model.sig", make_pki(signed.root / "rogue", name="Rogue"))
    trusted = make_pki(signed.root / "pki")
    found = not_ready(signed.policy(f"{{method: certificate, certificate_chain: [{trusted.root}]}}").check(), "signature-invalid")
    assert "not trusted" in found[0]["message"]


def test_an_expired_certificate_is_invalid(signed: Signed) -> None:
    lane = signed.folder()
    now = datetime.datetime.now(datetime.timezone.utc)
    pki = make_pki(signed.root / "pki", leaf_start=now - datetime.timedelta(days=30), leaf_end=now - datetime.timedelta(days=1))
    sign_with_certificate(lane, lane / "model.sig", pki)
    found = not_ready(signed.policy(f"{{method: certificate, certificate_chain: [{pki.root}]}}").check(), "signature-invalid")
    assert "expired" in found[0]["message"]


def test_a_key_signature_under_a_certificate_policy_is_invalid(signed: Signed) -> None:
    lane = signed.folder()
    sign_with_key(lane, lane / "model.sig", signed.key)
    pki = make_pki(signed.root / "pki")
    assert not_ready(signed.policy(f"{{method: certificate, certificate_chain: [{pki.root}]}}").check(), "signature-invalid")


# ------------------------------------------------------------------------ keyless (Sigstore), offline


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self, address):  # noqa: ANN001
        raise OSError(f"test: no network ({address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _sigstore_lane(signed: Signed, identity: str, root: Path) -> Signed:
    from tests.signing_fixtures import BUNDLE, ISSUER

    lane = signed.folder()
    (lane / "model.sig").write_text(BUNDLE)
    return signed.policy(f'{{method: sigstore, identity: "{identity}", issuer: "{ISSUER}", trusted_root: "{root}"}}')


def test_a_real_keyless_bundle_verifies_offline_then_its_statement_is_refused(signed: Signed, no_network: None) -> None:
    from tests.signing_fixtures import IDENTITY

    found = not_ready(_sigstore_lane(signed, IDENTITY, sigstore_production_root()).check(), "signature-invalid")
    # the certificate chain, transparency log entry and identity passed: only the statement's kind is wrong
    assert "Predicate type mismatch" in found[0]["message"], found


def test_a_keyless_bundle_from_another_identity_is_invalid(signed: Signed, no_network: None) -> None:
    found = not_ready(_sigstore_lane(signed, "https://github.com/someone/else/.github/workflows/release.yml@refs/heads/main",
                                     sigstore_production_root()).check(), "signature-invalid")
    assert "Predicate type" not in found[0]["message"]


def test_a_keyless_bundle_under_another_trusted_root_is_invalid(signed: Signed, no_network: None) -> None:
    from tests.signing_fixtures import IDENTITY

    staging = sigstore_production_root().parent.parent / "https%3A%2F%2Ftuf-repo-cdn.sigstage.dev" / "trusted_root.json"
    found = not_ready(_sigstore_lane(signed, IDENTITY, staging).check(), "signature-invalid")
    assert "Predicate type" not in found[0]["message"]


def test_a_key_signed_bundle_under_a_sigstore_policy_is_invalid(signed: Signed, no_network: None) -> None:
    lane = signed.folder()
    sign_with_key(lane, lane / "model.sig", signed.key)
    from tests.signing_fixtures import IDENTITY, ISSUER

    run = signed.policy(f'{{method: sigstore, identity: "{IDENTITY}", issuer: "{ISSUER}", trusted_root: "{sigstore_production_root()}"}}').check()
    assert not_ready(run, "signature-invalid")


# ------------------------------------------------------------------------ inspect


def test_inspect_shows_the_signature_its_signer_and_what_it_covers(signed: Signed) -> None:
    lane = signed.folder()
    pki = make_pki(signed.root / "pki")
    sign_with_certificate(lane, lane / "model.sig", pki)
    (lane / "extra.txt").write_text("x")
    result = CliRunner().invoke(main, ["inspect", str(lane), "--json"])
    assert result.exit_code in (0, 1), result.output
    sig = json.loads(result.stdout)["signature"]
    assert sig["file"] == "model.sig" and sig["verified"] is False
    assert "Test Model Publisher" in sig["signer"] and sig["covers"] == len(hf_model())
    assert sig["unsigned"] == ["extra.txt"]
    human = CliRunner().invoke(main, ["inspect", str(lane)])
    assert "signature:" in human.output and "Test Model Publisher" in human.output


def test_inspect_a_signed_single_file(signed: Signed) -> None:
    folder = write_tree(signed.models / "gguf", gguf_file("tiny.Q8_0.gguf"))
    sign_with_key(folder / "tiny.Q8_0.gguf", folder / "tiny.Q8_0.gguf.sig", signed.key)
    result = CliRunner().invoke(main, ["inspect", str(folder / "tiny.Q8_0.gguf"), "--json"])
    sig = json.loads(result.stdout)["signature"]
    assert sig["signer"].startswith("public key sha256:") and sig["covers"] == 1 and sig["unsigned"] == []


# ---------------------------------------------------------------- bounded cost of hostile signatures

MEASURE = r"""
import json, resource, subprocess, sys
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"code": p.returncode, "out": p.stdout, "cpu": u.ru_utime + u.ru_stime, "rss_mb": u.ru_maxrss / 1024}))
"""
MAX_CPU_S = 3.0  # each case is refused in well under a second alone; margin for a loaded machine


def _measured_check(signed: Signed) -> tuple[dict, float, float]:
    """`preflight check` in a fresh process (the child of a wrapper that reports its CPU and peak RSS)."""
    argv = [sys.executable, "-m", "preflight.cli", "check", "-m", str(signed.manifest), "-d", str(signed.models), "--json",
            "--termination-log", ""]
    out = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True, check=True, cwd=REPO, timeout=300)
    m = json.loads(out.stdout)
    return json.loads(m["out"]), m["cpu"], m["rss_mb"]


def _bundle_with(signed: Signed, lane: Path, resources: list) -> None:
    """A real bundle whose statement is replaced (its signature then no longer verifies)."""
    sig = sign_with_key(lane, lane / "model.sig", signed.key)
    bundle = json.loads(sig.read_text())
    statement = statement_of(sig)
    statement["predicate"]["resources"] = resources
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement, separators=(",", ":")).encode()).decode()
    sig.write_text(json.dumps(bundle))


@pytest.mark.parametrize("case", ["a 60 MB model.sig", "an unsigned 400k-resource payload", "a statement of 10,001 files",
                                  "a bundle nested 100,000 deep"])
def test_hostile_signatures_are_refused_before_the_library_reads_them(signed: Signed, case: str) -> None:
    from preflight.signing import MAX_BUNDLE, MAX_RESOURCES

    lane = signed.folder()
    sig = lane / "model.sig"
    if case == "a 60 MB model.sig":
        with open(sig, "wb") as f:
            f.write(b'{"mediaType": "' + b"a" * (60 * 2**20) + b'"}')
        says = f"at most {MAX_BUNDLE}"
    elif case == "an unsigned 400k-resource payload":
        _bundle_with(signed, lane, [{}] * 400_000)  # the smallest resources there are: under the size bound
        assert sig.stat().st_size < MAX_BUNDLE
        says = "members or items"
    elif case == "a statement of 10,001 files":
        _bundle_with(signed, lane, [{"name": f"f{i}", "algorithm": "sha256", "digest": "0" * 64} for i in range(MAX_RESOURCES + 1)])
        says = f"lists {MAX_RESOURCES + 1} files (at most {MAX_RESOURCES})"
    else:
        sig.write_bytes(b"[" * 100_000 + b"]" * 100_000)
        says = "nests deeper than"
    signed.policy(KEY_POLICY)
    report, cpu, rss = _measured_check(signed)
    problems = report["lanes"][0]["problems"]
    assert report["exit_code"] == 1 and [p["code"] for p in problems] == ["signature-invalid"], problems
    assert says in problems[0]["message"], problems[0]["message"]
    assert cpu < MAX_CPU_S and rss < 100, (case, cpu, rss)


def test_a_statement_of_many_files_within_the_bound_still_verifies(signed: Signed) -> None:
    """A real signature over 2,000 files is read and verified (the bounds leave room for real models)."""
    files = {f"shards/part-{i:04d}.bin": i.to_bytes(4, "little") for i in range(2000)}
    lane = signed.folder({**hf_model(), **files})
    sign_with_key(lane, lane / "model.sig", signed.key)
    run = signed.policy(KEY_POLICY).check()
    assert "signature-invalid" not in run.codes(), run.report
