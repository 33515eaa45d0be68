"""The RoutePolicy pass's classifier part: keep evaluations' outcomes, learn on promotion.

What to learn and what to write is decided in plan/learning.py; this module does the
I/O around it. It reads what the view cannot give: the content of the user's model and
of an evaluation dataset (the view keeps other people's ConfigMaps as key names only),
each only when it is needed (a promotion to learn from, or a user model the status has
not named yet: its version is remembered per resourceVersion). It writes the policy's
`<policy>-classifier` ConfigMap when it differs.

Outcomes and prompts are never logged: a log line names the policy, the ModelTier and
the Job, and the status says what happened in numbers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from shoal.api.base import ConfigMapKeyReference
from shoal.api.modeltier import DatasetSpec
from shoal.api.naming import LEARNED_MODEL_KEY, learned_classifier_configmap_name
from shoal.api.routepolicy import RoutePolicy
from shoal.evaluate.dataset import DatasetError, Item, parse
from shoal.kube.client import Kube
from shoal.kube.diff import needs_apply
from shoal.kube.observe import model_tiers
from shoal.kube.view import View
from shoal.plan.learning import (
    DatasetPrompts,
    LearnedState,
    base_of,
    classifier_status,
    evaluated_dataset,
    evaluations,
    learn,
    note,
    reseed,
    version_of,
)
from shoal.plan.rollout import eval_job_observation
from shoal.render.classifier import render_learned_classifier

from .clock import Clock

log = logging.getLogger("shoal.controller")


def prompt_of(item: Item) -> str:
    """What the router classifies for an evaluation item: its last user message."""
    text = ""
    for message in item.messages:
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
            text = str(content or "")
    return text


class ClassifierLearning:
    def __init__(self, kube: Kube, view: View, clock: Clock) -> None:
        self.kube = kube
        self.view = view
        self.clock = clock
        # (namespace, ConfigMap, key, resourceVersion) -> the version of the user's model.
        self._versions: dict[tuple[str, str, str, str], str | None] = {}

    async def run(self, policy: RoutePolicy) -> dict[str, Any] | None:
        """Handle new promotions, write the learned ConfigMap if it changed, and return
        status.classifier in wire form (None: the policy has no classifier)."""
        spec = policy.spec.classifier
        if spec.mode != "enabled" or spec.config_map_ref is None:
            return None
        ns, ref = policy.namespace, spec.config_map_ref
        user = self.view.get("ConfigMap", ns, ref.name)
        if user is None:
            # ResolvedRefs says the model is missing; nothing to learn on or name.
            return classifier_status(policy, LearnedState(), None)
        resource_version = str(user["metadata"].get("resourceVersion") or "")
        user_version = await self._user_version(ns, ref, resource_version)
        if not spec.learns():
            return classifier_status(policy, LearnedState(), user_version)

        name = learned_classifier_configmap_name(policy.name)
        current = self.view.get("ConfigMap", ns, name)
        state = LearnedState.from_config_map(current)
        messages, datasets = self._jobs(policy)
        visible = evaluations(policy, self._rung_tiers(policy), messages, state, datasets)
        base = base_of(policy, resource_version)
        if state.base != base:
            state = reseed(policy, base, visible, state)
        else:
            for promotion in visible:
                if state.handled(promotion):
                    continue
                if not promotion.promoted:
                    state = note(promotion, state)
                    continue
                base_model = state.model if state.model is not None else await self._text(ns, ref)
                dataset = await self._dataset(ns, promotion.dataset) if promotion.dataset is not None else None
                # Hashing the prompts and fitting an intercept take milliseconds to a
                # second for a large model: off the event loop.
                state = await asyncio.to_thread(learn, promotion, state, base_model=base_model, dataset=dataset, now=self.clock.now())
                log.info("RoutePolicy %s/%s: handled the promotion of %s by ModelTier %s (Job %s)",
                         ns, policy.name, promotion.what(), promotion.model_tier, promotion.job)
        assert state.base is not None and state.message is not None
        manifest = render_learned_classifier(
            policy, base=state.base, model=state.model, kept=state.kept,
            learned_from=state.learned_from, learned_at=state.learned_at, message=state.message,
        )
        # A dropped learned model (the user's model changed) is a removed key, which the
        # superset comparison of needs_apply does not see.
        dropped = current is not None and LEARNED_MODEL_KEY in (current.get("data") or {}) and state.model is None
        if needs_apply(current, manifest) or dropped:
            self.view.remember(await self.kube.apply(manifest))
        return classifier_status(policy, state, user_version)

    def _rung_tiers(self, policy: RoutePolicy) -> dict[str, Any]:
        return model_tiers(self.view, policy.namespace, [t.model_tier_ref.name for t in policy.spec.tiers if t.model_tier_ref])

    def _jobs(self, policy: RoutePolicy) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], DatasetSpec]]:
        """(ModelTier, Job) -> the evaluation container's termination message, and -> the
        dataset the Job ran on."""
        messages: dict[tuple[str, str], str] = {}
        datasets: dict[tuple[str, str], DatasetSpec] = {}
        for ref in policy.spec.tiers:
            if ref.model_tier_ref is None:
                continue
            tier = ref.model_tier_ref.name
            for job, pods in self.view.evaluation_jobs(policy.namespace, tier):
                observed = eval_job_observation(job, pods)
                if observed.termination_message:
                    messages[(tier, observed.name)] = observed.termination_message
                    if (dataset := evaluated_dataset(job)) is not None:
                        datasets[(tier, observed.name)] = dataset
        return messages, datasets

    async def _text(self, namespace: str, ref: ConfigMapKeyReference) -> str | None:
        body = await self.kube.get("v1", "ConfigMap", namespace, ref.name)
        value = ((body or {}).get("data") or {}).get(ref.key)
        return value if isinstance(value, str) else None

    async def _user_version(self, namespace: str, ref: ConfigMapKeyReference, resource_version: str) -> str | None:
        key = (namespace, ref.name, ref.key, resource_version)
        if key not in self._versions:
            text = await self._text(namespace, ref)
            self._versions = {k: v for k, v in self._versions.items() if k[:3] != key[:3]}
            self._versions[key] = version_of(text) if text is not None else None
        return self._versions[key]

    async def _dataset(self, namespace: str, ref: ConfigMapKeyReference) -> DatasetPrompts:
        text = await self._text(namespace, ref)
        if text is None:
            return DatasetPrompts(problem=f"ConfigMap {ref.name} has no key {ref.key}")
        try:
            dataset = parse(text.encode())
        except DatasetError as exc:
            return DatasetPrompts(problem=f"it does not parse: {exc}")
        return DatasetPrompts(digest=dataset.digest, prompts=tuple(prompt_of(i) for i in dataset.items))
