"""The ladder walk without HTTP: which tier is tried next, what climbing costs, and what
the client is told (shoal.router.ladder with real breakers and budget, clock injected)."""

from __future__ import annotations

import pytest

from shoal.api.routepolicy import FallbackSpec
from shoal.api.routerconfig import UpstreamTier
from shoal.router.errors import NoHealthyUpstream, RateLimited, UpstreamBroke, UpstreamTimeout
from shoal.router.failures import CONNECT_ERROR, RATE_LIMITED, SERVER_ERROR, TIMEOUT, UNAVAILABLE, UpstreamFailure
from shoal.router.ladder import LadderWalk
from shoal.router.resilience import CircuitBreaker, RetryBudget

TIERS = {n: UpstreamTier(name=n, kind="service", url=f"http://{n}/v1", model=n) for n in ("a", "b", "c")}


class World:
    def __init__(self, budget_floor: int = 0, percent: float = 0.0, **fallback) -> None:
        self.now = 0.0
        self.budget = RetryBudget(percent, floor=budget_floor, clock=lambda: self.now)
        self.breakers = {n: CircuitBreaker(2, 30, clock=lambda: self.now) for n in TIERS}
        self.fallback = FallbackSpec(**fallback)
        self.counted: list[tuple[str, str]] = []

    def walk(self, ladder=("a", "b", "c")) -> LadderWalk:
        return LadderWalk(ladder, TIERS, self.fallback, lambda t: self.breakers[t.name], self.budget,
                          lambda tier, cause: self.counted.append((tier, cause)), lambda t, b: None)


def fail(walk: LadderWalk, cause, retry_after=None) -> str:
    tier = walk.next()
    assert tier is not None
    walk.failed(UpstreamFailure(cause, tier.name, f"{tier.name} {cause.name}", retry_after))
    return tier.name


@pytest.mark.parametrize("cause", [CONNECT_ERROR, UNAVAILABLE, RATE_LIMITED])
def test_climbing_past_a_tier_that_refused_at_once_costs_no_retry_budget(cause):
    world = World(budget_floor=0, percent=0)  # no retries at all
    walk = world.walk()
    assert fail(walk, cause) == "a"
    assert walk.next().name == "b"
    walk.succeeded()
    assert world.counted == [("a", cause.name)]


@pytest.mark.parametrize(("cause", "error"), [(TIMEOUT, NoHealthyUpstream), (SERVER_ERROR, NoHealthyUpstream)])
def test_climbing_past_a_tier_that_may_have_worked_needs_the_budget_and_without_it_is_503(cause, error):
    world = World(budget_floor=0, percent=0)
    walk = world.walk()
    fail(walk, cause)
    assert walk.next() is None
    told = walk.error("a", "default")
    assert (type(told), told.status, told.code, told.retry_after) == (error, 503, "retry_budget_exhausted", 1)
    assert world.counted == [("a", cause.name), ("b", "retry_budget")]


def test_an_open_circuit_is_skipped_for_free_and_the_last_real_failure_is_reported():
    world = World(budget_floor=1)
    world.breakers["b"].record_failure()
    world.breakers["b"].record_failure()  # open
    walk = world.walk()
    fail(walk, SERVER_ERROR)  # a: paid, the floor of 1 allows it
    assert walk.next().name == "c"  # b skipped: circuit open
    walk.failed(UpstreamFailure(TIMEOUT, "c", "c timed out"))
    assert walk.next() is None
    assert world.counted == [("a", "server_error"), ("b", "circuit_open"), ("c", "timeout")]
    assert isinstance(walk.error("a", "default"), UpstreamTimeout)


def test_every_tier_rate_limiting_is_429_with_the_smallest_retry_after():
    walk = World().walk()
    for seconds in (30, 2, None):
        fail(walk, RATE_LIMITED, seconds)
    assert walk.next() is None
    told = walk.error("a", "default")
    assert (type(told), told.status, told.retry_after) == (RateLimited, 429, 2)


def test_a_cause_fallback_on_does_not_list_ends_the_walk_with_its_own_error():
    walk = World(budget_floor=5, on=["connectError"]).walk()
    fail(walk, SERVER_ERROR)
    assert walk.next() is None
    assert isinstance(walk.error("a", "default"), UpstreamBroke)


def test_max_attempts_bounds_the_tiers_tried_even_when_climbing_is_free():
    walk = World(max_attempts=2).walk()
    fail(walk, CONNECT_ERROR)
    fail(walk, CONNECT_ERROR)
    assert walk.next() is None
    assert (walk.attempts, walk.error("a", "default").code) == (2, "no_healthy_upstream")
