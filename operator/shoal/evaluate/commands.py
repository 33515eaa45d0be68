"""``shoal eval``: the evaluation Job's program. See the package docstring for the contract.

``register(subparsers)`` adds the subcommand to the ``shoal`` command line; ``main(argv)``
runs it standalone (``python -m shoal.evaluate eval ...`` is the same program).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import httpx
from pydantic import ValidationError

from shoal.api.modeltier import EvaluationRecord, EvaluationSpec
from shoal.api.naming import EVAL_SPEC_ENV, HOP_HEADER
from shoal.api.outcomes import ItemOutcomes, item_passed

from . import dataset as datasets
from . import engine as engines
from . import report, runner, scorers, sequential
from .stats import Interval
from .verdict import DEFAULT_REGRESSION_RULE, REGRESSION_RULES, DecisionSettings, RegressionRule, VerdictError, decide

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_ERROR = 2

SPEC_ENV = EVAL_SPEC_ENV  # what render/evaljob.py sets in the Job
TERMINATION_LOG_ENV = "SHOAL_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
API_KEY_ENV = "SHOAL_EVAL_API_KEY"
JUDGE_API_KEY_ENV = "SHOAL_JUDGE_API_KEY"


class EvalError(RuntimeError):
    """The evaluation could not produce a verdict (exit 2, verdict JobError)."""


class EvalTimedOut(EvalError):
    """The evaluation ran past spec.timeoutSeconds (exit 2, verdict TimedOut)."""


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval`` to a ``shoal`` subcommand parser; the handler is in ``func``."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint or endpoint on a dataset and print a verdict (exit 0 pass, 1 fail, 2 error)",
        description=(
            "Run a dataset against an OpenAI-compatible endpoint (or a vLLM engine started on "
            "--serve-checkpoint), score it, compute confidence intervals and judge thresholds "
            "and the paired regression against the serving checkpoint. Exit 0 pass, 1 fail, 2 error."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(func=lambda args: run(args))
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    spec = parser.add_argument_group("settings")
    spec.add_argument("--spec", type=Path, help=f"JSON file holding spec.rollout.evaluation (else the {SPEC_ENV} environment variable)")
    spec.add_argument("--dataset", type=Path, help="local JSON Lines file (the mounted ConfigMap key); overrides spec.dataset")
    spec.add_argument("--checkpoint", help="checkpoint URI recorded in the verdict (default: --serve-checkpoint, else the endpoint)")
    spec.add_argument("--regression-rule", choices=REGRESSION_RULES, default=None,
                      help=f"how the paired interval is judged against maxRegression (default: the spec's regressionRule, else {DEFAULT_REGRESSION_RULE})")
    spec.add_argument("--seed", type=int, default=0, help="seed for sampling requests and the bootstrap (default 0)")
    spec.add_argument("--temperature", type=float, default=0.0, help="sampling temperature of the evaluated requests (default 0)")
    spec.add_argument("--sequential", action="store_true",
                      help="with baseline serving: look at the paired comparison after 25/50/75/100%% of the items "
                           "(seeded order) and stop as soon as the verdict is clear (see benchmarks/eval-gate)")
    spec.add_argument("--timeout-seconds", type=float,
                      help="the program's own deadline (default spec.timeoutSeconds); set it a little under the Job's "
                           "activeDeadlineSeconds so a slow evaluation still reports TimedOut itself")
    spec.add_argument("--max-error-fraction", type=float, default=0.1,
                      help="more failed requests than this fraction is an error, not a verdict (default 0.1)")

    target = parser.add_argument_group("candidate")
    target.add_argument("--endpoint", help="base URL of an OpenAI-compatible API (…/v1) serving the candidate")
    target.add_argument("--model", help="model name to request from --endpoint, or the served name with --serve-checkpoint")
    target.add_argument("--serve-checkpoint", help="start `vllm serve` on this checkpoint URI inside the pod and evaluate it")
    target.add_argument("--candidate-model", help=(
        "with --serve-checkpoint: the model name to evaluate on the started engine, when it is not --model "
        "(a LoRA adapter loaded with --engine-arg=--lora-modules --engine-arg=NAME=PATH)"
    ))
    target.add_argument("--engine-arg", action="append", default=[], help="extra `vllm serve` argument (repeatable)")
    target.add_argument("--engine-port", type=int, default=0, help="loopback port of the started engine (default: a free port)")
    target.add_argument("--engine-ready-timeout-seconds", type=float, default=1800.0, help="model loading deadline (default 1800)")
    target.add_argument("--engine-command", help=(
        "JSON list replacing the `vllm serve` command (placeholders {port}, {model}, {checkpoint}); "
        "for stand-in engines in tests"
    ))
    target.add_argument("--engine-log", type=Path, help="file the started engine logs to (default: a temporary file)")

    base = parser.add_argument_group("baseline (spec.baseline: serving)")
    base.add_argument("--baseline-endpoint", help="base URL of the serving checkpoint's OpenAI-compatible API (…/v1)")
    base.add_argument("--baseline-model", help="model name to request from --baseline-endpoint")

    out = parser.add_argument_group("output")
    out.add_argument("--termination-log", type=Path,
                     help=f"where the verdict JSON goes (default ${TERMINATION_LOG_ENV}, else {DEFAULT_TERMINATION_LOG})")
    out.add_argument("--output-json", type=Path, help="also write the full results (every item's response and scores) here")


@dataclass(frozen=True)
class Settings:
    """Everything the program reads, validated once, before anything starts."""

    spec: EvaluationSpec
    dataset_path: Path | None
    checkpoint: str
    candidate: runner.Target | None  # None: started from serve_checkpoint
    serve_checkpoint: str | None
    served_model_name: str
    candidate_model: str  # what is requested from the started engine: served_model_name or an adapter
    baseline: runner.Target | None
    engine_argv: list[str] | None
    engine_args: list[str]
    engine_port: int
    engine_ready_timeout_seconds: float
    engine_log: Path | None
    sampling: runner.Sampling
    regression_rule: RegressionRule
    seed: int
    max_error_fraction: float
    timeout_seconds: float
    sequential: bool
    judge_api_key: str | None
    termination_log: Path
    output_json: Path | None


def load_settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Validate the arguments and the evaluation spec. Raises EvalError saying what is wrong."""
    if args.spec is not None:
        try:
            raw = args.spec.read_text()
        except OSError as error:
            raise EvalError(f"cannot read --spec {args.spec}: {error.strerror}") from error
    elif env.get(SPEC_ENV):
        raw = env[SPEC_ENV]
    else:
        raise EvalError(f"no evaluation spec: pass --spec FILE or set {SPEC_ENV}")
    try:
        spec = EvaluationSpec.model_validate_json(raw)
    except ValidationError as error:
        raise EvalError(f"the evaluation spec is invalid: {error}") from error

    if (args.endpoint is None) == (args.serve_checkpoint is None):
        raise EvalError("give exactly one of --endpoint (with --model) or --serve-checkpoint")
    if args.endpoint is not None and not args.model:
        raise EvalError("--endpoint needs --model")
    if args.candidate_model and args.serve_checkpoint is None:
        raise EvalError("--candidate-model names a model of the engine started by --serve-checkpoint")
    if args.dataset is None and spec.dataset.uri is None:
        raise EvalError("spec.dataset.configMapRef is mounted by the Job: pass its file with --dataset")
    baseline = None
    if spec.baseline == "serving":
        if not (args.baseline_endpoint and args.baseline_model):
            raise EvalError("spec.baseline is serving: pass --baseline-endpoint and --baseline-model")
        # The tier's Service is its router sidecar: the hop header makes it answer with its
        # own engine (the serving checkpoint) instead of routing the request up the ladder.
        baseline = runner.Target(args.baseline_endpoint, args.baseline_model, env.get(API_KEY_ENV), extra_headers=((HOP_HEADER, "1"),))
    if args.sequential and baseline is None:
        raise EvalError("--sequential compares with the serving checkpoint: it needs spec.baseline serving")
    if not 0.0 <= args.max_error_fraction < 1.0:
        raise EvalError("--max-error-fraction must lie in [0, 1)")
    engine_argv = None
    if args.engine_command:
        try:
            engine_argv = json.loads(args.engine_command)
        except json.JSONDecodeError as error:
            raise EvalError(f"--engine-command is not a JSON list: {error.msg}") from error
        if not (isinstance(engine_argv, list) and engine_argv and all(isinstance(a, str) for a in engine_argv)):
            raise EvalError("--engine-command must be a non-empty JSON list of strings")
    served_model_name = args.model or "candidate"
    candidate = None if args.endpoint is None else runner.Target(args.endpoint, args.model, env.get(API_KEY_ENV))
    termination = args.termination_log or Path(env.get(TERMINATION_LOG_ENV) or DEFAULT_TERMINATION_LOG)
    return Settings(
        spec=spec,
        dataset_path=args.dataset,
        checkpoint=args.checkpoint or args.serve_checkpoint or f"{args.endpoint} ({args.model})",
        candidate=candidate,
        serve_checkpoint=args.serve_checkpoint,
        served_model_name=served_model_name,
        candidate_model=args.candidate_model or served_model_name,
        baseline=baseline,
        engine_argv=engine_argv,
        engine_args=list(args.engine_arg),
        engine_port=args.engine_port,
        engine_ready_timeout_seconds=args.engine_ready_timeout_seconds,
        engine_log=args.engine_log,
        sampling=runner.Sampling(temperature=args.temperature, max_tokens=spec.max_tokens, seed=args.seed),
        regression_rule=args.regression_rule or spec.regression_rule,
        seed=args.seed,
        max_error_fraction=args.max_error_fraction,
        timeout_seconds=args.timeout_seconds if args.timeout_seconds is not None else float(spec.timeout_seconds),
        sequential=args.sequential,
        judge_api_key=env.get(JUDGE_API_KEY_ENV),
        termination_log=termination,
        output_json=args.output_json,
    )


