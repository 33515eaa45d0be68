"""Condition types and reasons: the one place their names and meanings live.

Conditions follow the Kubernetes API conventions: a top-level `Ready` summarises the
object; the other types are adjectives or past participles. A reason is one CamelCase word;
its one-line meaning is beside it here so the status a user reads is documented in one
place.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .base import ShoalModel

# --- condition types --------------------------------------------------------------------
READY = "Ready"  # The resource does what its spec asks: traffic can be served.
AVAILABLE = "Available"  # At least the minimum number of serving replicas is ready.
PROGRESSING = "Progressing"  # A change is being rolled out (new pods, new checkpoint).
RESOLVED_REFS = "ResolvedRefs"  # Every object the spec refers to exists.
SCALING_ACTIVE = "ScalingActive"  # The autoscaler has fresh metrics and is in control.
EVALUATED = "Evaluated"  # The latest candidate checkpoint has a verdict.
ADAPTERS_READY = "AdaptersReady"  # Every adapter in spec.adapters serves the source the spec names.
DRIFTING = "Drifting"  # The serving checkpoint agrees less with its reference tier than at promotion (shadow evaluation).

# --- reasons ----------------------------------------------------------------------------
# Ready / Available / Progressing
REASON_AVAILABLE = "Available"  # Every wanted replica is ready and up to date.
REASON_ROLLING_OUT = "RollingOut"  # Pods of the current spec are replacing older pods.
REASON_ROLLOUT_COMPLETE = "RolloutComplete"  # Every pod runs the current spec.
REASON_ROLLOUT_STALLED = "RolloutStalled"  # The Deployment exceeded its progress deadline.
REASON_WAITING_FOR_PODS = "WaitingForPods"  # Pods exist but are still starting (model load).
REASON_DEPLOYMENT_PENDING = "DeploymentPending"  # The Deployment has not been observed yet.
REASON_SERVICE_PENDING = "ServicePending"  # Pods serve, but the tier's Service has not been observed yet.
REASON_SCALED_TO_ZERO = "ScaledToZero"  # No replicas by choice; the router sends traffic on.
REASON_UNSCHEDULABLE = "Unschedulable"  # No node fits the pods (GPU product, count, taints).
REASON_IMAGE_PULL_FAILED = "ImagePullFailed"  # A container image cannot be pulled.
REASON_CRASH_LOOP = "CrashLoop"  # A container keeps exiting and is being restarted.
REASON_INVALID_SPEC = "InvalidSpec"  # The spec passed the schema but cannot work as written.
# ResolvedRefs
REASON_RESOLVED = "Resolved"  # Every referenced object exists.
REASON_ROUTE_POLICY_NOT_FOUND = "RoutePolicyNotFound"  # spec.router.routePolicy names no RoutePolicy.
REASON_SECRET_NOT_FOUND = "SecretNotFound"  # A referenced Secret or key does not exist.
REASON_CONFIGMAP_NOT_FOUND = "ConfigMapNotFound"  # A referenced ConfigMap or key does not exist.
REASON_MODEL_TIER_NOT_FOUND = "ModelTierNotFound"  # A RoutePolicy tier names no ModelTier.
REASON_ADAPTER_NOT_FOUND = "AdapterNotFound"  # A RoutePolicy tier names an adapter its ModelTier does not list.
# ScalingActive
REASON_METRICS_FRESH = "MetricsFresh"  # Queue depth was read from every ready pod.
REASON_METRICS_MISSING = "MetricsMissing"  # Queue depth could not be read; size is held.
REASON_AUTOSCALING_DISABLED = "AutoscalingDisabled"  # autoscaling.engine is none.
REASON_DELEGATED_TO_KEDA = "DelegatedToKEDA"  # A KEDA ScaledObject scales this tier.
# Evaluated
REASON_PASSED = "Passed"  # The candidate met every threshold.
REASON_FAILED = "Failed"  # The candidate missed a threshold; the old checkpoint keeps serving.
REASON_TIMED_OUT = "TimedOut"  # The evaluation did not finish within its timeout.
REASON_JOB_ERROR = "JobError"  # The evaluation Job could not produce a verdict.
REASON_EVALUATING = "Evaluating"  # The evaluation Job is running.
REASON_NOT_REQUIRED = "NotRequired"  # No evaluation is configured for this checkpoint.
# AdaptersReady, and an adapter's own Ready (status.adapters[].conditions)
REASON_ADAPTERS_SERVING = "Serving"  # Every adapter (or this one) serves the source its spec names.
REASON_WAITING_FOR_BASE = "WaitingForBaseModel"  # No base checkpoint serves yet to evaluate the adapter on, or the base is rolling out.
REASON_ADAPTER_FAILED = "AdapterFailed"  # The candidate checkpoint passed, but a serving adapter's evaluation on it did not; the old checkpoint keeps serving.
REASON_EVALUATING_ADAPTERS = "EvaluatingAdapters"  # The candidate checkpoint passed; serving adapters are still being evaluated on it.
# Drifting
REASON_CALIBRATING = "Calibrating"  # Too few graded shadow samples yet to know the tier's usual agreement.
REASON_AGREEMENT_STABLE = "AgreementStable"  # Agreement with the reference is consistent with the baseline.
REASON_AGREEMENT_DROPPED = "AgreementDropped"  # Agreement with the reference fell below the baseline by the detectable drop.
REASON_NO_SHADOW_SAMPLES = "NoShadowSamples"  # Shadow evaluation is configured but no sidecar reports samples for the tier.

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ShoalModel):
    type: str = Field(
        min_length=1,
        max_length=316,
        description="Type of the condition: Ready, Available, Progressing, ResolvedRefs, ScalingActive, Evaluated, AdaptersReady, Drifting.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="One CamelCase word for programs: why the condition has this status.",
    )
    message: str = Field(
        default="",
        max_length=32768,
        description="A sentence for people: what is happening and what to do about it.",
    )
    last_transition_time: datetime | None = Field(
        default=None,
        description="When the status last changed (not when the message last changed).",
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The metadata.generation of the spec this condition was computed from.",
    )
