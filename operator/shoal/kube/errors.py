"""Our own small error types for talking to the API server.

Client errors are translated once, at the boundary (`kube.client`), into these, named for
what the caller should do.
"""

from __future__ import annotations


class KubeError(Exception):
    """Something went wrong talking to the API server."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(KubeError):
    """The object does not exist: create it, or report the missing reference."""


class Conflict(KubeError):
    """The object changed under us, or another field manager owns the field: re-read and retry."""


class Invalid(KubeError):
    """The API server rejected what we sent (schema or admission): tell the user; retrying will not help."""


class Forbidden(KubeError):
    """RBAC denies the request: the chart's permissions are missing a rule."""


class NamespaceTerminating(KubeError):
    """The namespace is being deleted: give up on the object, it goes with the namespace."""


class Unavailable(KubeError):
    """The API server is unreachable, overloaded or timed out: retry later."""
