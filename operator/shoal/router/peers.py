"""What a sidecar knows about the other in-cluster tiers, learned from those tiers' own
sidecars: one direction for live state, no operator in the loop.

Two sources, both from the peer itself:
- `GET /shoal/state` on the peer's Service, polled every `peers.pollIntervalSeconds`:
  `{"tier", "checkpoint", "ready", "waiting", "running"}` of the pod that answered;
- the `x-shoal-checkpoint` header on every answer the peer serves.

What follows from it:
- **Asleep.** A peer whose Service does not answer the poll (connection refused: no ready
  pod behind it; or no answer within `peers.pollTimeoutSeconds`), or answers that it is
  not ready, is asleep for the decision: requests spill over it, and the spill-over is
  counted (`shoal_spillovers_total`, the autoscaler's wake-up signal). A peer that
  answers the poll with anything but a state (an engine, an older sidecar) is assumed
  awake with an unknown checkpoint.
- **Checkpoint.** The peer's serving checkpoint is the one most recently reported, with
  the time the poll or request that learned it was SENT. The cache is used for a peer
  (lookups and stores) only while that evidence is younger than `peers.staleAfterSeconds`,
  and its entries are keyed by it. So once every pod of a peer serves a new checkpoint,
  no answer cached from the old one is served later than `staleAfterSeconds` (5 s by
  default) after the last old pod stopped answering, whatever happens to the polls; with
  polls succeeding it is at most `pollIntervalSeconds + pollTimeoutSeconds` (3 s).

Pods of one tier may disagree during a rollout (the Service picks one per connection):
then the known checkpoint follows the last pod heard from, and cache entries of either
checkpoint are used only while it is the latest known; answers are always stored under
the checkpoint that produced them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from shoal.api.routerconfig import PeersConfig, UpstreamTier

from .decision import TierState

STATE_PATH = "/shoal/state"

# The one TierState every asleep peer shares.
ASLEEP = TierState(scaled_to_zero=True)


@dataclass
class PeerState:
    reachable: bool = True
    ready: bool = True
    waiting: float | None = None
    checkpoint: str | None = None
    learned_at: float | None = None  # clock() when the request that reported it was sent


def state_url(tier_url: str) -> str:
    """The peer sidecar's state endpoint, from its tier URL (http://svc/v1 -> http://svc/shoal/state)."""
    parts = urlsplit(tier_url)
    return f"{parts.scheme}://{parts.netloc}{STATE_PATH}"


class Peers:
    """The latest known state of each peer tier (by rung name)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.states: dict[str, PeerState] = {}

    def checkpoint(self, tier: str, stale_after: float) -> str | None:
        """The peer's checkpoint if learned within `stale_after` seconds, else None."""
        state = self.states.get(tier)
        if state is None or state.checkpoint is None or state.learned_at is None:
            return None
        if self.clock() - state.learned_at > stale_after:
            return None
        return state.checkpoint

    def heard(self, tier: str, checkpoint: str, sent_at: float) -> None:
        """A peer's answer said which checkpoint produced it (x-shoal-checkpoint)."""
        state = self.states.setdefault(tier, PeerState())
        if state.learned_at is None or sent_at >= state.learned_at:
            state.checkpoint, state.learned_at = checkpoint, sent_at

    def polled(self, tier: str, sent_at: float, answer: dict | None, reachable: bool) -> None:
        """Record one poll: `answer` is the state document, None when the peer answered
        something else (reachable) or nothing (not reachable)."""
        state = self.states.setdefault(tier, PeerState())
        state.reachable = reachable
        if answer is None:
            state.ready, state.waiting = reachable, None
            return
        state.ready = answer.get("ready") is True
        waiting = answer.get("waiting")
        state.waiting = float(waiting) if isinstance(waiting, (int, float)) and not isinstance(waiting, bool) else None
        checkpoint = answer.get("checkpoint")
        if isinstance(checkpoint, str) and checkpoint and (state.learned_at is None or sent_at >= state.learned_at):
            state.checkpoint, state.learned_at = checkpoint, sent_at

    def tier_states(self) -> dict[str, TierState]:
        """For the decision: asleep peers, and the queue of awake ones when reported."""
        states = {}
        for name, state in self.states.items():
            if not state.reachable or not state.ready:
                states[name] = ASLEEP
            elif state.waiting is not None:
                states[name] = TierState(waiting=state.waiting)
        return states

    def describe(self) -> dict[str, dict]:
        now = self.clock()
        return {
            name: {
                "awake": state.reachable and state.ready,
                "waiting": state.waiting,
                "checkpoint": state.checkpoint,
                "learnedSecondsAgo": None if state.learned_at is None else round(now - state.learned_at, 3),
            }
            for name, state in self.states.items()
        }

    def forget(self, keep: Iterable[str]) -> None:
        """Drop peers no longer in the ladder (after a config reload)."""
        keep = set(keep)
        for name in list(self.states):
            if name not in keep:
                del self.states[name]

    async def poll(self, session: aiohttp.ClientSession, tiers: Iterable[UpstreamTier], config: PeersConfig) -> None:
        """Poll every peer once, concurrently."""
        await asyncio.gather(*(self._poll_one(session, tier, config.poll_timeout_seconds) for tier in tiers))

    async def _poll_one(self, session: aiohttp.ClientSession, tier: UpstreamTier, timeout: float) -> None:
        sent_at = self.clock()
        try:
            async with asyncio.timeout(timeout):
                async with session.get(state_url(tier.url)) as response:
                    raw = await response.read()
                    status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            self.polled(tier.name, sent_at, None, reachable=False)
            return
        answer = None
        if status == 200:
            try:
                parsed = json.loads(raw)
                answer = parsed if isinstance(parsed, dict) else None
            except ValueError:
                answer = None
        self.polled(tier.name, sent_at, answer, reachable=True)
