"""`preflight sync` of a signed lane from the local Hub server: the signature is one of the
lane's files, fetched like the others, and the final check verifies it. A mirror serving a
consistent set of wrong bytes (listing digests that match them) is refused, and nothing of
it is served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("model_signing")

from tests.hubserver import HubServer  # noqa: E402
from tests.repos import hf_model, write_tree  # noqa: E402
from tests.signing_helpers import KeyPair, ec_key_pair, sign_with_key  # noqa: E402
from tests.test_sync import Volume, hf_lane  # noqa: E402


@pytest.fixture
def vol(tmp_path: Path, hub_server: HubServer) -> Volume:
    return Volume(tmp_path, hub_server)


def signed_repo(tmp: Path, key: KeyPair, files: dict[str, bytes]) -> dict[str, bytes]:
    """The publisher's folder with its model.sig, as bytes by path."""
    folder = write_tree(tmp / "publisher", files)
    sign_with_key(folder, folder / "model.sig", key)
    return {**files, "model.sig": (folder / "model.sig").read_bytes()}


def lane(key: KeyPair) -> dict:
    return hf_lane("llm", "vllm/llm", "hf://org/llm@main", include=["*.json", "*.safetensors"],
                   signature={"method": "key", "key": str(key.public)})


def test_sync_fetches_the_signature_with_the_lane_and_verifies_it(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    key = ec_key_pair(tmp_path / "keys")
    hub_server.add_repo("org/llm", signed_repo(tmp_path, key, hf_model()))
    vol.write([lane(key)])

    run = vol.run("sync", "--json")
    assert run.code == 0, run.stderr
    assert run.lane("llm")["status"] == "ready" and run.lane("llm")["problems"] == []
    assert (vol.models / "vllm/llm/model.sig").is_file()  # fetched though `include` does not name it
    check = vol.run("check")
    assert check.code == 0 and check.lane("llm")["hashed_bytes"] == 0


def test_a_consistent_mirror_of_wrong_bytes_is_refused_and_never_served(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    key = ec_key_pair(tmp_path / "keys")
    good = signed_repo(tmp_path, key, hf_model())
    bad = dict(good)
    bad["tokenizer.json"] = json.dumps({**json.loads(good["tokenizer.json"]), "added_tokens": [{"id": 0, "content": "<evil>"}]}).encode()
    hub_server.add_repo("org/llm", bad)  # the listing's digests are those of the wrong bytes
    vol.write([lane(key)])

    run = vol.run("sync", "--json")
    assert run.code == 1, run.stderr
    assert run.report["status"] == "not-ready"
    found = [p for p in run.lane("llm")["problems"] if p["code"] == "signature-mismatch"]
    assert [p["path"] for p in found] == ["tokenizer.json"], run.lane("llm")
    assert not (vol.models / "vllm/llm").exists()  # the assembled revision was never switched to
    assert not (vol.models / ".preflight" / "ready.json").exists()

    hub_server.add_repo("org/llm", good)  # the publisher's bytes again
    again = vol.run("sync", "--json")
    assert again.code == 0, again.stderr
    assert (vol.models / "vllm/llm/tokenizer.json").read_bytes() == good["tokenizer.json"]


def test_a_repo_without_its_signature_is_not_ready(vol: Volume, hub_server: HubServer, tmp_path: Path) -> None:
    key = ec_key_pair(tmp_path / "keys")
    hub_server.add_repo("org/llm", hf_model())
    vol.write([lane(key)])
    run = vol.run("sync", "--json")
    assert run.code == 1
    assert "signature-missing" in run.codes("llm")
