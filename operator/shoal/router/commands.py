"""`shoal router` (the sidecar), `shoal router train` and `shoal router classify` (its model).

The `shoal` CLI wires these in with `shoal.router.commands.register(subparsers)`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path

from shoal.api.routerconfig import CHECKPOINT_ENV


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Add `router` (serve) with its `train` subcommand to the `shoal` command line."""
    router = subparsers.add_parser(
        "router",
        help="run the router sidecar, or train its classifier",
        description="Serve the OpenAI-compatible router: shoal router --config FILE [--port 8080].",
    )
    router.add_argument("--config", type=Path, help="router configuration file (router.json or router.yaml)")
    router.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    router.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    router.add_argument("--reload-interval", type=float, default=1.0, help="seconds between checks of the config file")
    router.add_argument(
        "--checkpoint", default=os.environ.get(CHECKPOINT_ENV) or None,
        help=f"the checkpoint this pod's engine serves (default: ${CHECKPOINT_ENV}, set by the pod template)",
    )
    router.add_argument("--log-level", default="INFO")
    router.set_defaults(func=run_router)
    sub = router.add_subparsers(dest="router_command")
    train = sub.add_parser(
        "train",
        help="train the routing classifier from labelled JSON lines",
        description=(
            'Train from JSON lines of {"prompt": ..., "tier": ...} (tier: the smallest tier that answered well) '
            'or {"prompt": ..., "outcomes": {"TIER": true|false, ...}, "response": ...} (which tiers answered well; '
            "response, optional: the smallest tier's answer, which also trains a verifier for a cascade). "
            "Outcome lines train a v2 model (the expected gain of each step up the ladder); tier lines alone train "
            "the v1 classifier unless --model v2."
        ),
    )
    train.add_argument("--data", type=Path, required=True, help="labelled JSONL file")
    train.add_argument("--out", type=Path, required=True, help="where to write the model (JSON)")
    train.add_argument("--tiers", help="comma-separated tier order, smallest first (default: order of first appearance)")
    train.add_argument("--model", choices=["auto", "v1", "v2"], default="auto", help="auto (default): v2 when any line has outcomes")
    train.add_argument("--epochs", type=int, default=None, help="passes over the data (default: v1 30, v2 12)")
    train.add_argument("--target-shares", help="v2: TIER=SHARE,... thresholds set from the calibration sample, e.g. small=0.8")
    train.set_defaults(func=run_train)
    classify = sub.add_parser(
        "classify",
        help="route JSON lines offline with a trained model",
        description=(
            'Read JSON lines of {"prompt": ..., "id": ..., "response": ...} (id and response optional; response: the '
            'smallest tier\'s answer, judged by a v2 model\'s verifier) and write one line per input: '
            '{"id", "tier", "scores": {TIER: probability that the request needs this tier}}. '
            "v2 scores: the smallest tier 1.0, every other tier the chance that the tier below fails where it "
            "answers well, as a calibrated, increasing function of the expected gain of the step into that tier "
            "(sorting by the second tier's score ranks requests as the router's first step does, which on a "
            "two-tier ladder is the whole climb; the router reaches a higher tier only after climbing every step "
            "below it, which that tier's score does not account for); v1 scores: the class probabilities. "
            "A missing id is the line number."
        ),
    )
    classify.add_argument("--model", type=Path, required=True, help="model written by shoal router train")
    classify.add_argument("--data", type=Path, required=True, help="JSONL file of prompts")
    classify.add_argument("--out", type=Path, default=None, help="output file (default: standard output)")
    classify.add_argument("--target-shares", help="v2: TIER=SHARE,... overrides the model's thresholds")
    classify.set_defaults(func=run_classify)
    return router


