"""Starting an OpenAI-compatible engine as a child process and waiting until it serves.

The evaluation Job uses this to run vLLM on the candidate checkpoint inside its own pod
(``vllm_command`` renders the command line). Tests use the same launcher with stand-in
engines (llama-cpp-python's server with a real small model, or the fake engine), so the
start, readiness and stop logic that runs in the Job is the logic the tests exercise.

The engine runs in its own session (process group), with stdout and stderr appended to a
log file. Readiness is ``GET {base_url}/models`` answering 200 before a deadline; an
engine that exits or misses the deadline raises ``EngineFailed`` with the tail of its
log, because the first question anyone asks about a failed evaluation is what the engine
printed. Stopping sends SIGTERM to the group, waits, then SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from shoal.render import deployment

class EngineFailed(RuntimeError):
    """The engine exited or did not become ready in time: its log tail is in the message."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def model_location(checkpoint: str) -> tuple[str, list[str]]:
    """What to pass to ``vllm serve`` for a checkpoint URI, and the arguments it needs.

    The same mapping the tier's Deployment uses (render/deployment.py), so the
    evaluation loads the checkpoint exactly as serving will: hf://ORG/REPO@REV ->
    "ORG/REPO" --revision REV; s3:// and gs:// streamed (--load-format runai_streamer);
    pvc://CLAIM/PATH -> the claim's mount in the pod. An absolute path is used as is.
    """
    if checkpoint.startswith("/"):
        return checkpoint, []
    try:
        model, args, _volume = deployment.model_location(checkpoint)
    except ValueError as error:
        raise ValueError(f"{checkpoint}: not a checkpoint URI (hf://, s3://, gs://, pvc:// or an absolute path)") from error
    return model, args


def vllm_command(
    checkpoint: str,
    *,
    served_model_name: str,
    port: int,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The ``vllm serve`` command line that serves ``checkpoint`` on loopback for the evaluation.

    The engine listens on loopback only: nothing but the evaluation in the same pod
    talks to it. ``extra_args`` (the tier's engine settings such as --max-model-len or
    --dtype) come last, so the tier's own settings are what gets evaluated.
    """
    model, model_args = model_location(checkpoint)
    return [
        "vllm", "serve", model,
        *model_args,
        "--served-model-name", served_model_name,
        "--host", host,
        "--port", str(port),
        *extra_args,
    ]


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class EngineProcess:
    """A running engine. Use as a context manager: ready on enter, stopped on exit.

    ``argv`` is the full command; ``base_url`` is where it will serve (".../v1").
    ``ready_timeout_seconds`` bounds model loading. The log goes to ``log_path``, or a
    temporary file that is kept after the process stops (its path is in every error).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        base_url: str,
        ready_timeout_seconds: float = 600.0,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        poll_interval_seconds: float = 0.25,
    ) -> None:
        self.argv = list(argv)
        self.base_url = base_url.rstrip("/")
        self.ready_timeout_seconds = ready_timeout_seconds
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix="shoal-engine-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.poll_interval_seconds = poll_interval_seconds
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(("--- starting: " + " ".join(self.argv) + "\n").encode())
            log.flush()
            try:
                self.process = subprocess.Popen(
                    self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=self.env, start_new_session=True,
                )
            except OSError as error:
                raise EngineFailed(f"cannot start the engine ({self.argv[0]}): {error.strerror}") from error

    def wait_ready(self) -> None:
        """Return once ``GET /models`` answers 200; raise EngineFailed on exit or deadline."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + self.ready_timeout_seconds
        last_seen = "no answer yet"
        with httpx.Client(timeout=5.0) as client:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise EngineFailed(
                        f"the engine exited with code {code} before it was ready; log {self.log_path}:\n{log_tail(self.log_path)}"
                    )
                try:
                    response = client.get(f"{self.base_url}/models")
                    if response.status_code == 200:
                        return
                    last_seen = f"HTTP {response.status_code}"
                except httpx.TransportError as error:
                    last_seen = type(error).__name__
                if time.monotonic() >= deadline:
                    raise EngineFailed(
                        f"the engine was not ready within {self.ready_timeout_seconds:g} s "
                        f"(last seen: {last_seen}); log {self.log_path}:\n{log_tail(self.log_path)}"
                    )
                time.sleep(self.poll_interval_seconds)

    def stop(self, grace_seconds: float = 10.0) -> int | None:
        """Stop the engine's whole process group; return its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> EngineProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
