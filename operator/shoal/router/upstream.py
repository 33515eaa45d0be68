"""A lean HTTP/1.1 client for the router's upstreams, with a keep-alive connection pool.

Why not aiohttp's client: on the router's hot path it cost about as much CPU as the rest
of the request put together (measured in benchmarks/router), and the router needs only a
small part of HTTP: one POST at a time per connection, a body known in advance, and a
response read either whole or chunk by chunk (SSE). This module does exactly that on
asyncio's Protocol API: the request goes out in one write, the response is parsed as it
arrives by httptools (llhttp, the maintained parser Node.js uses: Content-Length,
chunked, or until close; interim 1xx responses skipped), and a fully read keep-alive
response returns its connection to the pool. TLS (external APIs) is asyncio's own.

Failures are three exceptions, so the caller can map them to fallback causes:
ConnectFailed (nothing was sent), ConnectionBroke (the connection died mid-exchange),
and ProtocolError (the upstream's bytes are not HTTP/1.1 we understand).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Mapping
from urllib.parse import urlsplit

import httptools

# Reading pauses when this much response body is waiting for a slow client, so a fast
# upstream cannot fill the router's memory.
PAUSE_BYTES = 1 << 20
MAX_HEAD_BYTES = 64 * 1024


class UpstreamError(Exception):
    """Base of the upstream failures."""


class ConnectFailed(UpstreamError):
    """The connection could not be opened; the request was not sent."""


class ConnectionBroke(UpstreamError):
    """The connection closed or reset before the response was complete."""


class ProtocolError(UpstreamError):
    """The upstream answered something that is not a valid HTTP/1.1 response."""


class _Connection(asyncio.Protocol):
    """One upstream connection: bytes in, parsed by httptools (llhttp, the parser of
    Node.js), delivered as a response head and body pieces."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head: asyncio.Future[tuple[int, dict[str, str]]] = self.loop.create_future()
        self.headers: dict[str, str] = {}
        self.head_done = False
        self.interim = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.head_bytes = 0
        self.until_close = False
        self.complete = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.keep_alive = True
        self.paused = False
        self.received_any = False

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self.complete:
            # Bytes beyond the response: nothing was pipelined, so the stream is corrupt.
            self.keep_alive = False
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.complete:
                self.keep_alive = False
                return
            self._fail(ProtocolError(f"not an HTTP/1.1 response we understand: {exc}"))
            self.close()
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("the upstream switched protocols"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.until_close and self.head_done and not self.complete:
            # No Content-Length and not chunked: the body ends where the connection does.
            self.complete = True
            self._wake()
            return
        if not self.complete:
            self._fail(ConnectionBroke("upstream closed the connection before the response was complete"))

    # --- httptools callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise ProtocolError("response head too large")
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1").strip()

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            # An interim response (e.g. 100 Continue): the real one follows.
            self.interim = True
            self.headers = {}
            return
        headers = self.headers
        if not self.parser.should_keep_alive():
            self.keep_alive = False
        if status not in (204, 304) and "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "").lower():
            self.until_close = True
            self.keep_alive = False
        self.head_done = True
        if not self.head.done():
            self.head.set_result((status, headers))

    def on_body(self, body: bytes) -> None:
        self._push(body)
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True
        self._wake()

    # --- delivery --------------------------------------------------------------------------

    def _push(self, data: bytes) -> None:
        if not data:
            return
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > PAUSE_BYTES and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        if not self.head.done():
            self.head.set_exception(error)
            # Nobody may be awaiting the head any more (a timed-out request).
            self.head.exception()
        self._wake()

    # --- use -----------------------------------------------------------------------------

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def readany(self) -> bytes:
        while True:
            if self.chunks:
                data = b"".join(self.chunks) if len(self.chunks) > 1 else self.chunks[0]
                self.chunks.clear()
                self.buffered = 0
                if self.paused and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                return data
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None


class Response:
    """An upstream response: status and headers now, the body by `read` or `readany`.

    Call `release()` when done: a fully read keep-alive response returns its connection
    to the pool; anything else closes it (which is what cancels an upstream generation).
    """

    def __init__(self, pool: UpstreamPool, key: tuple[str, str, int], connection: _Connection, status: int, headers: dict[str, str]) -> None:
        self._pool = pool
        self._key = key
        self._connection = connection
        self.status = status
        self.headers = headers
        self._released = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "application/octet-stream").split(";", 1)[0].strip()

    @property
    def complete(self) -> bool:
        return self._connection.complete

    async def readany(self) -> bytes:
        """The next piece of the body as it arrives; b"" at its end."""
        return await self._connection.readany()

    async def read(self) -> bytes:
        parts = []
        while chunk := await self._connection.readany():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        connection = self._connection
        if connection.complete and connection.keep_alive and not connection.closed:
            self._pool._put(self._key, connection)
        else:
            connection.close()

    def close(self) -> None:
        self._released = True
        self._connection.close()


class UpstreamPool:
    """Keep-alive connections per upstream origin (scheme, host, port)."""

    def __init__(
        self,
        max_idle_per_origin: int = 256,
        idle_seconds: float = 30.0,
        connect_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """ssl_context: for https upstreams; default: the system's trusted CAs, hostname checked."""
        self.max_idle_per_origin = max_idle_per_origin
        self.idle_seconds = idle_seconds
        self.connect_timeout = connect_timeout
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = ssl_context
        self._split: dict[str, tuple[tuple[str, str, int], bytes, str]] = {}

    def _target(self, url: str) -> tuple[tuple[str, str, int], bytes, str]:
        """(origin key, Host header, path) of a URL, memoised: the URLs are few."""
        found = self._split.get(url)
        if found is None:
            parts = urlsplit(url)
            scheme = parts.scheme
            host = parts.hostname or ""
            port = parts.port or (443 if scheme == "https" else 80)
            default = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
            host_header = (host if default else f"{host}:{port}").encode()
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            found = ((scheme, host, port), host_header, path)
            if len(self._split) < 4096:
                self._split[url] = found
        return found

    async def request(self, url: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """POST `body` to `url` and return once the response head has arrived."""
        key, host_header, path = self._target(url)
        head = bytearray(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n" % (path.encode(), host_header, len(body)))
        for name, value in headers.items():
            head += f"{name}: {value}\r\n".encode("latin-1")
        head += b"\r\n"
        message = bytes(head) + body
        while True:
            connection = self._take(key)
            reused = connection is not None
            if connection is None:
                connection = await self._connect(key)
            connection.transport.write(message)  # type: ignore[union-attr]
            try:
                status, response_headers = await connection.head
            except ConnectionBroke:
                # A pooled connection the upstream had just closed: nothing was answered,
                # so the request is sent again once on a fresh connection.
                if reused and not connection.received_any:
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            return Response(self, key, connection, status, response_headers)

    def _take(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.closed or now - connection.idle_since > self.idle_seconds:
                connection.close()
                continue
            connection._reset()
            connection.reused = True
            return connection
        return None

    def _put(self, key: tuple[str, str, int], connection: _Connection) -> None:
        idle = self._idle.setdefault(key, deque())
        if len(idle) >= self.max_idle_per_origin:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    async def _connect(self, key: tuple[str, str, int]) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop), host, port, ssl=context, server_hostname=host if context else None
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc.__class__.__name__}") from exc
        return connection  # type: ignore[return-value]

    def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
