"""A lean HTTP/1.1 client for the router's upstreams, with a keep-alive connection pool.

Why not aiohttp's client: on the router's hot path it cost about as much CPU as the rest
of the request put together (measured in benchmarks/router), and the router needs only a
small part of HTTP: one POST at a time per connection, a body known in advance, and a
response read either whole or chunk by chunk (SSE). This module does exactly that on
asyncio's Protocol API: the request goes out in one write, the response is parsed as it
arrives (Content-Length, chunked, or until close), and a fully read keep-alive response
returns its connection to the pool. TLS (external APIs) is asyncio's own.

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
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.buffer = bytearray()
        self.head_done = False
        self.head: asyncio.Future[tuple[int, dict[str, str]]] = self.loop.create_future()
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.mode = ""  # "length", "chunked", "close", "none"
        self.remaining = 0
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
        self.buffer += data
        try:
            self._parse()
        except ProtocolError as exc:
            self._fail(exc)
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.mode == "close" and self.head_done and not self.complete:
            if self.buffer:
                self._push(bytes(self.buffer))
                self.buffer.clear()
            self.complete = True
            self._wake()
            return
        if not self.complete:
            self._fail(ConnectionBroke("upstream closed the connection before the response was complete"))

    # --- parsing ---------------------------------------------------------------------------

    def _parse(self) -> None:
        if not self.head_done:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    raise ProtocolError("response head too large")
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[: end + 4]
            lines = head.split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise ProtocolError(f"bad status line {lines[0][:80]!r}")
            status = int(parts[1])
            if 100 <= status < 200:
                # An interim response (e.g. 100 Continue): the real one follows.
                self._parse()
                return
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise ProtocolError(f"bad header line {line[:80]!r}")
                headers[name.strip().lower()] = value.strip()
            if headers.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0":
                self.keep_alive = False
            if status in (204, 304):
                self.mode = "none"
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                self.mode = "chunked"
            elif "content-length" in headers:
                try:
                    self.remaining = int(headers["content-length"])
                except ValueError as exc:
                    raise ProtocolError("bad Content-Length") from exc
                self.mode = "length"
            else:
                self.mode = "close"
                self.keep_alive = False
            self.head_done = True
            if self.mode == "none" or (self.mode == "length" and self.remaining == 0):
                self.complete = True
            if not self.head.done():
                self.head.set_result((status, headers))
        if self.complete:
            if self.buffer:
                # Bytes beyond the response: nothing was pipelined, so the stream is corrupt.
                self.keep_alive = False
                self.buffer.clear()
            return
        if self.mode == "length":
            if self.buffer:
                take = bytes(self.buffer[: self.remaining])
                del self.buffer[: len(take)]
                self.remaining -= len(take)
                self._push(take)
                if self.remaining == 0:
                    self.complete = True
                    if self.buffer:
                        self.keep_alive = False
                        self.buffer.clear()
                self._wake()
        elif self.mode == "chunked":
            self._parse_chunks()
        elif self.mode == "close":
            if self.buffer:
                self._push(bytes(self.buffer))
                self.buffer.clear()
                self._wake()

    def _parse_chunks(self) -> None:
        pushed = False
        buffer = self.buffer
        while True:
            if self.remaining > 0:
                if len(buffer) < self.remaining + 2:
                    break
                self._push(bytes(buffer[: self.remaining]))
                pushed = True
                if buffer[self.remaining : self.remaining + 2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                del buffer[: self.remaining + 2]
                self.remaining = 0
                continue
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                if len(buffer) > 1024:
                    raise ProtocolError("chunk size line too long")
                break
            size_text = bytes(buffer[:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from exc
            if size == 0:
                # Last chunk: trailers (none expected) end with an empty line.
                trailer_end = buffer.find(b"\r\n\r\n", line_end)
                if trailer_end == line_end:
                    del buffer[: line_end + 4]
                elif trailer_end > 0:
                    del buffer[: trailer_end + 4]
                else:
                    break
                self.complete = True
                if buffer:
                    self.keep_alive = False
                    buffer.clear()
                pushed = True
                break
            del buffer[: line_end + 2]
            self.remaining = size
        if pushed:
            self._wake()

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