def engine_argv(settings: Settings, port: int) -> list[str]:
    """The command that serves the candidate: `vllm serve`, or the stand-in template."""
    assert settings.serve_checkpoint is not None
    if settings.engine_argv is None:
        return engines.vllm_command(
            settings.serve_checkpoint, served_model_name=settings.served_model_name, port=port,
            extra_args=settings.engine_args,
        )
    values = {"port": str(port), "model": settings.served_model_name, "checkpoint": settings.serve_checkpoint}
    return [part.format(**values) for part in settings.engine_argv]


@dataclass
class Outcome:
    record: EvaluationRecord
    exit_code: int
    errors: int = 0
    details: dict[str, Any] | None = None
    paired_level: float | None = None  # level of the paired difference intervals, if not the spec's
    outcomes: ItemOutcomes | None = None  # per item, in dataset order (api/outcomes.py)


async def _evaluate(settings: Settings, candidate: runner.Target) -> Outcome:
    spec = settings.spec
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0)) as client:
        try:
            if settings.dataset_path is not None:
                data = datasets.load_path(settings.dataset_path)
            else:
                assert spec.dataset.uri is not None
                data = await datasets.load_uri(spec.dataset.uri, client=client)
        except datasets.DatasetError as error:
            raise EvalError(f"dataset: {error}") from error

        targets = [candidate] + ([settings.baseline] if settings.baseline else [])
        for target in targets:
            try:
                await runner.preflight(client, target)
            except runner.EndpointUnavailable as error:
                raise EvalError(str(error)) from error

        async def judged(batch: list[datasets.Item], results: list[runner.ItemResult]) -> dict[str, list[float | None]]:
            out: dict[str, list[float | None]] = {}
            for scorer in spec.scorers:
                if scorer.type == "llmJudge":
                    assert scorer.judge is not None
                    judge = runner.Target(scorer.judge.url, scorer.judge.model, settings.judge_api_key)
                    out[scorers.metric_name(scorer)] = await runner.judge(
                        client, judge, scorer.judge.rubric, batch, results, concurrency=spec.concurrency
                    )
            return out

        async def scored(batch: list[datasets.Item], results: list[runner.ItemResult]) -> dict[str, list[float | None]]:
            try:
                return runner.score_results(spec.scorers, batch, results, await judged(batch, results))
            except scorers.ScorerError as error:
                raise EvalError(f"scoring: {error}") from error

        # One round over every item, or (sequential) a round per look over a seeded
        # shuffle of the items, stopping as soon as the paired comparison is clear.
        items = list(data.items)
        if settings.sequential:
            random.Random(settings.seed).shuffle(items)
            sizes = sequential.look_sizes(len(items))
            levels: list[float | None] = [1.0 - alpha for alpha in sequential.DEFAULT_SPENDING]
        else:
            sizes, levels = [len(items)], [None]
        cand_results: list[runner.ItemResult] = []
        base_results: list[runner.ItemResult] | None = [] if settings.baseline else None
        cand_scores: dict[str, list[float | None]] = {}
        base_scores: dict[str, list[float | None]] | None = {} if settings.baseline else None
        look = 0
        for look, (used, level) in enumerate(zip(sizes, levels, strict=True), start=1):
            batch = items[len(cand_results):used]
            runs = await asyncio.gather(
                *(runner.generate(client, t, batch, settings.sampling, concurrency=spec.concurrency) for t in targets)
            )
            cand_results += runs[0]
            for name, column in (await scored(batch, runs[0])).items():
                cand_scores.setdefault(name, []).extend(column)
            if base_results is not None and base_scores is not None:
                base_results += runs[1]
                for name, column in (await scored(batch, runs[1])).items():
                    base_scores.setdefault(name, []).extend(column)
            for label, results in (("candidate", cand_results), ("baseline", base_results)):
                if results is not None and runner.errors_fraction(results) > settings.max_error_fraction:
                    first = next(r.error for r in results if r.error)
                    raise EvalError(
                        f"{runner.errors_fraction(results):.0%} of the {label}'s requests failed "
                        f"(more than {settings.max_error_fraction:.0%}); first error: {first}"
                    )
            decision = dataclasses.replace(
                DecisionSettings.from_spec(spec, regression_rule=settings.regression_rule, seed=settings.seed),
                paired_confidence_level=level,
            )
            try:
                verdict = decide(
                    cand_scores,
                    decision,
                    baseline=base_scores,
                    latencies_seconds=[r.latency_seconds for r in cand_results if r.latency_seconds is not None],
                    baseline_latencies_seconds=[r.latency_seconds for r in base_results or [] if r.latency_seconds is not None],
                )
            except VerdictError as error:
                raise EvalError(str(error)) from error
            if look == len(sizes):
                break
            outcomes = [
                sequential.look_outcome(
                    Interval(m.value, m.delta_lower, m.delta_upper),
                    max_regression=spec.max_regression, rule=settings.regression_rule, final=False,
                )
                for m in verdict.metrics
                if m.delta_lower is not None and m.delta_upper is not None
            ]
            # Stop early on a clear regression, or when every comparison is clearly fine
            # and the thresholds already pass on the items seen.
            if "block" in outcomes or (outcomes and all(o == "pass" for o in outcomes) and verdict.passed):
                break

    message = verdict.message
    if settings.sequential:
        message += (
            f" Sequential: decided at look {look} of {len(sizes)} after {len(cand_results)} of {len(items)} items"
            f" (paired interval at {decision.paired_level * 100:g}%)."
        )
    data_items = items[: len(cand_results)]
    record = EvaluationRecord(
        checkpoint=settings.checkpoint,
        verdict="Passed" if verdict.passed else "Failed",
        dataset_digest=data.digest,
        items=len(cand_results),
        metrics=verdict.metrics,
        thresholds=list(spec.thresholds),
        message=message,
    )
    details = {
        "items": [
            {
                "id": item.id,
                "response": c.response,
                "error": c.error,
                "latencySeconds": c.latency_seconds,
                "scores": {name: column[i] for name, column in cand_scores.items()},
                **(
                    {"baselineResponse": base_results[i].response, "baselineScores": {n: col[i] for n, col in base_scores.items()}}
                    if base_results is not None and base_scores is not None
                    else {}
                ),
            }
            for i, (item, c) in enumerate(zip(data_items, cand_results, strict=True))
        ]
    }
    errors = sum(1 for r in cand_results if r.error)
    return Outcome(
        record, EXIT_PASSED if verdict.passed else EXIT_FAILED, errors, details, decision.paired_level,
        item_outcomes(data.items, data_items, cand_scores, base_scores),
    )


