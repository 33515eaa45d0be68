"""Routing quality of Shoal's routers on real per-prompt outcomes (MMLU, GSM8K).

    python benchmarks/routing/run.py --data DIR            # DIR holds mmlu.jsonl, gsm8k.jsonl
    python benchmarks/routing/run.py --data DIR --quick    # 3 folds, GSM8K only, no v1

Every trained router is measured by k-fold cross-validation, stratified by the pair of
outcomes (weak right?, strong right?), with fixed seeds: each prompt is scored by a model
that never saw it, and the pooled out-of-fold scores go through RouteLLM's measurement
(shoal.sim.quality: decile sweep, APGR, CPT(50%), CPT(80%)). Nothing is tuned on the test
folds; the models' settings are the library defaults.

Methods:
- random            a uniformly random score (seed 0).
- prompt length     longer prompts go to the strong tier first.
- oracle            strong exactly where only the strong model is right.
- shoal v1          today's classifier (`shoal router train`, tier lines: "small" when the
                    weak model was right, else "large"), score P(large); 5 epochs.
- shoal v2          the expected-gain model from outcome lines (prompt only).
- shoal v2 cascade  GSM8K: the weak model answers first; the trained verifier (v2 model
                    trained with "response": P(weak answer wrong | prompt, answer) +
                    P(strong right | prompt) - 1) scores each answer, and the sweep
                    escalates the answers it doubts most.
- rule verifiers    GSM8K: escalate when the answer has no final answer, a wrong
                    calculation or a refusal phrase (a fixed rule: one point on the curve
                    plus the two ends).
- RouteLLM          the published numbers quoted in the data's README.

Also measured: the decision's cost per request (one core, p50/p99 microseconds over every
prompt), the model file's size, the router process's memory with the model loaded, and
how well a target share set from the calibration sample holds on held-out prompts.
Writes RESULTS.md, results.json, mmlu.png and gsm8k.png next to this file.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "operator"))

from shoal.router import classifier as C  # noqa: E402
from shoal.router import verify as V  # noqa: E402
from shoal.sim import quality as Q  # noqa: E402

TIERS = ["small", "large"]
# v1's command-line default is 30 passes; 5 keep the benchmark's run time bearable on a
# shared machine (its training accuracy is already near 1 after a few passes).
V1_EPOCHS = 5
PUBLISHED = {
    "mmlu": [("RouteLLM random (published)", 0.500, 0.501, 0.799), ("RouteLLM best: SW ranking, arena + golden (published)", 0.603, 0.354, 0.716)],
    "gsm8k": [("RouteLLM random (published)", 0.497, 0.500, 0.801), ("RouteLLM best: causal LLM, arena + judge (published)", 0.622, 0.336, 0.633)],
}
TARGETS = {"apgr": 0.70, "cpt50": 0.25}
CASCADE_TARGETS = {"apgr": 0.85, "cpt50": 0.12}


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stratified_folds(rows: list[dict], k: int, seed: int) -> list[int]:
    """Fold of each row: every outcome pair spread evenly over the folds."""
    rng = random.Random(seed)
    strata: dict[tuple[bool, bool], list[int]] = {}
    for i, row in enumerate(rows):
        strata.setdefault((row["weak_correct"], row["strong_correct"]), []).append(i)
    fold = [0] * len(rows)
    offset = 0
    for key in sorted(strata):
        members = strata[key]
        rng.shuffle(members)
        for j, i in enumerate(members):
            fold[i] = (j + offset) % k
        offset += len(members)
    return fold


def example(row: dict, with_response: bool = False) -> C.Example:
    return C.Example(
        row["prompt"],
        {"small": row["weak_correct"], "large": row["strong_correct"]},
        row.get("weak_response") if with_response else None,
    )


def cross_validate(rows, folds, k, fit, log):
    """Out-of-fold scores: fit(train_rows) -> score(row)."""
    scores = [0.0] * len(rows)
    per_fold = []
    for fold in range(k):
        started = time.perf_counter()
        score = fit([r for r, f in zip(rows, folds) if f != fold])
        test = [i for i, f in enumerate(folds) if f == fold]
        for i in test:
            scores[i] = score(rows[i])
        outcomes = [outcome(rows[i]) for i in test]
        per_fold.append(Q.route_quality(outcomes, [scores[i] for i in test]).apgr)
        log(f"    fold {fold}: {time.perf_counter() - started:.1f} s, APGR {per_fold[-1]:.3f}")
    return scores, per_fold


def outcome(row: dict) -> Q.Outcome:
    return Q.Outcome(row["weak_correct"], row["strong_correct"])


def fit_v1(rows):
    model = C.train([(r["prompt"], "small" if r["weak_correct"] else "large") for r in rows], classes=TIERS, epochs=V1_EPOCHS)
    return lambda r: model.probabilities(r["prompt"])[1]


def fit_v2(models: list):
    """Trained with its calibration sample (2 inner folds of the training part only), so the
    same models also show how a target share set from calibration holds on their test fold."""

    def fit(rows):
        model = roundtrip(C.train_difficulty([example(r) for r in rows], TIERS, calibration_folds=2))
        models.append(model)
        return lambda r: model.gains(r["prompt"])[0]

    return fit


def fit_cascade(rows):
    model = roundtrip(C.train_difficulty([example(r, True) for r in rows], TIERS, calibration_folds=0))
    assert model.verifier is not None
    return lambda r: model.verifier_gain(r["prompt"], r["weak_response"])


def roundtrip(model: C.DifficultyModel) -> C.DifficultyModel:
    """The model as the router loads it: through its JSON file (8-bit weights)."""
    return C.DifficultyModel.from_json(json.loads(json.dumps(model.to_json())))


def rule_score(row: dict) -> float:
    answer = row["weak_response"]
    rejected = (
        V.final_answer(answer) is None
        or not V.verify_arithmetic(answer).accepted
        or not V.verify_refusal(answer).accepted
    )
    return 1.0 if rejected else 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def decision_cost(model, prompts: list[str], answers: list[str] | None = None) -> dict:
    """Microseconds of CPU per decision, one call at a time on one core, after a warm-up,
    with the collector paused. CPU time of this thread, not wall time: on a shared machine
    wall time also counts the moments another process held the core."""
    timer = time.thread_time_ns
    gc.disable()
    for p in prompts[:50]:
        model.predict(p)
    samples = []
    if answers is None:
        for p in prompts:
            t = timer()
            model.predict(p)
            samples.append((timer() - t) / 1000)
    else:
        for p, a in zip(prompts, answers):
            t = timer()
            model.tier_for(p, a)
            samples.append((timer() - t) / 1000)
    gc.enable()
    return {"p50_us": round(percentile(samples, 50), 1), "p99_us": round(percentile(samples, 99), 1)}


MEMORY_PROBE = """
import sys, json
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
sys.path.insert(0, sys.argv[2])
import shoal.router.server  # the sidecar's modules, as the process has them loaded
before = rss()
from shoal.router.classifier import load_model
model = load_model(sys.argv[1])
model.predict("warm up")
print(json.dumps({"rss_without_model_mib": round(before, 1), "rss_with_model_mib": round(rss(), 1)}))
"""


def memory(model_path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(model_path), str(HERE.parents[1] / "operator")], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def share_holds(rows, folds, models, target: float, log) -> list[float]:
    """Each fold's v2 model set to {small: target} from its calibration sample: the share of
    its held-out fold that stays small."""
    shares = []
    for fold, model in enumerate(models):
        model = model.with_target_shares({"small": target})
        test = [r for r, f in zip(rows, folds) if f == fold]
        shares.append(sum(model.tier_for(r["prompt"]) == "small" for r in test) / len(test))
        log(f"    fold {fold}: share kept small {shares[-1]:.3f} (target {target})")
    return shares


def fmt(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "never"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def plot(name: str, curves: dict[str, Q.Curve], weak: float, strong: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for label, curve in curves.items():
        ax.plot([100 * s for s in curve.shares], [100 * q for q in curve.quality], marker=".", label=label)
    ax.axhline(100 * weak, color="grey", linestyle="--", label="weak only")
    ax.axhline(100 * strong, color="red", linestyle="--", label="strong only")
    ax.set_xlabel("strong-model calls (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{name.upper()}: quality against strong share (out-of-fold)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="directory with mmlu.jsonl and gsm8k.jsonl")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    parser.add_argument("--benchmarks", default="mmlu,gsm8k")
    parser.add_argument("--no-v1", action="store_true", help="skip today's v1 classifier (slow on MMLU)")
    parser.add_argument("--quick", action="store_true", help="3 folds, GSM8K only, no v1, no files written")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.folds, args.benchmarks, args.no_v1, args.no_write = 3, "gsm8k", True, True

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results: dict = {"folds": args.folds, "seed": args.seed, "benchmarks": {}}
    for name in args.benchmarks.split(","):
        rows = load(args.data / f"{name}.jsonl")
        folds = stratified_folds(rows, args.folds, args.seed)
        outcomes = [outcome(r) for r in rows]
        methods: dict[str, dict] = {}
        curves: dict[str, Q.Curve] = {}

        def record(label: str, quality: Q.Quality, per_fold: list[float] | None = None, extra: dict | None = None) -> None:
            entry = quality.to_dict()
            if per_fold:
                entry["apgr_per_fold"] = [round(a, 3) for a in per_fold]
            entry.update(extra or {})
            methods[label] = entry
            curves[label] = quality.curve
            log(f"  {label}: APGR {quality.apgr:.3f}, CPT(50%) {fmt(quality.cpt50, True)}, CPT(80%) {fmt(quality.cpt80, True)}")

        log(f"{name}: {len(rows)} prompts, {args.folds} folds")
        rng = random.Random(0)
        record("random", Q.route_quality(outcomes, [rng.random() for _ in rows]))
        record("prompt length", Q.route_quality(outcomes, [float(len(r["prompt"])) for r in rows]))
        oracle = Q.evaluate(outcomes, Q.oracle_curve(outcomes))
        record("oracle", oracle)
        if not args.no_v1:
            log("  shoal v1 (today's classifier):")
            scores, per_fold = cross_validate(rows, folds, args.folds, fit_v1, log)
            record("shoal v1 classifier", Q.route_quality(outcomes, scores), per_fold)
        log("  shoal v2 (expected gain, prompt only):")
        v2_models: list[C.DifficultyModel] = []
        scores, per_fold = cross_validate(rows, folds, args.folds, fit_v2(v2_models), log)
        record("shoal v2 classifier", Q.route_quality(outcomes, scores), per_fold)
        if "weak_response" in rows[0]:
            log("  shoal v2 cascade (trained verifier on the weak answer):")
            scores, per_fold = cross_validate(rows, folds, args.folds, fit_cascade, log)
            record("shoal v2 cascade (trained verifier)", Q.route_quality(outcomes, scores), per_fold)
            record("rule verifiers (final answer, arithmetic, refusal)", Q.route_quality(outcomes, [rule_score(r) for r in rows]))

        log("  decision cost, size and memory of a model trained on everything:")
        full = C.train_difficulty([example(r, True) for r in rows], TIERS, calibration_folds=2)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.json"
            path.write_text(json.dumps(full.to_json(), separators=(",", ":")))
            size = path.stat().st_size
            mem = memory(path)
            loaded = C.load_model(path)
        prompts = [r["prompt"] for r in rows]
        cost = {"prompt": decision_cost(loaded, prompts)}
        if "weak_response" in rows[0]:
            cost["verifier"] = decision_cost(loaded, prompts, [r["weak_response"] for r in rows])
        log(f"    {cost}, {size} bytes, {mem}")
        log("  target share small=0.8 on held-out folds:")
        held = share_holds(rows, folds, v2_models, 0.8, log)
        weak = sum(o.weak for o in outcomes) / len(outcomes)
        strong = sum(o.strong for o in outcomes) / len(outcomes)
        results["benchmarks"][name] = {
            "prompts": len(rows),
            "weak": round(weak, 4),
            "strong": round(strong, 4),
            "methods": methods,
            "published": [{"router": r, "apgr": a, "cpt50": c5, "cpt80": c8} for r, a, c5, c8 in PUBLISHED[name]],
            "decision_cost": cost,
            "model_bytes": size,
            "memory": mem,
            "target_share_small_0.8_held_out": [round(s, 3) for s in held],
        }
        if not args.no_write:
            plot(name, {k: v for k, v in curves.items() if k != "random"}, weak, strong, HERE / f"{name}.png")

    if not args.no_write and (HERE / "results.json").exists():
        # Benchmarks may run as separate processes: keep the others' last results.
        previous = json.loads((HERE / "results.json").read_text())
        if (previous.get("folds"), previous.get("seed")) == (args.folds, args.seed):
            results["benchmarks"] = {**previous["benchmarks"], **results["benchmarks"]}
    table = render(results, args)
    print(table)
    if not args.no_write:
        (HERE / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        # lm_features.py adds its own section at the end; a rerun of this script keeps it.
        (HERE / "RESULTS.md").write_text(table + kept_section(HERE / "RESULTS.md", LM_SECTION))
    return 0


LM_SECTION = "<!-- lm_features.py -->"


def kept_section(path: Path, marker: str) -> str:
    """The text of ``path`` from ``marker`` on ("" when the file or the marker is missing)."""
    text = path.read_text() if path.exists() else ""
    at = text.find(marker)
    return "" if at < 0 else "\n" + text[at:]


def render(results: dict, args: argparse.Namespace) -> str:
    lines = [
        "# Routing quality results",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()} (the machine is shared).",
        "",
        f"Rerun: `python benchmarks/routing/run.py --data DIR` (DIR: the routing data, mmlu.jsonl and gsm8k.jsonl); "
        f"{args.folds}-fold stratified cross-validation, fold seed {args.seed}; every trained router's numbers are on "
        "prompts its model never saw.",
        "",
        "| benchmark | router | APGR | CPT(50%) | CPT(80%) | APGR per fold |",
        "|---|---|---|---|---|---|",
    ]
    for name, bench in results["benchmarks"].items():
        for label, m in bench["methods"].items():
            per_fold = ", ".join(f"{a:.2f}" for a in m.get("apgr_per_fold", []))
            lines.append(f"| {name.upper()} | {label} | {fmt(m['apgr'])} | {fmt(m['cpt50'], True)} | {fmt(m['cpt80'], True)} | {per_fold} |")
        for p in bench["published"]:
            lines.append(f"| {name.upper()} | {p['router']} | {p['apgr']:.3f} | {100 * p['cpt50']:.1f}% | {100 * p['cpt80']:.1f}% | |")
    lines += [
        "",
        "| benchmark | decision p50 / p99 (prompt only) | verifier p50 / p99 (prompt + answer) | model file | router RSS without / with model | share kept small at target 0.8, per held-out fold |",
        "|---|---|---|---|---|---|",
    ]
    for name, bench in results["benchmarks"].items():
        c = bench["decision_cost"]
        v = c.get("verifier")
        lines.append(
            f"| {name.upper()} | {c['prompt']['p50_us']} / {c['prompt']['p99_us']} us | "
            + (f"{v['p50_us']} / {v['p99_us']} us" if v else "-")
            + f" | {bench['model_bytes'] / 1024:.0f} KiB | {bench['memory']['rss_without_model_mib']} / {bench['memory']['rss_with_model_mib']} MiB | "
            + ", ".join(f"{s:.3f}" for s in bench["target_share_small_0.8_held_out"])
            + " |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
