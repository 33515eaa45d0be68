"""The engines section of the dev cluster's node file: which engine backs which pod."""

import json
import sys
import urllib.error
import urllib.request

import pytest

from shoal.devcluster.engines import InvalidEnginesFile, choose, parse_engines
from shoal.devcluster.engines.fake import Behaviour, start_fake_engine
from shoal.devcluster.fleet import load_engines
from shoal.devcluster.nodes import default_nodes_text, parse_nodes


def _choose(engines, tier="t", product=None, annotations=None):
    chosen = choose(engines, tier=tier, namespace="default", gpu_product=product,
                    tier_annotations=annotations or {})
    return chosen.name if chosen else None


def test_default_engines_give_annotated_tiers_smollm2_and_gpu_tiers_a_fake_by_product():
    engines = parse_engines(default_nodes_text())
    assert [e.name for e in engines] == ["smollm2", "h100", "l4", "other"]
    assert _choose(engines, annotations={"shoal.dev/dev-engine": "smollm2"}, product="NVIDIA-L4") == "smollm2"
    assert _choose(engines, product="NVIDIA-L4") == "l4"
    assert _choose(engines, product="NVIDIA-H100-80GB-HBM3") == "h100"
    assert _choose(engines, product="NVIDIA-A100-SXM4-40GB") == "other"
    # The node list of the same file still parses (the engines section is beside it).
    assert len(parse_nodes(default_nodes_text())) == 3


def test_an_annotation_naming_an_unknown_engine_runs_nothing():
    engines = parse_engines(default_nodes_text())
    assert _choose(engines, annotations={"shoal.dev/dev-engine": "nope"}) is None


def test_an_entry_without_match_is_chosen_by_name_only_and_no_match_runs_nothing():
    engines = parse_engines("engines:\n- {name: real, kind: smollm2}\n- {name: t, kind: fake, match: {tier: a}}\n")
    assert _choose(engines, tier="b") is None
    assert _choose(engines, tier="a") == "t"


def test_a_node_file_without_engines_uses_the_default_engines(tmp_path):
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("nodes:\n- {name: a, count: 1}\n")
    assert [e.name for e in load_engines(nodes)] == ["smollm2", "h100", "l4", "other"]
    nodes.write_text("nodes: []\nengines:\n- {name: only, kind: fake, match: {}}\n")
    assert [e.name for e in load_engines(nodes)] == ["only"]


def test_fake_command_carries_the_latency_model_and_binds_the_pod_ip():
    (engine,) = parse_engines("engines:\n- name: l4\n  kind: fake\n  match: {}\n"
                              "  fake: {latencyMs: 80, decodeTokensPerSecond: 30, maxRunning: 32}\n")
    assert engine.command(host="127.9.0.4", port=8000, model="support-8b", tier="small", python="py") == [
        "py", "-m", "shoal.devcluster.engines.fake", "--host", "127.9.0.4", "--port", "8000",
        "--model", "support-8b", "--name", "small",
        "--latency-ms", "80", "--decode-tokens-per-second", "30", "--max-running", "32"]


def test_a_fake_reply_names_the_checkpoint_given_or_keeps_the_placeholder_for_the_evaluation():
    (engine,) = parse_engines("engines:\n- {name: f, kind: fake, fake: {reply: 'Answer of {checkpoint}.'}}\n")
    serving = engine.command(host="127.9.0.4", port=8000, model="m", tier="large", checkpoint="s3://b/ckpt-2", python="py")
    assert serving[-2:] == ["--reply", "Answer of s3://b/ckpt-2."]
    evaluation = engine.command(host="127.0.0.1", port="{port}", model="{model}", tier="large", python="py")
    assert evaluation[-2:] == ["--reply", "Answer of {checkpoint}."]


def test_smollm2_command_takes_placeholders_for_the_evaluation():
    (engine,) = parse_engines("engines:\n- {name: s, kind: smollm2, smollm2: {chatFormat: llama-2}}\n")
    assert engine.command(host="127.0.0.1", port="{port}", model="{model}", tier="small") == [
        sys.executable, "-m", "shoal.devcluster.engines.llama", "--host", "127.0.0.1", "--port", "{port}",
        "--model-alias", "{model}", "--chat-format", "llama-2"]


@pytest.mark.parametrize("text, message", [
    ("engines: {}", "`engines` must be a list"),
    ("engines:\n- {name: a, kind: vllm}", "engines[0].kind must be one of smollm2, fake"),
    ("engines:\n- {name: a, kind: fake, match: {gpu: x}}", "engines[0].match may hold only"),
    ("engines:\n- {name: a, kind: fake, fake: {latencyMs: -1}}", "engines[0].fake.latencyMs must be a positive number"),
    ("engines:\n- {name: a, kind: fake, smollm2: {}}", "engines[0].smollm2 does not apply to kind fake"),
    ("engines:\n- {name: a, kind: fake}\n- {name: a, kind: fake}", "engine name 'a' appears twice"),
])
def test_malformed_engines_name_what_to_fix(text, message):
    with pytest.raises(InvalidEnginesFile, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_engines(text)


def test_fake_engine_latency_model_is_prefill_then_decode_per_token():
    behaviour = Behaviour(latency_ms=100, prefill_tokens_per_second=1000, decode_tokens_per_second=50)
    assert behaviour.prefill_seconds(500) == pytest.approx(0.6)
    assert behaviour.token_seconds() == pytest.approx(0.02)
    assert Behaviour().prefill_seconds(10_000) == 0 and Behaviour().token_seconds() == 0


def test_fake_engine_cuts_its_reply_at_max_tokens_with_finish_reason_length():
    with start_fake_engine(reply="one two three four", decode_tokens_per_second=1000) as engine:
        request = urllib.request.Request(
            engine.base_url + "/chat/completions", headers={"Content-Type": "application/json"},
            data=json.dumps({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}).encode())
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read())
    assert body["choices"][0]["message"]["content"] == "one two"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


def test_fake_engine_loads_and_unloads_lora_adapters_as_vllm_does_at_run_time():
    def post(engine, path, body):
        request = urllib.request.Request(engine.root + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    with start_fake_engine(model="support-8b") as engine:
        assert post(engine, "/v1/load_lora_adapter", {"lora_name": "refunds", "lora_path": "/a/refunds"})[0] == 200
        with urllib.request.urlopen(engine.base_url + "/models", timeout=10) as response:
            assert [m["id"] for m in json.loads(response.read())["data"]] == ["support-8b", "refunds"]
        status, text = post(engine, "/v1/chat/completions", {"model": "refunds", "messages": [{"role": "user", "content": "x"}]})
        assert (status, json.loads(text)["model"]) == (200, "refunds")
        assert post(engine, "/v1/unload_lora_adapter", {"lora_name": "refunds"})[0] == 200
        assert post(engine, "/v1/unload_lora_adapter", {"lora_name": "refunds"})[0] == 404