def item_outcomes(
    dataset_items: Sequence[datasets.Item],
    scored_items: Sequence[datasets.Item],
    candidate: Mapping[str, Sequence[float | None]],
    baseline: Mapping[str, Sequence[float | None]] | None,
) -> ItemOutcomes:
    """Per item of the dataset, in dataset order (items a sequential run never reached have
    no outcome), whether the candidate (and the baseline) answered it well."""

    def in_dataset_order(scores: Mapping[str, Sequence[float | None]]) -> list[bool | None]:
        by_id = {item.id: item_passed([column[i] for column in scores.values()]) for i, item in enumerate(scored_items)}
        return [by_id.get(item.id) for item in dataset_items]

    return ItemOutcomes.encode(in_dataset_order(candidate), in_dataset_order(baseline) if baseline is not None else None)


def _write_termination(path: Path, record: EvaluationRecord, stderr: TextIO, outcomes: ItemOutcomes | None = None) -> None:
    try:
        path.write_text(report.termination_message(record, outcomes=outcomes))
    except OSError as error:
        # Outside a pod there may be no /dev/termination-log; the verdict is still on
        # stdout and in the exit code, so this is worth a warning, not a different verdict.
        print(f"shoal eval: cannot write the verdict to {path}: {error.strerror}", file=stderr)


