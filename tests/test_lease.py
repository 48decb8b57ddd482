"""The volume lease seen from outside: concurrent syncs on one folder, a live holder, a dead one."""

from __future__ import annotations

import json
import socket
import time

import pytest

from preflight.lease import Lease
from tests.hubserver import HubServer
from tests.test_sync import STATE, kill, model_vol, vol  # noqa: F401




@pytest.mark.slow
def test_four_syncs_at_once_fetch_each_file_once(model_vol, hub_server: HubServer) -> None:
    vol, files = model_vol
    # the first writer is held up long enough for the others to find the lease taken
    hub_server.fault("org/llm", "model-00001-of-00003.safetensors").stall(100, 3, times=1)
    procs = [vol.spawn("sync", "--lease-wait", "60") for _ in range(4)]
    try:
        runs = [vol.finish(p, argv, timeout=60) for p, argv in procs]
    finally:
        for p, _argv in procs:
            kill(p)
    assert [r.code for r in runs] == [0, 0, 0, 0], [r.stderr for r in runs]
    for name in files:
        assert hub_server.count("org/llm", name, kind="resolve") == 1, name
    assert sum("waiting for" in r.stderr for r in runs) >= 1
    assert sum("fetched_files" in r.lane("llm") for r in runs) == 1
    assert vol.tree("vllm/llm") == files
    assert not (vol.models / STATE / "lease.json").exists()
    assert vol.debris() == []


def test_a_live_holder_past_the_wait_limit_exits_6(model_vol, hub_server: HubServer) -> None:
    vol, _files = model_vol
    state = vol.models / STATE
    holder = Lease(state, stale_after=60, heartbeat=0.2)
    holder.acquire(0, lambda _msg: None)
    try:
        started = time.monotonic()
        r = vol.run("sync", "--lease-wait", "1", "--lease-stale", "5")
        assert r.code == 6, r.stderr
        assert time.monotonic() - started < 15
        assert holder.owner in r.stderr
        assert holder.owner in (r.termination or "")
        assert not holder.lost
        assert json.loads((state / "lease.json").read_text())["owner"] == holder.owner
    finally:
        holder.release()
    assert hub_server.count("org/llm", kind="resolve") == 0
    assert not (vol.models / "vllm/llm").exists()


def test_a_stale_lease_is_taken_over(model_vol, hub_server: HubServer) -> None:
    vol, files = model_vol
    state = vol.models / STATE
    state.mkdir(parents=True)
    dead = {"owner": f"{socket.gethostname()}:999999:deadbeef", "pid": 999999, "host": socket.gethostname(),
            "beat": 7, "at": time.time() - 3600}
    (state / "lease.json").write_text(json.dumps(dead))
    r = vol.run("sync", "--lease-stale", "1", "--lease-wait", "30")
    assert r.code == 0, r.stderr
    assert "deadbeef" in r.stderr and "taking over" in r.stderr
    assert vol.tree("vllm/llm") == files
    assert not (state / "lease.json").exists()
    assert vol.debris() == []


def test_a_lease_left_by_a_crashed_process_on_this_host_is_taken_over_at_once(model_vol, hub_server: HubServer) -> None:
    """A container restarted after SIGKILL must not wait out --lease-stale for its own dead self."""
    import os
    import subprocess
    import sys

    vol, files = model_vol
    state = vol.models / STATE
    state.mkdir(parents=True, exist_ok=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    (state / "lease.json").write_text(json.dumps({
        "owner": f"{socket.gethostname()}:{pid}:deadbeef", "pid": pid, "host": socket.gethostname(),
        "pidns": os.stat("/proc/self/ns/pid").st_ino, "beat": 3, "at": time.time(),
    }))
    started = time.monotonic()
    r = vol.run("sync", "--lease-stale", "120", "--lease-wait", "60")
    assert r.code == 0, r.stderr
    assert time.monotonic() - started < 30
    assert "whose process is gone" in r.stderr
    assert vol.tree("vllm/llm") == files
    assert not (state / "lease.json").exists()
