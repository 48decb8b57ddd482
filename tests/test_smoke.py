"""`preflight smoke` against fake vLLM / llama.cpp / embeddings / HTTP servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_servers import FakeServer

from preflight.cli_smoke import smoke
from preflight.errors import ManifestError, UsageError
from preflight.smoke import Endpoint, endpoints_from_manifest, parse_endpoint_spec, run_smoke

FAST = {"interval_s": 0.05, "request_timeout_s": 2.0}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_preflight_env(monkeypatch):
    """Options come from PREFLIGHT_* variables: a developer's own must not leak in."""
    for name in list(os.environ):
        if name.startswith("PREFLIGHT_"):
            monkeypatch.delenv(name)


@pytest.fixture
def serve():
    started: list[FakeServer] = []

    def start(kind: str, **kw) -> FakeServer:
        server = FakeServer(kind, **kw).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def problem_codes(report) -> dict[str, list[str]]:
    return {r.endpoint.name: [p.code for p in r.problems] for r in report.endpoints}


# --------------------------------------------------------------------------- run_smoke


def test_ready_vllm_and_llamacpp(serve):
    vllm = serve("vllm", models=("tiny-llm",))
    llama = serve("llama.cpp", models=("/models/gguf/tiny.Q4_K_M.gguf",))
    report = run_smoke([Endpoint("coder", "vllm", vllm.url, "tiny-llm", lane="tiny-llm"),
                        Endpoint("reader", "llama.cpp", llama.url, "tiny.Q4_K_M.gguf")], log=lambda _: None, **FAST)
    assert report.exit_code == 0 and report.status == "ready"
    for result in report.endpoints:
        assert result.status == "ready"
        assert [(c.name, c.ok) for c in result.checks] == [("health", True), ("models", True), ("completion", True)]
    assert vllm.paths() == ["GET /health", "GET /v1/models", "POST /v1/completions"]
    sent = vllm.requests[-1][2]
    assert sent["model"] == "tiny-llm" and sent["max_tokens"] == 1 and sent["prompt"]


def test_slow_start_is_waited_for_and_logged(serve):
    vllm = serve("vllm", refuse_for=1.0)
    llama = serve("llama.cpp", refuse_for=1.0, loading_for=1.0)
    lines: list[str] = []
    report = run_smoke([Endpoint("coder", "vllm", vllm.url, "tiny-llm"), Endpoint("reader", "llama.cpp", llama.url)],
                       deadline_s=15, log=lines.append, **FAST)
    assert report.exit_code == 0, report.to_json()
    waiting = [line for line in lines if "waiting" in line]
    assert any("coder" in line and "connection refused" in line for line in waiting)
    assert any("reader" in line and "connection refused" in line for line in waiting)
    assert any("reader" in line and "503: Loading model" in line for line in waiting)
    reader = report.endpoints[1]
    assert reader.elapsed_s >= 1.8 and reader.attempts > 2
    assert any("reader" in line and "ready after" in line for line in lines)


def test_wrong_served_model_fails_fast_naming_both(serve):
    vllm = serve("vllm", models=("Qwen/Qwen2.5-7B-Instruct",))
    t0 = time.monotonic()
    report = run_smoke([Endpoint("coder", "vllm", vllm.url, "coder")], deadline_s=30, log=lambda _: None, **FAST)
    assert time.monotonic() - t0 < 5
    assert report.exit_code == 1
    (problem,) = report.endpoints[0].problems
    assert problem.code == "model-mismatch"
    assert f"vLLM at {vllm.url} serves ['Qwen/Qwen2.5-7B-Instruct']" in problem.message and "'coder'" in problem.message
    assert "POST /v1/completions" not in vllm.paths()


def test_vllm_model_must_match_exactly_but_llamacpp_accepts_the_file_name(serve):
    vllm = serve("vllm", models=("/models/vllm/tiny",))
    llama = serve("llama.cpp", models=("/models/gguf/tiny.gguf",))
    report = run_smoke([Endpoint("v", "vllm", vllm.url, "tiny"), Endpoint("l", "llama.cpp", llama.url, "tiny")],
                       log=lambda _: None, **FAST)
    assert problem_codes(report) == {"v": ["model-mismatch"], "l": []}


def test_completion_500_is_exit_1(serve):
    vllm = serve("vllm", completion_status=500)
    report = run_smoke([Endpoint("coder", "vllm", vllm.url, "tiny-llm")], deadline_s=30, log=lambda _: None, **FAST)
    assert report.exit_code == 1
    (problem,) = report.endpoints[0].problems
    assert problem.code == "completion-failed"
    assert "POST /v1/completions answered 500: EngineCore encountered an issue" in problem.message
    assert report.endpoints[0].checks[-1].ok is False


