"""Experiments on the cascade verifier (GSM8K): the rows of README's verifier table.

    python benchmarks/routing/verifier_experiments.py --data DIR                 # every variant, fold seed 0
    python benchmarks/routing/verifier_experiments.py --data DIR --seeds 0,1,2,3,4 --only magnitude

Same stratified 5-fold cross-validation and measurement as run.py (shoal.sim.quality); with
several fold seeds, each seed's APGR and their mean. Each variant is a function
(training rows) -> (row -> score), trained with the shipped pure-Python trainer
(`fit_logistic`, 4 passes) on the shipped features, plus the candidate signals below
(only "magnitude" was kept, in `shoal.router.verify`). Scores are not rounded through the
model file (run.py measures the shipped model that way).
"""

from __future__ import annotations

import argparse
import bisect
import math
import re
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "operator"))

import run as R  # noqa: E402
from shoal.router import classifier as C  # noqa: E402
from shoal.router import features as F  # noqa: E402
from shoal.router import verify as V  # noqa: E402
from shoal.sim import quality as Q  # noqa: E402

BITS = F.DIMENSIONS_BITS
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
# Quantities a prompt states in words, and units that imply a factor.
WORD_NUMBERS = {
    "half": 0.5, "twice": 2, "double": 2, "triple": 3, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "dozen": 12, "hundred": 100,
    "thousand": 1000, "quarter": 0.25, "third": 3, "fourth": 4, "fifth": 5, "week": 7, "hour": 60, "minute": 60,
    "year": 12, "day": 24,
}


def number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").rstrip("."))
    except ValueError:
        return None


def prompt_numbers(prompt: str) -> list[float]:
    return [v for v in (number(n) for n in NUMBER.findall(prompt)) if v is not None]


def candidate_signals(prompt: str, answer: str) -> dict[str, str]:
    """The signals tried beside today's (see README)."""
    given = prompt_numbers(prompt)
    final = V.final_answer(answer)
    checked, _ = V.arithmetic_checks(answer)
    lowered = prompt.lower()
    known = set(given) | {v for w, v in WORD_NUMBERS.items() if w in lowered} | {0, 1, 2, 100}
    unexplained = 0
    for expression, result in V._ANNOTATION.findall(answer) or V._INLINE.findall(answer):
        unexplained += sum(1 for n in NUMBER.findall(expression) if number(n) is not None and number(n) not in known)
        if number(result) is not None:
            known.add(number(result))
    after = re.search(r"####\s*\$?-?[\d,]*\.?\d+(.*)", answer)
    lines = [line.strip() for line in answer.splitlines() if line.strip()]
    percent = "%" in prompt or "percent" in lowered
    return {
        "magnitude": V.magnitude(final, prompt),
        "steps": str(max(-3, min(3, checked - len(set(given))))),
        "final_in_prompt": str(final is not None and number(final) in given),
        "unexplained": str(min(unexplained, 3)),
        "final_unit": "-" if not after else str(bool(after.group(1).strip())),
        "repeated": str(len(lines) != len(set(lines))),
        "truncated": str(not lines or not lines[-1].startswith("####")),
        "percent": "-" if not percent else str("/100" in answer or "%" in answer or bool(re.search(r"\b0\.\d", answer))),
    }


CANDIDATES = ["magnitude", "steps", "final_in_prompt", "unexplained", "final_unit", "repeated", "truncated", "percent"]
_features: dict = {}


def answer_feats(prompt: str, answer: str, signals=(), tag: str = "") -> dict[int, float]:
    """Version 1 answer features (no magnitude) plus `signals` of the candidates, each
    weighted as the shipped ones; with `tag`, every token also as a per-tier copy."""
    key = (prompt, answer, tuple(signals), tag)
    if key not in _features:
        tokens = F.answer_tokens(prompt, answer, version=1)
        extra = candidate_signals(prompt, answer)
        for name in signals:
            tokens.extend(f"s:{name}={extra[name]}#{i}" for i in range(F.SIGNAL_WEIGHT))
        if tag:
            tokens += [f"{tag}|{t}" for t in tokens]
        _features[key] = F.hashed(tokens, BITS)
    return _features[key]


def fit(rows, labels, seed=0, epochs=4):
    return C.fit_logistic(rows, labels, BITS, epochs=epochs, seed=seed)


def helps(r) -> float:
    return 1.0 if (not r["weak_correct"] and r["strong_correct"]) else 0.0


def hurts(r) -> float:
    return 1.0 if (r["weak_correct"] and not r["strong_correct"]) else 0.0


def wrong(correct: bool) -> float:
    return 0.0 if correct else 1.0


