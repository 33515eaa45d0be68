"""The sidecar's parts, pure: cache, circuit breaker, retry budget, spend, parsing, classifier."""

from __future__ import annotations

import json

import pytest

from shoal.router.cache import ResponseCache, cache_key
from shoal.router.classifier import Classifier, features, read_labelled, train
from shoal.router.errors import BadRequest
from shoal.router.resilience import CircuitBreaker, HourlySpend, RetryBudget
from shoal.router.server import cacheable, parse_body, parse_engine_metrics

from .conftest import LABELLED


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_evicts_least_recently_used_beyond_its_entry_bound():
    cache = ResponseCache(max_entries=2, max_bytes=1000, ttl_seconds=60, clock=Clock())
    cache.put(b"a", b"1", "application/json")
    cache.put(b"b", b"2", "application/json")
    assert cache.get(b"a").body == b"1"  # a is now the most recently used
    cache.put(b"c", b"3", "application/json")
    assert (cache.get(b"a") is not None, cache.get(b"b"), cache.get(b"c") is not None) == (True, None, True)


def test_cache_bytes_bound_evicts_and_refuses_oversized_entries():
    cache = ResponseCache(max_entries=100, max_bytes=10, ttl_seconds=60, clock=Clock())
    assert cache.put(b"a", b"123456", "application/json")
    assert cache.put(b"b", b"123456", "application/json")
    assert (cache.get(b"a"), len(cache), cache.bytes) == (None, 1, 6)
    assert cache.put(b"c", b"x" * 11, "application/json") is False
    assert cache.bytes == 6


def test_cache_entries_expire_after_their_ttl():
    clock = Clock()
    cache = ResponseCache(max_entries=10, max_bytes=1000, ttl_seconds=30, clock=clock)
    cache.put(b"a", b"1", "application/json")
    clock.now += 29.9
    assert cache.get(b"a") is not None
    clock.now += 0.1
    assert cache.get(b"a") is None
    assert (len(cache), cache.bytes) == (0, 0)


def test_cache_key_depends_on_tier_checkpoint_path_and_exact_body():
    base = cache_key("/v1/chat/completions", "small", "hf://a@v1", b"{}")
    assert base == cache_key("/v1/chat/completions", "small", "hf://a@v1", b"{}")
    assert base != cache_key("/v1/chat/completions", "small", "hf://a@v2", b"{}")
    assert base != cache_key("/v1/chat/completions", "medium", "hf://a@v1", b"{}")
    assert base != cache_key("/v1/completions", "small", "hf://a@v1", b"{}")
    assert base != cache_key("/v1/chat/completions", "small", "hf://a@v1", b"{ }")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"messages": [], "temperature": 0}, True),
        ({"messages": [], "temperature": 0.0, "n": 1}, True),
        ({"prompt": "x", "temperature": 0}, True),
        ({"messages": []}, False),
        ({"messages": [], "temperature": 0.2}, False),
        ({"messages": [], "temperature": 0, "n": 2}, False),
        ({"input": "x", "temperature": 0}, False),
    ],
)
def test_only_deterministic_completions_are_cacheable(body, expected):
    assert cacheable(body) is expected


def test_circuit_breaker_opens_then_allows_one_trial_then_closes_on_success():
    clock = Clock()
    breaker = CircuitBreaker(failures=3, open_seconds=10, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert (breaker.state, breaker.allow()) == ("open", False)
    clock.now += 10
    assert breaker.state == "half-open"
    assert breaker.allow() is True
    assert breaker.allow() is False  # only one trial at a time
    breaker.record_success()
    assert (breaker.state, breaker.allow()) == ("closed", True)


def test_circuit_breaker_failed_trial_reopens_for_another_period():
    clock = Clock()
    breaker = CircuitBreaker(failures=1, open_seconds=10, clock=clock)
    breaker.record_failure()
    clock.now += 10
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 9.9
    assert breaker.allow() is False
    clock.now += 0.1
    assert breaker.allow() is True


def test_success_resets_the_consecutive_failure_count():
    breaker = CircuitBreaker(failures=2, open_seconds=10, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "closed"


def test_retry_budget_allows_floor_plus_share_of_recent_requests():
    clock = Clock()
    budget = RetryBudget(percent=20, window_seconds=10, floor=1, clock=clock)
    for _ in range(10):
        budget.record_request()
    # floor 1 + 20% of 10 = 3 retries.
    assert [budget.try_retry() for _ in range(4)] == [True, True, True, False]
    clock.now += 10.01
    # The window moved on: only the floor remains.
    assert [budget.try_retry() for _ in range(2)] == [True, False]


def test_hourly_spend_forgets_spending_older_than_an_hour():
    clock = Clock()
    spend = HourlySpend(clock=clock)
    spend.add(1.0)
    clock.now += 1800
    spend.add(0.5)
    assert spend.total() == 1.5
    clock.now += 1860
    assert spend.total() == 0.5


def test_engine_metrics_are_summed_over_label_sets():
    text = (
        "# HELP vllm:num_requests_waiting x\n"
        'vllm:num_requests_waiting{model_name="a"} 3.0\n'
        'vllm:num_requests_waiting{model_name="b"} 2.0\n'
        'vllm:num_requests_running{model_name="a"} 7.0\n'
        'vllm:num_requests_waiting_by_reason{reason="capacity"} 100\n'
        "vllm:num_requests_running 1\n"
    )
    assert parse_engine_metrics(text) == (5.0, 8.0)


def test_parse_body_accepts_a_valid_chat_request_unchanged():
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0, "max_tokens": 5}).encode()
    assert parse_body(raw, "chat")["max_tokens"] == 5


