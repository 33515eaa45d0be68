"""`shoal sim`: replay traffic through a simulated fleet before applying the tiers.

    shoal sim -f examples/modeltier-small.yaml --trace diurnal --hours 6 --seed 1 \\
        --slo-ttft-p95 2.0 --plot out.png

Several -f files (or several ModelTiers in one file) form a ladder, smallest first: a
request spills to the next tier while the tier is at zero or its queue is over
--spill-queue-depth.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import replace
from pathlib import Path

import yaml
from pydantic import ValidationError

from shoal.api.modeltier import ModelTier
from shoal.plan import drift as drift_plan
from . import drift, report, trace
from .quality import routed_quality
from .engine import EngineModel
from .fleet import ScalingPolicy, TierConfig, simulate
from .policies import HPAUtilizationPolicy, KEDAInFlightPolicy, KEDAWaitingPolicy, ShoalPolicy, StaticPolicy

DESCRIPTION = __doc__.split("\n\n")[0] + """

Reports GPU-hours (GPUs x pod lifetime, including cold start), cost (x cost.gpuHourUSD),
SLO attainment (share of 1-minute windows whose p95 time to first token is under
--slo-ttft-p95), queue wait and scale events. The scaling decision is Shoal's real
autoscaler code; routing is the router's real decision code.

