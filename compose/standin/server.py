"""A CPU stand-in for vLLM or llama.cpp: the endpoints `preflight smoke` checks, nothing more.

    python3 server.py vllm      --model DIR  [--served-model-name NAME] [--port 8000]
    python3 server.py llama.cpp --model FILE [--port 8080]

It loads the model the way the real server starts: the vLLM stand-in reads
config.json and every safetensors header in the folder, the llama.cpp stand-in reads
the GGUF header. A missing or malformed model ends it with exit 1 and the reason,
before it listens, as the real servers fail. Then it serves GET /health, GET
/v1/models, GET /props (llama.cpp) and POST /v1/completions, whose one "token" is the
first word of the vocabulary. Standard library only: it runs in the bare base image.
"""

from __future__ import annotations

import argparse
import json
import signal
import struct
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_HEADER = 100 * 1024 * 1024
MAX_BODY = 1 << 20


class LoadError(Exception):
    pass


def load_vllm(folder: Path) -> str:
    """What vLLM reads first: config.json, then each safetensors header. Returns a token."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise LoadError(f"{folder}/config.json: {exc}") from None
    if not isinstance(config, dict):
        raise LoadError(f"{folder}/config.json is not a JSON object")
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise LoadError(f"{folder}: no *.safetensors weights")
    for shard in shards:
        with shard.open("rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise LoadError(f"{shard}: shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            size = shard.stat().st_size
            if n > min(MAX_HEADER, size - 8):
                raise LoadError(f"{shard}: header length {n} does not fit the file ({size} bytes)")
            try:
                header = json.loads(f.read(n))
            except ValueError as exc:
                raise LoadError(f"{shard}: header is not JSON: {exc}") from None
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
        if 8 + n + max(ends, default=0) != size:
            raise LoadError(f"{shard}: {size} bytes, but the header describes {8 + n + max(ends, default=0)}")
    return _first_word(folder / "tokenizer.json")


def load_gguf(path: Path) -> str:
    """What llama.cpp reads first: magic and version."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise LoadError(f"{path}: {exc.strerror or exc}") from None
    if len(head) < 8 or head[:4] != b"GGUF":
        raise LoadError(f"{path}: not a GGUF file (magic {head[:4]!r})")
    (version,) = struct.unpack("<I", head[4:8])
    if version not in (2, 3):
        raise LoadError(f"{path}: GGUF version {version} is not supported")
    return " world"


def _first_word(tokenizer: Path) -> str:
    """The vocabulary's first word piece ("\u2581hello" -> " hello"): the stand-in's one token."""
    try:
        vocab = json.loads(tokenizer.read_text())["model"]["vocab"]
        words = sorted((i, t) for t, i in vocab.items() if t.startswith("\u2581") and len(t) > 1)
        return words[0][1].replace("\u2581", " ")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return " world"


def make_handler(kind: str, model_id: str, model_path: str, token: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"{kind}-stand-in"

        def log_message(self, fmt: str, *args: Any) -> None:
            sys.stderr.write(f"{kind} stand-in: {self.address_string()} {fmt % args}\n")

        def send_json(self, status: int, doc: Any) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/health":
                self.send_json(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self.send_json(200, {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "stand-in"}]})
            elif self.path == "/props" and kind == "llama.cpp":
                self.send_json(200, {"model_path": model_path})
            else:
                self.send_json(404, {"error": {"message": f"no route {self.path}", "code": 404}})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/v1/completions":
                self.send_json(404, {"error": {"message": f"no route {self.path}", "code": 404}})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if not 0 < length <= MAX_BODY:
                    raise ValueError(f"body of {length} bytes")
                req = json.loads(self.rfile.read(length))
                if not isinstance(req, dict):
                    raise ValueError("body is not a JSON object")
            except ValueError as exc:
                self.send_json(400, {"error": {"message": f"bad request: {exc}", "code": 400}})
                return
            if kind == "vllm" and req.get("model") != model_id:
                self.send_json(404, {"error": {"message": f"The model `{req.get('model')}` does not exist.", "code": 404}})
                return
            self.send_json(200, {"id": "cmpl-stand-in", "object": "text_completion", "model": model_id,
                                 "choices": [{"index": 0, "text": token, "finish_reason": "length"}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    return Handler


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["vllm", "llama.cpp"])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=None, help="default: 8000 (vllm), 8080 (llama.cpp); 0 picks a free one")
    ns = parser.parse_args(argv)
    port = ns.port if ns.port is not None else (8000 if ns.kind == "vllm" else 8080)
    try:
        token = load_vllm(ns.model) if ns.kind == "vllm" else load_gguf(ns.model)
    except LoadError as exc:
        print(f"{ns.kind} stand-in: cannot load the model: {exc}", file=sys.stderr, flush=True)
        return 1
    model_id = ns.served_model_name or str(ns.model)
    server = ThreadingHTTPServer((ns.host, port), make_handler(ns.kind, model_id, str(ns.model), token))
    # As PID 1 in a container, SIGTERM (docker stop) is ignored unless handled.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{ns.kind} stand-in: serving {model_id} from {ns.model} on {ns.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
