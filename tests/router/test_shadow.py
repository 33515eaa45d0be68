"""Shadow sampling against real HTTP servers on loopback (the fake engine, in this event loop).

The small tier's answer is what a client got; the reference is a second fake engine (a
larger tier or the frontier API). Every test drives `ShadowSampler` the way the router's
after-response hook does: `select` before forwarding, `submit` once the response completed.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from shoal.api.routerconfig import UpstreamTier
from shoal.api.shadow import ShadowGrading, ShadowSpec
from shoal.router import shadow
from shoal.testing.fake_engine import Behaviour, FakeEngine

CHAT = "/v1/chat/completions"


def chat(text: str = "What is the capital of France?", **extra: Any) -> dict[str, Any]:
    return {"model": "smol-chat", "messages": [{"role": "user", "content": text}], **extra}


def answer(text: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()


def spec(**overrides: Any) -> ShadowSpec:
    data: dict[str, Any] = {"tiers": [{"tier": "small", "reference": "frontier", "samplePercent": 100}]}
    data.update(overrides)
    return ShadowSpec.model_validate(data)


class Fleet:
    """Fake engines on loopback for the reference (and a judge), and a sampler wired to them."""

    def __init__(self) -> None:
        self.engines: dict[str, FakeEngine] = {}
        self.runners: list[web.AppRunner] = []
        self.tiers: dict[str, UpstreamTier] = {}

    async def engine(self, name: str, *, input_usd: float = 0.0, output_usd: float = 0.0, kind: str = "external", **behaviour: Any) -> FakeEngine:
        engine = FakeEngine(Behaviour(name=name, model=f"{name}-model", **behaviour))
        runner = web.AppRunner(engine.app(), handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.runners.append(runner)
        self.engines[name] = engine
        self.tiers[name] = UpstreamTier(name=name, kind=kind, url=f"http://127.0.0.1:{port}/v1", model=f"{name}-model",
                                        input_usd_per_token=input_usd, output_usd_per_token=output_usd)
        return engine

    async def close(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


def run(test: Callable[[Fleet], Awaitable[None]]) -> None:
    async def main() -> None:
        fleet = Fleet()
        try:
            await test(fleet)
        finally:
            await fleet.close()

    asyncio.run(main())


async def started(fleet: Fleet, config: ShadowSpec, registry: CollectorRegistry | None = None, **kwargs: Any) -> shadow.ShadowSampler:
    registry = registry if registry is not None else CollectorRegistry()
    sampler = shadow.ShadowSampler(config, fleet.tiers, {"frontier": "Bearer sk-shadow"}, shadow.ShadowMetrics(registry),
                                   rng=random.Random(1), **kwargs)
    sampler.start()
    return sampler


def count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# --- grading ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grading, mine, reference, outcome",
    [
        ({"type": "exactMatch"}, "Paris.", "  paris", "agree"),
        ({"type": "exactMatch"}, "Lyon", "Paris", "disagree"),
        ({"type": "numeric"}, "so the total is 540 meters", "3 x 180 = 540\n#### 540", "agree"),
        ({"type": "numeric", "tolerance": 0.5}, "12.4", "12", "agree"),
        ({"type": "numeric"}, "541", "540", "disagree"),
        ({"type": "numeric"}, "41", "I cannot tell", "ungradable"),
        ({"type": "choice"}, "B) Paris", "The answer is B", "agree"),
        ({"type": "choice"}, "(C)", "answer: B", "disagree"),
        ({"type": "jsonFields", "fields": ["intent"]}, '{"intent": "refund", "x": 1}', '```json\n{"intent": "refund"}\n```', "agree"),
        ({"type": "jsonFields", "fields": ["intent"]}, '{"intent": "cancel"}', '{"intent": "refund"}', "disagree"),
        ({"type": "jsonFields", "fields": ["intent"]}, "not json", '{"intent": "refund"}', "disagree"),
        ({"type": "jsonFields"}, '{"a": [1, 2]}', '{"a": [1, 2]}', "agree"),
        ({"type": "jsonFields", "fields": ["intent"]}, '{"intent": "x"}', "no json here", "ungradable"),
    ],
)
def test_rule_based_gradings_reuse_the_evaluation_scorers(grading, mine, reference, outcome):
    assert shadow.grade_locally(ShadowGrading.model_validate(grading), mine, reference) == outcome


def test_answers_are_read_from_json_and_from_a_stream_and_tool_calls_are_noticed():
    stream = (b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"Pa"}}]}\n\n'
              b'data: {"choices":[{"index":0,"delta":{"content":"ris"}}]}\n\n'
              b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
    assert shadow.answer_text(stream, "text/event-stream") == ("Paris", False)
    assert shadow.answer_text(answer("Paris"), "application/json") == ("Paris", False)
    calls = json.dumps({"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}}]}).encode()
    assert shadow.answer_text(calls, "application/json") == ("", True)
    assert shadow.answer_text(b'{"data": []}', "application/json") == (None, False)


# --- sampling, exclusions --------------------------------------------------------------------


def test_a_sampled_answer_is_graded_against_the_reference_and_counted():
    async def test(fleet: Fleet) -> None:
        frontier = await fleet.engine("frontier", reply="Paris.")
        registry = CollectorRegistry()
        sampler = await started(fleet, spec(), registry)
        ticket = sampler.select("small", CHAT, chat(stream=True, stream_options={"include_usage": True}), {})
        sampler.submit(ticket, "small", answer("paris"), "application/json")
        ticket = sampler.select("small", CHAT, chat(), {})
        sampler.submit(ticket, "small", answer("Lyon"), "application/json")
        await sampler.drain()
        await sampler.stop()
        assert count(registry, "shoal_shadow_samples_total", tier="small", outcome="agree") == 1
        assert count(registry, "shoal_shadow_samples_total", tier="small", outcome="disagree") == 1
        assert count(registry, "shoal_shadow_agreement_ratio", tier="small") == 0.5
        # The reference got the same request, for its own model, not streamed, with its key.
        assert frontier.requests == 2
        assert frontier.last_body == {"model": "frontier-model", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
        assert frontier.last_headers["authorization"] == "Bearer sk-shadow"

    run(test)


def test_the_sampling_share_follows_the_configured_percent_of_requests():
    async def test(fleet: Fleet) -> None:
        await fleet.engine("frontier")
        sampler = await started(fleet, spec(tiers=[{"tier": "small", "reference": "frontier", "samplePercent": 5}]))
        chosen = sum(1 for _ in range(4000) if sampler.select("small", CHAT, chat(), {}) is not None)
        replay = random.Random(1)
        assert chosen == sum(1 for _ in range(4000) if replay.random() < 0.05)
        assert 150 < chosen < 250
        # Other tiers (and requests without a tier) are never samples.
        assert sampler.select("medium", CHAT, chat(), {}) is None
        assert sampler.select(None, CHAT, chat(), {}) is None
        await sampler.stop()

    run(test)


@pytest.mark.parametrize(
    "path, body, headers, reason",
    [
        (CHAT, chat(tools=[{"type": "function", "function": {"name": "f"}}]), {}, "tool_calls"),
        (CHAT, {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]}, {}, "tool_calls"),
        (CHAT, chat(), {"x-shoal-private": "1"}, "private"),
        (CHAT, chat(metadata={"private": True}), {}, "private"),
        (CHAT, chat(), {"x-shoal-shadow": "off"}, "opted_out"),
        ("/v1/embeddings", {"input": "x"}, {}, "unsupported"),
        (CHAT, chat(n=3), {}, "unsupported"),
    ],
)
def test_excluded_requests_are_skipped_with_their_reason_and_never_reach_the_reference(path, body, headers, reason):
    async def test(fleet: Fleet) -> None:
        frontier = await fleet.engine("frontier")
        registry = CollectorRegistry()
        sampler = await started(fleet, spec(), registry)
        assert sampler.select("small", path, body, headers) is None
        await sampler.stop()
        assert count(registry, "shoal_shadow_skipped_total", tier="small", reason=reason) == 1
        assert frontier.requests == 0

    run(test)


def test_included_tool_calls_and_private_requests_are_sampled_when_the_policy_says_so():
    async def test(fleet: Fleet) -> None:
        await fleet.engine("frontier")
        sampler = await started(fleet, spec(exclusions={"toolCalls": "include", "private": "include"}))
        assert sampler.select("small", CHAT, chat(tools=[{"type": "function"}]), {"x-shoal-private": "true"}) is not None
        await sampler.stop()

    run(test)


def test_deterministic_only_skips_requests_that_sample_at_a_temperature():
    async def test(fleet: Fleet) -> None:
        await fleet.engine("frontier")
        registry = CollectorRegistry()
        sampler = await started(fleet, spec(exclusions={"requests": "deterministicOnly"}), registry)
        assert sampler.select("small", CHAT, chat(temperature=0.7), {}) is None
        assert sampler.select("small", CHAT, chat(), {}) is None  # the default temperature is not 0
        assert sampler.select("small", CHAT, chat(temperature=0), {}) is not None
        await sampler.stop()
        assert count(registry, "shoal_shadow_skipped_total", tier="small", reason="nondeterministic") == 2

    run(test)


def test_an_answer_from_another_tier_after_a_fallback_is_not_graded_for_the_sampled_tier():
    async def test(fleet: Fleet) -> None:
        frontier = await fleet.engine("frontier")
        registry = CollectorRegistry()
        sampler = await started(fleet, spec(), registry)
        sampler.submit(sampler.select("small", CHAT, chat(), {}), "medium", answer("x"), "application/json")
        await sampler.drain()
        await sampler.stop()
        assert count(registry, "shoal_shadow_skipped_total", tier="small", reason="escalated") == 1
        assert frontier.requests == 0

    run(test)


# --- bounds ----------------------------------------------------------------------------------


def test_concurrency_and_queue_bounds_hold_and_overflow_is_skipped():
    async def test(fleet: Fleet) -> None:
        frontier = await fleet.engine("frontier", reply="Paris", latency_ms=50)
        registry = CollectorRegistry()
        sampler = await started(fleet, spec(maxConcurrency=2, maxQueue=3), registry)
        # Submitted back to back: the queue holds 3, the other 7 are skipped at once.
        for _ in range(10):
            sampler.submit(sampler.select("small", CHAT, chat(), {}), "small", answer("Paris"), "application/json")
        assert count(registry, "shoal_shadow_skipped_total", tier="small", reason="queue_full") == 7
        await sampler.drain()
        await sampler.stop()
        assert count(registry, "shoal_shadow_samples_total", tier="small", outcome="agree") == 3
        assert frontier.requests == 3
        assert frontier.peak_running == 2

    run(test)


def test_the_hourly_budget_stops_reference_calls_once_spent():
    async def test(fleet: Fleet) -> None:
        # The fake engine reports prompt tokens from the prompt and one token per reply word:
        # with $1e-3 per output token and a three-word reply, each reference call costs $0.003.
        frontier = await fleet.engine("frontier", reply="It is Paris", output_usd=1e-3)
        registry = CollectorRegistry()
        sampler = await started(fleet, spec(maxUSDPerHour=0.01, maxConcurrency=1), registry)
        for _ in range(10):
            sampler.submit(sampler.select("small", CHAT, chat(), {}), "small", answer("It is Paris"), "application/json")
            await sampler.drain()
        await sampler.stop()
        # $0.003 per call: after four calls ($0.012 >= $0.01) every further sample is skipped.
        assert frontier.requests == 4
        assert count(registry, "shoal_shadow_cost_usd_total", tier="small") == pytest.approx(0.012)
        assert count(registry, "shoal_shadow_skipped_total", tier="small", reason="budget") == 6

    run(test)


def test_budget_overshoot_is_bounded_by_the_calls_in_flight():
    async def test(fleet: Fleet) -> None:
        frontier = await fleet.engine("frontier", reply="It is Paris", output_usd=1e-3, latency_ms=20)
        sampler = await started(fleet, spec(maxUSDPerHour=0.001, maxConcurrency=3, maxQueue=50))
        for _ in range(30):
            sampler.submit(sampler.select("small", CHAT, chat(), {}), "small", answer("x"), "application/json")
        await sampler.drain()
        await sampler.stop()
        # One call is enough to pass $0.001; at most the three in flight when it came back were made.
        assert 1 <= frontier.requests <= 3
        assert sampler.spend.total() <= 3 * 0.003 + 1e-9

    run(test)


# --- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("behaviour", [{"fail_status": 500}, {"fail_status": 429}, {"drop": True}])
def test_reference_failures_are_counted_and_harmless(behaviour):
    async def test(fleet: Fleet) -> None:
        frontier = await fleet.engine("frontier", reply="Paris", **behaviour)
        registry = CollectorRegistry()
        sampler = await started(fleet, spec(), registry)
        sampler.submit(sampler.select("small", CHAT, chat(), {}), "small", answer("Paris"), "application/json")
        await sampler.drain()
        assert count(registry, "shoal_shadow_samples_total", tier="small", outcome="reference_error") == 1
        # The sampler keeps working once the reference recovers.
        frontier.behaviour = Behaviour(name="frontier", model="frontier-model", reply="Paris")
        sampler.submit(sampler.select("small", CHAT, chat(), {}), "small", answer("Paris"), "application/json")
        await sampler.drain()
        await sampler.stop()
        assert count(registry, "shoal_shadow_samples_total", tier="small", outcome="agree") == 1

    run(test)


def test_a_reference_slower_than_the_timeout_is_a_reference_error():
    async def test(fleet: Fleet) -> None:
        await fleet.engine("frontier", reply="Paris", latency_ms=5000)
        registry = CollectorRegistry()
        sampler = await started(fleet, spec(timeoutSeconds=0.2), registry)
        sampler.submit(sampler.select("small", CHAT, chat(), {}), "small", answer("Paris"), "application/json")
        await sampler.drain()
        await sampler.stop()
        assert count(registry, "shoal_shadow_samples_total", tier="small", outcome="reference_error") == 1

    run(test)


def test_an_unreachable_reference_is_a_reference_error():
    async def test(fleet: Fleet) -> None:
        fleet.tiers["frontier"] = UpstreamTier(name="frontier", kind="external", url="http://127.0.0.1:9/v1", model="m")
        registry = CollectorRegistry()
        sampler = await started(fleet, spec(), registry)
        sampler.submit(sampler.select("small", CHAT, chat(), {}), "small", answer("Paris"), "application/json")
        await sampler.drain()
        await sampler.stop()
        assert count(registry, "shoal_shadow_samples_total", tier="small", outcome="reference_error") == 1

    run(test)


# --- the LLM judge ---------------------------------------------------------------------------


@pytest.mark.parametrize("verdict, outcome", [("PASS", "agree"), ("FAIL", "disagree"), ("maybe", "ungradable")])
def test_the_llm_judge_grades_through_an_openai_compatible_endpoint_with_the_fixed_rubric(verdict, outcome):
    async def test(fleet: Fleet) -> None:
        await fleet.engine("frontier", reply="The capital is Paris.")
        judge = await fleet.engine("judge", reply=verdict)
        registry = CollectorRegistry()
        sampler = await started(fleet, spec(grading={"type": "llmJudge", "judgeTier": "judge"}), registry)
        sampler.submit(sampler.select("small", CHAT, chat(), {}), "small", answer("Paris, of course"), "application/json")
        await sampler.drain()
        await sampler.stop()
        assert count(registry, "shoal_shadow_samples_total", tier="small", outcome=outcome) == 1
        sent = judge.last_body
        assert sent["model"] == "judge-model" and sent["temperature"] == 0
        assert sent["messages"][0]["content"].startswith("You compare a response to a reference answer")
        assert "Reference answer:\nThe capital is Paris." in sent["messages"][1]["content"]
        assert "Response to judge:\nParis, of course" in sent["messages"][1]["content"]

    run(test)


# --- labels ----------------------------------------------------------------------------------


def test_labels_are_kept_only_when_opted_in_in_the_outcome_format_and_never_in_metrics(tmp_path: Path):
    async def test(fleet: Fleet) -> None:
        await fleet.engine("frontier", reply="Paris")
        registry = CollectorRegistry()
        off = await started(fleet, spec(), registry, labels_dir=tmp_path / "off")
        off.submit(off.select("small", CHAT, chat("secret question one"), {}), "small", answer("Paris"), "application/json")
        await off.drain()
        await off.stop()
        assert not (tmp_path / "off").exists()

        kept = await started(fleet, spec(labels={"mode": "keep"}), CollectorRegistry(), labels_dir=tmp_path / "on")
        kept.submit(kept.select("small", CHAT, chat("secret question two"), {}), "small", answer("Lyon"), "application/json")
        await kept.drain()
        await kept.stop()
        lines = [json.loads(x) for x in (tmp_path / "on" / "labels.jsonl").read_text().splitlines()]
        assert lines == [{"prompt": "secret question two", "outcomes": {"small": False, "frontier": True}, "response": "Paris"}]
        assert b"secret question" not in generate_latest(registry)

    run(test)


def test_the_label_store_keeps_at_most_its_bounds_newest_first_kept(tmp_path: Path):
    store = shadow.LabelStore(tmp_path, max_items=4, max_bytes=1 << 20)
    for i in range(11):
        store.add(f"prompt {i}", "small", i % 2 == 0, "frontier", "ref")
    kept = [json.loads(line)["prompt"] for line in store.export().decode().splitlines()]
    assert kept == ["prompt 8", "prompt 9", "prompt 10"]
    line_bytes = len(json.dumps({"prompt": "prompt 0", "outcomes": {"small": True, "frontier": True}, "response": "ref"}).encode()) + 1
    small = shadow.LabelStore(tmp_path / "bytes", max_items=1000, max_bytes=4 * line_bytes)
    for i in range(10):
        small.add(f"prompt {i}", "small", True, "frontier", "ref")
    assert len(small.export()) <= 4 * line_bytes
    assert small.export().decode().splitlines()[-1].startswith('{"prompt": "prompt 9"')
    assert small.add("x" * (4 * line_bytes), "small", True, "frontier", "ref") is False
