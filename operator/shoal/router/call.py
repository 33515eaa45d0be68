"""One request's state as it moves through the router, and the hooks that may join it.

`Call` is created once per inference request and carries everything its handling needs
(the config snapshot, the body, the decision, the cache key, the request id); `Attempt`
is one try at one tier; `Answer` is what a tier answered. The server passes these
objects instead of positional values, and the extension points receive them.

Extension points (`Hooks`, registered on `Router.hooks`; empty by default, so they cost
nothing unless used). A hook must be quick or schedule its own work; an exception in a
hook is logged and counted as "no opinion", never turned into a client error.

- `start(call)`: at the start of the ladder, before the decision. `call.policy` may be
  replaced (for example with `dataclasses.replace(call.policy,
  confidence_threshold=...)` by a classifier threshold controller); `call.features` is
  set. Not called for sidecar-to-sidecar hops.
- `verify(call, answer) -> str | None` (async): between a tier's 200 answer read in full
  and the client. Return None to accept, or a reason to reject it: the walk then climbs
  to the next tier (cause `rejected`: no retry budget, no breaker, whatever
  `fallback.on` says). When every tier's answer is rejected the client gets the last
  one. A stream is verified only when the cascade held it back whole (`streaming:
  buffer`, `answer.streamed`); a stream relayed as it comes never is (its bytes are
  already on the way).
- `complete(call, answer)`: after the client's response has completed (written in full,
  or a stream ended), with the answering tier and the response body (for streams, the
  bytes relayed, up to `STREAM_BODY_LIMIT`; None when longer). Not called for errors,
  cache hits or hops.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.api.routerconfig import UpstreamTier

from . import decision as routing

if TYPE_CHECKING:
    from aiohttp import web

    from .server import Snapshot

# The most of a stream's bytes kept for `complete` hooks.
STREAM_BODY_LIMIT = 4 * 1024 * 1024


@dataclass(slots=True)
class Call:
    """One inference request from arrival to the last byte of its answer."""

    request: web.Request
    snap: Snapshot
    kind: str  # "chat", "completions", "embeddings"
    raw: bytes  # the body exactly as received
    body: dict[str, Any]  # the parsed body
    stream: bool
    request_id: str | None  # the client's x-request-id, when it sent a usable one
    started: float  # perf_counter at arrival
    hop: bool = False  # forwarded by another tier's sidecar: served by the local engine
    policy: routing.Policy | None = None
    features: routing.Request | None = None
    decision: routing.Decision | None = None
    cache_key: bytes | None = None
    cache_checkpoint: str | None = None  # the checkpoint the cache key was made with
    upstream_headers: dict[str, str] = field(default_factory=dict)  # sent to every tier
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.request.path


@dataclass(slots=True)
class Attempt:
    """One try at one tier."""

    tier: UpstreamTier
    reason: str  # the route reason this tier would answer under (decision's, or fallback)
    started: float  # perf_counter when the request was sent


@dataclass(slots=True)
class Answer:
    """What a tier answered (2xx/4xx; failures are failures.UpstreamFailure)."""

    tier: UpstreamTier
    reason: str
    status: int
    content_type: str
    headers: dict[str, str]  # the upstream's response headers, lower-case names
    body: bytes | None
    streamed: bool = False  # body is SSE: a stream relayed (complete hooks), or held back whole until verified
    checkpoint: str | None = None  # the serving checkpoint that produced it, when known
    # The first choice's token log-probabilities when the router asked the engine for them
    # itself (the cascade's logprobs verifier): they are no longer in `body`.
    logprobs: list[float] | None = None


StartHook = Callable[[Call], None]
VerifyHook = Callable[[Call, Answer], Awaitable[str | None]]
CompleteHook = Callable[[Call, Answer], None]


@dataclass
class Hooks:
    start: list[StartHook] = field(default_factory=list)
    verify: list[VerifyHook] = field(default_factory=list)
    complete: list[CompleteHook] = field(default_factory=list)
