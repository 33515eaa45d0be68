"""OpenAI API conformance, as the official `openai` client calls it (sync and async,
streaming and not, chat, completions, embeddings, tools, logprobs, n > 1, errors and
disconnects), against an independent recording engine (tests/router/recording_engine.py)
that keeps every byte it receives and answers with scripted bytes.

Where the router should not touch the payload the test compares bytes: the request body
reaches the engine exactly as the SDK sent it (only `model` set in place to the tier's
model), and the engine's response body reaches the SDK exactly as the engine wrote it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from .conftest import RouterProcess, wait_for
from .recording_engine import RecordingEngine, Reply, chat_chunks, chat_completion

MESSAGES = [{"role": "user", "content": "Say hello, with a café ☕ and \"quotes\"."}]
ROUTER_KEY = "sk-router-owned-key"


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, RecordingEngine]]:
    with RecordingEngine() as local, RecordingEngine() as external:
        yield {"small": local, "frontier": external}


def _config(engines: dict[str, RecordingEngine], key_file: Path, **escalation: Any) -> dict[str, Any]:
    return {
        "modelTier": "smol",
        "localTier": "small",
        "tiers": [
            {"name": "small", "kind": "local", "url": engines["small"].base_url, "model": "rec-model", "aliases": ["tiny"]},
            {"name": "frontier", "kind": "external", "url": engines["frontier"].base_url, "model": "ext-model",
             "apiKeyFile": str(key_file)},
        ],
        "escalation": escalation,
        "cache": {"mode": "disabled"},
    }


def _start(tmp: Path, config: dict[str, Any]) -> RouterProcess:
    path = tmp / "router.json"
    path.write_text(json.dumps(config))
    router = RouterProcess(path)
    wait_for(lambda: router.get("/readyz")[0] == 200, "router ready", timeout=60)
    return router


@pytest.fixture(scope="module")
def router(engines: dict[str, RecordingEngine], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    tmp = tmp_path_factory.mktemp("conformance")
    key_file = tmp / "key"
    key_file.write_text(ROUTER_KEY + "\n")
    started = _start(tmp, _config(engines, key_file))
    yield started
    started.stop()


@pytest.fixture
def fresh(engines: dict[str, RecordingEngine]) -> dict[str, RecordingEngine]:
    for engine in engines.values():
        engine.reset()
    return engines


class Recorded:
    """The official client, with every request it sends kept (bytes and headers)."""

    def __init__(self, router: RouterProcess, **kwargs: Any) -> None:
        self.sent: list[httpx.Request] = []
        self.http = httpx.Client(event_hooks={"request": [self.sent.append]})
        self.client = openai.OpenAI(base_url=router.base_url, api_key="sk-client-key", max_retries=0, timeout=30, http_client=self.http, **kwargs)


def _with_model(raw: bytes, old: str, new: str) -> bytes:
    """What the router should send: the client's bytes with the top-level model replaced."""
    replaced, count = re.subn(rb'("model":\s*)"' + re.escape(old.encode()) + rb'"', rb'\1"' + new.encode() + rb'"', raw, count=1)
    assert count == 1
    return replaced


# --- chat ------------------------------------------------------------------------------------


def test_chat_request_and_response_bytes_pass_through_unchanged(router, fresh):
    client = Recorded(router)
    raw = client.client.chat.completions.with_raw_response.create(model="rec-model", messages=MESSAGES, temperature=0.25, max_tokens=7)
    assert fresh["small"].requests[-1].body == client.sent[-1].content
    assert raw.http_response.content == chat_completion()
    assert raw.parse().choices[0].message.content == "Hello from the recording engine."
    assert raw.headers["content-type"] == "application/json"


def test_chat_naming_a_tier_sets_only_the_model_in_the_bytes_sent(router, fresh):
    client = Recorded(router)
    client.client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=1e-05, seed=12345678901234567890)
    assert fresh["small"].requests[-1].body == _with_model(client.sent[-1].content, "tiny", "rec-model")


