"""Which engine `shoal dev up` runs behind each simulated pod: the ``engines`` section of the
node file (``nodes-default.yaml`` holds the default), parsed here. Pure: no processes.

Every Shoal pod the dev cluster runs gets its router sidecar and an engine as real
processes bound to the pod's IP (``shoal.devcluster.fleet``). GPU-sized models cannot run
on a laptop, so the engine is one of:

- ``smollm2``: a real small instruct model on CPU (SmolLM2-135M-Instruct served by
  llama.cpp, with vLLM's queue metrics: ``engines/llama.py``). It answers real text.
- ``fake``: an OpenAI-compatible fake with vLLM's metrics and a latency and throughput model
  (``engines/fake.py``): time to first token, prefill and decode rates, batch slots.

The format::

    engines:
      - name: smollm2            # no match: only a tier annotated shoal.dev/dev-engine: smollm2
        kind: smollm2
        smollm2: {parallel: 1}   # optional: chatFormat, parallel, nThreads
      - name: l4
        kind: fake
        match: {gpuProduct: NVIDIA-L4}     # also: tier, namespace (all given must hold)
        fake: {latencyMs: 60, prefillTokensPerSecond: 6000, decodeTokensPerSecond: 40, maxRunning: 32}
      - name: other              # an empty match: every pod the entries above did not take
        kind: fake
        match: {}

A fake's ``reply`` may hold ``{checkpoint}``: the checkpoint the pod serves (its router's
``SHOAL_SERVING_CHECKPOINT``) is put in its place, so an answer says which checkpoint's
pod produced it (the evaluation pod's engine gets the candidate's, from ``shoal eval``).

A tier chooses an engine by name with the annotation ``shoal.dev/dev-engine: NAME`` on the
ModelTier (only the dev cluster reads it); otherwise the first entry whose ``match`` holds
wins (an entry without ``match`` is chosen by name only). A pod no entry takes runs no
processes (it stays simulated only).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

import yaml

ENGINE_ANNOTATION = "shoal.dev/dev-engine"
CHECKPOINT_PLACEHOLDER = "{checkpoint}"
KINDS = ("smollm2", "fake")

_FAKE_FIELDS = {
    "latencyMs": "latency_ms",
    "prefillTokensPerSecond": "prefill_tokens_per_second",
    "decodeTokensPerSecond": "decode_tokens_per_second",
    "maxRunning": "max_running",
    "reply": "reply",
}
_SMOLLM2_FIELDS = {"chatFormat": "chat_format", "parallel": "parallel", "nThreads": "n_threads"}
_MATCH_FIELDS = ("tier", "namespace", "gpuProduct")


class InvalidEnginesFile(ValueError):
    """The engines section is malformed; the message names the entry and field."""


@dataclasses.dataclass(frozen=True)
class Engine:
    name: str
    kind: str
    match: Mapping[str, str] | None = None  # None: chosen only by the annotation
    # Options of the kind, with Python names (latency_ms, chat_format, ...).
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def matches(self, *, tier: str, namespace: str, gpu_product: str | None) -> bool:
        if self.match is None:
            return False
        seen = {"tier": tier, "namespace": namespace, "gpuProduct": gpu_product}
        return all(seen[key] == value for key, value in self.match.items())

    def command(self, *, host: str, port: int | str, model: str, tier: str,
                checkpoint: str = CHECKPOINT_PLACEHOLDER, python: str = sys.executable) -> list[str]:
        """The engine's command line, serving ``model`` (at ``checkpoint``) on ``host``:``port``.

        ``port``, ``model`` and ``checkpoint`` may be placeholders (``"{port}"``), as
        ``shoal eval --engine-command`` takes them. A fake's ``reply`` gets ``checkpoint``
        in place of ``{checkpoint}``.
        """
        if self.kind == "smollm2":
            argv = [python, "-m", "shoal.devcluster.engines.llama", "--host", host,
                    "--port", str(port), "--model-alias", model]
            flags = {"chat_format": "--chat-format", "parallel": "--parallel", "n_threads": "--n-threads"}
        else:
            argv = [python, "-m", "shoal.devcluster.engines.fake", "--host", host,
                    "--port", str(port), "--model", model, "--name", tier]
            flags = {key: "--" + key.replace("_", "-") for key in _FAKE_FIELDS.values()}
        for key, flag in flags.items():
            if self.options.get(key) is not None:
                value = str(self.options[key])
                if key == "reply":
                    value = value.replace(CHECKPOINT_PLACEHOLDER, checkpoint)
                argv += [flag, value]
        return argv


def _engine(raw: Any, index: int) -> Engine:
    where = f"engines[{index}]"
    if not isinstance(raw, dict):
        raise InvalidEnginesFile(f"{where} must be a mapping")
    unknown = set(raw) - {"name", "kind", "match", "fake", "smollm2"}
    if unknown:
        raise InvalidEnginesFile(f"{where} has unknown field(s): {', '.join(sorted(unknown))}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidEnginesFile(f"{where}.name must be a non-empty string")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise InvalidEnginesFile(f"{where}.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    match = raw.get("match")
    if match is not None and (not isinstance(match, dict) or set(match) - set(_MATCH_FIELDS)):
        raise InvalidEnginesFile(f"{where}.match may hold only {', '.join(_MATCH_FIELDS)}")
    names = _FAKE_FIELDS if kind == "fake" else _SMOLLM2_FIELDS
    other = "smollm2" if kind == "fake" else "fake"
    if raw.get(other) is not None:
        raise InvalidEnginesFile(f"{where}.{other} does not apply to kind {kind}")
    given = raw.get(kind) or {}
    if not isinstance(given, dict) or set(given) - set(names):
        raise InvalidEnginesFile(f"{where}.{kind} may hold only {', '.join(names)}")
    for key, value in given.items():
        if key != "reply" and key != "chatFormat" and (
                not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
            raise InvalidEnginesFile(f"{where}.{kind}.{key} must be a positive number, got {value!r}")
    return Engine(name=name, kind=kind,
                  match=None if match is None else {str(k): str(v) for k, v in match.items()},
                  options={names[k]: v for k, v in given.items()})


def parse_engines(text: str) -> list[Engine]:
    """The ``engines`` list of a node file's YAML text; empty if the section is absent."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InvalidEnginesFile(f"not valid YAML: {error}") from error
    raw = (data or {}).get("engines") if isinstance(data, dict) else None
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidEnginesFile("`engines` must be a list")
    engines = [_engine(r, i) for i, r in enumerate(raw)]
    seen: set[str] = set()
    for engine in engines:
        if engine.name in seen:
            raise InvalidEnginesFile(f"engine name {engine.name!r} appears twice")
        seen.add(engine.name)
    return engines


def choose(engines: list[Engine], *, tier: str, namespace: str, gpu_product: str | None,
           tier_annotations: Mapping[str, str]) -> Engine | None:
    """The engine for a pod of ``tier``: the one its annotation names, else the first match."""
    wanted = tier_annotations.get(ENGINE_ANNOTATION)
    if wanted:
        return next((e for e in engines if e.name == wanted), None)
    return next((e for e in engines
                 if e.matches(tier=tier, namespace=namespace, gpu_product=gpu_product)), None)
