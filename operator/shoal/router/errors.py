"""OpenAI-style error responses, with the status codes the router uses on purpose.

400 the request is malformed; 413 the body is too large; 429 the budget is spent (reject);
502 an upstream broke (bad response, dropped connection, 5xx everywhere); 503 no healthy
upstream (all refused, circuits open, rate limited); 504 upstreams timed out.
"""

from __future__ import annotations

import json

from aiohttp import web


class RouterError(Exception):
    """A failure the client is told about, as OpenAI error JSON."""

    status = 500
    type = "server_error"

    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        # Set by the router when known: which tier the request was meant for, and why.
        self.tier: str | None = None
        self.reason: str | None = None

    def body(self) -> bytes:
        return json.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        ).encode()

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(status=self.status, body=self.body(), content_type="application/json", headers=headers)


class BadRequest(RouterError):
    status = 400
    type = "invalid_request_error"


class TooLarge(RouterError):
    status = 413
    type = "invalid_request_error"


class BudgetExceeded(RouterError):
    status = 429
    type = "rate_limit_error"


class UpstreamBroke(RouterError):
    status = 502
    type = "upstream_error"


class NoHealthyUpstream(RouterError):
    status = 503
    type = "service_unavailable"


class UpstreamTimeout(RouterError):
    status = 504
    type = "timeout"