def test_chat_stream_bytes_pass_through_and_the_sdk_parses_them(router, fresh):
    chunks = chat_chunks(["Hi", " from", " a", " stream"])
    fresh["small"].reply(Reply(headers={"Content-Type": "text/event-stream"}, chunks=chunks))
    client = Recorded(router)
    with client.client.chat.completions.with_streaming_response.create(
        model="rec-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ) as response:
        relayed = b"".join(response.iter_bytes())
    assert relayed == b"".join(chunks)
    assert fresh["small"].requests[-1].body == client.sent[-1].content

    fresh["small"].reply(Reply(headers={"Content-Type": "text/event-stream"}, chunks=chunks))
    stream = client.client.chat.completions.create(model="rec-model", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hi from a stream"


def test_async_client_streamed_and_not(router, fresh):
    async def main() -> tuple[str, str, str | None]:
        client = openai.AsyncOpenAI(base_url=router.base_url, api_key="k", max_retries=0, timeout=30)
        try:
            answer = await client.chat.completions.create(model="rec-model", messages=MESSAGES)
            stream = await client.chat.completions.create(model="rec-model", messages=MESSAGES, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return answer.choices[0].message.content or "", text, answer._request_id
        finally:
            await client.close()

    content, streamed, request_id = asyncio.run(main())
    assert (content, streamed) == ("Hello from the recording engine.", "Hello there.")
    assert request_id is not None and re.fullmatch(r"req_[0-9a-f]{32}", request_id)


def test_tools_request_passes_byte_for_byte_and_tool_calls_come_back(router, fresh):
    tool_call = {"id": "call_1", "type": "function", "function": {"name": "pick_model", "arguments": "{\"model\": \"m\"}"}}
    body = json.dumps({
        "id": "chatcmpl-tools", "object": "chat.completion", "created": 1, "model": "rec-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [tool_call]}, "logprobs": None, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    }).encode()
    fresh["small"].reply(Reply(headers={"Content-Type": "application/json"}, body=body))
    # A tool whose schema has its own "model" property: only the top-level model may change.
    tools = [{"type": "function", "function": {"name": "pick_model", "parameters": {
        "type": "object", "properties": {"model": {"type": "string"}}, "required": ["model"]}}}]
    client = Recorded(router)
    raw = client.client.chat.completions.with_raw_response.create(model="small", messages=MESSAGES, tools=tools, tool_choice="auto")
    assert fresh["small"].requests[-1].body == _with_model(client.sent[-1].content, "small", "rec-model")
    assert raw.http_response.content == body
    call = raw.parse().choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("pick_model", {"model": "m"})


def test_logprobs_and_several_choices_pass_through(router, fresh):
    logprobs = {"content": [{"token": "Hi", "logprob": -0.125, "bytes": [72, 105], "top_logprobs": [{"token": "Hi", "logprob": -0.125, "bytes": [72, 105]}]}]}
    body = json.dumps({
        "id": "chatcmpl-n", "object": "chat.completion", "created": 1, "model": "rec-model",
        "choices": [{"index": i, "message": {"role": "assistant", "content": "Hi"}, "logprobs": logprobs, "finish_reason": "stop"} for i in range(3)],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
    }).encode()
    fresh["small"].reply(Reply(headers={"Content-Type": "application/json"}, body=body))
    client = Recorded(router)
    raw = client.client.chat.completions.with_raw_response.create(model="rec-model", messages=MESSAGES, n=3, logprobs=True, top_logprobs=1)
    assert raw.http_response.content == body
    answer = raw.parse()
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert answer.choices[2].logprobs.content[0].logprob == -0.125
    assert fresh["small"].requests[-1].body == client.sent[-1].content


# --- completions and embeddings ---------------------------------------------------------------


def test_completions_with_logprobs_pass_through(router, fresh):
    body = json.dumps({
        "id": "cmpl-1", "object": "text_completion", "created": 1, "model": "rec-model",
        "choices": [{"index": i, "text": " world", "finish_reason": "length",
                     "logprobs": {"tokens": [" world"], "token_logprobs": [-0.5], "top_logprobs": [{" world": -0.5}], "text_offset": [5]}}
                    for i in range(2)],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }).encode()
    fresh["small"].reply(Reply(headers={"Content-Type": "application/json"}, body=body))
    client = Recorded(router)
    raw = client.client.completions.with_raw_response.create(model="rec-model", prompt="Hello", logprobs=1, n=2, max_tokens=1)
    assert raw.http_response.content == body
    assert [c.logprobs.token_logprobs for c in raw.parse().choices] == [[-0.5], [-0.5]]
    assert fresh["small"].requests[-1].path == "/v1/completions"
    assert fresh["small"].requests[-1].body == client.sent[-1].content


def test_embeddings_in_the_sdk_default_base64_pass_through(router, fresh):
    vector = [0.5, -1.25, 2.0]
    encoded = base64.b64encode(struct.pack("<3f", *vector)).decode()
    body = json.dumps({"object": "list", "model": "rec-model", "data": [{"object": "embedding", "index": 0, "embedding": encoded}],
                       "usage": {"prompt_tokens": 2, "total_tokens": 2}}).encode()
    fresh["small"].reply(Reply(headers={"Content-Type": "application/json"}, body=body))
    client = Recorded(router)
    answer = client.client.embeddings.create(model="rec-model", input="hello world")
    assert answer.data[0].embedding == vector
    seen = fresh["small"].requests[-1]
    assert (seen.path, json.loads(seen.body)["encoding_format"]) == ("/v1/embeddings", "base64")
    assert seen.body == client.sent[-1].content


# --- nullable fields ---------------------------------------------------------------------------


def test_null_optional_fields_as_the_sdk_sends_them_are_accepted(router, fresh):
    # Before: 400 invalid_type for "stream": null.
    client = Recorded(router)
    answer = client.client.chat.completions.create(
        model="rec-model", messages=MESSAGES, stream=None, temperature=None, top_p=None, max_tokens=None, n=None,
        stop=None, seed=None, user=None, stream_options=None, logprobs=None, tools=None,
    )
    assert answer.choices[0].message.content == "Hello from the recording engine."
    sent = json.loads(client.sent[-1].content)
    assert sent["stream"] is None and sent["n"] is None
    assert fresh["small"].requests[-1].body == client.sent[-1].content
    status, _, _ = router.post("/v1/completions", {"model": "rec-model", "prompt": "x", "stream": None, "max_tokens": None})
    assert status == 200


# --- request ids -------------------------------------------------------------------------------


def test_request_id_is_the_clients_else_the_engines_else_made_here_and_in_the_log(router, fresh):
    client = Recorded(router)
    mine = client.client.chat.completions.with_raw_response.create(model="rec-model", messages=MESSAGES, extra_headers={"x-request-id": "client-id-1"})
    assert mine.headers["x-request-id"] == "client-id-1"
    assert mine.parse()._request_id == "client-id-1"
    assert fresh["small"].requests[-1].headers["x-request-id"] == "client-id-1"

    fresh["small"].reply(Reply(headers={"Content-Type": "application/json", "x-request-id": "engine-id-2"}, body=chat_completion()))
    engines = client.client.chat.completions.create(model="rec-model", messages=MESSAGES)
    assert engines._request_id == "engine-id-2"
    assert "x-request-id" not in fresh["small"].requests[-1].headers

    made = client.client.chat.completions.create(model="rec-model", messages=MESSAGES)
    assert re.fullmatch(r"req_[0-9a-f]{32}", made._request_id or "")

    with pytest.raises(openai.NotFoundError) as caught:
        client.client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    error_id = caught.value.request_id
    assert error_id is not None and re.fullmatch(r"req_[0-9a-f]{32}", error_id)

    for request_id in ("client-id-1", "engine-id-2", made._request_id, error_id):
        wait_for(lambda: f"request_id={request_id} " in router.log_text(), f"log line with request_id={request_id}")


# --- errors ------------------------------------------------------------------------------------


def test_unknown_model_is_404_model_not_found_and_reaches_no_engine(router, fresh):
    client = Recorded(router)
    with pytest.raises(openai.NotFoundError) as caught:
        client.client.chat.completions.create(model="gpt-imaginary", messages=MESSAGES)
    assert (caught.value.code, caught.value.param, caught.value.type) == ("model_not_found", "model", "invalid_request_error")
    assert fresh["small"].requests == [] and fresh["frontier"].requests == []


def test_unknown_model_is_routed_when_the_policy_opts_in(engines, fresh, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(ROUTER_KEY)
    router = _start(tmp_path, _config(engines, key_file, onUnknownModel="route"))
    try:
        raw = Recorded(router).client.chat.completions.with_raw_response.create(model="gpt-imaginary", messages=MESSAGES)
        assert (raw.headers["x-shoal-tier"], raw.headers["x-shoal-route-reason"]) == ("small", "default")
        assert json.loads(fresh["small"].requests[-1].body)["model"] == "rec-model"
    finally:
        router.stop()


def test_models_list_and_retrieve_and_unknown_paths_and_methods_are_openai_errors(router, fresh):
    client = Recorded(router).client
    assert {m.id for m in client.models.list()} == {"small", "tiny", "frontier"}
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("nope")
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="small", input="hi")
    assert (caught.value.code, caught.value.body["message"]) == ("unknown_url", "Invalid URL (POST /v1/responses)")

    wrong = httpx.get(router.base_url + "/chat/completions")
    assert (wrong.status_code, wrong.headers["allow"], wrong.json()["error"]["code"]) == (405, "POST", "method_not_allowed")
    assert wrong.headers["x-request-id"].startswith("req_")
    nowhere = httpx.delete(router.root + "/v2/anything")
    assert (nowhere.status_code, nowhere.json()["error"]["type"]) == (404, "invalid_request_error")


def test_bad_request_from_the_router_and_from_the_engine(router, fresh):
    client = Recorded(router).client
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="rec-model", messages=[])
    assert (caught.value.code, caught.value.param) == ("invalid_type", "messages")

    engine_error = b'{"error": {"message": "max_tokens is too large", "type": "BadRequestError", "param": "max_tokens", "code": 400}}'
    fresh["small"].reply(Reply(status=400, headers={"Content-Type": "application/json", "x-request-id": "eng-400"}, body=engine_error))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="rec-model", messages=MESSAGES, max_tokens=10**9)
    assert caught.value.response.content == engine_error
    assert caught.value.request_id == "eng-400"
    assert fresh["frontier"].requests == []  # a client error is never retried elsewhere


def test_every_tier_rate_limiting_is_a_rate_limit_error_with_the_smallest_retry_after(router, fresh):
    limited = b'{"error": {"message": "slow down", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}'
    fresh["small"].reply(Reply(status=429, headers={"Content-Type": "application/json", "Retry-After": "9"}, body=limited))
    fresh["frontier"].reply(Reply(status=429, headers={"Content-Type": "application/json", "Retry-After": "4"}, body=limited))
    with pytest.raises(openai.RateLimitError) as caught:
        Recorded(router).client.chat.completions.create(model="rec-model", messages=MESSAGES)
    assert caught.value.response.headers["retry-after"] == "4"
    assert caught.value.code == "rate_limit_exceeded"


# --- headers -----------------------------------------------------------------------------------


def test_which_headers_reach_engines_and_which_reach_clients(router, fresh):
    fresh["small"].reply(Reply(
        headers={"Content-Type": "application/json", "Set-Cookie": "session=abc", "x-ratelimit-remaining-requests": "5"},
        body=chat_completion(),
    ))
    traced = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "shoal=1"}
    client = Recorded(router, organization="org-client", project="proj-client").client
    raw = client.chat.completions.with_raw_response.create(model="rec-model", messages=MESSAGES, extra_headers=traced)
    local = fresh["small"].requests[-1].headers
    assert local["authorization"] == "Bearer sk-client-key"
    assert (local["openai-organization"], local["openai-project"]) == ("org-client", "proj-client")
    assert (local["traceparent"], local["tracestate"]) == (traced["traceparent"], "shoal=1")
    assert not any(name.startswith("x-stainless") for name in local)
    assert "set-cookie" not in raw.headers and "x-ratelimit-remaining-requests" not in raw.headers

    client.chat.completions.create(model="frontier", messages=MESSAGES, extra_headers=traced)
    external = fresh["frontier"].requests[-1].headers
    assert external["authorization"] == f"Bearer {ROUTER_KEY}"
    assert "openai-organization" not in external and "openai-project" not in external
    assert external["traceparent"] == traced["traceparent"]
    assert json.loads(fresh["frontier"].requests[-1].body)["model"] == "ext-model"


# --- disconnects -------------------------------------------------------------------------------


def test_a_client_leaving_mid_stream_closes_the_engine_connection(router, fresh):
    chunks = chat_chunks([f" w{i}" for i in range(400)])
    fresh["small"].reply(Reply(headers={"Content-Type": "text/event-stream"}, chunks=chunks, chunk_delay_seconds=0.02))
    client = Recorded(router).client
    stream = client.chat.completions.create(model="rec-model", messages=MESSAGES, stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.content == " w0"
    stream.close()
    wait_for(lambda: fresh["small"].requests[-1].disconnected, "the engine seeing the router hang up")
    wait_for(lambda: router.metric("shoal_requests_total", {"outcome": "cancelled"}) == 1.0, "the request counted as cancelled")


def test_a_client_timing_out_before_the_answer_is_counted_as_cancelled(router, fresh):
    fresh["small"].reply(Reply(headers={"Content-Type": "text/event-stream"}, chunks=chat_chunks(["late"]), chunk_delay_seconds=1.0))
    before = router.metric("shoal_requests_total", {"outcome": "cancelled"}) or 0.0
    client = openai.OpenAI(base_url=router.base_url, api_key="k", max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="rec-model", messages=MESSAGES, stream=True)
    wait_for(lambda: router.metric("shoal_requests_total", {"outcome": "cancelled"}) == before + 1, "the request counted as cancelled")
