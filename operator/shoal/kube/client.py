"""The only code that talks to the API server.

A thin asynchronous wrapper over the official client's REST layer: get, list, server-side
apply (field manager `shoal`), status patches, Events and the scale subresource. Every
write is counted (`shoal_operator_api_writes_total`), so a steady state with zero writes
can be checked from the operator's own metrics as well as from the audit log.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import httpx
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from prometheus_client import CollectorRegistry, Counter

from shoal.api.times import rfc3339

from .errors import Conflict, Forbidden, Invalid, KubeError, NamespaceTerminating, NotFound, Unavailable

FIELD_MANAGER = "shoal"
# Requests to the API server in flight at once, and as many kept-alive connections; and,
# besides those, Service applies in flight at once. See Kube.__init__.
MAX_IN_FLIGHT = 64
SERVICE_APPLIES_IN_FLIGHT = 4
# Connections of each of the HTTP clients the requests in flight are spread over.
CONNECTIONS_PER_CLIENT = 8


@dataclass(frozen=True)
class Resource:
    group_version: str  # "v1" or "apps/v1"
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace)}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name)}"
        if sub:
            base += f"/{sub}"
        return base


RESOURCES: dict[tuple[str, str], Resource] = {
    ("v1", "ConfigMap"): Resource("v1", "configmaps"),
    ("v1", "Service"): Resource("v1", "services"),
    ("v1", "Pod"): Resource("v1", "pods"),
    ("v1", "Secret"): Resource("v1", "secrets"),
    ("v1", "Event"): Resource("v1", "events"),
    ("apps/v1", "Deployment"): Resource("apps/v1", "deployments"),
    ("policy/v1", "PodDisruptionBudget"): Resource("policy/v1", "poddisruptionbudgets"),
    ("batch/v1", "Job"): Resource("batch/v1", "jobs"),
    ("shoal.dev/v1alpha1", "ModelTier"): Resource("shoal.dev/v1alpha1", "modeltiers"),
    ("shoal.dev/v1alpha1", "RoutePolicy"): Resource("shoal.dev/v1alpha1", "routepolicies"),
    ("keda.sh/v1alpha1", "ScaledObject"): Resource("keda.sh/v1alpha1", "scaledobjects"),
}


def resource(api_version: str, kind: str) -> Resource:
    try:
        return RESOURCES[(api_version, kind)]
    except KeyError as exc:
        raise KubeError(f"no REST mapping for {api_version} {kind}") from exc


@dataclass
class Connection:
    """Where the API server is and how to authenticate, from the official client's loaders."""

    host: str
    configuration: k8s_client.Configuration

    def ssl_context(self) -> ssl.SSLContext | bool:
        cfg = self.configuration
        if not cfg.verify_ssl:
            return False
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else ssl.create_default_context()
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        return ctx

    def authorization(self) -> str | None:
        cfg = self.configuration
        # In-cluster tokens are rotated by the kubelet; the loader's hook re-reads them.
        if cfg.refresh_api_key_hook is not None:
            cfg.refresh_api_key_hook(cfg)
        token = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
        if not token:
            return None
        prefix = (cfg.api_key_prefix or {}).get("authorization")
        return f"{prefix} {token}" if prefix and not token.startswith(prefix) else token


def load_connection() -> Connection:
    """In-cluster credentials when running in a pod, else the kubeconfig ($KUBECONFIG)."""
    cfg = k8s_client.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=cfg)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=cfg)
    return Connection(host=cfg.host.rstrip("/"), configuration=cfg)


def _translate(status: int, body: bytes, what: str) -> KubeError:
    causes: list[Any] = []
    try:
        parsed = json.loads(body or b"{}")
        detail = parsed.get("message", "")
        causes = (parsed.get("details") or {}).get("causes") or []
    except (ValueError, AttributeError):
        detail = body[:200].decode(errors="replace") if body else ""
    message = f"{what}: {detail or f'HTTP {status}'}"
    if status == 403 and any(isinstance(c, dict) and c.get("reason") == "NamespaceTerminating" for c in causes):
        return NamespaceTerminating(message, status)
    if status == 404:
        return NotFound(message, status)
    if status == 409:
        return Conflict(message, status)
    if status in (400, 422):
        return Invalid(message, status)
    if status in (401, 403):
        return Forbidden(message, status)
    return Unavailable(message, status)


