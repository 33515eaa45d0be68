"""An OpenAI-compatible fake inference engine: a real HTTP server that stands in for vLLM.

`shoal dev up` runs it behind the router sidecar of every simulated pod whose tier is not
mapped to a real model (GPU-sized tiers cannot run here), and tests and benchmarks use it
on loopback. It speaks enough of vLLM's API to stand in for it: `/v1/chat/completions`,
`/v1/completions` (both with SSE streaming), `/v1/embeddings`, `/v1/models`, `/health`,
and vLLM-style Prometheus `/metrics` (`vllm:num_requests_waiting`,
`vllm:num_requests_running`). Its behaviour (latency, failures, queue depth, streaming
breaks) is set on the command line and can be changed while it runs.

Command line (stable; other tests and benchmarks rely on it):

    python -m shoal.devcluster.engines.fake --port 8000 [--host 127.0.0.1] [--name small]
        [--model fake-model] [--latency-ms 0] [--token-latency-ms 0] [--reply TEXT]
        [--fail-status 503] [--fail-count N] [--retry-after S] [--drop] [--break-after-chunks N]
        [--max-running N] [--waiting N] [--prefill-tokens-per-second R]
        [--decode-tokens-per-second R] [--token-logprob LP]

(``python -m shoal.testing.fake_engine`` is the same program.)

With `--port 0` a free port is chosen. Either way the first line on stdout is
`listening on http://127.0.0.1:PORT`.

Python API (stable):

    with start_fake_engine(name="small", latency_ms=5) as engine:   # a subprocess
        engine.base_url            # "http://127.0.0.1:PORT/v1"
        engine.configure(fail_status=503, fail_count=2)
        engine.stats()             # {"requests": ..., "cancelled": ..., "last_body": ...}
        engine.reset()             # default behaviour, counters zeroed

    FakeEngine(Behaviour(...)).app() is the aiohttp application, for in-process use.

vLLM's run-time LoRA API is there too: `POST /v1/load_lora_adapter` {"lora_name", "lora_path"}
adds an adapter (listed in /v1/models; a request naming it is answered as that model) and
`POST /v1/unload_lora_adapter` {"lora_name"} removes it (404 if it was not loaded).

Control endpoints (JSON): `POST /_fake/behaviour` merges fields into the behaviour,
`GET /_fake/stats`, `POST /_fake/reset`.

Behaviour fields (all optional):
    name                 identifies the engine: in the reply text and the x-fake-engine header.
    model                the served model name (/v1/models, responses).
    reply                reply text; streamed one word per chunk. Default "Reply from NAME."
    latency_ms           before the response (non-streaming) or its first chunk (streaming).
    token_latency_ms     between streamed chunks.
    fail_status          answer with this HTTP status and an OpenAI error body ...
    fail_count           ... for the next N requests only (unset: every request).
    retry_after          with fail_status: a Retry-After header of this many seconds.
    drop                 close the connection without answering.
    break_after_chunks   streaming: close the connection after N content chunks.
    max_running          requests served at once; more wait in a queue (reported as waiting).
    waiting              extra waiting requests to report in /metrics (a simulated queue).
    prefill_tokens_per_second   the latency and throughput model (below); unset: no prefill time.
    decode_tokens_per_second    unset: no decode time (token_latency_ms still applies).
    token_logprob        the log-probability of every reply token (a word, with its leading
                         space), sent as vLLM sends it when a request asks for logprobs:
                         chat `logprobs: true` (`logprobs.content[]`), completions
                         `logprobs: N` (`token_logprobs`, N alternatives of which the
                         first is the token itself); `"logprobs": null` otherwise.

The latency and throughput model is the shape of a vLLM replica, coarse on purpose: a
request waits for one of ``max_running`` batch slots (the rest is the engine's waiting
queue, which is what Shoal's autoscaler reads), then takes ``latency_ms`` plus
``prompt_tokens / prefill_tokens_per_second`` to its first token and
``1 / decode_tokens_per_second`` per further token. Prompt tokens are estimated at four
characters per token; the reply is ``reply`` cut to the request's ``max_tokens`` words
(``finish_reason: length`` then). With ``max_running`` 64 and 40 tokens/s of decode, a
replica completes about 64 * 40 / (reply tokens) requests per second at most.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from aiohttp import web


@dataclass
class Behaviour:
    name: str = "fake"
    model: str = "fake-model"
    reply: str | None = None
    latency_ms: float = 0.0
    token_latency_ms: float = 0.0
    fail_status: int | None = None
    fail_count: int | None = None
    retry_after: int | None = None
    drop: bool = False
    break_after_chunks: int | None = None
    max_running: int | None = None
    waiting: int = 0
    prefill_tokens_per_second: float | None = None
    decode_tokens_per_second: float | None = None
    token_logprob: float = -0.05

    def reply_text(self) -> str:
        return self.reply if self.reply is not None else f"Reply from {self.name}."

    def prefill_seconds(self, prompt_tokens: int) -> float:
        """Time to the first token: fixed latency plus the prompt at the prefill rate."""
        seconds = self.latency_ms / 1000
        if self.prefill_tokens_per_second:
            seconds += prompt_tokens / self.prefill_tokens_per_second
        return seconds

    def token_seconds(self) -> float:
        """Time between two generated tokens."""
        seconds = self.token_latency_ms / 1000
        if self.decode_tokens_per_second:
            seconds += 1 / self.decode_tokens_per_second
        return seconds

    def merged(self, changes: dict[str, Any]) -> Behaviour:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown behaviour fields: {sorted(unknown)}")
        return replace(self, **changes)


class FakeEngine:
    """The server's state: behaviour, counters, and the simulated queue."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.initial = behaviour or Behaviour()
        self.behaviour = self.initial
        self._reset_counters()
        self.adapters: dict[str, str] = {}  # LoRA adapters loaded at run time: name -> path
        self._slots: asyncio.Semaphore | None = None
        self._slots_size: int | None = None

    def _reset_counters(self) -> None:
        self.requests = 0
        self.completed = 0
        self.cancelled = 0
        self.failed = 0
        self.running = 0
        self.peak_running = 0
        self.queued = 0
        self.by_path: dict[str, int] = {}
        self.last_body: Any = None
        self.last_headers: dict[str, str] = {}

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "failed": self.failed,
            "running": self.running,
            "peak_running": self.peak_running,
            "waiting": self.queued,
            "by_path": dict(self.by_path),
            "last_body": self.last_body,
            "last_headers": self.last_headers,
            "behaviour": asdict(self.behaviour),
        }

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/load_lora_adapter", self._load_adapter)
        app.router.add_post("/v1/unload_lora_adapter", self._unload_adapter)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/_fake/behaviour", self._set_behaviour)
        app.router.add_get("/_fake/stats", self._stats)
        app.router.add_post("/_fake/reset", self._reset)
        return app

    # --- control -----------------------------------------------------------------------

    async def _set_behaviour(self, request: web.Request) -> web.Response:
        try:
            self.behaviour = self.behaviour.merged(await request.json())
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(asdict(self.behaviour))

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _reset(self, request: web.Request) -> web.Response:
        self.behaviour = self.initial
        self._reset_counters()
        return web.json_response(asdict(self.behaviour))

    # --- plain endpoints ---------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        models = [self.behaviour.model, *self.adapters]
        return web.json_response(
            {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in models]}
        )

    async def _load_adapter(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            name, path = str(body["lora_name"]), str(body["lora_path"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "load_lora_adapter needs lora_name and lora_path")
        self.adapters[name] = path
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload_adapter(self, request: web.Request) -> web.Response:
        try:
            name = str((await request.json())["lora_name"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "unload_lora_adapter needs lora_name")
        if self.adapters.pop(name, None) is None:
            return _error(404, f"The lora adapter '{name}' cannot be found.")
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _metrics(self, request: web.Request) -> web.Response:
        b = self.behaviour
        label = f'{{model_name="{b.model}"}}'
        text = (
            "# HELP vllm:num_requests_running Number of requests currently running on GPU.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{label} {float(self.running)}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{label} {float(self.queued + b.waiting)}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    # --- inference ---------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "chat")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "completions")

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "embeddings")

    async def _serve(self, request: web.Request, kind: str) -> web.StreamResponse:
        self.requests += 1
        self.by_path[request.path] = self.by_path.get(request.path, 0) + 1
        self.last_headers = {k.lower(): v for k, v in request.headers.items() if k.lower().startswith("x-") or k.lower() == "authorization"}
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not JSON")
        self.last_body = body
        b = self.behaviour
        try:
            await self._acquire(b)
            try:
                return await self._respond(request, kind, body, b)
            finally:
                self.running -= 1
                if self._slots is not None:
                    self._slots.release()
        except _Dropped:
            # aiohttp gives up on the response of a closed transport; this one is never sent.
            raise asyncio.CancelledError from None
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def _acquire(self, b: Behaviour) -> None:
        if b.max_running != self._slots_size:
            self._slots_size = b.max_running
            self._slots = asyncio.Semaphore(b.max_running) if b.max_running else None
        if self._slots is not None:
            self.queued += 1
            try:
                await self._slots.acquire()
            finally:
                self.queued -= 1
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)

    async def _respond(self, request: web.Request, kind: str, body: Any, b: Behaviour) -> web.StreamResponse:
        prompt_tokens = _prompt_tokens(body)
        first_token = b.prefill_seconds(prompt_tokens)
        if first_token:
            await asyncio.sleep(first_token)
        if b.fail_status is not None and (b.fail_count is None or b.fail_count > 0):
            if b.fail_count is not None:
                self.behaviour = replace(self.behaviour, fail_count=b.fail_count - 1)
            self.failed += 1
            failure = _error(b.fail_status, f"fake engine {b.name} fails with {b.fail_status}")
            if b.retry_after is not None:
                failure.headers["Retry-After"] = str(b.retry_after)
            return failure
        if b.drop:
            self.failed += 1
            request.transport.close()  # type: ignore[union-attr]
            raise _Dropped
        headers = {"x-fake-engine": b.name}
        if isinstance(body.get("model"), str) and body["model"] in self.adapters:
            b = replace(b, model=body["model"])  # answered by the adapter, as vLLM reports it
        words = b.reply_text().split(" ")
        finish_reason = "stop"
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and 0 < max_tokens < len(words):
            words, finish_reason = words[:max_tokens], "length"
        text_out = " ".join(words)
        created = int(time.time())
        if kind == "embeddings":
            inputs = body.get("input")
            items = inputs if isinstance(inputs, list) else [inputs]
            data = [{"object": "embedding", "index": i, "embedding": _vector(str(x))} for i, x in enumerate(items)]
            self.completed += 1
            return web.json_response(
                {"object": "list", "data": data, "model": b.model, "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}},
                headers=headers,
            )
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words), "total_tokens": prompt_tokens + len(words)}
        ident = f"fake-{self.requests}"
        if not body.get("stream"):
            # Non-streamed answers take the decode time of the whole reply (token_latency_ms
            # has always applied to streams only, and tests rely on that).
            if b.decode_tokens_per_second and len(words) > 1:
                await asyncio.sleep((len(words) - 1) / b.decode_tokens_per_second)
            pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
            if kind == "chat":
                choice: dict[str, Any] = {
                    "index": 0, "message": {"role": "assistant", "content": text_out},
                    "logprobs": _logprobs(kind, body, pieces, b.token_logprob), "finish_reason": finish_reason,
                }
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": text_out, "logprobs": _logprobs(kind, body, pieces, b.token_logprob), "finish_reason": finish_reason}
                obj = "text_completion"
            self.completed += 1
            return web.json_response(
                {"id": ident, "object": obj, "created": created, "model": b.model, "choices": [choice], "usage": usage},
                headers=headers,
            )
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        for i, word in enumerate(words):
            if b.break_after_chunks is not None and i >= b.break_after_chunks:
                self.failed += 1
                request.transport.close()  # type: ignore[union-attr]
                return response
            if i and b.token_seconds():
                await asyncio.sleep(b.token_seconds())
            text = word if i == 0 else " " + word
            if kind == "chat":
                delta: dict[str, Any] = {"content": text}
                if i == 0:
                    delta["role"] = "assistant"
                choice = {"index": 0, "delta": delta, "logprobs": _logprobs(kind, body, [text], b.token_logprob), "finish_reason": None}
            else:
                choice = {"index": 0, "text": text, "logprobs": _logprobs(kind, body, [text], b.token_logprob), "finish_reason": None}
            await response.write(_sse({"id": ident, "object": obj, "created": created, "model": b.model, "choices": [choice]}))
        last = (
            {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish_reason} if kind == "chat"
            else {"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason}
        )
        await response.write(_sse({"id": ident, "object": obj, "created": created, "model": b.model, "choices": [last]}))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            await response.write(_sse({"id": ident, "object": obj, "created": created, "model": b.model, "choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self.completed += 1
        return response


class _Dropped(Exception):
    pass


def _logprobs(kind: str, body: Any, pieces: list[str], logprob: float) -> dict[str, Any] | None:
    """The `logprobs` of a choice (or a stream chunk's choice) as vLLM sends them, or None
    when the request did not ask."""
    asked = body.get("logprobs")
    if kind == "chat":
        if asked is not True:
            return None
        top = body.get("top_logprobs") or 0
        return {"content": [
            {"token": p, "logprob": logprob, "bytes": list(p.encode()), "top_logprobs": [{"token": p, "logprob": logprob, "bytes": list(p.encode())}][:top]}
            for p in pieces
        ]}
    if not isinstance(asked, int) or isinstance(asked, bool):
        return None
    offsets = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
    return {
        "text_offset": offsets,
        "token_logprobs": [logprob] * len(pieces),
        "tokens": pieces,
        "top_logprobs": [{p: logprob} for p in pieces],
    }


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "fake_error", "param": None, "code": status}}, status=status
    )


def _prompt_tokens(body: Any) -> int:
    chars = 0
    if isinstance(body, dict):
        for message in body.get("messages") or []:
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                chars += len(message["content"])
        for key in ("prompt", "input"):
            value = body.get(key)
            if isinstance(value, str):
                chars += len(value)
            elif isinstance(value, list):
                chars += sum(len(str(v)) for v in value)
    return max(1, (chars + 3) // 4)


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(byte / 255, 4) for byte in digest[:8]]


# --- running it ----------------------------------------------------------------------------


async def serve(behaviour: Behaviour, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Start the fake engine in the running event loop; returns the runner and the bound port."""
    engine = FakeEngine(behaviour)
    runner = web.AppRunner(engine.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, bound


class FakeEngineProcess:
    """A fake engine in its own process (see start_fake_engine)."""

    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.port = port
        self.root = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.root}/v1"

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.root + path, data=data, method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as response:
            return json.loads(response.read())

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self._call("POST", "/_fake/behaviour", changes)

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_fake/stats")

    def reset(self) -> dict[str, Any]:
        return self._call("POST", "/_fake/reset", {})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> FakeEngineProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_fake_engine(port: int = 0, python: str = sys.executable, **behaviour: Any) -> FakeEngineProcess:
    """Start `python -m shoal.devcluster.engines.fake` and wait until it listens.

    Keyword arguments are Behaviour fields (name, model, latency_ms, ...).
    """
    args = [python, "-m", "shoal.devcluster.engines.fake", "--port", str(port)]
    for key, value in behaviour.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                args.append(flag)
        elif value is not None:
            args += [flag, str(value)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("listening on "):
        process.kill()
        raise RuntimeError(f"fake engine did not start: {line!r}")
    return FakeEngineProcess(process, int(line.strip().rsplit(":", 1)[1]))


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, Behaviour]:
    parser = argparse.ArgumentParser(prog="python -m shoal.devcluster.engines.fake", description="OpenAI-compatible fake engine.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", default="fake")
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--reply", default=None)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--token-latency-ms", type=float, default=0.0)
    parser.add_argument("--fail-status", type=int, default=None)
    parser.add_argument("--fail-count", type=int, default=None)
    parser.add_argument("--retry-after", type=int, default=None)
    parser.add_argument("--drop", action="store_true")
    parser.add_argument("--break-after-chunks", type=int, default=None)
    parser.add_argument("--max-running", type=int, default=None)
    parser.add_argument("--waiting", type=int, default=0)
    parser.add_argument("--prefill-tokens-per-second", type=float, default=None)
    parser.add_argument("--decode-tokens-per-second", type=float, default=None)
    parser.add_argument("--token-logprob", type=float, default=-0.05)
    args = parser.parse_args(argv)
    behaviour = Behaviour(**{f.name: getattr(args, f.name) for f in fields(Behaviour)})
    return args, behaviour


def main(argv: list[str] | None = None) -> None:
    args, behaviour = _parse(argv)
    try:
        import uvloop  # optional speed-up

        uvloop.install()
    except ImportError:
        pass

    async def run() -> None:
        runner, port = await serve(behaviour, args.host, args.port)
        print(f"listening on http://{args.host}:{port}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