The engine flags (--prefill-tps, --decode-step, --decode-step-per-seq) describe a replica
sustaining 2000 output tokens/s; each tier runs faster or slower in proportion to its
cost.tokensPerSecondPerReplica, with its engine.maxNumSeqs as batch capacity (default 256)."""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sim", help="simulate a fleet of tiers on a traffic trace", description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-f", "--filename", action="append", required=True, help="ModelTier manifest(s), smallest tier first")
    p.add_argument("--trace", default="diurnal", help="diurnal, constant, or a CSV file (timestamp,prompt_tokens,output_tokens)")
    p.add_argument("--hours", type=float, default=6.0, help="length of a synthetic trace (default 6)")
    p.add_argument("--rate", type=float, default=8.0, help="mean requests per second of a synthetic trace (default 8)")
    p.add_argument("--amplitude", type=float, default=0.7, help="diurnal swing around the mean, 0..1 (default 0.7)")
    p.add_argument("--bursts-per-hour", type=float, default=2.0, help="sudden bursts per hour (default 2)")
    p.add_argument("--burst-factor", type=float, default=2.0, help="rate multiplier during a burst (default 2)")
    p.add_argument("--seed", type=int, default=1, help="seed of the trace and the cold starts (default 1)")
    p.add_argument("--slo-ttft-p95", type=float, default=2.0, help="p95 time-to-first-token target in seconds (default 2.0)")
    p.add_argument("--policy", default="shoal", help="shoal (default), static:N, hpa (GPU utilization 70%%), keda (waiting requests, threshold 5) or keda-inflight (waiting + running, threshold targetQueueDepth)")
    p.add_argument("--spill-queue-depth", type=int, default=None, help="waiting requests above which a tier spills to the next")
    p.add_argument("--cold-start", default="60:180", help="MIN:MAX seconds for a new pod to serve (default 60:180)")
    p.add_argument("--prefill-tps", type=float, default=EngineModel.prefill_tokens_per_second, help="prefill tokens/s of one replica")
    p.add_argument("--decode-step", type=float, default=EngineModel.decode_step_base_seconds, help="seconds per decode step at batch 1")
    p.add_argument("--decode-step-per-seq", type=float, default=EngineModel.decode_step_per_seq_seconds, help="extra seconds per decode step per sequence in the batch")
    p.add_argument("--metrics-dropout", type=float, default=0.0, help="share of per-pod metric reads that fail, 0..1 (default 0)")
    p.add_argument("--plot", default=None, help="write a PNG of load, replicas and p95 TTFT over time (needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--routing-model", default=None, help="a model from `shoal router train`: requests start where its classifier sends them (needs --outcomes)")
    p.add_argument("--outcomes", default=None, help="JSON lines of per-prompt outcomes, {\"prompt\", \"outcomes\": {TIER: bool}} or {\"prompt\", \"weak_correct\", \"strong_correct\"} (weak: the first tier, strong: the last); each request draws a prompt, and the quality kept is reported")
    drift_group = p.add_argument_group(
        "drift scenarios",
        "Shadow-sample the first tier's requests and run the operator's drift detector on the "
        "graded stream (any of these flags turns it on).",
    )
    drift_group.add_argument("--shadow-rate", type=float, default=None, help="share of the first tier's requests graded against the reference, 0..1 (default 0.05 when a drift flag is given)")
    drift_group.add_argument("--agreement", type=float, default=0.85, help="the first tier's true agreement with the reference before any change (default 0.85)")
    drift_group.add_argument("--drift", type=float, default=None, help="drop of the agreement, in points (10 = ten points); none: a run without drift")
    drift_group.add_argument("--drift-at", type=float, default=None, help="minutes into the trace when the drop happens (default: half way)")
    drift_group.add_argument("--drift-share", type=float, default=1.0, help="share of the traffic whose agreement drops, 0..1 (default 1)")
    drift_group.add_argument("--drift-method", default=drift_plan.DEFAULT_METHOD, choices=sorted(drift_plan.DEFAULT_THRESHOLDS), help="detector (default cusum)")
    drift_group.add_argument("--drift-check-seconds", type=float, default=30.0, help="how often the detector reads the counts (default 30)")
    p.set_defaults(func=run)
    return p


def load_tiers(paths: list[str]) -> list[ModelTier]:
    tiers = []
    for path in paths:
        try:
            docs = list(yaml.safe_load_all(Path(path).read_text()))
        except (OSError, yaml.YAMLError) as e:
            raise SystemExit(f"shoal sim: cannot read {path}: {e}") from e
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") == "ModelTier":
                try:
                    tiers.append(ModelTier.model_validate(doc))
                except ValidationError as e:
                    first = e.errors()[0]
                    where = ".".join(str(x) for x in first["loc"])
                    raise SystemExit(f"shoal sim: {path}: {where}: {first['msg']}") from e
    if not tiers:
        raise SystemExit(f"shoal sim: no ModelTier in {', '.join(paths)}")
    return tiers


# The engine flags describe a replica that sustains this many output tokens per second;
# a tier whose cost.tokensPerSecondPerReplica differs runs proportionally faster or slower.
REFERENCE_TOKENS_PER_SECOND = 2000.0


def tier_config(tier: ModelTier, model: EngineModel, spill_queue_depth: int | None) -> TierConfig:
    spec = tier.spec
    speed = spec.cost.tokens_per_second_per_replica / REFERENCE_TOKENS_PER_SECOND
    model = replace(
        model,
        max_num_seqs=spec.engine.max_num_seqs if spec.engine.max_num_seqs is not None else model.max_num_seqs,
        prefill_tokens_per_second=model.prefill_tokens_per_second * speed,
        decode_step_base_seconds=model.decode_step_base_seconds / speed,
        decode_step_per_seq_seconds=model.decode_step_per_seq_seconds / speed,
    )
    initial = spec.replicas.desired if spec.replicas.desired is not None else max(spec.replicas.min, 1 if spec.replicas.min == 0 else spec.replicas.min)
    return TierConfig(
        name=tier.name,
        engine=model,
        gpus_per_replica=max(1, spec.resources.gpu.count),
        gpu_hour_usd=spec.cost.gpu_hour_usd,
        initial_replicas=initial,
        spill_queue_depth=spill_queue_depth,
    )


def make_policy(name: str, tier: ModelTier) -> ScalingPolicy:
    spec = tier.spec
    if name == "shoal":
        if spec.autoscaling.engine == "none":
            fixed = spec.replicas.desired if spec.replicas.desired is not None else spec.replicas.min
            return StaticPolicy(fixed)
        return ShoalPolicy(spec.autoscaling, spec.replicas)
    if name.startswith("static:"):
        return StaticPolicy(int(name.split(":", 1)[1]), name=name)
    if name == "hpa":
        return HPAUtilizationPolicy(spec.replicas)
    if name == "keda":
        return KEDAWaitingPolicy(spec.replicas)
    if name == "keda-inflight":
        return KEDAInFlightPolicy(spec.autoscaling, spec.replicas)
    raise SystemExit(f"shoal sim: unknown --policy {name!r}: use shoal, static:N, hpa, keda or keda-inflight")


def run(args: argparse.Namespace) -> int:
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("shoal sim: --plot needs matplotlib, which is not installed: pip install 'shoal[sim]'", file=sys.stderr)
            return 2
    try:
        lo, hi = (float(x) for x in args.cold_start.split(":"))
    except ValueError:
        print(f"shoal sim: --cold-start must be MIN:MAX seconds, not {args.cold_start!r}", file=sys.stderr)
        return 2
    model = EngineModel(
        prefill_tokens_per_second=args.prefill_tps,
        decode_step_base_seconds=args.decode_step,
        decode_step_per_seq_seconds=args.decode_step_per_seq,
        cold_start_min_seconds=lo,
        cold_start_max_seconds=hi,
    )
    tiers = load_tiers(args.filename)
    seconds = args.hours * 3600.0
    shape = trace.TraceShape(mean_rate=args.rate, amplitude=args.amplitude,
                             bursts_per_hour=args.bursts_per_hour, burst_factor=args.burst_factor)
    if args.trace == "diurnal":
        arrivals = trace.diurnal(seconds, seed=args.seed, shape=shape)
    elif args.trace == "constant":
        arrivals = trace.constant(args.rate, seconds, seed=args.seed)
    else:
        try:
            arrivals = trace.read_csv(args.trace)
        except (OSError, trace.TraceError) as e:
            print(f"shoal sim: {e}", file=sys.stderr)
            return 2
        seconds = arrivals[-1].time if arrivals else 0.0
    if not 0.0 <= args.metrics_dropout <= 1.0:
        print(f"shoal sim: --metrics-dropout must be between 0 and 1, not {args.metrics_dropout:g}", file=sys.stderr)
        return 2
    configs = [
        replace(tier_config(t, model, args.spill_queue_depth if i < len(tiers) - 1 else None), metrics_dropout=args.metrics_dropout)
        for i, t in enumerate(tiers)
    ]
    policies = [make_policy(args.policy, t) for t in tiers]
    # A static fleet is provisioned before the traffic starts, not scaled up at time 0.
    configs = [replace(c, initial_replicas=p.replicas) if isinstance(p, StaticPolicy) else c for c, p in zip(configs, policies)]
    texts = classify = outcome_rows = None
    if args.routing_model is not None or args.outcomes is not None:
        try:
            classify, outcome_rows, prompts = load_routing(args.routing_model, args.outcomes, [t.name for t in configs])
        except ValueError as e:
            print(f"shoal sim: {e}", file=sys.stderr)
            return 2
        order = random.Random(args.seed).choices(range(len(prompts)), k=len(arrivals))
        texts = [prompts[j] for j in order]
        outcome_rows = [outcome_rows[j] for j in order]
    outcome = simulate(arrivals, configs, policies, seed=args.seed, end=seconds, texts=texts, classify=classify)
    summary = report.summarize(outcome, args.slo_ttft_p95)
    routed = None
    if outcome_rows is not None and outcome.requests:
        names = [t.name for t in configs]
        routed = routed_quality(outcome_rows, [names[r.tier] for r in outcome.requests], names)
    drift_run = None
    if _wants_drift(args):
        try:
            drift_run, shadow_rate = run_drift(args, outcome, seconds)
        except ValueError as e:
            print(f"shoal sim: {e}", file=sys.stderr)
            return 2
    if args.json:
        data = summary.to_dict()
        if drift_run is not None:
            found = drift_run.detection()
            data["drift"] = {
                "baseline": drift_run.baseline,
                "samples": drift_run.samples,
                "falseAlarms": drift_run.false_alarms,
                "changeAtSeconds": drift_run.change_at,
                "detectedAfterSeconds": found[0] if found else None,
                "detectedAfterSamples": found[1] if found else None,
                "alarmsAtSeconds": drift_run.alarms,
                "clearedAtSeconds": drift_run.clears,
            }
        if routed is not None:
            data["routing"] = {
                "quality": round(routed.quality, 4), "smallestTierOnly": round(routed.smallest_only, 4),
                "largestTierOnly": round(routed.largest_only, 4), "gapRecovered": round(routed.gap_recovered, 4),
                "shares": {t: round(v, 4) for t, v in routed.shares.items()},
            }
        print(json.dumps(data, indent=2))
    else:
        print(report.format_summary(summary))
        if routed is not None:
            print(
                f"quality kept            {routed.quality:.3f} (smallest tier alone {routed.smallest_only:.3f}, largest alone "
                f"{routed.largest_only:.3f}: {100 * routed.gap_recovered:.0f}% of the gap recovered)\n"
                f"served by tier          " + ", ".join(f"{t} {100 * v:.1f}%" for t, v in routed.shares.items())
            )
        if drift_run is not None:
            print("\n".join(drift.summarize(drift_run, sampling_rate=shadow_rate, rate=None)))
    if args.plot:
        report.write_plot({args.policy: report.series(outcome)}, args.slo_ttft_p95, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def load_routing(model_path: str | None, outcomes_path: str | None, tiers: list[str]):  # type: ignore[no-untyped-def]
    """(classify or None, per-prompt outcomes by tier, prompts) for a routed simulation."""
    if outcomes_path is None:
        raise ValueError("--routing-model needs --outcomes (the prompts and how each tier did on them)")
    classify = None
    if model_path is not None:
        from shoal.router.classifier import load_model

        try:
            model = load_model(model_path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"cannot load the routing model {model_path}: {e}") from e
        unknown = [c for c in model.classes if c not in tiers]
        if unknown:
            raise ValueError(f"the routing model routes to {', '.join(unknown)}, which are not tiers of this simulation ({', '.join(tiers)})")
        classify = model.predict
    prompts, rows = [], []
    try:
        lines = Path(outcomes_path).read_text().splitlines()
    except OSError as e:
        raise ValueError(f"cannot read {outcomes_path}: {e.strerror}") from e
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            prompt = item["prompt"]
            if "outcomes" in item:
                row = {str(k): bool(v) for k, v in item["outcomes"].items()}
            else:
                row = {tiers[0]: bool(item["weak_correct"]), tiers[-1]: bool(item["strong_correct"])}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{outcomes_path}:{number}: expected {{\"prompt\", \"outcomes\": {{TIER: bool}}}} or {{\"prompt\", \"weak_correct\", \"strong_correct\"}}") from e
        if not isinstance(prompt, str):
            raise ValueError(f"{outcomes_path}:{number}: \"prompt\" must be a string")
        prompts.append(prompt)
        rows.append(row)
    if not prompts:
        raise ValueError(f"{outcomes_path}: no outcome lines")
    return classify, rows, prompts


def _wants_drift(args: argparse.Namespace) -> bool:
    return args.shadow_rate is not None or args.drift is not None or args.drift_at is not None


def run_drift(args: argparse.Namespace, outcome, seconds: float) -> tuple[drift.DriftRun, float]:  # type: ignore[no-untyped-def]
    """Grade a sample of the first tier's requests and run the real detector on it."""
    import random

    rate = args.shadow_rate if args.shadow_rate is not None else 0.05
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"--shadow-rate must lie in (0, 1], not {rate:g}")
    drop = (args.drift or 0.0) / 100.0
    change_at = None
    if args.drift is not None:
        change_at = (args.drift_at * 60.0) if args.drift_at is not None else seconds / 2.0
    if args.drift_check_seconds <= 0:
        raise ValueError("--drift-check-seconds must be positive")
    scenario = drift.DriftScenario(baseline=args.agreement, drop=drop, at_seconds=change_at, share=args.drift_share)
    first = sorted(r.arrival for r in outcome.requests if r.tier == 0)
    batches = drift.batches_from_arrivals(scenario, first, sampling_rate=rate, check_seconds=args.drift_check_seconds,
                                          rng=random.Random(f"drift/{args.seed}"))
    settings = drift_plan.DriftSettings(method=args.drift_method)
    return drift.run_detector(batches, settings, change_at=change_at), rate


def main(argv: list[str] | None = None) -> int:
    """Run `sim` alone (python -m shoal.sim), for when the shoal command does not have it yet."""
    parser = argparse.ArgumentParser(prog="shoal")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sim", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)