def test_no_completion_stops_at_the_served_model(serve):
    vllm = serve("vllm", completion_status=500)
    report = run_smoke([Endpoint("coder", "vllm", vllm.url, "tiny-llm")], completion=False, log=lambda _: None, **FAST)
    assert report.exit_code == 0
    assert vllm.paths() == ["GET /health", "GET /v1/models"]


def test_never_ready_exits_3_within_the_deadline(serve):
    loading = serve("llama.cpp", loading_for=60)
    closed = serve("vllm", refuse_for=60)
    t0 = time.monotonic()
    report = run_smoke([Endpoint("reader", "llama.cpp", loading.url), Endpoint("coder", "vllm", closed.url)],
                       deadline_s=1.0, log=lambda _: None, **FAST)
    wall = time.monotonic() - t0
    assert 1.0 <= wall < 2.0
    assert report.exit_code == 3 and report.status == "not-ready"
    assert problem_codes(report) == {"reader": ["endpoint-not-ready"], "coder": ["endpoint-unreachable"]}
    assert "Loading model" in report.endpoints[0].problems[0].message
    assert "connection refused" in report.endpoints[1].problems[0].message


def test_a_server_that_never_answers_cannot_stretch_the_deadline(serve):
    silent = serve("vllm", hang=True)
    t0 = time.monotonic()
    report = run_smoke([Endpoint("coder", "vllm", silent.url)], deadline_s=1.0, interval_s=0.05, request_timeout_s=10, log=lambda _: None)
    assert time.monotonic() - t0 < 2.0
    assert report.exit_code == 3
    assert "no answer within" in report.endpoints[0].problems[0].message


def test_old_llamacpp_without_v1_models_is_checked_through_props(serve):
    llama = serve("llama.cpp", models=("/models/gguf/old.gguf",), has_v1_models=False)
    report = run_smoke([Endpoint("old", "llama.cpp", llama.url, "old.gguf")], log=lambda _: None, **FAST)
    assert report.exit_code == 0
    assert "GET /props" in llama.paths()


def test_embeddings_and_plain_http(serve):
    tei = serve("embeddings", models=("BAAI/bge-m3",))
    web = serve("http")
    missing = serve("http", http_status=404)
    report = run_smoke([Endpoint("embed", "embeddings", tei.url, "BAAI/bge-m3"), Endpoint("web", "http", web.url + "/ready"),
                        Endpoint("gone", "http", missing.url + "/nothing"), Endpoint("wrong", "embeddings", tei.url, "bge-small")],
                       log=lambda _: None, **FAST)
    assert problem_codes(report) == {"embed": [], "web": [], "gone": ["bad-response"], "wrong": ["model-mismatch"]}
    assert report.endpoints[0].checks[-1].detail == "dimension 8"
    assert "GET /ready" in web.paths()
    assert report.exit_code == 1


def test_api_key_is_sent_and_a_refusal_is_exit_4(serve):
    vllm = serve("vllm", api_key="s3cret")
    refused = run_smoke([Endpoint("coder", "vllm", vllm.url)], log=lambda _: None, **FAST)
    assert refused.exit_code == 4
    assert refused.endpoints[0].problems[0].code == "endpoint-auth"
    allowed = run_smoke([Endpoint("coder", "vllm", vllm.url, api_key="s3cret")], log=lambda _: None, **FAST)
    assert allowed.exit_code == 0
    assert "s3cret" not in allowed.to_json() and "s3cret" not in repr(allowed.endpoints[0].endpoint)


@pytest.mark.parametrize("spec, expected", [
    ("coder=vllm@http://vllm:8000#Qwen/Qwen2.5-Coder-7B-Instruct", ("coder", "vllm", "http://vllm:8000", "Qwen/Qwen2.5-Coder-7B-Instruct")),
    ("reader=llamacpp@http://llama:8080/v1/", ("reader", "llama.cpp", "http://llama:8080", None)),
    ("tei=http@https://tei.internal/health?full=1", ("tei", "http", "https://tei.internal/health?full=1", None)),
    ("gw=vllm@http://gateway/coder", ("gw", "vllm", "http://gateway/coder", None)),
])
def test_endpoint_spec(spec, expected):
    ep = parse_endpoint_spec(spec)
    assert (ep.name, ep.kind, ep.url, ep.model) == expected


