"""`shoal run`: start the operator (kopf) with Shoal's settings."""

from __future__ import annotations

import logging

import kopf
from prometheus_client import CollectorRegistry, start_http_server

from . import handlers  # noqa: F401 - registers the indexes and handlers with kopf
from .settings import OperatorSettings


def run(settings: OperatorSettings) -> None:
    kopf.configure(
        verbose=False,
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    logging.getLogger("shoal").setLevel(logging.INFO)
    # One line per API request, or per watch event handled ("Handler ... succeeded"),
    # would bury the operator's own messages and cost a core at a thousand tiers.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # The operator's own metrics (API writes and reads) live in this registry, handed to
    # the handlers through kopf's memo.
    registry = CollectorRegistry()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="0.0.0.0", registry=registry)
    kopf.run(
        standalone=settings.standalone,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=settings.liveness_endpoint or None,
        memo=kopf.Memo(settings=settings, registry=registry),
    )
