"""The Argo CD health checks (Lua) shipped with the chart, run by a real Lua 5.1 (Argo CD's dialect)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lupa.lua51 import LuaRuntime

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "charts" / "shoal" / "files" / "argocd"


def health(script: str, obj: dict[str, Any]) -> tuple[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    lua.globals().obj = to_lua(obj)
    source = (SCRIPTS / script).read_text()
    result = lua.execute(source)
    return result["status"], result["message"]


def tier(conditions: list[dict[str, str]], generation: int = 2, observed: int | None = 2) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": conditions}
    if observed is not None:
        status["observedGeneration"] = observed
    return {"metadata": {"generation": generation}, "status": status}


def c(type_: str, status: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message or reason}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (tier([c("Ready", "True", "Available", "2/2 replicas ready")]), ("Healthy", "2/2 replicas ready")),
        (tier([c("Ready", "True", "Available"), c("Progressing", "True", "RollingOut", "1/2 replicas run the current spec.")]), ("Progressing", "1/2 replicas run the current spec.")),
        (tier([c("Ready", "True", "Available"), c("Evaluated", "Unknown", "Evaluating", "Evaluating ckpt-0043")]), ("Progressing", "Evaluating ckpt-0043")),
        (tier([c("Ready", "True", "Available"), c("Evaluated", "False", "Failed", "exact_match 0.61 [0.55, 0.67] < 0.80")]), ("Degraded", "Checkpoint blocked: exact_match 0.61 [0.55, 0.67] < 0.80")),
        (tier([c("Ready", "False", "EvaluatingAdapters"), c("Evaluated", "Unknown", "EvaluatingAdapters", "Evaluating adapter refunds on ckpt-0043")]),
         ("Progressing", "Evaluating adapter refunds on ckpt-0043")),
        (tier([c("Ready", "False", "AdapterFailed"), c("Evaluated", "False", "AdapterFailed", "ckpt-0043 is blocked: adapter refunds")]),
         ("Degraded", "Checkpoint blocked: ckpt-0043 is blocked: adapter refunds")),
        (tier([c("Ready", "False", "Unschedulable", "0/5 nodes are available")]), ("Degraded", "Unschedulable: 0/5 nodes are available")),
        (tier([c("Ready", "False", "WaitingForPods", "0/1 replicas ready")]), ("Progressing", "0/1 replicas ready")),
        (tier([c("Ready", "False", "ServicePending", "Pods serve, but Service small does not exist yet")]),
         ("Progressing", "Pods serve, but Service small does not exist yet")),
        (tier([c("Ready", "True", "Available")], generation=3, observed=2), ("Progressing", "Waiting for the Shoal operator to observe generation 3")),
        ({"metadata": {"generation": 1}}, ("Progressing", "Waiting for the Shoal operator to report status")),
    ],
)
def test_modeltier_health(obj, expected):
    assert health("modeltier-health.lua", obj) == expected


def test_routepolicy_health():
    ok = tier([c("Ready", "True", "Resolved", "Routing across 3 tiers")])
    missing = tier([c("Ready", "False", "SecretNotFound", "spec.tiers[2] refers to Secret 'k'")])
    assert health("routepolicy-health.lua", ok) == ("Healthy", "Routing across 3 tiers")
    assert health("routepolicy-health.lua", missing) == ("Degraded", "spec.tiers[2] refers to Secret 'k'")