def execute(
    settings: Settings,
    *,
    stdout: TextIO,
    stderr: TextIO,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> int:
    """Run the evaluation described by ``settings``; print the report, write the verdict, return the exit code."""
    started = now()
    deadline = time.monotonic() + settings.timeout_seconds
    spec = settings.spec
    try:
        with ExitStack() as stack:
            candidate = settings.candidate
            if candidate is None:
                port = settings.engine_port or engines.free_port()
                process = engines.EngineProcess(
                    engine_argv(settings, port),
                    base_url=f"http://127.0.0.1:{port}/v1",
                    ready_timeout_seconds=min(settings.engine_ready_timeout_seconds, max(1.0, deadline - time.monotonic())),
                    log_path=settings.engine_log,
                )
                try:
                    stack.enter_context(process)
                except engines.EngineFailed as error:
                    if time.monotonic() >= deadline:
                        raise EvalTimedOut(f"the engine did not start within the evaluation's timeout: {error}") from error
                    raise EvalError(f"the candidate engine failed: {error}") from error
                candidate = runner.Target(process.base_url, settings.candidate_model)
            remaining = deadline - time.monotonic()
            try:
                outcome = asyncio.run(asyncio.wait_for(_evaluate(settings, candidate), timeout=max(1.0, remaining)))
            except (TimeoutError, asyncio.TimeoutError) as error:
                raise EvalTimedOut(f"the evaluation did not finish within its timeout ({settings.timeout_seconds:g} s)") from error
    except EvalError as error:
        verdict = "TimedOut" if isinstance(error, EvalTimedOut) else "JobError"
        record = EvaluationRecord(
            checkpoint=settings.checkpoint, verdict=verdict, message=str(error).splitlines()[0][:1000],
            start_time=started, finish_time=now(),
        )
        print(f"shoal eval: {verdict}: {error}", file=stderr)
        _write_termination(settings.termination_log, record, stderr)
        return EXIT_ERROR

    finished = now()
    record = outcome.record.model_copy(update={"start_time": started, "finish_time": finished})
    print(
        report.render_report(
            record, confidence_level=spec.confidence_level, interval_method=spec.interval_method,
            errors=outcome.errors, started=started, finished=finished, paired_level=outcome.paired_level,
        ),
        file=stdout,
    )
    _write_termination(settings.termination_log, record, stderr, outcome.outcomes)
    if settings.output_json is not None:
        settings.output_json.write_text(json.dumps({"verdict": record.to_wire(), **(outcome.details or {})}, indent=1, default=str))
    return outcome.exit_code


def run(
    args: argparse.Namespace,
    *,
    env: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    env = os.environ if env is None else env
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        settings = load_settings(args, env)
    except EvalError as error:
        print(f"shoal eval: JobError: {error}", file=stderr)
        path = args.termination_log or Path(env.get(TERMINATION_LOG_ENV) or DEFAULT_TERMINATION_LOG)
        record = EvaluationRecord(checkpoint=args.checkpoint or args.serve_checkpoint or "unknown", verdict="JobError", message=str(error)[:1000])
        _write_termination(path, record, stderr)
        return EXIT_ERROR
    return execute(settings, stdout=stdout, stderr=stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shoal")
    subparsers = parser.add_subparsers(dest="command", required=True)
    register(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)
