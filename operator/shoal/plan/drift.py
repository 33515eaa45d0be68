"""Drift detection on a tier's shadow agreement stream: counts in, a verdict out. Pure.

The router sidecars send a sample of a tier's requests to a reference tier after the
client was answered and grade the two answers against each other (router/shadow.py).
Each check, the operator (and the simulator) passes the number of graded samples that
agreed and disagreed since the previous check, summed over the tier's pods, with the
previous `DriftState`; `observe()` returns the next state. The order of samples within a
check is unknown (counters are scraped), so every method works on batches of counts.

Phases:

    Calibrating  no baseline yet. With `baseline` set (the agreement measured when the
                 checkpoint was promoted) this phase is skipped; otherwise the first
                 `warmup_samples` graded samples after a (re)start set it. Drifting is
                 Unknown.
    Watching     the sequential test runs against the baseline. Drifting is False.
    Drifting     the test fired. Drifting is True until the recovery test (the same
                 statistic, pointed the other way: from baseline - min_drop back up to
                 the baseline) fires, which returns to Watching.

A new serving checkpoint starts over (`reset()`): its agreement is a new baseline.

Methods (`method`), all against p0 = baseline and p1 = baseline - min_drop:

    cusum   Page's CUSUM of the Bernoulli log-likelihood ratio ln P(x|p1)/P(x|p0),
            floored at zero after each batch; fires when it reaches `threshold` (nats).
            The default: the benchmark (benchmarks/drift/RESULTS.md) found it the
            fastest at the same false-alarm rate.
    sprt    Wald's sequential probability ratio test, restarted whenever it accepts
            "no drift" (the statistic falls to `sprt_accept` nats); fires at `threshold`.
    wilson  the last `window_samples` samples (whole batches); fires when the upper
            Wilson bound at z = `threshold` lies below baseline - min_drop / 2.

A false alarm rate is a property of the threshold AND of how many samples a day the test
sees: the CUSUM's average run length without drift grows about as e^threshold samples,
so a tier sampled 20x more often needs a threshold about ln 20 = 3 nats higher for the
same false alarms per day. The defaults are chosen by measurement for 10 requests/s at up
to 20 % sampling (see the benchmark); `threshold_for()` gives the rate-scaled value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from shoal.api.conditions import REASON_AGREEMENT_DROPPED, REASON_AGREEMENT_STABLE, REASON_CALIBRATING
from shoal.api.shadow import ShadowSpec

Method = Literal["cusum", "sprt", "wilson"]
Phase = Literal["Calibrating", "Watching", "Drifting"]

# The Drifting condition's reasons (their meanings are in shoal.api.conditions).
CALIBRATING = REASON_CALIBRATING
NO_DRIFT = REASON_AGREEMENT_STABLE
DRIFT = REASON_AGREEMENT_DROPPED

# Defaults chosen by the benchmark (benchmarks/drift/RESULTS.md).
DEFAULT_METHOD: Method = "cusum"
DEFAULT_MIN_DROP = 0.10
DEFAULT_THRESHOLDS: dict[str, float] = {"cusum": 12.0, "sprt": 12.0, "wilson": 2.5}
DEFAULT_WARMUP_SAMPLES = 2000
DEFAULT_WINDOW_SAMPLES = 800
DEFAULT_SPRT_ACCEPT = -2.3  # ln(0.1): accept "no drift" at a 10 % miss rate, then start again
# A baseline estimate is only as good as its samples: pull it down by this many standard
# errors so that an unlucky high warm-up does not look like drift afterwards.
DEFAULT_BASELINE_SLACK_SE = 1.0

_EPS = 1e-6


@dataclass(frozen=True)
class DriftSettings:
    """How one tier's agreement stream is tested."""

    method: Method = DEFAULT_METHOD
    min_drop: float = DEFAULT_MIN_DROP  # the drop (absolute, in agreement rate) the test is tuned to detect
    threshold: float | None = None  # None: DEFAULT_THRESHOLDS[method]
    baseline: float | None = None  # agreement at promotion; None: learn it from the warm-up
    warmup_samples: int = DEFAULT_WARMUP_SAMPLES
    window_samples: int = DEFAULT_WINDOW_SAMPLES
    sprt_accept: float = DEFAULT_SPRT_ACCEPT
    baseline_slack_se: float = DEFAULT_BASELINE_SLACK_SE

    def __post_init__(self) -> None:
        if self.method not in DEFAULT_THRESHOLDS:
            raise ValueError(f"unknown drift method {self.method!r}: use cusum, sprt or wilson")
        if not 0.0 < self.min_drop < 1.0:
            raise ValueError(f"min_drop must lie strictly between 0 and 1, got {self.min_drop}")
        if self.baseline is not None and not 0.0 < self.baseline <= 1.0:
            raise ValueError(f"baseline must lie in (0, 1], got {self.baseline}")
        if self.warmup_samples < 1 or self.window_samples < 1:
            raise ValueError("warmup_samples and window_samples must be positive")

    @property
    def effective_threshold(self) -> float:
        return self.threshold if self.threshold is not None else DEFAULT_THRESHOLDS[self.method]


