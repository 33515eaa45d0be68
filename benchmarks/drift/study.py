"""How fast is drift detected, and how often is it raised for nothing? Through the real code.

Traffic: 10 requests/s to the small tier, constant (Poisson arrivals). A share of them
(the sampling rate: 1 %, 5 %, 20 %) is shadowed and graded; the graded counts reach the
detector every 30 s, as the operator's checks would pass them
(`shoal.sim.drift.batches_at_rate` -> `shoal.plan.drift.observe`, the operator's code).
The true agreement with the reference tier is 0.85; the baseline is NOT given to the
detector: it learns it from the first 2000 graded samples after promotion, as a tier
without a configured baseline does, so the error of that estimate is part of every
number below.

Detection runs: the agreement drops at 12 h after promotion (after the warm-up at every
rate) by 5, 10 or 20 points for all traffic, or by 20 points for half of it; the delay
is counted in graded samples and in minutes from the change to the first alarm; a run
gets 3 days after the change (a miss counts as infinitely late in the percentiles).

False-alarm runs: 30 days with no change per seed; every transition into Drifting is a
false alarm; the rate is alarms per day of watching (after the warm-up).

Run:  python benchmarks/drift/study.py [--detection-seeds 200] [--quiet-seeds 20] [--markdown FILE]
About six minutes at the defaults on one busy core.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass

from shoal.plan import drift
from shoal.sim.drift import DriftScenario, batches_at_rate, run_detector

TRAFFIC_RPS = 10.0
CHECK_SECONDS = 30.0
BASELINE = 0.85
CHANGE_AT = 12 * 3600.0
AFTER_CHANGE = 3 * 86400.0
QUIET_DAYS = 30.0
RATES = (0.01, 0.05, 0.20)
DROPS = ((0.05, 1.0), (0.10, 1.0), (0.20, 1.0), (0.20, 0.5))
METHODS = ("cusum", "sprt", "wilson")

# Shadow-call cost assumptions (stated in RESULTS.md): a frontier API as the reference.
PROMPT_TOKENS = 500
OUTPUT_TOKENS = 200
INPUT_USD_PER_M = 2.0
OUTPUT_USD_PER_M = 8.0
# An LLM judge call reads the prompt and both answers and writes one word.
JUDGE_INPUT_TOKENS = PROMPT_TOKENS + 2 * OUTPUT_TOKENS + 150
JUDGE_OUTPUT_TOKENS = 2


@dataclass(frozen=True)
class Delays:
    samples_median: float
    samples_p95: float
    minutes_median: float
    minutes_p95: float
    missed: int
    already: int  # runs whose condition was True from a false alarm when the change came
    runs: int


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def detection(method: str, rate: float, drop: float, share: float, seeds: int, base_seed: int, baseline: float = BASELINE,
              threshold: float | None = None) -> Delays:
    settings = drift.DriftSettings(method=method, threshold=threshold)  # type: ignore[arg-type]
    scenario = DriftScenario(baseline=baseline, drop=drop, at_seconds=CHANGE_AT, share=share)
    samples: list[float] = []
    minutes: list[float] = []
    missed = already = 0
    for seed in range(seeds):
        # Each cell draws its own streams (a share x drop cell is the same Bernoulli stream as
        # a drop of share x drop on all traffic; distinct seeds keep the rows independent).
        rng = random.Random(f"{base_seed}/{method}/{rate}/{drop}/{share}/{seed}")
        batches = batches_at_rate(scenario, rate=TRAFFIC_RPS, sampling_rate=rate, check_seconds=CHECK_SECONDS,
                                  duration_seconds=CHANGE_AT + AFTER_CHANGE, rng=rng)
        run = run_detector(batches, settings, change_at=CHANGE_AT, stop_after_detection=True)
        found = run.detection()
        if run.drifting_at_change:
            already += 1  # left out of the delays: there was nothing left to detect
        elif found is None:
            missed += 1
            samples.append(math.inf)
            minutes.append(math.inf)
        else:
            seconds, n = found
            samples.append(n)
            minutes.append(seconds / 60.0)
    return Delays(statistics.median(samples), percentile(samples, 95), statistics.median(minutes),
                  percentile(minutes, 95), missed, already, seeds)


def false_alarms(method: str, rate: float, seeds: int, base_seed: int, baseline: float = BASELINE,
                 threshold: float | None = None) -> tuple[int, float]:
    """(alarms, days watched) over `seeds` runs of QUIET_DAYS without a change."""
    settings = drift.DriftSettings(method=method, threshold=threshold)  # type: ignore[arg-type]
    alarms = 0
    days = 0.0
    for seed in range(seeds):
        rng = random.Random(f"{base_seed}/quiet/{method}/{rate}/{seed}")
        batches = batches_at_rate(DriftScenario(baseline=baseline), rate=TRAFFIC_RPS, sampling_rate=rate,
                                  check_seconds=CHECK_SECONDS, duration_seconds=QUIET_DAYS * 86400.0, rng=rng)
        run = run_detector(batches, settings)
        alarms += run.false_alarms
        days += QUIET_DAYS - (run.calibrated_at or 0.0) / 86400.0
    return alarms, days


def upper_95(count: int, exposure: float) -> float:
    """One-sided 95 % upper bound of a Poisson rate (exact for 0: 3.0 / exposure; else Wilson-Hilferty)."""
    if count == 0:
        return 2.996 / exposure
    k = count + 1
    return k * (1 - 1 / (9 * k) + 1.645 / (3 * math.sqrt(k))) ** 3 / exposure


def shadow_cost_per_hour(rate: float, judge: bool) -> float:
    per_call = (PROMPT_TOKENS * INPUT_USD_PER_M + OUTPUT_TOKENS * OUTPUT_USD_PER_M) / 1e6
    if judge:
        per_call += (JUDGE_INPUT_TOKENS * INPUT_USD_PER_M + JUDGE_OUTPUT_TOKENS * OUTPUT_USD_PER_M) / 1e6
    return TRAFFIC_RPS * rate * 3600.0 * per_call


def fmt(x: float, digits: int = 0) -> str:
    return "missed" if math.isinf(x) else f"{x:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--detection-seeds", type=int, default=200)
    parser.add_argument("--quiet-seeds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--baseline", type=float, default=BASELINE, help=f"true agreement before the change (default {BASELINE})")
    parser.add_argument("--drops", default=None, help="only these drops, in points, all traffic (e.g. 10,20); default: the full set")
    parser.add_argument("--threshold", type=float, default=None, help="the method's threshold (default: its default), for calibration")
    parser.add_argument("--rates", default=None, help="only these sampling rates, in percent (e.g. 20)")
    parser.add_argument("--no-cost", action="store_true", help="leave out the shadow-call cost table")
    parser.add_argument("--markdown", default=None, help="also write the tables to this file")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    rates = RATES if args.rates is None else tuple(float(r) / 100.0 for r in args.rates.split(","))
    drops = DROPS if args.drops is None else tuple((float(d) / 100.0, 1.0) for d in args.drops.split(","))
    started = time.monotonic()
    out: list[str] = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    emit(f"Traffic {TRAFFIC_RPS:g} req/s, checks every {CHECK_SECONDS:g} s, true agreement {args.baseline}, "
         f"baseline learnt from {drift.DEFAULT_WARMUP_SAMPLES} samples, detectors tuned to a "
         f"{drift.DEFAULT_MIN_DROP:.0%} drop; {args.detection_seeds} detection runs and "
         f"{args.quiet_seeds} x {QUIET_DAYS:g} quiet days per cell; seed {args.seed}.")
    emit()
    for method in methods:
        h = args.threshold if args.threshold is not None else drift.DEFAULT_THRESHOLDS[method]
        emit(f"### {method} (threshold {h:g})")
        emit()
        emit("| sampling | drop | median delay (samples) | p95 (samples) | median (min) | p95 (min) | missed in 3 days | already True |")
        emit("|---|---|---|---|---|---|---|---|")
        for rate in rates:
            for drop, share in drops:
                d = detection(method, rate, drop, share, args.detection_seeds, args.seed, args.baseline, args.threshold)
                label = f"{drop * 100:.0f} pts" + ("" if share == 1.0 else f" on {share:.0%} of traffic")
                emit(f"| {rate:.0%} | {label} | {fmt(d.samples_median)} | {fmt(d.samples_p95)} | "
                     f"{fmt(d.minutes_median, 1)} | {fmt(d.minutes_p95, 1)} | {d.missed}/{d.runs} | {d.already} |")
        emit()
        emit("| sampling | graded samples/day | false alarms | days watched | per day | per 30 days | 95% upper, per 30 days |")
        emit("|---|---|---|---|---|---|---|")
        for rate in rates:
            alarms, days = false_alarms(method, rate, args.quiet_seeds, args.seed, args.baseline, args.threshold)
            emit(f"| {rate:.0%} | {TRAFFIC_RPS * rate * 86400:,.0f} | {alarms} | {days:.0f} | {alarms / days:.4f} | "
                 f"{30 * alarms / days:.2f} | {30 * upper_95(alarms, days):.2f} |")
        emit()
    if args.no_cost:
        emit(f"took {time.monotonic() - started:.0f} s")
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write("\n".join(out) + "\n")
        return 0
    emit("### Shadow-call cost at 10 req/s (frontier reference at $2/M input, $8/M output; "
         f"{PROMPT_TOKENS} prompt + {OUTPUT_TOKENS} output tokens per request)")
    emit()
    emit("| sampling | shadow calls/hour | USD/hour, rule-based grading | USD/hour with an LLM judge | USD/30 days (rule-based) |")
    emit("|---|---|---|---|---|")
    for rate in RATES:
        emit(f"| {rate:.0%} | {TRAFFIC_RPS * rate * 3600:,.0f} | {shadow_cost_per_hour(rate, False):.2f} | "
             f"{shadow_cost_per_hour(rate, True):.2f} | {shadow_cost_per_hour(rate, False) * 720:,.0f} |")
    emit()
    emit(f"took {time.monotonic() - started:.0f} s")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
