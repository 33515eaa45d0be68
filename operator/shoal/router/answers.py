"""Reading and editing OpenAI-style answers, a JSON body or an SSE stream, for the cascade.

The cascade's logprobs verifier needs the engine's token log-probabilities whether or not
the client asked for them. When it did not, the router asks the engine itself
(`ask_logprobs`: chat `"logprobs": true`, completions `"logprobs": 0`, which is the sampled
token's log-probability and no alternatives) and gives the client the answer it would have
got without asking (`strip_logprobs`, `StreamStripper`): every `choices[].logprobs` value
becomes `null`, which is what vLLM and the OpenAI API send when none were asked for, and
every other byte stays as the engine sent it (key order, spacing, escapes, usage). Asking
changes nothing else in an answer: the tokens are sampled the same way.

All functions are pure and never raise on a malformed answer: what cannot be read is left
as it is (an answer whose log-probabilities cannot be found is accepted by the verifier,
since there is nothing to judge by).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


def client_asked_logprobs(kind: str, body: Mapping[str, Any]) -> bool:
    """Whether the request itself asks for token log-probabilities (chat: `logprobs: true`;
    completions: `logprobs` a number, 0 included)."""
    value = body.get("logprobs")
    if kind == "chat":
        return value is True
    return isinstance(value, int) and not isinstance(value, bool)


def ask_logprobs(payload: bytes, kind: str) -> bytes:
    """The request bytes asking for the sampled tokens' log-probabilities. A request without
    a `logprobs` key gets one in front, every other byte as it was; one that says `false`
    or `null` is re-serialised."""
    value = True if kind == "chat" else 0
    try:
        body = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(body, dict):
        return payload
    if "logprobs" not in body:
        start = payload.find(b"{")
        candidate = payload[: start + 1] + b'"logprobs":' + json.dumps(value).encode() + (b"," if body else b"") + payload[start + 1 :]
        try:
            if json.loads(candidate) == {**body, "logprobs": value}:
                return candidate
        except ValueError:
            pass
    return json.dumps({**body, "logprobs": value}).encode()


# --- JSON bodies -------------------------------------------------------------------------


def strip_logprobs(body: bytes) -> bytes:
    """A chat or completions response (or one SSE chunk's JSON) with every
    `choices[].logprobs` set to null, every other byte unchanged. Unreadable: unchanged."""
    try:
        text = body.decode()
        spans = _logprobs_spans(text)
    except (ValueError, UnicodeDecodeError, StopIteration):
        return body
    if not spans:
        return body
    parts = []
    last = 0
    for start, end in spans:
        parts += [text[last:start], "null"]
        last = end
    parts.append(text[last:])
    return "".join(parts).encode()


def _logprobs_spans(text: str) -> list[tuple[int, int]]:
    """Where the values of `choices[].logprobs` (other than null) are in a JSON object."""
    spans: list[tuple[int, int]] = []
    pos = _SPACE.match(text).end()  # type: ignore[union-attr]
    if not text.startswith("{", pos):
        raise ValueError("not an object")
    for key, start, _ in _members(text, pos):
        if key != "choices" or not text.startswith("[", start):
            continue
        for item in _elements(text, start):
            if not text.startswith("{", item):
                continue
            for name, value_start, value_end in _members(text, item):
                if name == "logprobs" and text[value_start:value_end] != "null":
                    spans.append((value_start, value_end))
    return spans


def _members(text: str, pos: int) -> Iterator[tuple[str, int, int]]:
    """(key, value start, value end) of each member of the object at `pos`."""
    pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
    if text.startswith("}", pos):
        return
    while True:
        key, pos = _DECODER.raw_decode(text, pos)
        pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]
        if not isinstance(key, str) or not text.startswith(":", pos):
            raise ValueError("not an object member")
        start = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
        _, end = _DECODER.raw_decode(text, start)
        yield key, start, end
        pos = _SPACE.match(text, end).end()  # type: ignore[union-attr]
        if text.startswith("}", pos):
            return
        if not text.startswith(",", pos):
            raise ValueError("expected , or }")
        pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]


def _elements(text: str, pos: int) -> Iterator[int]:
    """The start of each element of the array at `pos`."""
    pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
    if text.startswith("]", pos):
        return
    while True:
        yield pos
        _, end = _DECODER.raw_decode(text, pos)
        pos = _SPACE.match(text, end).end()  # type: ignore[union-attr]
        if text.startswith("]", pos):
            return
        if not text.startswith(",", pos):
            raise ValueError("expected , or ]")
        pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]


def token_logprobs(response: Mapping[str, Any]) -> list[float]:
    """Token log-probabilities of the first choice of a chat or completions response or
    stream chunk (`logprobs.content[].logprob`, or `logprobs.token_logprobs`)."""
    choice = _first_choice(response)
    logprobs = choice.get("logprobs") if choice is not None else None
    if not isinstance(logprobs, Mapping):
        return []
    content = logprobs.get("content")
    if isinstance(content, list):
        return [float(t["logprob"]) for t in content if isinstance(t, Mapping) and isinstance(t.get("logprob"), (int, float))]
    tokens = logprobs.get("token_logprobs")
    if isinstance(tokens, list):
        return [float(t) for t in tokens if isinstance(t, (int, float))]
    return []


def _first_choice(response: Mapping[str, Any]) -> Mapping[str, Any] | None:
    choices = response.get("choices")
    if not isinstance(choices, list):
        return None
    for choice in choices:
        if isinstance(choice, Mapping) and choice.get("index", 0) == 0:
            return choice
    return None


# --- SSE streams ---------------------------------------------------------------------------


def stream_events(body: bytes) -> Iterator[dict[str, Any]]:
    """The JSON objects of an SSE stream's `data:` lines ([DONE] and unreadable lines skipped)."""
    for line in body.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            continue
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event


def stream_text(body: bytes) -> str | None:
    """The first choice's text of a chat or completions stream (deltas joined), or None
    when no event carries text (tool calls, an odd stream)."""
    parts: list[str] = []
    found = False
    for event in stream_events(body):
        choice = _first_choice(event)
        if choice is None:
            continue
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, Mapping) else choice.get("text")
        if isinstance(text, str):
            parts.append(text)
            found = True
    return "".join(parts) if found else None


