"""Running a dataset against an OpenAI-compatible endpoint, with bounded concurrency.

Each item is one ``POST /chat/completions`` with the item's messages and the evaluation's
sampling settings. At most ``concurrency`` requests are in flight. A request that fails
on transport or with 429/5xx is retried twice (short backoff); one that still fails is
recorded as an error for that item, which every scorer counts as wrong: an engine that
cannot answer an item is not right about it. Whether too many errors make the whole
evaluation unusable is the caller's decision (``errors_fraction``).

Latency is measured per item, request to full response, on the monotonic clock.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from shoal.api.modeltier import ScorerSpec

from . import scorers
from .dataset import Item

RETRIES = 2
RETRY_STATUS = {429, 500, 502, 503, 504}


class EndpointUnavailable(RuntimeError):
    """The endpoint did not answer ``GET /models``: nothing can be evaluated against it."""


@dataclass(frozen=True)
class Target:
    base_url: str  # ".../v1"
    model: str
    api_key: str | None = None
    extra_headers: tuple[tuple[str, str], ...] = ()

    def headers(self) -> dict[str, str]:
        headers = dict(self.extra_headers)
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    max_tokens: int = 256
    seed: int | None = 0


@dataclass(frozen=True)
class ItemResult:
    item_id: str
    response: str | None  # None when the request failed
    latency_seconds: float | None
    error: str | None = None


async def preflight(client: httpx.AsyncClient, target: Target) -> None:
    try:
        response = await client.get(f"{target.base_url.rstrip('/')}/models", headers=target.headers())
        response.raise_for_status()
    except httpx.HTTPError as error:
        raise EndpointUnavailable(f"{target.base_url}/models did not answer: {error!r}") from error


async def _post_chat(client: httpx.AsyncClient, target: Target, body: dict[str, Any]) -> str:
    url = f"{target.base_url.rstrip('/')}/chat/completions"
    last_error = ""
    for attempt in range(RETRIES + 1):
        if attempt:
            await asyncio.sleep(0.5 * attempt)
        try:
            response = await client.post(url, json=body, headers=target.headers())
        except httpx.TransportError as error:
            last_error = f"{type(error).__name__}: {error}"
            continue
        if response.status_code in RETRY_STATUS:
            last_error = f"HTTP {response.status_code}: {response.text[:200]}"
            continue
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise RuntimeError(f"malformed chat completion: {response.text[:200]}") from error
        return content or ""
    raise RuntimeError(last_error)


async def generate(
    client: httpx.AsyncClient,
    target: Target,
    items: Sequence[Item],
    sampling: Sampling,
    *,
    concurrency: int,
) -> list[ItemResult]:
    """Every item's response (or error), in item order."""
    limit = asyncio.Semaphore(concurrency)

    async def one(item: Item) -> ItemResult:
        body: dict[str, Any] = {
            "model": target.model,
            "messages": item.messages,
            "temperature": sampling.temperature,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        async with limit:
            started = time.monotonic()
            try:
                text = await _post_chat(client, target, body)
            except RuntimeError as error:
                return ItemResult(item.id, None, None, str(error))
            return ItemResult(item.id, text, time.monotonic() - started)

    return list(await asyncio.gather(*(one(item) for item in items)))


def errors_fraction(results: Sequence[ItemResult]) -> float:
    return sum(1 for r in results if r.error is not None) / len(results) if results else 0.0


# --- the LLM judge ------------------------------------------------------------------------

_VERDICT_WORD = re.compile(r"\b(PASS|FAIL)\b")


def judge_messages(rubric: str, item: Item, response: str) -> list[dict[str, str]]:
    question = "\n".join(str(m.get("content", "")) for m in item.messages if m.get("role") == "user")
    reference = "" if item.reference is None else str(item.reference)
    return [
        {"role": "system", "content": rubric + "\nReply with one word: PASS or FAIL."},
        {
            "role": "user",
            "content": f"Question:\n{question}\n\nReference answer:\n{reference}\n\nResponse to judge:\n{response}",
        },
    ]


def parse_judgement(text: str) -> float | None:
    """1.0 for PASS, 0.0 for FAIL, None if the judge said neither (the first word found wins)."""
    match = _VERDICT_WORD.search(text.upper())
    if match is None:
        return None
    return 1.0 if match.group(1) == "PASS" else 0.0


async def judge(
    client: httpx.AsyncClient,
    judge_target: Target,
    rubric: str,
    items: Sequence[Item],
    results: Sequence[ItemResult],
    *,
    concurrency: int,
) -> list[float | None]:
    """The judge's score for each answered item (0.0 for unanswered ones or an unreadable judgement)."""
    limit = asyncio.Semaphore(concurrency)

    async def one(item: Item, result: ItemResult) -> float:
        if result.response is None:
            return 0.0
        body = {
            "model": judge_target.model,
            "messages": judge_messages(rubric, item, result.response),
            "temperature": 0.0,
            "max_tokens": 8,
        }
        async with limit:
            try:
                text = await _post_chat(client, judge_target, body)
            except RuntimeError:
                return 0.0
        verdict = parse_judgement(text)
        return 0.0 if verdict is None else verdict

    return list(await asyncio.gather(*(one(i, r) for i, r in zip(items, results))))


def score_results(
    specs: Sequence[ScorerSpec],
    items: Sequence[Item],
    results: Sequence[ItemResult],
    judged: dict[str, list[float | None]] | None = None,
) -> dict[str, list[float | None]]:
    """Metric name -> one score per item (None: the item opted out). Failed requests score 0."""
    scores: dict[str, list[float | None]] = {}
    for spec in specs:
        name = scorers.metric_name(spec)
        if spec.type == "llmJudge":
            scores[name] = list((judged or {}).get(name, [0.0] * len(items)))
            continue
        column: list[float | None] = []
        for item, result in zip(items, results):
            if item.params_for(name, spec.type).get("skip"):
                column.append(None)
            elif result.response is None:
                column.append(0.0)
            else:
                column.append(scorers.score(spec, result.response, item))
        scores[name] = column
    return scores
