"""`shoal run`: start the operator (kopf) with Shoal's settings."""

from __future__ import annotations

import logging

import kopf
from prometheus_client import start_http_server

from . import handlers
from .settings import OperatorSettings


def run(settings: OperatorSettings) -> None:
    kopf.configure(
        verbose=False,
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    logging.getLogger("shoal").setLevel(logging.INFO)
    # One line per API request would bury the operator's own messages.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    handlers.DEBOUNCE_SECONDS = settings.refresh_debounce_seconds
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="0.0.0.0", registry=handlers.REGISTRY)
    kopf.run(
        standalone=settings.standalone,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=settings.liveness_endpoint or None,
    )
