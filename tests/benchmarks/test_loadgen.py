"""The router benchmark's open-loop load generator against a real fake engine on loopback:
every scheduled request is sent and counted, errors are counted by cause."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from shoal.devcluster.engines.fake import start_fake_engine

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("loadgen", ROOT / "benchmarks" / "router" / "loadgen.py")
assert _spec is not None and _spec.loader is not None
loadgen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loadgen)

BODY = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}).encode()


def test_every_scheduled_request_is_answered_and_timed_from_its_schedule_in_two_processes():
    with start_fake_engine(model="fake-model") as engine:
        got = loadgen.generate(engine.base_url + "/chat/completions", BODY, rate=100, seconds=1, processes=2)
        stats = engine.stats()
    assert (got["scheduled"], len(got["fromScheduleMs"]), len(got["fromSendMs"]), len(got["lateMs"])) == (100, 100, 100, 100)
    assert got["errors"] == {}
    # The warm-up (32 requests per process) is sent but not recorded.
    assert stats["requests"] == 100 + 2 * loadgen.WARM_CONNECTIONS
    # Measured from the schedule, a request never took less than from its send.
    assert sorted(got["fromScheduleMs"])[0] >= 0
    assert sum(got["fromScheduleMs"]) >= sum(got["fromSendMs"])


def test_answers_other_than_200_are_counted_by_status_not_timed():
    with start_fake_engine(model="fake-model") as engine:
        engine.configure(fail_status=503)
        got = loadgen.generate(engine.base_url + "/chat/completions", BODY, rate=50, seconds=1)
    assert got["errors"] == {"HTTP 503": 50}
    assert got["fromScheduleMs"] == []