def test_parse_body_rejects_booleans_where_numbers_are_expected():
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": True}).encode()
    with pytest.raises(BadRequest) as caught:
        parse_body(raw, "chat")
    assert (caught.value.param, caught.value.code) == ("temperature", "invalid_type")


def test_classifier_generalises_to_held_out_prompts():
    examples = read_labelled(LABELLED)
    held_out = examples[::5]
    training = [e for i, e in enumerate(examples) if i % 5]
    model = train(training, classes=["small", "medium", "frontier"])
    correct = sum(model.predict(prompt).tier == tier for prompt, tier in held_out)
    assert (len(held_out), correct) == (30, 30)


def test_classifier_round_trips_through_json_with_identical_predictions(tmp_path):
    model = train(read_labelled(LABELLED), classes=["small", "medium", "frontier"])
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model.to_json()))
    loaded = Classifier.load(path)
    for prompt in ("hello there", "Prove Fermat's little theorem.", "Write a Python function that sorts a list."):
        assert loaded.predict(prompt).tier == model.predict(prompt).tier
        assert loaded.predict(prompt).confidence == pytest.approx(model.predict(prompt).confidence, abs=1e-4)
    assert loaded.classes == ["small", "medium", "frontier"]


def test_classifier_is_less_confident_about_text_unlike_anything_it_saw():
    model = train(read_labelled(LABELLED), classes=["small", "medium", "frontier"])
    assert sum(model.probabilities("zzzz qqqq")) == pytest.approx(1.0)
    unseen = model.predict("zzzz qqqq").confidence
    familiar = model.predict("What is the capital of Peru?").confidence
    assert 1 / 3 < unseen < 0.75 < 0.95 < familiar


def test_features_are_stable_and_bounded_for_huge_prompts():
    assert features("Hello world") == features("hello WORLD")
    assert len(features("word " * 100000)) == len(features("word " * 1000))


def test_training_rejects_tiers_outside_the_given_order_and_bad_lines(tmp_path):
    with pytest.raises(ValueError, match="outside the classes"):
        train([("a", "huge")], classes=["small"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "tier": "small"}\n{"prompt": "y"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_labelled(bad)


def test_router_train_command_writes_a_model_the_router_can_load(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "model.json"
    done = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "router", "train", "--data", str(LABELLED), "--out", str(out), "--tiers", "small,medium,frontier"],
        capture_output=True, text=True, check=True,
    )
    assert done.stdout.startswith("trained on 150 examples (small: 60, medium: 50, frontier: 40); training accuracy 1.000")
    assert Classifier.load(out).classes == ["small", "medium", "frontier"]


def test_router_train_command_reports_bad_data_in_one_line(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    done = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "router", "train", "--data", str(bad), "--out", str(tmp_path / "m.json")],
        capture_output=True, text=True,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == f'shoal router train: {bad}:1: expected {{"prompt": ..., "tier": ...}}'


def test_yaml_and_json_configs_load_to_the_same_model(tmp_path):
    import yaml

    from shoal.router.config import InvalidConfig, load_config

    config = {
        "modelTier": "smol",
        "localTier": "small",
        "tiers": [{"name": "small", "kind": "local", "url": "http://127.0.0.1:8000/v1", "model": "m"}],
    }
    (tmp_path / "router.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "router.json").write_text(json.dumps(config))
    assert load_config(tmp_path / "router.yaml") == load_config(tmp_path / "router.json")
    (tmp_path / "bad.json").write_text(json.dumps({**config, "localTier": "nope"}))
    with pytest.raises(InvalidConfig, match="localTier 'nope' must name a tier of kind local"):
        load_config(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Nested "model" keys before the top-level one are left alone.
        (b'{"tools": [{"parameters": {"model": "keep"}}], "model" : "x", "temperature": 1e-05}',
         b'{"tools": [{"parameters": {"model": "keep"}}], "model" : "engine-m", "temperature": 1e-05}'),
        # Escaped quotes inside the old value; unicode escapes elsewhere stay escaped.
        (b'{"model":"a\\"b\\\\","messages":[{"role":"user","content":"caf\\u00e9"}]}',
         b'{"model":"engine-m","messages":[{"role":"user","content":"caf\\u00e9"}]}'),
        (b'{"model": null, "prompt": "p"}', b'{"model": "engine-m", "prompt": "p"}'),
        (b' {"prompt": "p"}', b' {"model":"engine-m","prompt": "p"}'),
        (b'{"model": "engine-m", "prompt": "p"}', b'{"model": "engine-m", "prompt": "p"}'),
    ],
)
def test_with_model_sets_only_the_top_level_model_and_keeps_every_other_byte(raw, expected):
    import json

    from shoal.router.server import with_model

    assert with_model(raw, json.loads(raw), "engine-m") == expected
