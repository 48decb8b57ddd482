"""`signature:` in the manifest: per lane and as a default, each mistake located and named."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from preflight.errors import ManifestError, ManifestErrors
from preflight.manifest import SignaturePolicy, load_manifest, signature_file


def load(tmp_path: Path, text: str):
    p = tmp_path / "lanes.yaml"
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return load_manifest(p)


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load(tmp_path, text)
    exc = info.value
    found = exc.errors if isinstance(exc, ManifestErrors) else [exc]
    return [f"{e.line}: {e.field}: {e.reason}" for e in found]


def test_policies_per_lane_and_by_default(tmp_path: Path) -> None:
    m = load(tmp_path, """
        version: 1
        defaults:
          signature: {method: key, key: /etc/preflight/keys/publisher.pub}
        lanes:
          - {name: coder, kind: hf-dir, path: vllm/coder, include: ["*.json", "*.safetensors"]}
          - {name: reader, kind: gguf, path: gguf/reader.gguf, signature: {file: sigs/reader.sig, required: false}}
          - name: embed
            kind: hf-dir
            path: embed
            signature:
              method: sigstore
              identity: https://github.com/org/models/.github/workflows/sign.yml@refs/heads/main
              issuer: https://token.actions.githubusercontent.com
              trusted_root: /etc/preflight/sigstore/trusted_root.json
          - {name: pki, kind: hf-dir, path: pki, signature: {method: certificate, certificate_chain: ca.pem}}
          - {name: scratch, kind: hf-dir, path: scratch, signature: false}
    """)
    coder, reader, embed, pki, scratch = m.lanes
    assert coder.signature == SignaturePolicy("key", key="/etc/preflight/keys/publisher.pub")
    assert coder.include == ("*.json", "*.safetensors", "model.sig")  # the signature is one of the lane's files
    assert signature_file(coder) == "model.sig"
    assert reader.signature == SignaturePolicy("key", file="sigs/reader.sig", key="/etc/preflight/keys/publisher.pub", required=False)
    assert embed.signature is not None and embed.signature.method == "sigstore" and embed.signature.key is None  # not inherited
    assert embed.signature.issuer == "https://token.actions.githubusercontent.com"
    assert pki.signature == SignaturePolicy("certificate", certificate_chain=("ca.pem",))
    assert scratch.signature is None


def test_single_file_lanes_default_to_a_signature_beside_the_file(tmp_path: Path) -> None:
    m = load(tmp_path, """
        version: 1
        lanes:
          - {name: g, kind: gguf, path: gguf/m.Q4_K_M.gguf, signature: {method: key, key: k.pub}}
    """)
    assert signature_file(m.lanes[0]) == "m.Q4_K_M.gguf.sig"


def test_each_mistake_is_located(tmp_path: Path) -> None:
    found = errors(tmp_path, """
        version: 1
        lanes:
          - {name: a, kind: hf-dir, path: a, signature: {method: pgp, key: k}}
          - {name: b, kind: hf-dir, path: b, signature: {method: key}}
          - {name: c, kind: hf-dir, path: c, signature: {method: key, key: k, identity: me, keyfile: x}}
          - {name: d, kind: hf-dir, path: d, signature: {method: certificate}}
          - {name: e, kind: hf-dir, path: e, signature: {method: sigstore, identity: me, issuer: https://i}}
          - {name: f, kind: hf-dir, path: f, signature: {method: key, key: k, file: ../elsewhere.sig}}
          - {name: g, kind: hf-dir, path: g, signature: yes please}
          - {name: h, kind: hf-dir, path: h, signature: {method: key, key: k, required: sometimes}}
          - {name: i, kind: hf-dir, path: i, signature: {key: k}}
    """)
    assert found[0] == "3: lanes[0].signature.method: unknown signature method 'pgp'"
    text = "\n".join(found)
    for line, what in [(4, "needs 'key'"), (5, "unknown signature key 'keyfile'"), (5, "'identity' applies to signature method sigstore"),
                       (6, "needs 'certificate_chain'"), (7, "needs 'trusted_root'"), (8, "stay inside the lane"),
                       (9, "expected a mapping"), (10, "expected true or false"), (11, "missing required field 'method'")]:
        assert any(f.startswith(f"{line}:") and what in f for f in found), (line, what, text)


def test_a_default_is_checked_once_and_must_be_complete(tmp_path: Path) -> None:
    found = errors(tmp_path, """
        version: 1
        defaults:
          signature: {required: false}
        lanes:
          - {name: a, kind: hf-dir, path: a}
          - {name: b, kind: hf-dir, path: b}
    """)
    assert len(found) == 1 and "defaults.signature" in found[0] and "method" in found[0]
