"""The model of one vLLM replica: a batch of sequences sharing a GPU.

Per replica:
- admission: a request waits in a FIFO until the batch has a free slot (maxNumSeqs) and the
  prefill stage is free;
- prefill: one prompt at a time, prompt_tokens / prefill_tokens_per_second seconds,
  slowed down by the decode batch it shares the GPU with (factor 1 + batch /
  prefill_slowdown_batch). The first token is out when prefill ends, so
  TTFT = queue wait + prefill;
- decode: every sequence of the batch advances by one token per step; a step takes
  decode_step_base_seconds + decode_step_per_seq_seconds * batch, so per-token time grows
  with the batch (throughput rises, latency rises).

Decode is simulated exactly with one "virtual token clock" per replica (all sequences of a
batch advance together), so a completion costs O(log batch), not one event per token.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class EngineModel:
    """Throughput and latency of one replica, and how long a new one takes to start.

    The defaults are a small (1-3B) model on one mid-range GPU; measure yours with a load
    test and pass them to `shoal sim`.
    """

    max_num_seqs: int = 256
    prefill_tokens_per_second: float = 10000.0
    prefill_slowdown_batch: float = 48.0
    decode_step_base_seconds: float = 0.012
    decode_step_per_seq_seconds: float = 0.0004
    # Pod scheduling + image pull + weight download and load, drawn uniformly per pod.
    cold_start_min_seconds: float = 60.0
    cold_start_max_seconds: float = 180.0

    def step_seconds(self, batch: int) -> float:
        return self.decode_step_base_seconds + self.decode_step_per_seq_seconds * batch

    def prefill_seconds(self, prompt_tokens: int, batch: int) -> float:
        return prompt_tokens / self.prefill_tokens_per_second * (1.0 + batch / self.prefill_slowdown_batch)


class Request:
    """One request's life: filled in as it moves through the fleet."""

    __slots__ = ("arrival", "prompt_tokens", "output_tokens", "tier", "spilled", "prefill_start", "first_token", "done")

    def __init__(self, arrival: float, prompt_tokens: int, output_tokens: int) -> None:
        self.arrival = arrival
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.tier = -1
        self.spilled = False
        self.prefill_start = -1.0
        self.first_token = -1.0
        self.done = -1.0


# Event kinds, in the order they are handled when times tie.
PREFILL_DONE = 0
DECODE_DONE = 1

Schedule = Callable[[float, int, object, int], None]


class Replica:
    """A pod of a tier, from creation (GPU allocated) to deletion."""

    __slots__ = (
        "pod_id", "tier", "model", "created", "ready_at", "state", "ended",
        "queue", "prefilling", "decoding", "vclock", "last", "version",
        "busy_seconds", "_schedule", "_on_done", "_seq",
    )

    STARTING, READY, DRAINING, GONE = "starting", "ready", "draining", "gone"

    def __init__(self, pod_id: int, tier: int, model: EngineModel, created: float, ready_at: float,
                 schedule: Schedule, on_done: Callable[[Request], None]) -> None:
        self.pod_id = pod_id
        self.tier = tier
        self.model = model
        self.created = created
        self.ready_at = ready_at
        self.state = Replica.STARTING
        self.ended: float | None = None
        self.queue: deque[Request] = deque()
        self.prefilling: Request | None = None
        self.decoding: list[tuple[float, int, Request]] = []
        self.vclock = 0.0  # tokens decoded so far by any sequence present since the start
        self.last = created
        self.version = 0
        self.busy_seconds = 0.0
        self._schedule = schedule
        self._on_done = on_done
        self._seq = 0

    # --- what the sidecar's /metrics would report --------------------------------------
    @property
    def waiting(self) -> int:
        return len(self.queue)

    @property
    def running(self) -> int:
        return len(self.decoding) + (1 if self.prefilling is not None else 0)

    @property
    def in_flight(self) -> int:
        return len(self.queue) + len(self.decoding) + (1 if self.prefilling is not None else 0)

    # --- events ------------------------------------------------------------------------
    def admit(self, request: Request, now: float) -> None:
        self._advance(now)
        self.queue.append(request)
        self._start_prefill(now)

    def on_prefill_done(self, now: float) -> None:
        self._advance(now)
        request = self.prefilling
        assert request is not None
        self.prefilling = None
        request.first_token = now
        if request.output_tokens <= 1:
            request.done = now
            self._on_done(request)
        else:
            self._seq += 1
            heapq.heappush(self.decoding, (self.vclock + request.output_tokens - 1, self._seq, request))
            self._reschedule(now)
        self._start_prefill(now)

    def on_decode_done(self, now: float, version: int) -> None:
        if version != self.version:
            return  # superseded: the batch changed since this completion was scheduled
        self._advance(now)
        while self.decoding and self.decoding[0][0] <= self.vclock + 1e-9:
            _, _, request = heapq.heappop(self.decoding)
            request.done = now
            self._on_done(request)
        self._reschedule(now)
        self._start_prefill(now)

    def settle(self, now: float) -> None:
        """Bring the busy-time accounting up to `now` (before reading it)."""
        self._advance(now)

    # --- internals -----------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        dt = now - self.last
        if dt > 0:
            if self.decoding or self.prefilling is not None:
                self.busy_seconds += dt
            if self.decoding:
                self.vclock += dt / self.model.step_seconds(len(self.decoding))
            self.last = now

    def _reschedule(self, now: float) -> None:
        self.version += 1
        if self.decoding:
            remaining = self.decoding[0][0] - self.vclock
            self._schedule(now + max(0.0, remaining) * self.model.step_seconds(len(self.decoding)), DECODE_DONE, self, self.version)

    def _start_prefill(self, now: float) -> None:
        if self.prefilling is None and self.queue and len(self.decoding) < self.model.max_num_seqs:
            request = self.queue.popleft()
            request.prefill_start = now
            self.prefilling = request
            self._schedule(now + self.model.prefill_seconds(request.prompt_tokens, len(self.decoding)), PREFILL_DONE, self, 0)
