"""OpenAI-style error responses, with the status codes the router uses on purpose.

400 the request is malformed; 404 unknown path or model; 405 wrong method; 413 the body
is too large; 429 the budget is spent (reject) or every tier rate-limited the request;
502 an upstream broke (bad response, dropped connection, 5xx other than 503); 503 no
healthy upstream (all refused or unavailable, circuits open, retry budget spent); 504
upstreams timed out.

Every error the router itself produces is one of these classes; each carries the metric
outcome it is counted under, so the status, the JSON and the metric cannot disagree.
"""

from __future__ import annotations

import json

from aiohttp import web


class RouterError(Exception):
    """A failure the client is told about, as OpenAI error JSON.

    tier, reason: the tier the request was meant for and why, when known (response
    headers and metric labels). retry_after: seconds for a Retry-After header.
    """

    status = 500
    type = "server_error"
    outcome = "upstream_error"  # metrics.OUTCOMES

    def __init__(
        self,
        message: str,
        code: str,
        param: str | None = None,
        *,
        tier: str | None = None,
        reason: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.tier = tier
        self.reason = reason
        self.retry_after = retry_after

    def body(self) -> bytes:
        return json.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        ).encode()

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        headers = dict(headers or {})
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return web.Response(status=self.status, body=self.body(), content_type="application/json", headers=headers)


class BadRequest(RouterError):
    status = 400
    type = "invalid_request_error"
    outcome = "client_error"


class NotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    outcome = "client_error"


class MethodNotAllowed(RouterError):
    status = 405
    type = "invalid_request_error"
    outcome = "client_error"


class TooLarge(RouterError):
    status = 413
    type = "invalid_request_error"
    outcome = "client_error"


class BudgetExceeded(RouterError):
    status = 429
    type = "rate_limit_error"
    outcome = "budget"


class RateLimited(RouterError):
    """Every tier tried answered 429: the client should come back after `retry_after`."""

    status = 429
    type = "rate_limit_error"
    outcome = "rate_limited"


class UpstreamBroke(RouterError):
    status = 502
    type = "upstream_error"
    outcome = "upstream_error"


class NoHealthyUpstream(RouterError):
    status = 503
    type = "service_unavailable"
    outcome = "no_upstream"


class UpstreamTimeout(RouterError):
    status = 504
    type = "timeout"
    outcome = "timeout"
