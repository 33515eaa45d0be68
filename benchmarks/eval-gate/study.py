"""How often is the evaluation gate wrong? A Monte Carlo study through the real verdict code.

Each trial simulates one evaluation with a serving checkpoint (the incumbent) and a
candidate that answer the same n items. Item outcomes are paired: both right, only the
candidate right, only the incumbent right, both wrong. The incumbent's accuracy is
fixed; the share of items on which the two disagree and the candidate's true accuracy
difference (delta) are the study's factors:

    P(candidate only) = (disagreement + delta) / 2
    P(incumbent only) = (disagreement - delta) / 2

(a delta larger in size than the disagreement is impossible and is marked n/a). The
simulated scores go through ``shoal.evaluate.verdict.decide``, the function the
evaluation Job runs, with ``baseline`` set, no absolute thresholds, and the rule and
maxRegression under study. A trial's outcome is promote (verdict passed) or block.

Errors counted:
    delta = 0          an equal candidate blocked        (wrong block)
    delta <= -0.05     a clear regression promoted       (wrong promotion)
    delta = -0.02      at the default tolerance: reported, neither answer is wrong

Run:  python benchmarks/eval-gate/study.py [--trials 2000] [--seed 1] [--sequential] [--markdown FILE]
Pure standard library; about three minutes at the defaults (four more with --sequential)
on one busy core.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from shoal.evaluate.sequential import decide_sequential
from shoal.evaluate.verdict import DecisionSettings, RegressionRule, decide

INCUMBENT_ACCURACY = 0.80
DISAGREEMENTS = (0.05, 0.15, 0.30)
DELTAS = (0.0, -0.02, -0.05, -0.10)
SIZES = (50, 200, 1000)
METRIC = "accuracy"


@dataclass(frozen=True)
class Gate:
    label: str
    rule: RegressionRule
    max_regression: float


GATES = (
    Gate("provenRegression, maxRegression 0.02 (default)", "provenRegression", 0.02),
    Gate("nonInferiority, maxRegression 0.02", "nonInferiority", 0.02),
    Gate("nonInferiority, maxRegression 0.05", "nonInferiority", 0.05),
    Gate("nonInferiority, maxRegression 0.10", "nonInferiority", 0.10),
)


def cell_probabilities(disagreement: float, delta: float, incumbent: float = INCUMBENT_ACCURACY) -> tuple[float, float, float, float] | None:
    """(both, candidate only, incumbent only, neither), or None when impossible."""
    candidate_only = (disagreement + delta) / 2
    incumbent_only = (disagreement - delta) / 2
    both = incumbent - incumbent_only
    neither = 1.0 - both - candidate_only - incumbent_only
    if min(candidate_only, incumbent_only, both, neither) < -1e-12:
        return None
    return both, candidate_only, incumbent_only, neither


def simulate_counts(rng: random.Random, n: int, probabilities: Sequence[float]) -> tuple[int, int, int, int]:
    draws = rng.choices(range(4), weights=probabilities, k=n)
    return draws.count(0), draws.count(1), draws.count(2), draws.count(3)


def scores_from_counts(counts: tuple[int, int, int, int]) -> tuple[list[float], list[float]]:
    both, cand_only, inc_only, neither = counts
    candidate = [1.0] * both + [1.0] * cand_only + [0.0] * inc_only + [0.0] * neither
    incumbent = [1.0] * both + [0.0] * cand_only + [1.0] * inc_only + [0.0] * neither
    return candidate, incumbent


def promotion_rate(gate: Gate, n: int, probabilities: Sequence[float], trials: int, rng: random.Random) -> float:
    settings = DecisionSettings(max_regression=gate.max_regression, regression_rule=gate.rule)
    promoted = 0
    for _ in range(trials):
        candidate, incumbent = scores_from_counts(simulate_counts(rng, n, probabilities))
        verdict = decide({METRIC: candidate}, settings, baseline={METRIC: incumbent})
        promoted += verdict.passed
    return promoted / trials


def run(trials: int, seed: int) -> dict[tuple[str, float, int, float], float | None]:
    results: dict[tuple[str, float, int, float], float | None] = {}
    for gate in GATES:
        for disagreement in DISAGREEMENTS:
            for n in SIZES:
                for delta in DELTAS:
                    probabilities = cell_probabilities(disagreement, delta)
                    # One seeded stream per cell: any cell can be rerun alone and agrees.
                    rng = random.Random(f"{seed}/{disagreement}/{n}/{delta}")
                    results[(gate.label, disagreement, n, delta)] = (
                        None if probabilities is None else promotion_rate(gate, n, probabilities, trials, rng)
                    )
    return results


SEQUENTIAL_SIZES = (200, 1000)


def sequential_rates(n: int, probabilities: Sequence[float], trials: int, rng: random.Random) -> tuple[float, float]:
    """(promotion rate, mean items used) of the sequential procedure, default gate."""
    promoted = 0
    used = 0
    for _ in range(trials):
        draws = rng.choices(range(4), weights=probabilities, k=n)  # items in random order
        candidate = [1.0 if d in (0, 1) else 0.0 for d in draws]
        incumbent = [1.0 if d in (0, 2) else 0.0 for d in draws]
        result = decide_sequential(candidate, incumbent, max_regression=GATES[0].max_regression, rule=GATES[0].rule)
        promoted += result.passed
        used += result.items_used
    return promoted / trials, used / trials


def run_sequential(trials: int, seed: int) -> dict[tuple[float, int, float], tuple[float, float] | None]:
    results: dict[tuple[float, int, float], tuple[float, float] | None] = {}
    for disagreement in DISAGREEMENTS:
        for n in SEQUENTIAL_SIZES:
            for delta in DELTAS:
                probabilities = cell_probabilities(disagreement, delta)
                rng = random.Random(f"sequential/{seed}/{disagreement}/{n}/{delta}")
                results[(disagreement, n, delta)] = None if probabilities is None else sequential_rates(n, probabilities, trials, rng)
    return results


def sequential_markdown(results: dict[tuple[float, int, float], tuple[float, float] | None]) -> str:
    lines = [
        f"### Sequential: {GATES[0].label}, looks at 25/50/75/100% of the items",
        "",
        "Each cell: the error rate (as above), then the mean number of items used.",
        "",
        "| disagreement | max n | equal: wrongly blocked | -2 pts: promoted | -5 pts: wrongly promoted | -10 pts: wrongly promoted |",
        "|---|---|---|---|---|---|",
    ]
    for disagreement in DISAGREEMENTS:
        for n in SEQUENTIAL_SIZES:
            cells = []
            for delta in DELTAS:
                cell = results[(disagreement, n, delta)]
                cells.append("n/a" if cell is None else f"{error_cell(delta, cell[0])}, {cell[1]:.0f} items")
            lines.append(f"| {disagreement:.0%} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def error_cell(delta: float, promoted: float | None) -> str:
    if promoted is None:
        return "n/a"
    if delta == 0.0:
        return f"{(1 - promoted) * 100:.1f}% blocked"
    return f"{promoted * 100:.1f}% promoted"


def markdown(results: dict[tuple[str, float, int, float], float | None], trials: int, seed: int, seconds: float) -> str:
    lines = [
        f"Incumbent accuracy {INCUMBENT_ACCURACY:.2f}; {trials} trials per cell; seed {seed}; "
        f"95% Newcombe paired intervals; {seconds:.0f} s.",
        "",
    ]
    for gate in GATES:
        lines += [f"### {gate.label}", ""]
        lines.append("| disagreement | n | equal: wrongly blocked | -2 pts: promoted | -5 pts: wrongly promoted | -10 pts: wrongly promoted |")
        lines.append("|---|---|---|---|---|---|")
        for disagreement in DISAGREEMENTS:
            for n in SIZES:
                cells = [error_cell(delta, results[(gate.label, disagreement, n, delta)]) for delta in DELTAS]
                lines.append(f"| {disagreement:.0%} | {n} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--markdown", help="also write the tables to this file")
    parser.add_argument("--sequential", action="store_true", help="also study the sequential (early-stopping) mode")
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = run(args.trials, args.seed)
    text = markdown(results, args.trials, args.seed, time.monotonic() - started)
    if args.sequential:
        started = time.monotonic()
        text += "\n" + sequential_markdown(run_sequential(args.trials, args.seed))
        text += f"\n(sequential part: {time.monotonic() - started:.0f} s)\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