def helps_hurts(signals=(), seeds=1, epochs=4, prompt_words=True):
    """Before: P(helps) - P(hurts), both on prompt + weak answer."""

    def feats(r):
        if prompt_words:
            return answer_feats(r["prompt"], r["weak_response"], signals)
        key = ("answer only", r["prompt"], r["weak_response"])
        if key not in _features:
            tokens = [t for t in F.answer_tokens(r["prompt"], r["weak_response"], version=1) if t.startswith(("r:", "s:"))]
            _features[key] = F.hashed(tokens, BITS)
        return _features[key]

    def train(rows):
        x = [feats(r) for r in rows]
        models = [(fit(x, [helps(r) for r in rows], 2 * k, epochs), fit(x, [hurts(r) for r in rows], 2 * k + 1, epochs)) for k in range(seeds)]
        return lambda r: sum(a.probability(feats(r)) - b.probability(feats(r)) for a, b in models) / seeds

    return train


def strong_right(rows):
    m = fit([F.prompt_features(r["prompt"], BITS) for r in rows], [1.0 if r["strong_correct"] else 0.0 for r in rows], seed=2)
    return lambda r: m.probability(F.prompt_features(r["prompt"], BITS))


def wrong_model(signals=(), strong_answers=False, tagged=False):
    """P(answer wrong) on weak answers (and, with `strong_answers`, the strong model's too)."""
    weak_tag, strong_tag = ("W", "S") if tagged else ("", "")

    def train(rows):
        x = [answer_feats(r["prompt"], r["weak_response"], signals, weak_tag) for r in rows]
        y = [wrong(r["weak_correct"]) for r in rows]
        if strong_answers:
            x += [answer_feats(r["prompt"], r["strong_response"], signals, strong_tag) for r in rows]
            y += [wrong(r["strong_correct"]) for r in rows]
        m = fit(x, y)
        return lambda r: m.probability(answer_feats(r["prompt"], r["weak_response"], signals, weak_tag))

    return train


def wrong_plus_right(signals=(), strong_answers=False, tagged=False):
    """Shipped shape: P(weak wrong | prompt, answer) + P(strong right | prompt) - 1."""

    def train(rows):
        w, s = wrong_model(signals, strong_answers, tagged)(rows), strong_right(rows)
        return lambda r: w(r) + s(r) - 1

    return train


def dense(prompt: str, answer: str) -> list[float]:
    """19 numbers for the stumps: today's signals and the candidates, as values."""
    signals = V.answer_signals(answer, prompt)
    extra = candidate_signals(prompt, answer)
    given = prompt_numbers(prompt)
    final = V.final_answer(answer)
    value = None if final is None else number(final)
    checked, wrong_calcs = V.arithmetic_checks(answer)
    size = -9.0 if (value is None or not given or max(given) <= 0 or value == 0) else math.log10(abs(value) / max(given))
    return [
        float(len(V._numbers(prompt) - V._numbers(answer))), float(checked), float(wrong_calcs), float(final is None),
        float(signals["final"] == "frac"), float(signals["refusal"] == "True"), float(answer.count("\n")),
        math.log2(1 + len(answer)), float(checked - len(set(given))), size, float(extra["final_in_prompt"] == "True"),
        float(extra["unexplained"]), float(extra["final_unit"] == "True"), float(extra["truncated"] == "True"),
        float(extra["percent"] == "False"), float(len(given)), math.log2(1 + len(prompt)),
        float(sum(k.startswith("hedge") for k in signals)), float(signals["final_is_last"] == "True"),
    ]


