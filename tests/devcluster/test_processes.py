"""Process groups: started in their own session, stopped with nothing left behind."""

import json
import os
import sys
import time

from shoal.devcluster import processes

# A parent that forks a child and ignores SIGTERM, like a component that is slow to stop.
STUBBORN = [sys.executable, "-c",
            "import os, signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            "print('up', flush=True)\n"
            "time.sleep(600)\n"]


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


def test_started_process_is_recorded_logged_and_running(tmp_path):
    proc = processes.start(tmp_path, "sleeper", [sys.executable, "-c", "import time; print('hello', flush=True); time.sleep(600)"])
    try:
        assert processes.is_running(tmp_path, "sleeper")
        assert processes.running_pid(tmp_path, "sleeper") == proc.pid
        assert os.getpgid(proc.pid) == proc.pid  # its own process group
        record = json.loads(processes.pid_path(tmp_path, "sleeper").read_text())
        assert record["pid"] == proc.pid and record["start_time"]
    finally:
        processes.stop(tmp_path, "sleeper")
    assert "starting:" in processes.log_path(tmp_path, "sleeper").read_text()


def test_stop_escalates_to_sigkill_and_leaves_no_process_of_the_group(tmp_path):
    proc = processes.start(tmp_path, "stubborn", STUBBORN)
    log = processes.log_path(tmp_path, "stubborn")
    deadline = time.monotonic() + 20
    while "up" not in log.read_text().splitlines():
        assert time.monotonic() < deadline, f"the stubborn process never started: {log.read_text()}"
        time.sleep(0.05)
    assert len(_group_members(proc.pid)) == 2
    assert processes.stop(tmp_path, "stubborn", grace_s=0.5) is True
    assert _group_members(proc.pid) == []
    assert not processes.pid_path(tmp_path, "stubborn").exists()
    assert processes.stop(tmp_path, "stubborn") is False


def test_a_recycled_pid_is_not_mistaken_for_ours(tmp_path):
    processes.pid_path(tmp_path, "ghost").parent.mkdir(parents=True)
    # Our own pid with a start time that is not ours: the recorded process is gone.
    processes.pid_path(tmp_path, "ghost").write_text(
        json.dumps({"pid": os.getpid(), "start_time": "1", "argv": ["x"]}))
    assert not processes.is_running(tmp_path, "ghost")
    assert processes.stop(tmp_path, "ghost") is False  # and we are still here
