"""One type for an upstream attempt that failed, and the closed set of its causes.

A `Cause` says everything the router does about a failure, in one place:
- `name`: the `cause` label of `shoal_fallbacks_total`;
- `fallback_on`: the `fallback.on` entry that lets the request climb to the next tier;
- `trips_breaker`: whether it counts against the upstream's circuit breaker;
- `free`: whether climbing past it costs nothing from the retry budget (see below);
- `error`: what the client is told when it is the last failure of the ladder.

Free and paid fallback. The retry budget exists to stop retry storms: re-sending work
that an upstream may already have spent effort on (it timed out, broke mid-response, or
failed with a 5xx after working on it) multiplies the load while upstreams are slow or
overloaded. An upstream that refused at once did no work: nothing could be sent
(connection refused), its circuit is open (nothing is sent), it said it is saturated or
unavailable (503) or rate limited (429). Moving past such a tier costs the next tier
exactly the request it would have received had the decision started there, so it is not
a retry and is not drawn from the budget; otherwise one down tier turns a burst into
client errors while a healthy tier sits above it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import NoHealthyUpstream, RateLimited, RouterError, UpstreamBroke, UpstreamTimeout


@dataclass(frozen=True)
class Cause:
    name: str
    fallback_on: str  # FallbackSpec.on: connectError, serverError, rateLimited, timeout
    trips_breaker: bool
    free: bool
    error: type[RouterError]
    code: str  # error.code the client sees when this is the last failure


CONNECT_ERROR = Cause("connect_error", "connectError", True, True, NoHealthyUpstream, "no_healthy_upstream")
CIRCUIT_OPEN = Cause("circuit_open", "connectError", False, True, NoHealthyUpstream, "no_healthy_upstream")
SATURATED = Cause("saturated", "rateLimited", False, True, NoHealthyUpstream, "no_healthy_upstream")
UNAVAILABLE = Cause("unavailable", "serverError", True, True, NoHealthyUpstream, "no_healthy_upstream")
RATE_LIMITED = Cause("rate_limited", "rateLimited", True, True, RateLimited, "rate_limit_exceeded")
SERVER_ERROR = Cause("server_error", "serverError", True, False, UpstreamBroke, "upstream_error")
UPSTREAM_BROKE = Cause("upstream_broke", "serverError", True, False, UpstreamBroke, "upstream_error")
TIMEOUT = Cause("timeout", "timeout", True, False, UpstreamTimeout, "upstream_timeout")
# A verifier (Hooks.verify) refused a tier's answer: always climbs, never trips the breaker.
REJECTED = Cause("rejected", "", False, True, UpstreamBroke, "upstream_error")

CAUSES = (CONNECT_ERROR, CIRCUIT_OPEN, SATURATED, UNAVAILABLE, RATE_LIMITED, SERVER_ERROR, UPSTREAM_BROKE, TIMEOUT, REJECTED)
# Not a failure of a tier but the walk stopping: counted under the tier it did not try.
RETRY_BUDGET = "retry_budget"
CAUSE_NAMES = tuple(c.name for c in CAUSES) + (RETRY_BUDGET,)


class UpstreamFailure(Exception):
    """One attempt at one tier failed before anything reached the client.

    retry_after: the upstream's Retry-After in whole seconds, when it sent one (429/503).
    """

    def __init__(self, cause: Cause, tier: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.tier = tier
        self.message = message
        self.retry_after = retry_after


def status_cause(status: int, saturated: bool) -> Cause:
    """The cause of an upstream's 5xx or 429 answer."""
    if saturated:
        return SATURATED
    if status == 429:
        return RATE_LIMITED
    if status == 503:
        return UNAVAILABLE
    return SERVER_ERROR


def parse_retry_after(value: str | None) -> int | None:
    """Whole seconds from a Retry-After header in its delta-seconds form (the form rate
    limiters send); an HTTP date or garbage is ignored."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds != seconds or seconds < 0 or seconds > 86400:
        return None
    return int(-(-seconds // 1))  # round up: never tell a client to come back too early