def stream_logprobs(body: bytes) -> list[float]:
    """The first choice's token log-probabilities over a whole stream."""
    values: list[float] = []
    for event in stream_events(body):
        values += token_logprobs(event)
    return values


def stream_usage(body: bytes, prompt_tokens: int) -> tuple[int, int]:
    """(prompt, completion) tokens of a stream: its usage event when the client asked for
    one, else `prompt_tokens` and one completion token per event (the first, role-only,
    and the last, finish-only, do not count)."""
    usage = None
    events = 0
    for event in stream_events(body):
        events += 1
        found = event.get("usage")
        if isinstance(found, Mapping):
            usage = found
    if usage is not None:
        try:
            return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        except (TypeError, ValueError):
            pass
    return prompt_tokens, max(events - 2, 0)


class StreamStripper:
    """`strip_logprobs` for an SSE stream that arrives in chunks cut anywhere: `feed`
    returns the complete lines seen so far, each `data:` line's JSON stripped, and keeps
    a partial line for the next chunk; `close` returns what is left."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._partial + chunk
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        return _strip_lines(data[:cut])

    def close(self) -> bytes:
        rest, self._partial = self._partial, b""
        return _strip_lines(rest)


def strip_stream_logprobs(body: bytes) -> bytes:
    """A whole SSE stream with every chunk's `choices[].logprobs` set to null."""
    stripper = StreamStripper()
    return stripper.feed(body) + stripper.close()


def _strip_lines(data: bytes) -> bytes:
    if b'"logprobs"' not in data:
        return data
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(b"data:") and b'"logprobs"' in line:
            start = 5 + (len(line) - 5 - len(line[5:].lstrip()))
            end = len(line.rstrip(b"\r"))
            lines[i] = line[:start] + strip_logprobs(line[start:end]) + line[end:]
    return b"\n".join(lines)