def threshold_for(samples_per_day: float, *, false_alarms_per_30_days: float = 1.0, reference: float = 12.0,
                  reference_samples_per_day: float = 172_800.0) -> float:
    """A CUSUM threshold giving about the same false alarms per day at another sampling volume.

    The reference (12 nats at 172,800 samples a day: 20 % of 10 requests/s) is the measured
    default. The average run length without drift grows about as e^h, so the threshold
    moves by the log of the ratio of volumes (and of the false-alarm budgets).
    """
    if samples_per_day <= 0 or false_alarms_per_30_days <= 0:
        raise ValueError("samples_per_day and false_alarms_per_30_days must be positive")
    return max(1.0, reference + math.log(samples_per_day / reference_samples_per_day) - math.log(false_alarms_per_30_days))


@dataclass(frozen=True)
class DriftState:
    """What the test remembers between checks (plain data: it fits in a status field)."""

    phase: Phase = "Calibrating"
    baseline: float | None = None
    baseline_samples: int = 0  # samples behind the baseline (0: configured)
    warmup_agreed: int = 0
    warmup_total: int = 0
    statistic: float = 0.0  # CUSUM/SPRT nats; wilson: the last upper bound
    samples: int = 0  # graded samples seen since the baseline was set
    # Samples since the statistic last left zero: the estimate of the current agreement.
    run_agreed: int = 0
    run_total: int = 0
    window: tuple[tuple[int, int], ...] = field(default=())  # wilson: (agreed, total) per batch

    @property
    def drifting(self) -> bool | None:
        """True, False, or None (Unknown) while calibrating."""
        if self.phase == "Calibrating":
            return None
        return self.phase == "Drifting"

    @property
    def recent_agreement(self) -> float | None:
        agreed, total = self._recent()
        return agreed / total if total else None

    @property
    def recent_samples(self) -> int:
        return self._recent()[1]

    def _recent(self) -> tuple[int, int]:
        if self.window:
            return sum(a for a, _ in self.window), sum(t for _, t in self.window)
        return self.run_agreed, self.run_total


def reset(settings: DriftSettings) -> DriftState:
    """The state for a new checkpoint (or a first check): calibrating, unless a baseline is given."""
    if settings.baseline is not None:
        return DriftState(phase="Watching", baseline=settings.baseline)
    return DriftState()


def _llr(agreed: int, disagreed: int, p0: float, p1: float) -> float:
    """ln P(batch | p1) / P(batch | p0): positive when the batch looks like the dropped rate."""
    p0 = min(max(p0, _EPS), 1.0 - _EPS)
    p1 = min(max(p1, _EPS), 1.0 - _EPS)
    return agreed * math.log(p1 / p0) + disagreed * math.log((1.0 - p1) / (1.0 - p0))


