"""The walk up a decision's ladder: which tier to try next, when to stop, and what the
client is told when no tier answered. No HTTP here: the server performs each attempt and
reports back with `succeeded`, `failed` or `abandoned`.

Per tier, in ladder order:
- a tier whose circuit is open is skipped (cause `circuit_open`, free);
- at most `fallback.maxAttempts` tiers are attempted;
- climbing past a failure whose cause is not free draws one retry from the retry budget;
  when the budget refuses, the walk stops (`retry_budget`) and the client gets 503 with
  Retry-After, because the router chose not to try a tier that might have answered;
- a failure whose cause `fallback.on` does not list ends the walk.

The final error is the last failure's (failures.Cause.error), except: every failure a
429 -> 429 with the smallest Retry-After the upstreams sent; stopped by the budget -> 503.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from shoal.api.routepolicy import FallbackSpec
from shoal.api.routerconfig import UpstreamTier

from .errors import NoHealthyUpstream, RateLimited, RouterError
from .failures import CIRCUIT_OPEN, RATE_LIMITED, REJECTED, RETRY_BUDGET, UpstreamFailure
from .resilience import CircuitBreaker, RetryBudget

# How long a client told "retry budget spent" should wait: the budget's window refills
# continuously, so a second is enough to find room again unless the outage persists.
BUDGET_RETRY_AFTER_SECONDS = 1


class LadderWalk:
    def __init__(
        self,
        ladder: tuple[str, ...],
        tiers: Mapping[str, UpstreamTier],
        fallback: FallbackSpec,
        breaker_of: Callable[[UpstreamTier], CircuitBreaker],
        budget: RetryBudget,
        on_fallback: Callable[[str, str], None],
        on_breaker: Callable[[UpstreamTier, CircuitBreaker], None],
    ) -> None:
        """on_fallback(tier, cause name): a tier failed or was skipped (a metric).
        on_breaker(tier, breaker): a breaker's state may have changed (a gauge)."""
        self._ladder = ladder
        self._tiers = tiers
        self._fallback = fallback
        self._breaker_of = breaker_of
        self._budget = budget
        self._on_fallback = on_fallback
        self._on_breaker = on_breaker
        self._position = 0
        self._current: tuple[UpstreamTier, CircuitBreaker] | None = None
        self._stopped = False
        self.attempts = 0
        self.failures: list[UpstreamFailure] = []
        self.stopped_by_budget = False
        budget.record_request()

    def next(self) -> UpstreamTier | None:
        """The next tier to attempt, or None when the walk is over."""
        assert self._current is None, "report the previous attempt first"
        while not self._stopped and self._position < len(self._ladder):
            tier = self._tiers[self._ladder[self._position]]
            self._position += 1
            breaker = self._breaker_of(tier)
            if not breaker.allow():
                self._record(UpstreamFailure(CIRCUIT_OPEN, tier.name, f"tier {tier.name}: circuit open after repeated failures"))
                continue
            if self.attempts >= self._fallback.max_attempts:
                breaker.release()
                break
            if self.attempts > 0 and not self.failures[-1].cause.free and not self._budget.try_retry():
                breaker.release()
                self._on_fallback(tier.name, RETRY_BUDGET)
                self.stopped_by_budget = True
                break
            self.attempts += 1
            self._current = (tier, breaker)
            return tier
        self._stopped = True
        return None

    def succeeded(self) -> None:
        tier, breaker = self._take()
        breaker.record_success()
        self._on_breaker(tier, breaker)

    def failed(self, failure: UpstreamFailure) -> None:
        tier, breaker = self._take()
        if failure.cause.trips_breaker:
            breaker.record_failure()
            self._on_breaker(tier, breaker)
        elif failure.cause is REJECTED:
            breaker.record_success()  # the upstream answered; its answer was not wanted
        else:
            breaker.release()
        self._record(failure)
        if failure.cause is not REJECTED and failure.cause.fallback_on not in self._fallback.on:
            self._stopped = True

    def abandoned(self) -> None:
        """The attempt ended neither in success nor failure (the client went away)."""
        if self._current is not None:
            self._take()[1].release()

    def _take(self) -> tuple[UpstreamTier, CircuitBreaker]:
        current = self._current
        assert current is not None, "no attempt in progress"
        self._current = None
        return current

    def _record(self, failure: UpstreamFailure) -> None:
        self.failures.append(failure)
        self._on_fallback(failure.tier, failure.cause.name)

    def error(self, tier: str | None, reason: str | None) -> RouterError:
        """What the client is told when the walk ended without an answer."""
        failures = self.failures
        if self.stopped_by_budget:
            last = failures[-1].message if failures else "no attempt"
            return NoHealthyUpstream(
                f"retry budget spent; not trying further tiers after: {last}", "retry_budget_exhausted",
                tier=tier, reason=reason, retry_after=BUDGET_RETRY_AFTER_SECONDS,
            )
        if not failures:
            return NoHealthyUpstream("no upstream could be tried", "no_healthy_upstream", tier=tier, reason=reason)
        if all(f.cause is RATE_LIMITED for f in failures):
            waits = [f.retry_after for f in failures if f.retry_after is not None]
            return RateLimited(
                "every tier is rate limiting this request: " + "; ".join(f.message for f in failures),
                RATE_LIMITED.code, tier=tier, reason=reason, retry_after=min(waits) if waits else None,
            )
        last = failures[-1]
        return last.cause.error(last.message, last.cause.code, tier=tier, reason=reason, retry_after=last.retry_after)
