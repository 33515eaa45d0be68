"""Reaching a Service of the dev cluster from the host: a small asyncio TCP forwarder.

The dev cluster has no kube-proxy and no cluster DNS, so ``http://support-route.default.svc``
resolves nowhere. The fleet (``shoal.devcluster.fleet``) opens one forwarder per Shoal
Service on ``127.0.0.1:PORT`` and keeps its backends equal to the Service's ready
endpoints (from its EndpointSlices), so it follows pods as they come and go, as
kube-proxy would. Each accepted connection goes to the next backend in turn; a backend
that refuses the connection (its processes are still starting, or already gone) is
skipped for the next one, and a connection no backend takes is closed at once.

It forwards bytes only (HTTP keep-alive connections stay on the backend they started on),
which is what kube-proxy does too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Mapping, Sequence

CONNECT_TIMEOUT_SECONDS = 2.0
_CHUNK = 64 * 1024


class Forwarder:
    """One listening port on 127.0.0.1 forwarding to a changing set of (host, port)."""

    def __init__(self, name: str, port: int = 0, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.port = port
        self.backends: tuple[tuple[str, int], ...] = ()
        self._turn = itertools.count()
        self._server: asyncio.Server | None = None
        self._socket: socket.socket | None = None
        self.labels: Mapping[str, str] = {}  # the Service's labels, for status reports
        self._connections: set[asyncio.Task[None]] = set()
        self.connections_total = 0
        self.refused_total = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def set_backends(self, backends: Sequence[tuple[str, int]]) -> None:
        self.backends = tuple(sorted(set(backends)))

    def bind(self) -> None:
        """Take the port now (its URL is known before the event loop serves it)."""
        if self._socket is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(1024)
            sock.setblocking(False)
            self._socket = sock
            self.port = int(sock.getsockname()[1])

    async def serve(self) -> None:
        """Accept connections (bound first if need be); a second call does nothing."""
        if self._server is None:
            self.bind()
            self._server = await asyncio.start_server(self._accept, sock=self._socket)

    async def close(self) -> None:
        for task in list(self._connections):
            task.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        elif self._socket is not None:
            self._socket.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        backends = self.backends
        if not backends:
            return None
        start = next(self._turn)
        for i in range(len(backends)):
            host, port = backends[(start + i) % len(backends)]
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_SECONDS)
            except (OSError, asyncio.TimeoutError):
                continue
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.connections_total += 1
        try:
            upstream = await self._connect()
            if upstream is None:
                self.refused_total += 1
                return
            up_reader, up_writer = upstream
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        finally:
            writer.close()
            self._connections.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()