class Kube:
    """Asynchronous access to the API server for the controller."""

    def __init__(
        self,
        connection: Connection,
        registry: CollectorRegistry | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        service_applies_in_flight: int = SERVICE_APPLIES_IN_FLIGHT,
    ) -> None:
        """`max_in_flight`: requests sent at once; more callers wait their turn here.
        `service_applies_in_flight`: Service applies sent at once, in a lane of their own.

        The wait is on purpose outside the HTTP client, and the requests are spread over
        several small clients (CONNECTIONS_PER_CLIENT connections each) rather than one
        large one. The HTTP client's connection pool looks at every queued request and
        every connection, and asks each idle connection's socket whether it is still
        usable, each time a request starts or ends: with a thousand tiers' writes queued
        in one pool that bookkeeping took a third of the operator's CPU, and with 64
        connections and nothing queued still a quarter. The time a request sat queued
        also counted against its 30 s timeout. Here no pool holds more requests than
        connections, a small pool's bookkeeping is cheap, and every connection is kept
        alive for the next request instead of paying a new TLS handshake.

        Service applies have their own lane because the API server creates Services one
        at a time (it allocates each one's cluster IP under a single lock). In the shared
        lane, a burst of them would hold most of its slots while they wait for that lock,
        and the other tiers' Deployments and statuses would wait behind them; a few in
        flight keep the allocator busy, and waiting in their own lane they are not queued
        behind everything else either.
        """
        self._conn = connection

        def lane(requests: int) -> asyncio.Queue[httpx.AsyncClient]:
            """One token per request that may be in flight, each naming the client to use."""
            tokens: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
            for first in range(0, requests, CONNECTIONS_PER_CLIENT):
                size = min(CONNECTIONS_PER_CLIENT, requests - first)
                client = httpx.AsyncClient(
                    base_url=connection.host,
                    verify=connection.ssl_context(),
                    timeout=httpx.Timeout(30.0, connect=10.0),
                    limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                    transport=transport,
                )
                for _ in range(size):
                    tokens.put_nowait(client)
            return tokens

        self._lane = lane(max_in_flight)
        self._service_lane = lane(service_applies_in_flight)
        self.writes = Counter(
            "shoal_operator_api_writes",
            "Write requests (create, apply, patch, delete) the operator sent to the API server.",
            ["verb", "resource"],
            registry=registry,
        )
        # Reads outside the watches (the view): only the Secrets a spec names.
        self.reads = Counter(
            "shoal_operator_api_reads",
            "Get and list requests the operator sent to the API server besides its watches.",
            ["verb", "resource"],
            registry=registry,
        )

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        what: str,
        lane: asyncio.Queue[httpx.AsyncClient] | None = None,
    ) -> dict[str, Any]:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        auth = self._conn.authorization()
        if auth:
            headers["Authorization"] = auth
        content = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
        tokens = lane or self._lane
        client = await tokens.get()
        try:
            response = await client.request(method, path, params=query, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise Unavailable(f"{what}: {exc}") from exc
        finally:
            tokens.put_nowait(client)
        if response.status_code >= 400:
            raise _translate(response.status_code, response.content, what)
        return response.json() if response.content else {}

    def _count(self, verb: str, res: Resource) -> None:
        self.writes.labels(verb=verb, resource=res.plural).inc()

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        res = resource(api_version, kind)
        self.reads.labels(verb="get", resource=res.plural).inc()
        try:
            return await self._call("GET", res.path(namespace, name), what=f"get {kind} {namespace}/{name}")
        except NotFound:
            return None

    async def list(self, api_version: str, kind: str, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
        res = resource(api_version, kind)
        self.reads.labels(verb="list", resource=res.plural).inc()
        query = {"labelSelector": selector} if selector else None
        result = await self._call("GET", res.path(namespace), query=query, what=f"list {kind} in {namespace}")
        return list(result.get("items", []))

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply with field manager `shoal`, taking over fields on conflict.

        The operator is the declared owner of its children; forcing means a hand edit of a
        field Shoal manages is reverted on the next reconcile, like every controller does.
        """
        res = resource(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        self._count("apply", res)
        return await self._call(
            "PATCH",
            res.path(meta.get("namespace"), meta["name"]),
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            # YAML is a superset of JSON; a pre-serialised string is sent as it is.
            body=json.dumps(obj),
            content_type="application/apply-patch+yaml",
            what=f"apply {obj['kind']} {meta.get('namespace')}/{meta['name']}",
            lane=self._service_lane if obj["kind"] == "Service" else None,
        )

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        res = resource(api_version, kind)
        self._count("patch-status", res)
        return await self._call(
            "PATCH",
            res.path(namespace, name, "status"),
            body={"status": status},
            content_type="application/merge-patch+json",
            what=f"patch status of {kind} {namespace}/{name}",
        )

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        res = resource(api_version, kind)
        self._count("delete", res)
        try:
            await self._call(
                "DELETE",
                res.path(namespace, name),
                body={"propagationPolicy": "Background"},
                what=f"delete {kind} {namespace}/{name}",
            )
        except NotFound:
            pass

    async def scale(self, api_version: str, kind: str, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        res = resource(api_version, kind)
        self._count("scale", res)
        return await self._call(
            "PATCH",
            res.path(namespace, name, "scale"),
            body={"spec": {"replicas": replicas}},
            content_type="application/merge-patch+json",
            what=f"scale {kind} {namespace}/{name}",
        )

    async def event(self, involved: dict[str, Any], type_: str, reason: str, message: str, now: datetime | None = None) -> None:
        """Record a core/v1 Event about `involved` (a whole object, for its uid and version).

        The Event's name is derived from the object's uid and resourceVersion and the
        Event's reason and message, so recording the same Event twice about the same
        version of the object (a pass retried after the operator was killed before it
        wrote the status) creates it once: the second create is a conflict, ignored.
        """
        meta = involved["metadata"]
        stamp = rfc3339(now or datetime.now(timezone.utc))
        digest = hashlib.sha256(
            "\0".join((str(meta.get("uid")), str(meta.get("resourceVersion")), type_, reason, message)).encode()
        ).hexdigest()[:16]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{digest}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "shoal-operator"},
            "reportingComponent": "shoal.dev/operator",
            "reportingInstance": "shoal-operator",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        res = resource("v1", "Event")
        self._count("create", res)
        try:
            await self._call("POST", res.path(meta["namespace"]), body=body, what=f"record event on {meta['name']}")
        except Conflict:
            pass  # recorded before this pass was retried
