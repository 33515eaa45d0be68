"""The operator's settings: one typed object, read from the environment.

Every field can be set as SHOAL_<FIELD> (for example SHOAL_NAMESPACES=team-a,team-b);
`shoal run` flags override the environment. Tests pass an explicit mapping instead of
touching os.environ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class OperatorSettings:
    # Namespaces to watch. Empty: every namespace (needs the chart's ClusterRole).
    namespaces: tuple[str, ...] = ()
    # Run without kopf's peering objects: one operator replica (Recreate strategy) is the
    # supported deployment, so there is nobody to coordinate with.
    standalone: bool = True
    # host:port of the liveness endpoint (kopf's /healthz). Empty: none.
    liveness_endpoint: str = "http://0.0.0.0:8081/healthz"
    # Port of the Prometheus /metrics endpoint (the API write and read counters). 0: off.
    metrics_port: int = 8080
    # json or text.
    log_format: str = "json"
    # Reconciles run at once (each object is reconciled by one at a time). A pass mostly
    # waits on the API server, so many cost little; bursts of events are coalesced per
    # object by the work queue, not by waiting.
    workers: int = 64

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env

        def get(name: str, default: str) -> str:
            return env.get(f"SHOAL_{name.upper()}", default)

        namespaces = tuple(n.strip() for n in get("namespaces", "").split(",") if n.strip())
        log_format = get("log_format", cls.log_format)
        if log_format not in ("json", "text"):
            raise ValueError(f"SHOAL_LOG_FORMAT must be json or text, not {log_format!r}")
        try:
            metrics_port = int(get("metrics_port", str(cls.metrics_port)))
            workers = int(get("workers", str(cls.workers)))
        except ValueError as exc:
            raise ValueError(f"invalid operator setting: {exc}") from exc
        if workers < 1:
            raise ValueError(f"SHOAL_WORKERS must be at least 1, not {workers}")
        return cls(
            namespaces=namespaces,
            standalone=get("standalone", "true").lower() in ("1", "true", "yes"),
            liveness_endpoint=get("liveness_endpoint", cls.liveness_endpoint),
            metrics_port=metrics_port,
            log_format=log_format,
            workers=workers,
        )