@pytest.mark.parametrize("spec, says", [
    ("coder", "expected NAME=KIND@URL[#MODEL]"),
    ("coder=vllm", "expected NAME=KIND@URL[#MODEL]"),
    ("=vllm@http://x", "expected NAME=KIND@URL[#MODEL]"),
    ("coder=gpu@http://x", "unknown kind 'gpu'"),
    ("coder=vllm@vllm:8000", "must start with http:// or https://"),
    ("coder=vllm@http://:8000", "has no host"),
    ("coder=vllm@http://vllm:80000", "invalid port"),
    ("coder=vllm@http://user:pw@vllm:8000", "credentials in the URL"),
])
def test_bad_endpoint_spec(spec, says):
    with pytest.raises(UsageError, match=says.replace("[", r"\[").replace("]", r"\]")):
        parse_endpoint_spec(spec)


def test_run_smoke_refuses_duplicate_names_and_empty_lists():
    with pytest.raises(UsageError, match="no endpoints"):
        run_smoke([])
    with pytest.raises(UsageError, match="used twice"):
        run_smoke([Endpoint("a", "http", "http://127.0.0.1:1"), Endpoint("a", "http", "http://127.0.0.1:2")])


# --------------------------------------------------------------------------- manifest


def write_manifest(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "manifest.yaml"
    path.write_text(body)
    return path


def test_manifest_endpoints_expand_variables_only_in_that_list(tmp_path):
    path = write_manifest(tmp_path, """\
version: 1
models_dir: /models
lanes:
  - {name: tiny, kind: gguf, path: tiny.gguf, source: "hf://org/repo/tiny.gguf@${NEVER_SET_REVISION}"}
endpoints:
  - name: coder
    kind: vllm
    url: "http://${SMOKE_HOST:-127.0.0.1}:${SMOKE_PORT}"
    model: ${SMOKE_MODEL:-tiny-llm}
    lane: tiny
""")
    (ep,) = endpoints_from_manifest(path, env={"SMOKE_PORT": "8123"})
    assert (ep.name, ep.kind, ep.url, ep.model, ep.lane) == ("coder", "vllm", "http://127.0.0.1:8123", "tiny-llm", "tiny")


@pytest.mark.parametrize("body, says", [
    ("endpoints:\n  - {name: a, kind: vllm, url: 'http://h:${NOPE}'}\n", "endpoints[0].url: environment variable NOPE is not set"),
    ("endpoints:\n  - {name: a, kind: vllm}\n", "endpoints[0].url: url is required"),
    ("endpoints:\n  - {name: a, kind: vllm, url: 'http://h', modle: x}\n", ":2: endpoints[0].modle: unknown key 'modle' (did you mean 'model'?)"),
    ("endpoints:\n  - name: a\n    kind: vllm\n    url: 'http://h'\n    api_key: x\n", ":5: endpoints[0].api_key: unknown key 'api_key' (did you mean 'api_key_env'?)"),
    ("endpoints:\n  - name: a\n    kind: vllm\n", ":2: endpoints[0].url: url is required"),
    ("endpoints: {name: a}\n", "endpoints: expected a list"),
    ("endpoints:\n  - {name: a, kind: tgi, url: 'http://h'}\n", "endpoints[0]: endpoint a: unknown kind 'tgi'"),
    ("endpoints: [\n", "not valid YAML"),
])
def test_manifest_errors_name_file_and_field(tmp_path, body, says):
    path = write_manifest(tmp_path, body)
    with pytest.raises(ManifestError) as caught:
        endpoints_from_manifest(path, env={})
    assert str(path) in str(caught.value) and says in str(caught.value)


@pytest.mark.parametrize("body, says", [
    ("endpoints:\n" + "  - {name: a, kind: vllm, url: 'http://h'}\n" * 200_000, "larger than 4 MiB"),
    ("a: &a [" + ",".join(["1"] * 50) + "]\n" + "".join(f"b{i}: &b{i} [" + ",".join([f"*{'a' if i == 0 else f'b{i-1}'}"] * 50) + "]\n" for i in range(8)),
     "expand too far"),
])
def test_a_hostile_manifest_is_refused_within_the_loader_bounds(tmp_path, body, says):
    """smoke reads the same manifest through the same bounded loader as check and sync."""
    path = write_manifest(tmp_path, body)
    with pytest.raises(ManifestError) as caught:
        endpoints_from_manifest(path, env={})
    assert says in str(caught.value)


# --------------------------------------------------------------------------- CLI


def invoke(args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(smoke, args, env=env or {}, catch_exceptions=False)


def test_cli_json_shape_and_one_line_per_endpoint(serve):
    vllm = serve("vllm", models=("tiny-llm",))
    llama = serve("llama.cpp")
    result = invoke(["-e", f"coder=vllm@{vllm.url}#wanted-model", "-e", f"reader=llama.cpp@{llama.url}",
                     "--json", "--interval", "0.05", "--deadline", "5"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["status"] == "not-ready" and doc["exit_code"] == 1
    coder, reader = doc["endpoints"]
    assert {k: coder[k] for k in ("name", "kind", "url", "model", "status")} == {
        "name": "coder", "kind": "vllm", "url": vllm.url, "model": "wanted-model", "status": "failed"}
    assert [p["code"] for p in coder["problems"]] == ["model-mismatch"]
    assert set(coder["problems"][0]) >= {"code", "message"}
    assert reader["status"] == "ready" and reader["problems"] == []
    assert [(c["name"], c["ok"], c["request"]) for c in reader["checks"]] == [
        ("health", True, "GET /health"), ("models", True, "GET /v1/models"), ("completion", True, "POST /v1/completions")]
    summary = [line for line in result.stderr.splitlines() if not line.startswith("smoke: ")]
    assert summary[0].startswith("FAIL coder") and "model-mismatch" in summary[0]
    assert summary[1].startswith("ok   reader") and "ready in" in summary[1]
    assert summary[2].startswith("preflight smoke: NOT READY (exit 1): coder: vLLM at")


def test_cli_manifest_with_defaults_and_override(serve, tmp_path):
    vllm = serve("vllm", models=("tiny-llm",))
    llama = serve("llama.cpp")
    path = write_manifest(tmp_path, """\
endpoints:
  - {name: coder, kind: vllm, url: "http://127.0.0.1:${SMOKE_VLLM_PORT}", model: "${SMOKE_MODEL:-tiny-llm}", lane: coder}
  - {name: reader, kind: llama.cpp, url: "http://127.0.0.1:1"}
""")
    result = invoke(["--manifest", str(path), "-e", f"reader=llama.cpp@{llama.url}", "--json"],
                    env={"SMOKE_VLLM_PORT": str(vllm.port), "PREFLIGHT_SMOKE_INTERVAL": "0.05"})
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [(e["name"], e["url"], e["model"], e["lane"], e["status"]) for e in doc["endpoints"]] == [
        ("coder", vllm.url, "tiny-llm", "coder", "ready"), ("reader", llama.url, None, None, "ready")]


DISABLED_LANE_MANIFEST = """\
version: 1
models_dir: /models
lanes:
  - name: coder
    kind: hf-dir
    path: coder
    source: hf://org/coder@main
    enabled: ${ENABLE_CODER:-true}
  - {name: reader, kind: gguf, path: r.gguf, source: "hf://org/r/r.gguf@main"}
endpoints:
  - {name: coder, kind: vllm, url: "http://127.0.0.1:1", model: coder, lane: coder}
  - {name: reader, kind: llama.cpp, url: "${READER_URL}", lane: reader}
"""


def test_cli_skips_the_endpoint_of_a_disabled_lane(serve, tmp_path):
    llama = serve("llama.cpp")
    path = write_manifest(tmp_path, DISABLED_LANE_MANIFEST)
    env = {"READER_URL": llama.url, "PREFLIGHT_SMOKE_INTERVAL": "0.05", "PREFLIGHT_SMOKE_DEADLINE": "1"}
    off = invoke(["--manifest", str(path), "--json"], env={**env, "ENABLE_CODER": "false"})
    assert off.exit_code == 0, off.stderr
    doc = json.loads(off.stdout)
    assert [e["name"] for e in doc["endpoints"]] == ["reader"] and doc["skipped"] == ["coder"]
    assert "skip coder: lane coder is disabled" in off.stderr
    on = invoke(["--manifest", str(path), "--json"], env=env)  # enabled by default: checked, and down
    assert on.exit_code == 3, on.stderr
    assert [e["name"] for e in json.loads(on.stdout)["endpoints"]] == ["coder", "reader"]


def test_cli_with_only_disabled_endpoints_is_ready_and_says_so(tmp_path):
    path = write_manifest(tmp_path, DISABLED_LANE_MANIFEST.replace("lane: reader", "lane: coder"))
    result = invoke(["--manifest", str(path)], env={"ENABLE_CODER": "no", "READER_URL": "http://127.0.0.1:1", "PREFLIGHT_SMOKE_DEADLINE": "1"})
    assert result.exit_code == 0, result.stderr
    assert "every listed endpoint belongs to a disabled lane" in result.stderr


def test_cli_reads_every_option_from_the_environment(serve, tmp_path):
    vllm = serve("vllm")
    llama = serve("llama.cpp", loading_for=60)
    report = tmp_path / "out" / "smoke.json"
    env = {"PREFLIGHT_SMOKE_ENDPOINT": f"coder=vllm@{vllm.url}#tiny-llm  reader=llama.cpp@{llama.url}",
           "PREFLIGHT_SMOKE_DEADLINE": "0.5", "PREFLIGHT_SMOKE_INTERVAL": "0.05", "PREFLIGHT_SMOKE_COMPLETION": "false",
           "PREFLIGHT_SMOKE_REPORT": str(report), "PREFLIGHT_SMOKE_TERMINATION_LOG": str(tmp_path / "termination-log")}
    result = invoke([], env=env)
    assert result.exit_code == 3
    doc = json.loads(report.read_text())
    assert [e["status"] for e in doc["endpoints"]] == ["ready", "failed"]
    assert "POST /v1/completions" not in vllm.paths()
    assert "reader: llama.cpp at" in (tmp_path / "termination-log").read_text()
    assert any("waiting for llama.cpp" in line and "Loading model" in line for line in result.stderr.splitlines())


@pytest.mark.parametrize("args, env, says", [
    (["-e", "coder=vllm"], {}, "expected NAME=KIND@URL[#MODEL]"),
    (["-e", "coder=vllm@localhost:8000"], {}, "must start with http:// or https://"),
    (["-e", "a=http@http://127.0.0.1:1", "-e", "a=http@http://127.0.0.1:2"], {}, "'a' is given twice"),
    (["--deadline", "-1", "-e", "a=http@http://127.0.0.1:1"], {}, "--deadline"),
    (["-m", "MANIFEST"], {}, "endpoints[0].url: environment variable SMOKE_UNSET_PORT is not set"),
    (["-m", "MANIFEST_EMPTY"], {}, "has no `endpoints:` list"),
    (["-m", "nowhere.yaml"], {}, "cannot read the manifest"),
])
def test_cli_usage_errors_exit_2_without_traceback(tmp_path, args, env, says):
    bad = write_manifest(tmp_path, "endpoints:\n  - {name: a, kind: vllm, url: 'http://h:${SMOKE_UNSET_PORT}'}\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("version: 1\nlanes: []\n")
    args = [{"MANIFEST": str(bad), "MANIFEST_EMPTY": str(empty), "nowhere.yaml": str(tmp_path / "nowhere.yaml")}.get(a, a) for a in args]
    result = invoke(args, env=env)
    assert result.exit_code == 2
    assert says in result.stderr or says in result.output
    assert "Traceback" not in result.output + result.stderr


# The console script `preflight` is `preflight.cli:main`; run it the same way, from this checkout.
CONSOLE_SCRIPT = ["-c", "import sys; from preflight.cli import main; sys.argv[0] = 'preflight'; main()", "smoke"]


@pytest.mark.parametrize("command", [["-m", "preflight.cli_smoke"], CONSOLE_SCRIPT], ids=["module", "console-script"])
def test_real_process(serve, tmp_path, command):
    vllm = serve("vllm", refuse_for=0.3)
    llama = serve("llama.cpp", loading_for=0.3)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, *command, "-e", f"coder=vllm@{vllm.url}/v1#tiny-llm", "-e", f"reader=llama.cpp@{llama.url}",
         "--interval", "0.05", "--deadline", "10", "--json"],
        capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "ready"
    assert "preflight smoke: ready (2 endpoints" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sigterm_ends_a_waiting_smoke_run_with_130_and_says_why(tmp_path):
    tlog = tmp_path / "termination-log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, *CONSOLE_SCRIPT, "-e", "coder=vllm@http://127.0.0.1:1#m", "--interval", "0.1",
                             "--deadline", "60", "--termination-log", str(tlog)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        time.sleep(1.0)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert time.monotonic() - started < 5
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert "interrupted (SIGTERM)" in tlog.read_text()


def test_an_absent_shared_manifest_does_not_stop_a_flag_only_smoke_run(serve, tmp_path):
    llama = serve("llama.cpp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFLIGHT_MANIFEST": str(tmp_path / "not-mounted.yaml")}
    proc = subprocess.run([sys.executable, *CONSOLE_SCRIPT, "-e", f"reader=llama.cpp@{llama.url}", "--interval", "0.05",
                           "--deadline", "10"], capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