def run_router(args: argparse.Namespace) -> int:
    from .config import InvalidConfig
    from .server import Settings, serve

    if args.config is None:
        print("shoal router: --config FILE is required", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop  # optional: a faster event loop when installed

        uvloop.install()
    except ImportError:
        pass
    settings = Settings(
        config_path=args.config, host=args.host, port=args.port, reload_interval_seconds=args.reload_interval, checkpoint=args.checkpoint
    )
    try:
        asyncio.run(serve(settings))
    except InvalidConfig as exc:
        print(f"shoal router: invalid configuration: {exc}", file=sys.stderr)
        return 1
    return 0


def parse_shares(text: str | None) -> dict[str, float]:
    """TIER=SHARE,... -> {TIER: SHARE}; each share in [0, 1]."""
    if not text:
        return {}
    shares = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if not sep or not name or not 0 <= share <= 1:
            raise ValueError(f"--target-shares: expected TIER=SHARE with SHARE in 0..1, got {part!r}")
        shares[name] = share
    if sum(shares.values()) > 1 + 1e-9:
        raise ValueError("--target-shares: the shares add up to more than 1")
    return shares


def _has_outcome_lines(path: Path) -> bool:
    for line in path.read_text().splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and "outcomes" in item:
            return True
    return False


def run_train(args: argparse.Namespace) -> int:
    from .classifier import read_examples, read_labelled, train, train_difficulty

    try:
        tiers = args.tiers.split(",") if args.tiers else None
        shares = parse_shares(args.target_shares)
        version = args.model
        if version == "auto":
            version = "v2" if _has_outcome_lines(args.data) else "v1"
        if version == "v2":
            examples, order = read_examples(args.data, tiers)
            model2 = train_difficulty(examples, order, epochs=args.epochs or 12)
            if shares:
                model2 = model2.with_target_shares(shares)
        else:
            if shares:
                raise ValueError("--target-shares needs a v2 model (outcome lines or --model v2)")
            labelled = read_labelled(args.data)
            model = train(labelled, classes=tiers, epochs=args.epochs or 30)
    except (OSError, ValueError) as exc:
        print(f"shoal router train: {exc}", file=sys.stderr)
        return 1
    if version == "v2":
        args.out.write_text(json.dumps(model2.to_json(), separators=(",", ":")))
        known = [e for e in examples if e.outcomes.get(order[0]) is not None]
        kept = sum(model2.tier_for(e.prompt) == order[0] for e in known)
        print(
            f"trained a v2 model on {len(examples)} examples ({sum(e.response is not None for e in examples)} with responses); "
            f"tiers {', '.join(order)}; thresholds {', '.join(f'{s.lower}->{s.upper} {s.threshold:.4f}' for s in model2.steps)}; "
            f"{kept} of {len(known)} training prompts stay on {order[0]}; wrote {args.out}"
        )
        return 0
    examples = labelled
    args.out.write_text(json.dumps(model.to_json(), separators=(",", ":")))
    correct = sum(model.predict(p).tier == t for p, t in examples)
    counts = Counter(t for _, t in examples)
    print(
        f"trained on {len(examples)} examples ({', '.join(f'{t}: {counts[t]}' for t in model.classes)}); "
        f"training accuracy {correct / len(examples):.3f}; wrote {args.out}"
    )
    return 0


def run_classify(args: argparse.Namespace) -> int:
    from .classifier import DifficultyModel, load_model

    def fail(message: str) -> int:
        print(f"shoal router classify: {message}", file=sys.stderr)
        return 1

    try:
        model = load_model(args.model)
    except OSError as exc:
        return fail(f"cannot read {args.model}: {exc.strerror or exc}")
    except (ValueError, KeyError, TypeError) as exc:
        return fail(f"{args.model} is not a model written by shoal router train ({exc})")
    try:
        shares = parse_shares(args.target_shares)
        if shares:
            if not isinstance(model, DifficultyModel):
                raise ValueError("--target-shares needs a v2 model")
            model = model.with_target_shares(shares)
        lines = args.data.read_text().splitlines()
    except OSError as exc:
        return fail(f"cannot read {args.data}: {exc.strerror or exc}")
    except ValueError as exc:
        return fail(str(exc))
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            return fail(f"{args.data}:{number}: not JSON")
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            return fail(f"{args.data}:{number}: expected an object with a string \"prompt\"")
        response = item.get("response")
        if response is not None and not isinstance(response, str):
            return fail(f"{args.data}:{number}: \"response\" must be a string")
        prompt = item["prompt"]
        if isinstance(model, DifficultyModel):
            tier = model.tier_for(prompt, response)
            scores = model.scores(prompt, response)
        else:
            probabilities = model.probabilities(prompt)
            tier = model.predict(prompt).tier
            scores = dict(zip(model.classes, probabilities))
        out.append(json.dumps({"id": item.get("id", number), "tier": tier, "scores": {k: round(v, 8) for k, v in scores.items()}}))
    text = "\n".join(out) + ("\n" if out else "")
    if args.out is None:
        sys.stdout.write(text)
    else:
        try:
            args.out.write_text(text)
        except OSError as exc:
            return fail(f"cannot write {args.out}: {exc.strerror or exc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m shoal.router.commands ...`) until the CLI wires it in."""
    parser = argparse.ArgumentParser(prog="shoal")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
