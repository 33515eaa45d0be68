"""Reading answers and taking off the log-probabilities the router asked for (pure)."""

from __future__ import annotations

import json

import pytest

from shoal.router import answers as A

LOGPROBS = {"content": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": []}]}


def chat(logprobs, separators=(",", ":"), content="Hi") -> bytes:
    body = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": logprobs, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
    }
    return json.dumps(body, separators=separators, ensure_ascii=False).encode()


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
def test_stripping_gives_the_bytes_the_engine_sends_when_not_asked(separators):
    assert A.strip_logprobs(chat(LOGPROBS, separators)) == chat(None, separators)


def test_stripping_leaves_content_that_looks_like_logprobs_and_non_ascii_text_alone():
    content = 'Voilà: {"logprobs": [1, 2]} – “quoted” \\n'
    assert A.strip_logprobs(chat(LOGPROBS, content=content)) == chat(None, content=content)


def test_stripping_covers_every_choice_and_completions():
    body = {"choices": [
        {"index": 0, "text": "a", "logprobs": {"tokens": ["a"], "token_logprobs": [-1.0], "top_logprobs": None, "text_offset": [0]}},
        {"index": 1, "text": "b", "logprobs": {"tokens": ["b"], "token_logprobs": [-2.0], "top_logprobs": None, "text_offset": [0]}},
    ]}
    expected = {"choices": [{**c, "logprobs": None} for c in body["choices"]]}
    assert A.strip_logprobs(json.dumps(body).encode()) == json.dumps(expected).encode()


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'{"choices": [', chat(None), b'{"error": {"message": "x"}}'])
def test_a_body_without_logprobs_or_unreadable_is_unchanged(body):
    assert A.strip_logprobs(body) == body


@pytest.mark.parametrize(
    ("kind", "body", "asked"),
    [
        ("chat", {"logprobs": True}, True),
        ("chat", {"logprobs": False}, False),
        ("chat", {"top_logprobs": 2}, False),
        ("chat", {}, False),
        ("completions", {"logprobs": 0}, True),
        ("completions", {"logprobs": 3}, True),
        ("completions", {"logprobs": None}, False),
        ("completions", {}, False),
    ],
)
def test_what_counts_as_the_client_asking_for_logprobs(kind, body, asked):
    assert A.client_asked_logprobs(kind, body) is asked


def test_asking_adds_the_field_in_front_and_keeps_the_clients_bytes():
    raw = b'{"model": "m",  "messages": [{"role": "user", "content": "caf\\u00e9"}], "temperature": 0.0}'
    assert A.ask_logprobs(raw, "chat") == b'{"logprobs":true,"model": "m",  "messages": [{"role": "user", "content": "caf\\u00e9"}], "temperature": 0.0}'
    assert A.ask_logprobs(b'{"prompt": "x"}', "completions") == b'{"logprobs":0,"prompt": "x"}'
    # A client that said no is overruled (and re-serialised: the key is there already).
    assert json.loads(A.ask_logprobs(b'{"prompt": "x", "logprobs": null}', "completions")) == {"prompt": "x", "logprobs": 0}
    assert json.loads(A.ask_logprobs(b'{"messages": [], "logprobs": false}', "chat")) == {"messages": [], "logprobs": True}


def sse(*events) -> bytes:
    return b"".join(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def chunk(text, logprob=None, usage=None):
    logprobs = None if logprob is None else {"content": [{"token": text, "logprob": logprob, "bytes": list(text.encode()), "top_logprobs": []}]}
    event = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": None}]}
    if usage is not None:
        event = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": usage}
    return event


def test_a_stream_is_read_for_its_text_logprobs_and_usage():
    body = sse(chunk("Paris", -0.5), chunk(" is", -0.25), chunk(" it.", -2.0))
    assert A.stream_text(body) == "Paris is it."
    assert A.stream_logprobs(body) == [-0.5, -0.25, -2.0]
    assert A.stream_usage(body, prompt_tokens=7) == (7, 1)  # three events: one token counted per event but the first and last
    with_usage = sse(chunk("Paris"), chunk(None, usage={"prompt_tokens": 12, "completion_tokens": 3}))
    assert A.stream_usage(with_usage, prompt_tokens=7) == (12, 3)
    completions = sse({"choices": [{"index": 0, "text": "Par"}]}, {"choices": [{"index": 0, "text": "is"}]})
    assert A.stream_text(completions) == "Paris"
    assert A.stream_text(sse({"choices": [{"index": 0, "delta": {"tool_calls": []}}]})) is None


def test_a_stream_cut_anywhere_is_stripped_the_same_as_whole():
    asked = sse(chunk("Paris", -0.5), chunk(" is", -0.25), chunk(" it.", -2.0))
    plain = sse(chunk("Paris"), chunk(" is"), chunk(" it."))
    assert A.strip_stream_logprobs(asked) == plain
    for size in (1, 7, 64, 1000):
        stripper = A.StreamStripper()
        out = b"".join(stripper.feed(asked[i:i + size]) for i in range(0, len(asked), size)) + stripper.close()
        assert out == plain, size
