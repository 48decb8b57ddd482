"""Variants: a lane lists alternatives in order, `sync` fetches the first that fits this node (and
only it), the report says which and why not the ones before, `check` agrees on the same node
without the network, `preflight env` exports the chosen path, a node change judges again.

Manifest mistakes in `variants:` are exit 2 with file, line, field and a did-you-mean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from preflight.errors import ManifestError
from preflight.manifest import load_manifest
from tests.hubserver import HubServer
from tests.test_fit_before import DIMS, GPU_LARGE, GPU_SMALL, SERVE, sparse_repo, weights_sent
from tests.test_sync import Volume

SMALL = dict(vocab=4000, max_len=1024)


def lanes(**extra) -> list[dict]:
    return [{"name": "chat", "kind": "hf-dir", "path": "vllm/chat", "source": "hf://org/big@main", "env": "CHAT_MODEL",
             "serve": SERVE, "variants": [{"name": "small", "path": "vllm/chat-small", "source": "hf://org/small@main",
                                           "serve": {"args": "--max-model-len 1024 --enforce-eager"}}], **extra}]


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture
def repos(hub: HubServer, tmp_path: Path) -> dict[str, dict[str, Path]]:
    return {"big": sparse_repo(hub, tmp_path, "org/big"), "small": sparse_repo(hub, tmp_path, "org/small", **SMALL)}


def env_of(vol: Volume, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "preflight.cli", "env", "-m", str(vol.manifest), *args], capture_output=True, text=True,
                          env=vol.env(), timeout=60)


def new_volume(tmp_path: Path, hub: HubServer | None, name: str = "v") -> Volume:
    (tmp_path / name).mkdir()
    return Volume(tmp_path / name, hub)


def test_sync_fetches_the_first_variant_that_fits_and_check_agrees_offline(tmp_path: Path, hub: HubServer, repos) -> None:
    vol = new_volume(tmp_path, hub).write(lanes())
    run = vol.run("sync", "--accelerator", GPU_SMALL, timeout=120)
    assert run.code == 0, run.stderr
    lane = run.lane("chat")
    assert lane["path"] == "vllm/chat-small" and lane["status"] == "ready"
    variant = lane["variant"]
    assert variant["chosen"] == "small" and variant["decided"] == "judged" and variant["path"] == "vllm/chat-small"
    (primary,) = variant["rejected"]
    assert primary["variant"] == "primary" and primary["codes"] == ["kv-cache-too-large"] and primary["inputs_from"] == "source"
    assert "--max-model-len" in primary["reason"] and primary["path"] == "vllm/chat"
    assert "variant: small at vllm/chat-small (judged); primary does not fit (kv-cache-too-large)" in run.stderr
    assert not (vol.models / "vllm" / "chat").exists()  # only the chosen variant is fetched
    assert all(n <= 8192 for n in weights_sent(hub, "org/big", repos["big"]).values())  # the primary's headers only
    assert (vol.models / "vllm" / "chat-small" / "config.json").exists()

    hub.stop()  # no network from here on
    again = vol.run("check", "--accelerator", GPU_SMALL)
    assert again.code == 0, again.stderr
    remembered = again.lane("chat")["variant"]
    assert remembered["chosen"] == "small" and remembered["decided"] == "remembered"
    assert [r["codes"] for r in remembered["rejected"]] == [["kv-cache-too-large"]]
    assert again.lane("chat")["fit"]["inputs_from"] == "receipts"
    out = env_of(vol, "--accelerator", GPU_SMALL)
    assert out.returncode == 0 and out.stdout == f"CHAT_MODEL='{vol.models / 'vllm' / 'chat-small'}'\n", out.stderr
    assert json.loads(env_of(vol, "--accelerator", GPU_SMALL, "--json").stdout)["env"] == {"CHAT_MODEL": str(vol.models / "vllm/chat-small")}

    other = vol.run("check", "--accelerator", GPU_LARGE)  # another node: judged again, and the primary may fit there
    assert other.code == 1 and other.lane("chat")["variant"]["chosen"] == "primary"
    assert other.lane("chat")["variant"]["decided"] == "not judged" and "lock" in other.lane("chat")["variant"]["why_not_judged"]
    assert other.lane("chat")["path"] == "vllm/chat" and "missing" in other.codes("chat")


def test_the_primary_is_taken_when_it_fits_and_its_alternatives_are_never_read(tmp_path: Path, hub: HubServer, repos) -> None:
    vol = new_volume(tmp_path, hub).write(lanes())
    run = vol.run("sync", "--accelerator", GPU_LARGE, timeout=120)
    assert run.code == 0, run.stderr
    assert run.lane("chat")["variant"] == {"chosen": "primary", "path": "vllm/chat", "decided": "judged", "node": run.lane("chat")["variant"]["node"],
                                           "rejected": []}
    assert not any(r.repo_id == "org/small" for r in hub.requests)
    out = env_of(vol, "--accelerator", GPU_LARGE)
    assert out.stdout == f"CHAT_MODEL='{vol.models / 'vllm' / 'chat'}'\n"


def test_no_variant_fits_nothing_is_downloaded_and_every_reason_is_given(tmp_path: Path, hub: HubServer, repos) -> None:
    vol = new_volume(tmp_path, hub).write(lanes())
    run = vol.run("sync", "--accelerator", "1x24MiB,cc=9.0")
    assert run.code == 1, run.stderr
    variant = run.lane("chat")["variant"]
    assert variant["none_fits"] is True and [r["variant"] for r in variant["rejected"]] == ["primary", "small"]
    assert "no variant fits either: small:" in run.report["reason"]
    assert not (vol.models / "vllm").exists()


def test_the_lock_settles_the_choice_offline_and_sync_locked_reads_no_header(tmp_path: Path, hub: HubServer, repos) -> None:
    vol = new_volume(tmp_path, hub).write(lanes())
    assert vol.run("lock").code == 0
    lock = json.loads((vol.root / "lanes.lock.json").read_text())["lanes"]["chat"]
    assert lock["fit"]["engine"] == "vllm" and lock["variants"]["small"]["fit"]["config"]["vocab_size"] == 4000
    assert lock["variants"]["small"]["source"] == "hf://org/small@main"
    offline = vol.run("check", "--accelerator", GPU_SMALL)  # nothing on the volume: judged from the lock
    variant = offline.lane("chat")["variant"]
    assert variant["chosen"] == "small" and variant["decided"] == "judged" and variant["rejected"][0]["inputs_from"] == "lock"
    hub.clear_requests()
    run = vol.run("sync", "--locked", "--accelerator", GPU_SMALL, timeout=120)
    assert run.code == 0, run.stderr
    assert not any(r.repo_id == "org/big" for r in hub.requests)
    assert all(r.range is None for r in hub.requests if r.repo_id == "org/small")  # downloads, no fit reads


def test_an_edited_variant_is_judged_again(tmp_path: Path, hub: HubServer, repos) -> None:
    vol = new_volume(tmp_path, hub).write(lanes())
    assert vol.run("sync", "--accelerator", GPU_SMALL, timeout=120).code == 0
    edited = lanes()
    edited[0]["variants"][0]["serve"] = {"args": "--max-model-len 512 --enforce-eager"}
    vol.write(edited)
    run = vol.run("check", "--accelerator", GPU_SMALL)
    assert run.lane("chat")["variant"]["decided"] != "remembered"


def _error(tmp_path: Path, lane: dict) -> ManifestError:
    m = tmp_path / "lanes.yaml"
    m.write_text(json.dumps({"version": 1, "lanes": [lane, {"name": "other", "kind": "hf-dir", "path": "vllm/other"}]}, indent=2))
    with pytest.raises(ManifestError) as exc:
        load_manifest(m)
    return exc.value


BASE = {"name": "chat", "kind": "hf-dir", "path": "vllm/chat", "source": "hf://org/big", "serve": SERVE}


@pytest.mark.parametrize("variants,field,words", [
    ([{"name": "fp8", "path": "vllm/fp8", "soruce": "hf://org/fp8"}], "lanes[0].variants[0].soruce", "did you mean 'source'"),
    ([{"path": "vllm/fp8"}], "lanes[0].variants[0]", "missing required field 'name'"),
    ([{"name": "primary", "path": "vllm/fp8"}], "lanes[0].variants[0].name", "already the lane as written's"),
    ([{"name": "a", "path": "vllm/a"}, {"name": "a", "path": "vllm/b"}], "lanes[0].variants[1].name", "already variant 1's"),
    ([{"name": "a", "path": "vllm/chat"}], "lanes[0].variants[0].path", "each variant has its own path"),
    ([{"name": "a"}], "lanes[0].variants[0]", "missing required field 'path'"),
    ([{"name": "a", "path": "vllm/other"}], "lanes[1].path", "lanes 'chat (variant a)' and 'other' overlap"),
    ([{"name": "a", "path": "vllm/a", "serve": {"engine": "vllm", "args": "-tp two"}}], "lanes[0].variants[0].serve.args", "-tp"),
    ({"name": "a"}, "lanes[0].variants", "expected a list of variants"),
])
def test_variant_mistakes_are_located(tmp_path: Path, variants, field, words) -> None:
    err = _error(tmp_path, {**BASE, "variants": variants})
    assert err.field == field and words in str(err), (err.field, str(err))
    assert err.line is not None


def test_variants_need_a_served_kind_and_serve(tmp_path: Path) -> None:
    err = _error(tmp_path, {"name": "f", "kind": "file", "path": "x.bin", "source": "/m/x.bin", "variants": [{"name": "a", "path": "y.bin"}]})
    assert "has no variants" in str(err)
    err = _error(tmp_path, {**{k: v for k, v in BASE.items() if k != "serve"}, "variants": [{"name": "a", "path": "vllm/a"}]})
    assert "needs `serve:`" in str(err) and err.field == "lanes[0]"


def test_a_good_manifest_gives_each_variant_the_lanes_settings(tmp_path: Path) -> None:
    m = tmp_path / "lanes.yaml"
    m.write_text("""version: 1
lanes:
  - name: chat
    kind: hf-dir
    path: vllm/chat
    source: hf://org/big@v2
    env: CHAT_MODEL
    include: ["*.json", "*.safetensors"]
    serve: {engine: vllm, args: "--max-model-len 8192"}
    variants:
      - name: fp8
        path: vllm/chat-fp8
        source: hf://org/big-fp8
      - name: branch
        path: vllm/chat-branch
        revision: int8
        serve: {args: "--max-model-len 4096"}
""")
    lane = load_manifest(m).lanes[0]
    fp8, branch = lane.variants
    assert (fp8.variant, fp8.env, fp8.include, fp8.serve, fp8.source.revision) == ("fp8", "CHAT_MODEL", lane.include, lane.serve, "main")
    assert branch.source.repo == "org/big" and branch.source.revision == "int8" and branch.serve.args == ("--max-model-len", "4096")
    assert branch.label == "chat (variant branch)" and lane.variant is None