def fit_stumps(x, y, rounds=40, rate=0.3, min_leaf=10):
    """Gradient-boosted depth-1 trees on the log loss (Newton leaves, L2 of 1 on leaves,
    at most 15 candidate cuts per feature)."""
    n, d = len(x), len(x[0])
    p0 = min(max(sum(y) / n, 1e-3), 1 - 1e-3)
    base = math.log(p0 / (1 - p0))
    f = [base] * n
    cuts = []
    for j in range(d):
        values = sorted({row[j] for row in x})
        if len(values) > 16:
            values = [values[len(values) * q // 16] for q in range(1, 16)]
        cuts.append([(a + b) / 2 for a, b in zip(values, values[1:])])
    stumps = []
    for _ in range(rounds):
        p = [1 / (1 + math.exp(-v)) for v in f]
        g = [pi - yi for pi, yi in zip(p, y)]
        h = [max(pi * (1 - pi), 1e-6) for pi in p]
        total_g, total_h = sum(g), sum(h)
        best = None
        for j in range(d):
            for t in cuts[j]:
                gl = hl = 0.0
                nl = 0
                for row, gi, hi in zip(x, g, h):
                    if row[j] <= t:
                        gl, hl, nl = gl + gi, hl + hi, nl + 1
                if nl < min_leaf or n - nl < min_leaf:
                    continue
                gr, hr = total_g - gl, total_h - hl
                gain = gl * gl / (hl + 1) + gr * gr / (hr + 1) - total_g * total_g / (total_h + 1)
                if best is None or gain > best[0]:
                    best = (gain, j, t, -rate * gl / (hl + 1), -rate * gr / (hr + 1))
        if best is None:
            break
        _, j, t, left, right = best
        stumps.append((j, t, left, right))
        f = [v + (left if row[j] <= t else right) for v, row in zip(f, x)]
    return lambda row: 1 / (1 + math.exp(-(base + sum(a if row[j] <= t else b for j, t, a, b in stumps))))


def stumps(rounds=40):
    """P(helps) - P(hurts) from stumps on the dense signals."""
    cache: dict = {}

    def vec(r):
        if r["id"] not in cache:
            cache[r["id"]] = dense(r["prompt"], r["weak_response"])
        return cache[r["id"]]

    def train(rows):
        x = [vec(r) for r in rows]
        a, b = fit_stumps(x, [helps(r) for r in rows], rounds), fit_stumps(x, [hurts(r) for r in rows], rounds)
        return lambda r: a(vec(r)) - b(vec(r))

    return train


def summed(first, second, weight=1.0):
    def train(rows):
        a, b = first(rows), second(rows)
        return lambda r: a(r) + weight * b(r)

    return train


def rank_averaged(first, second):
    """Each score's quantile among the training rows' scores, averaged."""

    def train(rows):
        a, b = first(rows), second(rows)
        qa, qb = sorted(a(r) for r in rows), sorted(b(r) for r in rows)
        return lambda r: bisect.bisect(qa, a(r)) / len(qa) + bisect.bisect(qb, b(r)) / len(qb)

    return train


def v2_prompt(rows):
    model = C.train_difficulty([R.example(r) for r in rows], R.TIERS, calibration_folds=0)
    return lambda r: model.gains(r["prompt"])[0]


VARIANTS = {
    "helps/hurts (before)": helps_hurts(),
    "P(weak wrong)": wrong_model(),
    "P(weak wrong) + magnitude": wrong_model(["magnitude"]),
    "P(answer wrong), strong answers as extra pairs": wrong_model(strong_answers=True),
    "P(answer wrong), strong answers, tier-tagged": wrong_model(strong_answers=True, tagged=True),
    "P(weak wrong) + P(strong right) - 1": wrong_plus_right(),
    "... strong answers tier-tagged": wrong_plus_right(strong_answers=True, tagged=True),
    "... strong answers tier-tagged + magnitude": wrong_plus_right(["magnitude"], strong_answers=True, tagged=True),
    **{f"helps/hurts + {name}": helps_hurts([name]) for name in CANDIDATES},
    "helps/hurts + all eight signals": helps_hurts(CANDIDATES),
    "stumps alone": stumps(40),
    "helps/hurts + stumps (20)": summed(helps_hurts(), stumps(20)),
    "helps/hurts + stumps (40)": summed(helps_hurts(), stumps(40)),
    "P(weak wrong) + P(strong right) - 1, + stumps": summed(wrong_plus_right(), stumps(40)),
    "helps/hurts + 0.5 v2 prompt gain": summed(helps_hurts(), v2_prompt, 0.5),
    "helps/hurts, v2 prompt gain rank-averaged": rank_averaged(helps_hurts(), v2_prompt),
    "helps/hurts, weights of 3 shuffles averaged": helps_hurts(seeds=3),
    "helps/hurts, 8 passes": helps_hurts(epochs=8),
    "helps/hurts, answer only": helps_hurts(prompt_words=False),
    "P(weak wrong) + P(strong right) - 1, + magnitude (shipped)": wrong_plus_right(["magnitude"]),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="directory with gsm8k.jsonl")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", default="0", help="fold seeds, comma-separated")
    parser.add_argument("--only", default="", help="variants whose name contains one of these, comma-separated")
    args = parser.parse_args(argv)
    rows = R.load(args.data / "gsm8k.jsonl")
    outcomes = [R.outcome(r) for r in rows]
    seeds = [int(s) for s in args.seeds.split(",")]
    for name, variant in VARIANTS.items():
        if args.only and not any(o in name for o in args.only.split(",")):
            continue
        started = time.perf_counter()
        results = []
        for seed in seeds:
            folds = R.stratified_folds(rows, args.folds, seed)
            scores, _ = R.cross_validate(rows, folds, args.folds, variant, lambda _: None)
            results.append(Q.route_quality(outcomes, scores))
        apgr = " ".join(f"{q.apgr:.3f}" for q in results)
        mean = f" mean {statistics.mean(q.apgr for q in results):.3f}" if len(results) > 1 else ""
        q = results[0]
        print(f"{name}: APGR {apgr}{mean}; seed {seeds[0]}: CPT(50%) {R.fmt(q.cpt50, True)}, CPT(80%) {R.fmt(q.cpt80, True)} ({time.perf_counter() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
