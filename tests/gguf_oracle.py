"""llama.cpp as the oracle for GGUF verdicts, through llama-cpp-python (ops/oracle-llama.sh).

`judge(requests)` asks llama.cpp about many files in one worker process (this module run as
`python -m tests.gguf_oracle REQUESTS START`), which reports one JSON line per file. llama.cpp
aborts the process on some bad files (a tensor-alignment assertion, block_count 0); the
parent then records that file as refused ("abort") and starts a new worker after it.

Per file the worker asks what the server would do: `gguf_init_from_file` (the parser, called
through ctypes on libggml-base, as the bindings do not wrap it), then
`llama_model_load_from_file` with the default parameters (mmap, CPU), `vocab_only` for
vocabulary files; in mode "decode" it then creates a context (which builds the model's graph)
and decodes one token, the BOS token or 0, as a server's first request does.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def vocab_dir() -> Path | None:
    """Where ops/oracle-llama.sh keeps llama.cpp's own vocabulary GGUFs, if it ran."""
    try:
        out = subprocess.run(["bash", str(REPO / "ops" / "oracle-llama.sh"), "--print-vocab-dir"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(out.stdout.strip())
    return path if (path / "ggml-vocab-llama-spm.gguf").is_file() else None


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except Exception:
        return False
    return True


def require() -> None:
    """Called at the top of a test module that needs llama.cpp: the module is skipped when
    llama-cpp-python is not installed, and fails under CI=true."""
    if available():
        return
    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail("llama-cpp-python is not installed: run bash ops/oracle-llama.sh", pytrace=False)
    pytest.skip("llama-cpp-python is not installed (bash ops/oracle-llama.sh)", allow_module_level=True)


def tally(row: Counter[str], ours: bool, theirs: bool, explained: bool) -> bool:
    """One file's two verdicts counted in `row` (agree, explained, false OK, false alarm);
    True when they disagree and nothing explains why."""
    if ours == theirs:
        row["agree"] += 1
        return False
    if explained:
        row["explained"] += 1
        return False
    row["false OK" if ours else "false alarm"] += 1
    return True


@dataclass(frozen=True)
class Verdict:
    parsed: bool  # gguf_init_from_file accepted the file
    loaded: bool  # llama_model_load_from_file returned a model
    reason: str  # llama.cpp's last error lines, or "abort: ..." when the process died
    decoded: bool | None = None  # mode "decode": a context was created and one token decoded

    @property
    def ok(self) -> bool:
        return self.parsed and self.loaded and self.decoded is not False

    @property
    def stage(self) -> str:
        """Where llama.cpp refused the file: "parse", "load", "decode" (a failure or an abort there), or "" when it did not."""
        if self.ok:
            return ""
        if not self.parsed:
            return "parse"
        return "decode" if self.loaded else "load"


def judge(requests: list[tuple[str, str]], timeout: float = 600) -> list[Verdict]:
    """Verdicts for (path, mode) pairs; mode "model" loads the weights, "vocab" the vocabulary only,
    "decode" loads the weights, creates a context and decodes one token."""
    verdicts: list[Verdict | None] = [None] * len(requests)
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requests.json"
        req.write_text(json.dumps(requests))
        start = 0
        loaded_at: dict[int, bool] = {}
        while start < len(requests):
            err = Path(tmp) / f"stderr-{start}.txt"
            with open(err, "wb") as err_f:
                proc = subprocess.run([sys.executable, "-m", "tests.gguf_oracle", str(req), str(start)], cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=err_f, timeout=timeout, check=False,
                                      env={**os.environ, "GGML_NO_BACKTRACE": "1"})
            current = start
            for line in proc.stdout.decode().splitlines():
                msg = json.loads(line)
                if "start" in msg:
                    current = msg["start"]
                elif "loaded_only" in msg:
                    loaded_at[msg["i"]] = True
                else:
                    verdicts[msg["i"]] = Verdict(msg["parsed"], msg["loaded"], msg["reason"], msg.get("decoded"))
                    current = msg["i"] + 1
            if current >= len(requests):
                break
            if verdicts[current] is None:
                lines = err.read_bytes()[-2000:].decode(errors="replace").strip().splitlines()
                said = [ln for ln in lines if "GGML_ASSERT" in ln or "error" in ln.lower()] or lines
                why = "abort: " + (said[-1].strip() if said else f"exit {proc.returncode}")
                # an abort after the model loaded happened creating the context or decoding
                verdicts[current] = Verdict(True, True, why, False) if loaded_at.get(current) else Verdict(True, False, why)
            start = current + 1
    return [v if v is not None else Verdict(False, False, "not judged") for v in verdicts]


# --------------------------------------------------------------------------- the worker

def _worker(requests_file: str, start: int) -> None:
    # Verdicts go to the original stdout; whatever the library prints goes to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import llama_cpp as L

    errors: list[str] = []

    @L.llama_log_callback
    def log(level: int, text: bytes, _user: object) -> None:
        if level == 4:  # GGML_LOG_LEVEL_ERROR
            line = text.decode(errors="replace").strip()
            if line:
                errors.append(line)

    L.llama_log_set(log, ctypes.c_void_p())
    L.llama_backend_init()
    base = ctypes.CDLL(os.path.join(os.path.dirname(L.__file__), "lib", "libggml-base.so"))

    class InitParams(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]

    base.gguf_init_from_file.restype = ctypes.c_void_p
    base.gguf_init_from_file.argtypes = [ctypes.c_char_p, InitParams]
    base.gguf_free.argtypes = [ctypes.c_void_p]

    requests = json.loads(Path(requests_file).read_text())
    for i in range(start, len(requests)):
        path, mode = requests[i]
        print(json.dumps({"start": i}), file=out, flush=True)
        errors.clear()
        ctx = base.gguf_init_from_file(path.encode(), InitParams(True, None))
        parsed = bool(ctx)
        if ctx:
            base.gguf_free(ctx)
        loaded = False
        decoded = None
        if parsed:
            params = L.llama_model_default_params()
            params.vocab_only = mode == "vocab"
            params.n_gpu_layers = 0
            model = L.llama_model_load_from_file(path.encode(), params)
            loaded = bool(model)
            if model and mode == "decode":
                print(json.dumps({"i": i, "loaded_only": True}), file=out, flush=True)
                decoded = _decode(L, model)
            if model:
                L.llama_model_free(model)
        print(json.dumps({"i": i, "parsed": parsed, "loaded": loaded, "decoded": decoded, "reason": " | ".join(errors[-3:])}), file=out, flush=True)


def _decode(L: object, model: object) -> bool:
    """A context as a server makes one (small here), and one token through it."""
    cp = L.llama_context_default_params()  # type: ignore[attr-defined]
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = 64, 8, 8, 1, 1
    ctx = L.llama_init_from_model(model, cp)  # type: ignore[attr-defined]
    if not ctx:
        return False
    try:
        vocab = L.llama_model_get_vocab(model)  # type: ignore[attr-defined]
        bos = L.llama_vocab_bos(vocab)  # type: ignore[attr-defined]
        token = (ctypes.c_int32 * 1)(bos if bos >= 0 else 0)
        return L.llama_decode(ctx, L.llama_batch_get_one(token, 1)) == 0  # type: ignore[attr-defined]
    finally:
        L.llama_free(ctx)  # type: ignore[attr-defined]


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]))
