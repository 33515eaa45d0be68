"""Hold a target share of traffic on a tier while the traffic mix drifts.

A v2 model's thresholds are first set from its calibration sample
(`DifficultyModel.with_target_shares`): on traffic like the training data they send the
target share to each tier. When the mix drifts (more hard prompts in the afternoon), the
same thresholds send a different share. `ShareController` tracks the share the model
actually sends and moves the *effective* target it hands to the calibration sample, so
the thresholds follow the drift.

The control law (pure; the caller counts decisions, no clock):

- Window: `window` decisions. At the end of each window the controller compares the
  share observed in that window with the target, then starts a fresh window. Each
  adjustment is judged only on decisions made under the previous adjustment's
  thresholds, so it never reacts twice to the same error.
- Dead band: no change while the error is within two standard errors of a share measured
  on `window` decisions (sqrt(p(1-p)/window)), so sampling noise never moves thresholds.
- Step: the effective target moves by a step gain times the error. The step gain starts
  at `gain` (0 < gain <= 1); when the error changes sign (the last step overshot, as
  happens where the share jumps between clusters of similar prompts) it halves, down to
  gain/16, and after three windows erring the same way it doubles back towards `gain`, so
  a new drift is still followed quickly. Overshoots therefore shrink geometrically: no
  sustained oscillation.
- Bound: the effective target stays within `max_adjustment` of the configured target and
  within [0, 1]: a broken model or an extreme mix cannot take the tier's share anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from .classifier import DifficultyModel, thresholds_for_shares
from .decision import Prediction

DEFAULT_WINDOW = 500
DEFAULT_GAIN = 0.5
DEFAULT_MAX_ADJUSTMENT = 0.2


@dataclass
class ShareController:
    """Per tier with a target: the effective share handed to the calibration sample."""

    classes: Sequence[str]
    calibration: Sequence[Sequence[float]]
    targets: Mapping[str, float]
    defaults: Sequence[float]
    window: int = DEFAULT_WINDOW
    gain: float = DEFAULT_GAIN
    max_adjustment: float = DEFAULT_MAX_ADJUSTMENT
    effective: dict[str, float] = field(default_factory=dict)
    seen: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    last_observed: dict[str, float] = field(default_factory=dict)
    adjustments: int = 0
    _thresholds: list[float] = field(default_factory=list)
    _step: dict[str, float] = field(default_factory=dict)
    _sign: dict[str, int] = field(default_factory=dict)
    _same: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.window < 1 or not 0 < self.gain <= 1 or not 0 <= self.max_adjustment <= 1:
            raise ValueError("window >= 1, 0 < gain <= 1 and 0 <= max_adjustment <= 1 are required")
        self.effective = dict(self.targets)
        self.counts = {tier: 0 for tier in self.targets}
        self._step = {tier: self.gain for tier in self.targets}
        self._sign = {tier: 0 for tier in self.targets}
        self._same = {tier: 0 for tier in self.targets}
        self._thresholds = thresholds_for_shares(self.classes, self.calibration, self.effective, self.defaults)

    def thresholds(self) -> list[float]:
        return self._thresholds

    def observe(self, tier: str) -> None:
        """Count one decision (the tier the model chose); adjust at the end of a window."""
        if tier in self.counts:
            self.counts[tier] += 1
        self.seen += 1
        if self.seen >= self.window:
            self._adjust()

    def _adjust(self) -> None:
        changed = False
        for tier, target in self.targets.items():
            observed = self.counts[tier] / self.seen
            self.last_observed[tier] = observed
            error = target - observed
            noise = 2 * math.sqrt(max(target * (1 - target), 1e-4) / self.seen)
            if abs(error) <= noise:
                continue
            sign = 1 if error > 0 else -1
            if self._sign[tier] == -sign:
                self._step[tier] = max(self.gain / 16, self._step[tier] / 2)
                self._same[tier] = 0
            else:
                self._same[tier] += 1
                if self._same[tier] >= 3:
                    self._step[tier] = min(self.gain, self._step[tier] * 2)
            self._sign[tier] = sign
            low, high = max(0.0, target - self.max_adjustment), min(1.0, target + self.max_adjustment)
            updated = min(high, max(low, self.effective[tier] + self._step[tier] * error))
            if updated != self.effective[tier]:
                self.effective[tier] = updated
                changed = True
        if changed:
            total = sum(self.effective.values())
            if total > 1:
                self.effective = {t: s / total for t, s in self.effective.items()}
            self._thresholds = thresholds_for_shares(self.classes, self.calibration, self.effective, self.defaults)
            self.adjustments += 1
        self.seen = 0
        self.counts = {tier: 0 for tier in self.targets}


@dataclass
class HeldShareModel:
    """A v2 model whose thresholds a ShareController sets, counting every decision it makes.
    Same interface as the model for the router (`predict`)."""

    model: DifficultyModel
    controller: ShareController

    @classmethod
    def hold(cls, model: DifficultyModel, targets: Mapping[str, float], window: int = DEFAULT_WINDOW) -> HeldShareModel:
        if not model.calibration:
            raise ValueError("the model has no calibration sample (train it with calibration folds) to set target shares from")
        controller = ShareController(model.classes, model.calibration, targets, [s.threshold for s in model.steps], window=window)
        return cls(model, controller)

    def predict(self, text: str) -> Prediction:
        feats = self.model.features(text)
        tier = self.model.tier_for(text, thresholds=self.controller.thresholds(), prompt_feats=feats)
        self.controller.observe(tier)
        return Prediction(tier, 1.0, feats)

    __call__ = predict


def hold_shares(model: Any, targets: Mapping[str, float]) -> HeldShareModel:
    """The sidecar's classifier for a config with targetShares (ValueError: cannot be held)."""
    if not isinstance(model, DifficultyModel):
        raise ValueError("targetShares needs a v2 model (train it from outcome lines: shoal router train)")
    unknown = set(targets) - set(model.classes[:-1])
    if unknown:
        raise ValueError(f"targetShares names tiers the model does not route between: {sorted(unknown)}")
    return HeldShareModel.hold(model, targets)


class ShareCollector:
    """Prometheus gauges of the held shares, read from the current classifier at scrape time:
    shoal_classifier_share_ratio{tier} (observed in the last full window),
    shoal_classifier_target_share_ratio{tier}, shoal_classifier_effective_share_ratio{tier}
    (what the controller hands to the calibration sample) and
    shoal_classifier_threshold{tier} (the expected gain needed to climb above that tier)."""

    def __init__(self, current: Callable[[], Any]) -> None:
        self._current = current

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        held = self._current()
        if not isinstance(held, HeldShareModel):
            return
        controller = held.controller
        observed = GaugeMetricFamily("shoal_classifier_share_ratio", "Share of classifier-routed requests kept on the tier in the last full window.", labels=["tier"])
        target = GaugeMetricFamily("shoal_classifier_target_share_ratio", "Target share of classifier-routed requests for the tier.", labels=["tier"])
        effective = GaugeMetricFamily("shoal_classifier_effective_share_ratio", "Share the controller asks of the calibration sample for the tier.", labels=["tier"])
        threshold = GaugeMetricFamily("shoal_classifier_threshold", "Expected gain a request needs to climb above the tier.", labels=["tier"])
        for tier, share in controller.targets.items():
            target.add_metric([tier], share)
            effective.add_metric([tier], controller.effective[tier])
            if tier in controller.last_observed:
                observed.add_metric([tier], controller.last_observed[tier])
        for tier, value in zip(controller.classes, controller.thresholds()):
            threshold.add_metric([tier], value)
        yield from (observed, target, effective, threshold)
