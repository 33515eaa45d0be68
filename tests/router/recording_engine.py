"""An independent fake engine for the conformance suite: a plain `http.server` on loopback
(nothing shared with the router's stack or shoal.testing) that records every request
byte for byte and answers with exactly the bytes a test scripts.

    with RecordingEngine() as engine:
        engine.reply(Reply(body=b'{"id": ...}', headers={"x-request-id": "eng-1"}))
        ...  # drive the router
        engine.requests[-1].body    # the raw bytes the router sent
        engine.requests[-1].headers # lower-cased names

Without a scripted reply the engine answers a request by `default_reply(path, body)`: a
fixed, valid OpenAI-shaped response (streamed when the request asked for it).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    disconnected: bool = False  # the client (the router) went away mid-stream


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # When set: sent as SSE with chunked transfer encoding, one write per chunk.
    chunks: list[bytes] | None = None
    chunk_delay_seconds: float = 0.0


def chat_completion(content: str = "Hello from the recording engine.", model: str = "rec-model", n: int = 1, **extra: Any) -> bytes:
    choices = [
        {"index": i, "message": {"role": "assistant", "content": content}, "logprobs": None, "finish_reason": "stop"}
        for i in range(n)
    ]
    body = {
        "id": "chatcmpl-rec", "object": "chat.completion", "created": 1700000000, "model": model, "choices": choices,
        "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
    }
    body.update(extra)
    # Deliberately unusual but valid formatting: pass-through must keep it byte for byte.
    return json.dumps(body, indent=1, ensure_ascii=False).encode()


def chat_chunks(words: list[str], model: str = "rec-model") -> list[bytes]:
    chunks = []
    for i, word in enumerate(words):
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
        event = {"id": "chatcmpl-rec", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}
        chunks.append(b"data: " + json.dumps(event).encode() + b"\n\n")
    last = {"id": "chatcmpl-rec", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
            "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}
    chunks.append(b"data: " + json.dumps(last).encode() + b"\n\n")
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def default_reply(path: str, body: bytes) -> Reply:
    try:
        request = json.loads(body)
    except ValueError:
        request = {}
    stream = isinstance(request, dict) and request.get("stream") is True
    if path.endswith("/chat/completions"):
        if stream:
            return Reply(headers={"Content-Type": "text/event-stream"}, chunks=chat_chunks(["Hello", " there", "."]))
        return Reply(headers={"Content-Type": "application/json"}, body=chat_completion())
    if path.endswith("/completions"):
        text = {"id": "cmpl-rec", "object": "text_completion", "created": 1700000000, "model": "rec-model",
                "choices": [{"index": 0, "text": " done", "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}
        return Reply(headers={"Content-Type": "application/json"}, body=json.dumps(text).encode())
    return Reply(status=404, headers={"Content-Type": "application/json"}, body=b'{"error": {"message": "no such path"}}')


class RecordingEngine:
    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                seen = Seen("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with engine._lock:
                    engine.requests.append(seen)
                    reply = engine._replies.popleft() if engine._replies else default_reply(self.path, body)
                self._send(reply, seen)

            def _send(self, reply: Reply, seen: Seen) -> None:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                try:
                    if reply.chunks is None:
                        self.send_header("Content-Length", str(len(reply.body)))
                        self.end_headers()
                        self.wfile.write(reply.body)
                        return
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for chunk in reply.chunks:
                        if reply.chunk_delay_seconds:
                            time.sleep(reply.chunk_delay_seconds)
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    seen.disconnected = True
                    self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def reply(self, *replies: Reply) -> None:
        """Script the next replies, in order; afterwards the default replies resume."""
        with self._lock:
            self._replies.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._replies.clear()

    def __enter__(self) -> RecordingEngine:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
