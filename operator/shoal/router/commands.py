"""`shoal router` (the sidecar) and `shoal router train` (the classifier).

The `shoal` CLI wires these in with `shoal.router.commands.register(subparsers)`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections import Counter
from pathlib import Path


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
    router.add_argument("--log-level", default="INFO")
    router.set_defaults(func=run_router)
    sub = router.add_subparsers(dest="router_command")
    train = sub.add_parser(
        "train",
        help="train the routing classifier from labelled JSON lines",
        description='Train from JSON lines of {"prompt": ..., "tier": ...} (tier: the smallest tier that answered well).',
    )
    train.add_argument("--data", type=Path, required=True, help="labelled JSONL file")
    train.add_argument("--out", type=Path, required=True, help="where to write the model (JSON)")
    train.add_argument("--tiers", help="comma-separated tier order, smallest first (default: order of first appearance)")
    train.add_argument("--epochs", type=int, default=30)
    train.set_defaults(func=run_train)
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
    settings = Settings(config_path=args.config, host=args.host, port=args.port, reload_interval_seconds=args.reload_interval)
    try:
        asyncio.run(serve(settings))
    except InvalidConfig as exc:
        print(f"shoal router: invalid configuration: {exc}", file=sys.stderr)
        return 1
    return 0


def run_train(args: argparse.Namespace) -> int:
    from .classifier import read_labelled, train

    try:
        examples = read_labelled(args.data)
        tiers = args.tiers.split(",") if args.tiers else None
        model = train(examples, classes=tiers, epochs=args.epochs)
    except (OSError, ValueError) as exc:
        print(f"shoal router train: {exc}", file=sys.stderr)
        return 1
    args.out.write_text(json.dumps(model.to_json(), separators=(",", ":")))
    correct = sum(model.predict(p).tier == t for p, t in examples)
    counts = Counter(t for _, t in examples)
    print(
        f"trained on {len(examples)} examples ({', '.join(f'{t}: {counts[t]}' for t in model.classes)}); "
        f"training accuracy {correct / len(examples):.3f}; wrote {args.out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m shoal.router.commands ...`) until the CLI wires it in."""
    parser = argparse.ArgumentParser(prog="shoal")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
