"""Drift scenarios: a tier's agreement with its reference drops, the real detector watches.

A scenario says what the small tier's true agreement with the reference tier is over
time: `baseline` until `at_seconds`, then `baseline - drop` for a `share` of the traffic
(the rest keeps the baseline), so the mean agreement after the change is
baseline - share x drop. Requests arrive as a Poisson process (or from a trace's arrival
times), each is sampled with probability `sampling_rate`, and each sample agrees with
probability equal to the true agreement at its time.

Every `check_seconds` the samples since the last check go to `shoal.plan.drift.observe`,
exactly as the operator passes the counts it scraped from the sidecars. The run records
every transition into Drifting: after the change the first one is the detection, before
it (or in a scenario without a change) each one is a false alarm.

Standard library only (a seeded `random.Random`), so the drift benchmark and the tests
can run it without extra packages.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from shoal.plan import drift


@dataclass(frozen=True)
class DriftScenario:
    baseline: float = 0.85  # true agreement before the change
    drop: float = 0.0  # absolute drop of the affected traffic's agreement (0.10: ten points)
    at_seconds: float | None = None  # when the change happens; None: never
    share: float = 1.0  # share of the traffic whose agreement drops

    def __post_init__(self) -> None:
        if not 0.0 < self.baseline <= 1.0:
            raise ValueError(f"baseline agreement must lie in (0, 1], got {self.baseline}")
        if not 0.0 <= self.drop <= self.baseline:
            raise ValueError(f"the drop must lie between 0 and the baseline, got {self.drop}")
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"the share of traffic must lie in (0, 1], got {self.share}")

    def agreement(self, t: float) -> float:
        if self.at_seconds is None or t < self.at_seconds:
            return self.baseline
        return self.baseline - self.share * self.drop


@dataclass(frozen=True)
class Batch:
    time: float  # the check's time (the end of its interval)
    agreed: int
    disagreed: int


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's product method, split into parts of mean <= 30)."""
    if mean <= 0.0:
        return 0
    parts = max(1, math.ceil(mean / 30.0))
    limit = math.exp(-mean / parts)
    total = 0
    for _ in range(parts):
        product = rng.random()
        while product > limit:
            total += 1
            product *= rng.random()
    return total


def binomial(rng: random.Random, n: int, p: float) -> int:
    draw = rng.random
    return sum(1 for _ in range(n) if draw() < p)


def batches_at_rate(scenario: DriftScenario, *, rate: float, sampling_rate: float, check_seconds: float,
                    duration_seconds: float, rng: random.Random) -> Iterator[Batch]:
    """Batches for constant traffic of `rate` requests/s (sampled requests are Poisson)."""
    mean = rate * sampling_rate * check_seconds
    checks = int(duration_seconds // check_seconds)
    for i in range(1, checks + 1):
        end = i * check_seconds
        start = end - check_seconds
        n = poisson(rng, mean)
        if scenario.at_seconds is not None and start < scenario.at_seconds < end:
            # The change falls inside this interval: each sample's time is uniform in it.
            agreed = sum(1 for _ in range(n) if rng.random() < scenario.agreement(start + rng.random() * check_seconds))
        else:
            agreed = binomial(rng, n, scenario.agreement(start))
        yield Batch(end, agreed, n - agreed)


def batches_from_arrivals(scenario: DriftScenario, arrivals: Iterable[float], *, sampling_rate: float,
                          check_seconds: float, rng: random.Random) -> Iterator[Batch]:
    """Batches for the arrival times of a trace (sorted, seconds), sampled one by one."""
    next_check = check_seconds
    agreed = disagreed = 0
    for t in arrivals:
        while t >= next_check:
            yield Batch(next_check, agreed, disagreed)
            agreed = disagreed = 0
            next_check += check_seconds
        if rng.random() < sampling_rate:
            if rng.random() < scenario.agreement(t):
                agreed += 1
            else:
                disagreed += 1
    yield Batch(next_check, agreed, disagreed)


@dataclass
class DriftRun:
    """What the detector did over one run."""

    change_at: float | None
    alarms: list[float] = field(default_factory=list)  # times of transitions into Drifting
    clears: list[float] = field(default_factory=list)  # times of transitions back out
    samples_at_alarm: list[int] = field(default_factory=list)  # graded samples since the run began
    samples_at_change: int | None = None
    drifting_at_change: bool = False  # a false alarm before the change had not cleared yet
    calibrated_at: float | None = None
    baseline: float | None = None
    samples: int = 0
    final: drift.DriftState | None = None

    @property
    def false_alarms(self) -> int:
        if self.change_at is None:
            return len(self.alarms)
        return sum(1 for t in self.alarms if t <= self.change_at)

    def detection(self) -> tuple[float, int] | None:
        """Seconds and samples from the change to the first alarm after it (None: missed, or
        the condition was already True from a false alarm when the change came)."""
        if self.change_at is None or self.samples_at_change is None or self.drifting_at_change:
            return None
        for t, n in zip(self.alarms, self.samples_at_alarm):
            if t > self.change_at:
                return t - self.change_at, n - self.samples_at_change
        return None


def run_detector(batches: Iterable[Batch], settings: drift.DriftSettings, *, change_at: float | None = None,
                 stop_after_detection: bool = False) -> DriftRun:
    """Feed batches to the real detector and record its transitions."""
    run = DriftRun(change_at=change_at)
    state = drift.reset(settings)
    if state.baseline is not None:
        run.calibrated_at, run.baseline = 0.0, state.baseline
    for batch in batches:
        if change_at is not None and run.samples_at_change is None and batch.time > change_at:
            # Samples counted up to the last check before the change (the change's own
            # interval is partly before it; counting from its start is the conservative side).
            run.samples_at_change = run.samples
            run.drifting_at_change = state.phase == "Drifting"
        before = state.phase
        state = drift.observe(state, settings, batch.agreed, batch.disagreed)
        run.samples += batch.agreed + batch.disagreed
        if before == "Calibrating" and state.phase != "Calibrating":
            run.calibrated_at, run.baseline = batch.time, state.baseline
        if state.phase == "Drifting" and before != "Drifting":
            run.alarms.append(batch.time)
            run.samples_at_alarm.append(run.samples)
            if stop_after_detection and change_at is not None and batch.time > change_at:
                break
        elif before == "Drifting" and state.phase != "Drifting":
            run.clears.append(batch.time)
    run.final = state
    return run


def summarize(run: DriftRun, *, sampling_rate: float, rate: float | None) -> list[str]:
    """Lines for `shoal sim --drift` output."""
    lines = []
    if run.baseline is None:
        lines.append(f"drift: still calibrating after {run.samples} graded samples (sampling rate {sampling_rate:.1%})")
        return lines
    when = f"{run.calibrated_at / 60:.1f} min" if run.calibrated_at else "the start (configured)"
    lines.append(f"drift: baseline agreement {run.baseline:.3f} from {when}; {run.samples} graded samples in all")
    lines.append(f"drift: false alarms {run.false_alarms}" + (f" (before the change at {run.change_at / 60:.1f} min)" if run.change_at is not None else ""))
    if run.change_at is not None:
        found = run.detection()
        if found is None:
            lines.append("drift: the change was NOT detected within the run")
        else:
            seconds, samples = found
            lines.append(f"drift: detected {seconds / 60:.1f} min and {samples} sampled requests after the change")
    if run.clears:
        lines.append(f"drift: cleared at {', '.join(f'{t / 60:.1f} min' for t in run.clears)}")
    return lines


def arrival_times(arrivals: Sequence) -> Iterator[float]:  # type: ignore[type-arg]
    return (a.time for a in arrivals)
