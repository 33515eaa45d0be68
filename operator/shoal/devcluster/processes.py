"""Starting and stopping the control plane's processes, each in its own process group.

Every process is started in a new session (so it and anything it forks share one process
group), logs to ``<state>/logs/<name>.log`` and is recorded in ``<state>/pids/<name>.json``
with its start time as the kernel reports it. Stopping checks that start time before
signalling, so a recycled pid is never killed by mistake.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def _proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; it is the text between parentheses.
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2:].split()[0] in ("Z", "X")


def log_path(state: Path, name: str) -> Path:
    return state / "logs" / f"{name}.log"


def pid_path(state: Path, name: str) -> Path:
    return state / "pids" / f"{name}.json"


def log_tail(state: Path, name: str, lines: int = 20) -> str:
    path = log_path(state, name)
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def start(
    state: Path,
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session, append its output to its log, record its pid."""
    log = log_path(state, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_path(state, name).parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
        )
    record = {"pid": proc.pid, "start_time": _proc_start_time(proc.pid), "argv": list(argv)}
    pid_path(state, name).write_text(json.dumps(record))
    return proc


def recorded(state: Path, name: str) -> dict[str, object] | None:
    try:
        return json.loads(pid_path(state, name).read_text())
    except (OSError, ValueError):
        return None


def is_running(state: Path, name: str) -> bool:
    """Whether the process recorded for ``name`` is still the one we started."""
    record = recorded(state, name)
    if record is None:
        return False
    pid = int(record["pid"])  # type: ignore[call-overload]
    return _proc_start_time(pid) == record.get("start_time") and not _is_zombie(pid)


def running_pid(state: Path, name: str) -> int | None:
    record = recorded(state, name)
    if record is None or not is_running(state, name):
        return None
    return int(record["pid"])  # type: ignore[call-overload]


def stop(state: Path, name: str, *, grace_s: float = 10.0, sig: int = signal.SIGTERM) -> bool:
    """Signal ``name``'s process group (SIGTERM, then SIGKILL after ``grace_s``).

    Returns whether a process was running. The pid file is removed either way.
    """
    pid = running_pid(state, name)
    was_running = pid is not None
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_alive(pid):
            _reap(pid)
            time.sleep(0.1)
        if _group_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _group_alive(pid):
                _reap(pid)
                time.sleep(0.05)
        _reap(pid)
    pid_path(state, name).unlink(missing_ok=True)
    return was_running


def kill(state: Path, name: str) -> bool:
    """SIGKILL ``name``'s process group at once (a crash, as tests need one)."""
    return stop(state, name, grace_s=0.0, sig=signal.SIGKILL)


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our child, so it does not linger."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in process group ``pgid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False
