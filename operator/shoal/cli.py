"""The `shoal` command.

Bad input gets one line naming the problem and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import ValidationError

from shoal import __version__

EXIT_USAGE = 2


class UsageError(Exception):
    """The user gave us something we cannot use; the message says what."""


def fail(message: str) -> NoReturn:
    print(f"shoal: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _pydantic_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    msg = first.get("msg", "invalid")
    return f"{where}: {msg}{more}" if where else f"{msg}{more}"


# --- render ---------------------------------------------------------------------------------


def _read_documents(paths: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for raw in paths:
        path = Path(raw)
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")) if path.is_dir() else [path]
        for file in files:
            try:
                text = file.read_text()
            except OSError as exc:
                raise UsageError(f"{file}: {exc.strerror or exc}") from exc
            try:
                loaded = [d for d in yaml.safe_load_all(text) if d is not None]
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" line {mark.line + 1}" if mark else ""
                raise UsageError(f"{file}:{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from exc
            for doc in loaded:
                if not isinstance(doc, dict):
                    raise UsageError(f"{file}: every document must be a mapping (a Kubernetes object)")
                docs.append((str(file), doc))
    return docs


def render_documents(docs: list[tuple[str, dict[str, Any]]], namespace: str) -> list[dict[str, Any]]:
    """What the operator would apply for these ModelTiers and RoutePolicies (no cluster)."""
    from shoal.api.modeltier import ModelTier
    from shoal.api.routepolicy import RoutePolicy
    from shoal.controller.desired import tier_manifests
    from shoal.plan.tier import TierObservation, plan_tier
    from shoal.render.policy import render_entry_service

    tiers: dict[str, ModelTier] = {}
    policies: dict[str, RoutePolicy] = {}
    for file, doc in docs:
        kind = doc.get("kind")
        doc = {**doc, "metadata": {"namespace": namespace, **(doc.get("metadata") or {})}}
        label = f"{file}: {kind} {doc['metadata'].get('name', '?')}"
        try:
            if kind == "ModelTier":
                tier = ModelTier.from_body(doc)
                tiers[tier.name] = tier
            elif kind == "RoutePolicy":
                policy = RoutePolicy.from_body(doc)
                policies[policy.name] = policy
            # Other objects (Secrets, ConfigMaps) are the user's and pass through untouched.
        except ValidationError as exc:
            raise UsageError(f"{label}: {_pydantic_message(exc)}") from exc

    out: list[dict[str, Any]] = []
    now = datetime.now(timezone.utc)
    for tier in tiers.values():
        policy = policies.get(tier.spec.router.route_policy or "")
        observed = TierObservation(route_policy=policy, peers=tiers if policy else {})
        plan = plan_tier(tier, observed, now)
        out += tier_manifests(tier, plan, observed)
    for policy in policies.values():
        out.append(render_entry_service(policy, policy.spec.entry_tier().model_tier_ref.name))
    return out


def cmd_render(args: argparse.Namespace) -> int:
    docs = _read_documents(args.filename)
    manifests = render_documents(docs, args.namespace)
    if not manifests:
        raise UsageError("no ModelTier or RoutePolicy found in the input")
    sys.stdout.write(yaml.safe_dump_all(manifests, sort_keys=False))
    return 0


# --- crds -------------------------------------------------------------------------------------


def cmd_crds(args: argparse.Namespace) -> int:
    from shoal.api.crds import crd_filename, generate_crds

    crds = generate_crds()
    if not args.out:
        sys.stdout.write(yaml.safe_dump_all(crds, sort_keys=False))
        return 0
    for out in args.out:
        directory = Path(out)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for crd in crds:
                (directory / crd_filename(crd)).write_text(crd_yaml(crd))
        except OSError as exc:
            raise UsageError(f"cannot write CRDs to {directory}: {exc.strerror or exc}") from exc
        print(f"wrote {len(crds)} CRDs to {directory}", file=sys.stderr)
    return 0


def crd_yaml(crd: dict[str, Any]) -> str:
    header = "# Generated by `shoal crds` from the pydantic models in operator/shoal/api. Do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=100)


# --- run / version ----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from shoal.controller.main import run
    from shoal.controller.settings import OperatorSettings

    try:
        settings = OperatorSettings.from_env()
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    overrides: dict[str, Any] = {}
    if args.all_namespaces:
        overrides["namespaces"] = ()
    elif args.namespace:
        overrides["namespaces"] = tuple(args.namespace)
    if args.log_format:
        overrides["log_format"] = args.log_format
    if args.metrics_port is not None:
        overrides["metrics_port"] = args.metrics_port
    if args.liveness is not None:
        overrides["liveness_endpoint"] = args.liveness
    settings = settings.__class__(**{**settings.__dict__, **overrides})
    run(settings)
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(f"shoal {__version__}")
    return 0


# --- parser -----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        fail(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="shoal", description="Fleets of small, fine-tuned language models on Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the operator against the current kubeconfig or in-cluster")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default)")
    run.add_argument("--log-format", choices=["json", "text"])
    run.add_argument("--metrics-port", type=int, help="port of /metrics (0 turns it off)")
    run.add_argument("--liveness", help="liveness endpoint URL, e.g. http://0.0.0.0:8081/healthz ('' turns it off)")
    run.set_defaults(func=cmd_run)

    crds = sub.add_parser("crds", help="generate the CRDs from the API models")
    crds.add_argument("--out", action="append", help="write one file per CRD into this directory (repeatable); default: stdout")
    crds.set_defaults(func=cmd_crds)

    render = sub.add_parser("render", help="print the manifests the operator would apply (no cluster needed)")
    render.add_argument("-f", "--filename", action="append", required=True, help="ModelTier/RoutePolicy YAML file or directory (repeatable)")
    render.add_argument("-n", "--namespace", default="default", help="namespace for objects that do not set one")
    render.set_defaults(func=cmd_render)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=cmd_version)

    for register in _plugin_registrars():
        register(sub)
    return parser


def _plugin_registrars() -> list[Any]:
    from shoal.evaluate import commands as evaluate
    from shoal.router import commands as router
    from shoal.sim import commands as sim

    try:
        from shoal.devcluster import commands as dev
    except ImportError as error:
        # The images install shoal without the `dev` extra (cryptography for the local
        # cluster's certificates): `shoal router`, `run` and `eval` must still start there.
        return [_dev_unavailable(error), router.register, evaluate.register, sim.register]
    return [dev.register, router.register, evaluate.register, sim.register]


def _dev_unavailable(error: ImportError) -> Any:
    def register(sub: Any) -> None:
        dev = sub.add_parser("dev", help="a local Kubernetes control plane (needs shoal[dev])")
        dev.add_argument("rest", nargs=argparse.REMAINDER)
        dev.set_defaults(func=lambda _args: fail(
            f"`shoal dev` needs the dev extra (pip install 'shoal[dev]'): {error}"))

    return register


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
