"""Small HTTP servers on 127.0.0.1 that answer like the real inference servers.

- vLLM (OpenAI-compatible server): opens its port only once the model is loaded, so
  connections are refused before that; `GET /health` is an empty 200; `/v1/*` needs
  `Authorization: Bearer <key>` when started with `--api-key`; an unknown model in a
  request is a 404 `{"error": {"message": "The model `x` does not exist.", ...}}`.
- llama.cpp `llama-server`: opens its port at once and answers every route with
  503 `{"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}`
  while it loads, then `GET /health` is 200 `{"status": "ok"}`; `/v1/models` lists the
  GGUF path (or `--alias`) with owner `llamacpp`; `/props` names `model_path`.
- an embeddings server (TEI, vLLM pooling): `GET /health`, `POST /v1/embeddings`.
- a plain HTTP service answering `GET` with a chosen status.

Each fake goes through the same phases as the real thing: refused for `refuse_for`
seconds (the port is bound but not listening, which is what a client sees while a
container starts), then 503 "Loading model" for `loading_for` seconds, then ready.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOADING = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}


class FakeServer:
    def __init__(
        self,
        kind: str,
        *,
        models: tuple[str, ...] = ("tiny-llm",),
        refuse_for: float = 0.0,
        loading_for: float = 0.0,
        completion_status: int = 200,
        api_key: str | None = None,
        hang: bool = False,
        http_status: int = 200,
        has_v1_models: bool = True,
        dimension: int = 8,
    ) -> None:
        self.kind = kind
        self.models = models
        self.refuse_for = refuse_for
        self.loading_for = loading_for
        self.completion_status = completion_status
        self.api_key = api_key
        self.hang = hang
        self.http_status = http_status
        self.has_v1_models = has_v1_models
        self.dimension = dimension
        self.requests: list[tuple[str, str, Any]] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._t0 = 0.0
        self._serving = False
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self), bind_and_activate=False)
        self._httpd.daemon_threads = True
        self._httpd.server_bind()  # port reserved; refused until listen()
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._serving:
            self._httpd.shutdown()
        self._thread.join(5)
        self._httpd.server_close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        if self._stopped.wait(self.refuse_for):
            return
        self._httpd.server_activate()
        self._serving = True
        self._httpd.serve_forever(poll_interval=0.05)

    def loading(self) -> bool:
        return time.monotonic() - self._t0 < self.refuse_for + self.loading_for

    def record(self, method: str, path: str, body: Any) -> None:
        with self._lock:
            self.requests.append((method, path, body))

    def paths(self) -> list[str]:
        with self._lock:
            return [f"{m} {p}" for m, p, _ in self.requests]


def _handler_for(fake: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def send(self, status: int, doc: Any = None, raw: bytes | None = None) -> None:
            body = raw if raw is not None else (b"" if doc is None else json.dumps(doc).encode())
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            try:
                return json.loads(raw) if raw else None
            except ValueError:
                return raw

        def do_GET(self) -> None:
            self.route("GET", None)

        def do_POST(self) -> None:
            self.route("POST", self.body())

        def route(self, method: str, body: Any) -> None:
            fake.record(method, self.path, body)
            if fake.hang:
                fake._stopped.wait(30)
                return
            if fake.loading():
                self.send(503, LOADING)
                return
            {"vllm": self.vllm, "llama.cpp": self.llama, "embeddings": self.embeddings, "http": self.plain}[fake.kind](method, body)

        def authorised(self) -> bool:
            if fake.api_key and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                self.send(401, {"error": "Unauthorized"})
                return False
            return True

        def vllm(self, method: str, body: Any) -> None:
            if (method, self.path) == ("GET", "/health"):
                self.send(200)
                return
            if self.path.startswith("/v1/") and not self.authorised():
                return
            if (method, self.path) == ("GET", "/v1/models"):
                now = int(time.time())
                cards = [{"id": m, "object": "model", "created": now, "owned_by": "vllm", "root": f"/models/{m}", "parent": None,
                          "max_model_len": 2048, "permission": [{"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission"}]}
                         for m in fake.models]
                self.send(200, {"object": "list", "data": cards})
            elif (method, self.path) == ("POST", "/v1/completions"):
                model = body.get("model") if isinstance(body, dict) else None
                if model not in fake.models:
                    self.send(404, {"error": {"message": f"The model `{model}` does not exist.", "type": "NotFoundError", "param": "model", "code": 404}})
                elif fake.completion_status != 200:
                    self.send(fake.completion_status, {"error": {"message": "EngineCore encountered an issue. See stack trace for the root cause.",
                                                                 "type": "InternalServerError", "param": None, "code": fake.completion_status}})
                else:
                    self.send(200, completion(model, body))
            else:
                self.send(404, {"detail": "Not Found"})

        def llama(self, method: str, body: Any) -> None:
            model = fake.models[0]
            if (method, self.path) == ("GET", "/health"):
                self.send(200, {"status": "ok"})
            elif (method, self.path) == ("GET", "/v1/models") and fake.has_v1_models:
                meta = {"vocab_type": 2, "n_vocab": 32000, "n_ctx_train": 2048, "n_embd": 64, "n_params": 1_000_000, "size": 4_000_000}
                self.send(200, {"object": "list", "data": [{"id": model, "object": "model", "created": int(time.time()), "owned_by": "llamacpp", "meta": meta}]})
            elif (method, self.path) == ("GET", "/props"):
                self.send(200, {"default_generation_settings": {"n_ctx": 2048}, "total_slots": 1, "model_path": model, "build_info": "b0000-fake"})
            elif (method, self.path) == ("POST", "/v1/completions"):
                if fake.completion_status != 200:
                    self.send(fake.completion_status, {"error": {"code": fake.completion_status, "message": "failed to decode", "type": "server_error"}})
                else:
                    self.send(200, completion(model, body))
            else:
                self.send(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})

        def embeddings(self, method: str, body: Any) -> None:
            if (method, self.path) == ("GET", "/health"):
                self.send(200)
            elif (method, self.path) == ("POST", "/v1/embeddings"):
                if fake.completion_status != 200:
                    self.send(fake.completion_status, {"error": {"message": "model crashed", "type": "backend"}})
                    return
                vector = [round(0.1 * (i + 1), 3) for i in range(fake.dimension)]
                self.send(200, {"object": "list", "data": [{"object": "embedding", "embedding": vector, "index": 0}],
                                "model": fake.models[0], "usage": {"prompt_tokens": 2, "total_tokens": 2}})
            else:
                self.send(404, {"error": "not found"})

        def plain(self, method: str, body: Any) -> None:
            self.send(fake.http_status, raw=b"ok" if fake.http_status < 400 else b"nope")

    return Handler


def completion(model: str, request: Any) -> dict[str, Any]:
    return {
        "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": " world", "logprobs": None, "finish_reason": "length", "stop_reason": None}],
        "usage": {"prompt_tokens": 2, "total_tokens": 3, "completion_tokens": 1},
    }


class EchoAuthServer:
    """A hostile Hub: every answer carries back the Authorization header it was sent.

    `mode` picks how (set it between runs):
      - "status:<code>": that status, the header in the JSON body and in X-Error-Message
      - "reason": 500 whose reason phrase is the header
      - "redirect": 302 to a Location holding the header, forever (too many redirects)
      - "bad-location": 302 to an ftp:// URL holding the header (an unsupported URL)
      - "content-length": 200 whose Content-Length header is the header
      - "content-range": the first GET sends 10 of 100 promised bytes and closes; a GET
        with Range gets 206 with the header as Content-Range (a resume that cannot be trusted)
    With `api_ok`, the Hub API answers as the Hub does (repo `org/llm` at `commit`, one
    100-byte config.json) and only the file downloads misbehave. Every request's path and
    Authorization value are kept in `seen`.
    """

    def __init__(self, mode: str = "status:401", *, api_ok: bool = False,
                 commit: str = "0123456789abcdef0123456789abcdef01234567") -> None:
        self.mode = mode
        self.api_ok = api_ok
        self.commit = commit
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _echo_handler(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> EchoAuthServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._thread.join(5)
        self._httpd.server_close()


def _echo_handler(server: EchoAuthServer) -> type[BaseHTTPRequestHandler]:
    from urllib.parse import quote

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self.answer()

        def do_GET(self) -> None:
            self.answer()

        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            self.answer()

        def reply(self, status: int, body: bytes, headers: dict[str, str], reason: str | None = None) -> None:
            self.send_response(status, reason)
            self.send_header("Content-Type", "application/json")
            for name, value in headers.items():
                self.send_header(name, value)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def answer(self) -> None:
            auth = self.headers.get("Authorization") or ""
            with server._lock:
                server.seen.append((self.path, auth))
            if server.api_ok and self.path.startswith("/api/"):
                info = {"id": "org/llm", "modelId": "org/llm", "sha": server.commit, "private": False, "gated": False,
                        "siblings": [{"rfilename": "config.json", "size": 100, "blobId": "0" * 40}]}
                self.reply(200, json.dumps(info).encode(), {})
                return
            mode = server.mode
            body = json.dumps({"error": f"invalid credentials: {auth}"}).encode()
            if mode.startswith("status:"):
                self.reply(int(mode.split(":", 1)[1]), body, {"X-Error-Code": "Echo", "X-Error-Message": f"rejected {auth}"})
            elif mode == "reason":
                self.reply(500, body, {}, reason=f"Rejected {auth}")
            elif mode == "redirect":
                self.reply(302, b"", {"Location": f"/again?auth={quote(auth)}&raw={auth.replace(' ', '+')}"})
            elif mode == "bad-location":
                self.reply(302, b"", {"Location": f"ftp://mirror.invalid/{auth.replace(' ', '/')}"})
            elif mode == "content-length":
                self.reply(200, b"x" * 10, {"Content-Length": auth or "nonsense"})
                self.close_connection = True
            elif mode == "content-range":
                if self.headers.get("Range"):
                    self.reply(206, b"x" * 90, {"Content-Range": f"bytes {auth}", "Content-Length": "90"})
                else:
                    self.reply(200, b"x" * 10, {"Content-Length": "100"})
                    self.close_connection = True
            else:
                self.reply(500, body, {})

    return Handler