def _wilson_bounds(agreed: int, total: int, z: float) -> tuple[float, float]:
    if total == 0:
        return 0.0, 1.0
    p = agreed / total
    z2 = z * z
    denominator = 1.0 + z2 / total
    centre = (p + z2 / (2.0 * total)) / denominator
    half = (z / denominator) * math.sqrt(p * (1.0 - p) / total + z2 / (4.0 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


def observe(state: DriftState, settings: DriftSettings, agreed: int, disagreed: int) -> DriftState:
    """The state after one more batch of graded samples (counts since the previous call)."""
    if agreed < 0 or disagreed < 0:
        raise ValueError(f"sample counts cannot be negative, got {agreed} agreed and {disagreed} disagreed")
    total = agreed + disagreed
    if total == 0:
        return state
    if state.phase == "Calibrating":
        return _calibrate(state, settings, agreed, total)
    assert state.baseline is not None
    p0 = state.baseline
    p1 = max(_EPS, p0 - settings.min_drop)
    h = settings.effective_threshold
    samples = state.samples + total
    if settings.method == "wilson":
        return _observe_wilson(state, settings, agreed, total, samples, p0)
    if state.phase == "Watching":
        statistic = state.statistic + _llr(agreed, disagreed, p0, p1)
        floor = 0.0 if settings.method == "cusum" else settings.sprt_accept
        if statistic <= floor:
            # CUSUM: floored at zero. SPRT: "no drift" accepted, a new test starts at zero.
            return replace(state, statistic=0.0, samples=samples, run_agreed=0, run_total=0)
        if statistic >= h:
            # Fired: the recovery test starts from zero, its run counts the dropped rate.
            return replace(state, phase="Drifting", statistic=0.0, samples=samples,
                           run_agreed=state.run_agreed + agreed, run_total=state.run_total + total)
        return replace(state, statistic=statistic, samples=samples,
                       run_agreed=state.run_agreed + agreed, run_total=state.run_total + total)
    # Drifting: the same test, from the dropped rate back up to the baseline.
    statistic = max(0.0, state.statistic + _llr(agreed, disagreed, p1, p0))
    if statistic >= h:
        return replace(state, phase="Watching", statistic=0.0, samples=samples, run_agreed=0, run_total=0)
    if statistic == 0.0:
        # The current run of samples looks like the dropped rate: the estimate restarts here.
        return replace(state, statistic=0.0, samples=samples, run_agreed=agreed, run_total=total)
    return replace(state, statistic=statistic, samples=samples,
                   run_agreed=state.run_agreed + agreed, run_total=state.run_total + total)


def _calibrate(state: DriftState, settings: DriftSettings, agreed: int, total: int) -> DriftState:
    warm_agreed = state.warmup_agreed + agreed
    warm_total = state.warmup_total + total
    if warm_total < settings.warmup_samples:
        return replace(state, warmup_agreed=warm_agreed, warmup_total=warm_total)
    rate = warm_agreed / warm_total
    se = math.sqrt(max(rate * (1.0 - rate), 1.0 / warm_total) / warm_total)
    baseline = min(1.0, max(_EPS, rate - settings.baseline_slack_se * se))
    return DriftState(phase="Watching", baseline=baseline, baseline_samples=warm_total,
                      warmup_agreed=warm_agreed, warmup_total=warm_total)


def _observe_wilson(state: DriftState, settings: DriftSettings, agreed: int, total: int, samples: int, p0: float) -> DriftState:
    window = state.window + ((agreed, total),)
    in_window = sum(t for _, t in window)
    # Keep whole batches, dropping the oldest while the rest still fill the window.
    while len(window) > 1 and in_window - window[0][1] >= settings.window_samples:
        in_window -= window[0][1]
        window = window[1:]
    if in_window < settings.window_samples:
        return replace(state, window=window, samples=samples)
    window_agreed = sum(a for a, _ in window)
    lower, upper = _wilson_bounds(window_agreed, in_window, settings.effective_threshold)
    line = p0 - settings.min_drop / 2.0
    phase: Phase = state.phase
    if phase == "Watching" and upper < line:
        phase = "Drifting"
    elif phase == "Drifting" and lower > line:
        phase = "Watching"
    return replace(state, phase=phase, statistic=upper, window=window, samples=samples)


# --- what the status says ------------------------------------------------------------------

@dataclass(frozen=True)
class DriftVerdict:
    """The Drifting condition's status ("True", "False", "Unknown"), reason and message."""

    status: str
    reason: str
    message: str


def verdict(state: DriftState, settings: DriftSettings, *, sampling_rate: float | None = None) -> DriftVerdict:
    """The condition a person reads: the current agreement, the baseline and the sample counts."""
    rate_note = f" at a sampling rate of {sampling_rate:.0%}" if sampling_rate is not None else ""
    if state.phase == "Calibrating":
        return DriftVerdict(
            "Unknown", CALIBRATING,
            f"{state.warmup_total} of {settings.warmup_samples} graded shadow samples{rate_note} seen; "
            "the baseline agreement is set once they are in",
        )
    assert state.baseline is not None
    source = (f"measured on {state.baseline_samples} samples after promotion" if state.baseline_samples
              else "configured")
    recent = state.recent_agreement
    recent_text = (f"{recent:.1%} over the last {state.recent_samples} samples" if recent is not None
                   else "no recent deviation")
    if state.phase == "Drifting":
        return DriftVerdict(
            "True", DRIFT,
            f"agreement with the reference tier dropped: {recent_text} against a baseline of "
            f"{state.baseline:.1%} ({source}); {settings.method} test fired after {state.samples} samples{rate_note}",
        )
    return DriftVerdict(
        "False", NO_DRIFT,
        f"agreement with the reference tier consistent with the baseline of {state.baseline:.1%} ({source}): "
        f"{state.samples} samples{rate_note} tested, {recent_text}",
    )


# --- aggregation across pods -----------------------------------------------------------------

@dataclass(frozen=True)
class PodCounts:
    """One sidecar's cumulative shadow counters for a tier (from its /metrics)."""

    agreed: float
    disagreed: float


def increments(previous: dict[str, PodCounts], current: dict[str, PodCounts]) -> tuple[int, int]:
    """Agreed and disagreed samples since the previous scrape, summed over pods.

    Counters are cumulative per sidecar: a pod seen for the first time contributes its
    whole count (its samples are new to the test), a pod whose counter went down restarted
    and contributes its new count, and a pod that disappeared contributes nothing more.
    """
    agreed = disagreed = 0.0
    for pod, now in current.items():
        before = previous.get(pod)
        if before is None or now.agreed < before.agreed or now.disagreed < before.disagreed:
            agreed += now.agreed
            disagreed += now.disagreed
        else:
            agreed += now.agreed - before.agreed
            disagreed += now.disagreed - before.disagreed
    return int(round(agreed)), int(round(disagreed))


# --- the operator's step: scraped counters in, next memory and verdict out -------------------

@dataclass(frozen=True)
class DriftMemory:
    """What the operator keeps per tier between checks (in memory: a restarted operator
    starts a new test on the counters it finds, which only delays a detection)."""

    checkpoint: str | None
    state: DriftState
    counts: dict[str, PodCounts]  # the last counters read, by pod


def settings_for(shadow: ShadowSpec, rung: str) -> DriftSettings:
    """The detector's settings for one shadowed rung of a policy's `spec.shadow`."""
    pair = shadow.for_tier(rung)
    detection = shadow.detection
    return DriftSettings(
        method=detection.method,
        min_drop=detection.min_drop_percent / 100.0,
        baseline=pair.baseline_agreement if pair is not None else None,
        warmup_samples=detection.warmup_samples,
    )


def step(memory: DriftMemory | None, settings: DriftSettings, checkpoint: str | None,
         scraped: dict[str, PodCounts], unreadable: frozenset[str] = frozenset()) -> DriftMemory:
    """One check: feed the samples graded since the last one to the test.

    `unreadable`: pods that exist but whose counters could not be read this time; their
    last counters are kept, so their samples count once when they answer again. A new
    serving checkpoint starts a new test (its agreement is a new baseline), counting only
    samples graded after the change was seen.
    """
    if memory is not None:
        scraped = {**{p: c for p, c in memory.counts.items() if p in unreadable}, **scraped}
    if memory is None:
        return DriftMemory(checkpoint, observe(reset(settings), settings, *increments({}, scraped)), dict(scraped))
    if memory.checkpoint != checkpoint:
        return DriftMemory(checkpoint, reset(settings), dict(scraped))
    agreed, disagreed = increments(memory.counts, scraped)
    return DriftMemory(checkpoint, observe(memory.state, settings, agreed, disagreed), dict(scraped))
