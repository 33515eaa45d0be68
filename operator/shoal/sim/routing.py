"""The simulator's one call into the router's decision code.

Kept in one small function so the simulated fleet routes exactly as the sidecar does:
the real `shoal.router.decision.decide`, with the tier states the sidecar would see.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from shoal.router import decision as router


def ladder_policy(tier_names: Sequence[str], spill_queue_depths: Sequence[int | None]) -> router.Policy:
    """A ladder of in-cluster tiers, smallest first, each spilling over above its queue limit."""
    return router.Policy(
        rungs=tuple(router.Rung(name=name, max_queue_depth=depth) for name, depth in zip(tier_names, spill_queue_depths))
    )


def choose_tier(
    policy: router.Policy,
    prompt_tokens: int,
    states: Mapping[str, router.TierState],
    text: str = "",
    classify: Callable[[str], router.Prediction] | None = None,
) -> str:
    """The tier a request with no explicit tier or rule starts at: the classifier's choice
    for its text when one is given, then spill-over, exactly as the sidecar decides."""
    tier = decide(policy, prompt_tokens, states, text, classify).tier
    assert tier is not None  # in-cluster tiers without budgets are never rejected
    return tier


def decide(
    policy: router.Policy,
    prompt_tokens: int,
    states: Mapping[str, router.TierState],
    text: str = "",
    classify: Callable[[str], router.Prediction] | None = None,
) -> router.Decision:
    """The whole decision (which tier, and which tiers it spilled past)."""
    return router.decide(policy, router.Request(text=text, prompt_tokens=prompt_tokens), states, classify)
