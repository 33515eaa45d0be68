"""Failure containment: a circuit breaker per upstream, a retry budget, hourly spend.

Each takes an injected monotonic clock so tests drive time explicitly.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

Clock = Callable[[], float]


class CircuitBreaker:
    """Closed -> open after `failures` failures in a row; open skips the upstream for
    `open_seconds`, then lets ONE trial request through (half-open). The trial's success
    closes the circuit, its failure opens it again for another `open_seconds`."""

    def __init__(self, failures: int, open_seconds: float, clock: Clock = time.monotonic) -> None:
        self.failures = failures
        self.open_seconds = open_seconds
        self._clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.open_seconds:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        """Whether a request may go to this upstream now (claims the half-open trial)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._consecutive += 1
        if self._trial_in_flight or self._consecutive >= self.failures:
            self._opened_at = self._clock()
        self._trial_in_flight = False

    def release(self) -> None:
        """The request ended neither in success nor failure (e.g. the client left)."""
        self._trial_in_flight = False


class RetryBudget:
    """Retries allowed as a share of recent requests (over `window_seconds`), plus a small
    floor so a quiet router can still retry: retries < floor + percent% of requests."""

    def __init__(self, percent: float, window_seconds: float = 10.0, floor: int = 3, clock: Clock = time.monotonic) -> None:
        self.percent = percent
        self.window_seconds = window_seconds
        self.floor = floor
        self._clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def _trim(self, now: float) -> None:
        horizon = now - self.window_seconds
        for q in (self._requests, self._retries):
            while q and q[0] < horizon:
                q.popleft()

    def record_request(self) -> None:
        now = self._clock()
        self._trim(now)
        self._requests.append(now)

    def try_retry(self) -> bool:
        """Spend one retry if the budget allows it."""
        now = self._clock()
        self._trim(now)
        if len(self._retries) < self.floor + self.percent / 100.0 * len(self._requests):
            self._retries.append(now)
            return True
        return False


class HourlySpend:
    """USD spent on external tiers over the last hour (a sliding window of minute buckets)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._buckets: deque[tuple[int, float]] = deque()

    def add(self, usd: float) -> None:
        minute = int(self._clock() // 60)
        if self._buckets and self._buckets[-1][0] == minute:
            self._buckets[-1] = (minute, self._buckets[-1][1] + usd)
        else:
            self._buckets.append((minute, usd))

    def total(self) -> float:
        minute = int(self._clock() // 60)
        while self._buckets and self._buckets[0][0] <= minute - 60:
            self._buckets.popleft()
        return sum(usd for _, usd in self._buckets)
