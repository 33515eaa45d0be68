"""The router's HTTP/1.1 upstream client against scripted servers on loopback.

Each server answers with exact bytes, so framing edge cases (split chunks, no length,
stale keep-alive connections, garbage) are reproduced on purpose.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from shoal.router.upstream import ConnectFailed, ConnectionBroke, ProtocolError, UpstreamPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def run(handler: Handler, client: Callable[[str, list[bytes]], Awaitable[None]]) -> list[bytes]:
    """Serve `handler` on a free port and run `client(url, seen_heads)` against it."""
    heads: list[bytes] = []

    async def main() -> None:
        async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            original = reader.readuntil

            async def readuntil(separator: bytes = b"\n") -> bytes:
                data = await original(separator)
                heads.append(data)
                return data

            reader.readuntil = readuntil  # type: ignore[method-assign]
            await wrapped(reader, writer)

        server = await asyncio.start_server(recording, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            await client(f"http://127.0.0.1:{port}/v1/chat/completions", heads)

    asyncio.run(main())
    return heads


def test_request_is_one_post_with_host_length_and_headers_and_keep_alive_reuses_the_connection():
    connections = []

    async def handler(reader, writer):
        connections.append(1)
        for _ in range(2):
            head, body = await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    async def client(url, heads):
        pool = UpstreamPool()
        for payload in (b'{"a":1}', b'{"b":2}'):
            response = await pool.request(url, payload, {"x-shoal-hop": "1"})
            assert (response.status, response.content_type) == (200, "application/json")
            assert await response.read() == payload
            response.release()
        pool.close()

    heads = run(handler, client)
    assert len(connections) == 1
    assert heads[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Content-Length: 7\r\n" in heads[0]
    assert b"x-shoal-hop: 1\r\n" in heads[0]


def test_chunked_body_split_at_every_byte_is_reassembled():
    payload = b"data: one\n\ndata: two\n\n"
    wire = b"a\r\ndata: one\n\r\nb\r\n\ndata: two\n\r\n1\r\n\n\r\n0\r\n\r\n"

    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(len(wire)):
            writer.write(wire[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)

    async def client(url, heads):
        pool = UpstreamPool()
        response = await pool.request(url, b"{}", {})
        pieces = []
        while piece := await response.readany():
            pieces.append(piece)
        assert b"".join(pieces) == payload
        assert response.complete
        response.release()
        pool.close()

    run(handler, client)


def test_body_without_length_is_read_until_the_connection_closes_and_not_reused():
    connections = []

    async def handler(reader, writer):
        connections.append(1)
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async def client(url, heads):
        pool = UpstreamPool()
        for _ in range(2):
            response = await pool.request(url, b"{}", {})
            assert await response.read() == b"all of it"
            response.release()
        pool.close()

    run(handler, client)
    assert len(connections) == 2


def test_a_pooled_connection_closed_by_the_upstream_is_replaced_transparently():
    connections = []

    async def handler(reader, writer):
        connections.append(1)
        head, body = await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # Keep-alive was implied, but the server closes right after (an idle timeout).

    async def client(url, heads):
        pool = UpstreamPool()
        first = await pool.request(url, b"{}", {})
        assert await first.read() == b"ok"
        first.release()
        await asyncio.sleep(0.2)  # the close reaches the pooled connection
        second = await pool.request(url, b"{}", {})
        assert await second.read() == b"ok"
        second.release()
        pool.close()

    run(handler, client)
    assert len(connections) == 2


def test_connection_dropped_before_the_response_is_connection_broke():
    async def handler(reader, writer):
        await read_request(reader)
        writer.transport.abort()

    async def client(url, heads):
        pool = UpstreamPool()
        with pytest.raises(ConnectionBroke):
            await pool.request(url, b"{}", {})
        pool.close()

    run(handler, client)


def test_connection_dropped_mid_body_is_connection_broke_for_the_reader():
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.transport.abort()

    async def client(url, heads):
        pool = UpstreamPool()
        response = await pool.request(url, b"{}", {})
        with pytest.raises(ConnectionBroke):
            await response.read()
        response.release()
        pool.close()

    run(handler, client)


def test_garbage_instead_of_http_is_a_protocol_error():
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def client(url, heads):
        pool = UpstreamPool()
        with pytest.raises(ProtocolError, match="not an HTTP/1.1 response"):
            await pool.request(url, b"{}", {})
        pool.close()

    run(handler, client)


def test_nothing_listening_is_connect_failed():
    async def client() -> None:
        pool = UpstreamPool(connect_timeout=5)
        with pytest.raises(ConnectFailed):
            await pool.request("http://127.0.0.1:9/v1/chat/completions", b"{}", {})

    asyncio.run(client())


def test_no_content_and_interim_responses_are_framed_correctly():
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n")
        await writer.drain()
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes")
        await writer.drain()

    async def client(url, heads):
        pool = UpstreamPool()
        response = await pool.request(url, b"{}", {})
        assert (response.status, response.headers["x-a"], await response.read()) == (204, "b", b"")
        response.release()
        again = await pool.request(url, b"{}", {})
        assert await again.read() == b"yes"
        again.release()
        pool.close()

    run(handler, client)


def test_https_upstream_is_verified_against_its_ca_and_served(tmp_path):
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    trusting = ssl.create_default_context(cafile=str(cert_file))

    async def handler(reader, writer):
        try:
            head, body = await read_request(reader)
            assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost:")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        async with server:
            pool = UpstreamPool(ssl_context=trusting)
            response = await pool.request(f"https://localhost:{port}/v1/chat/completions", b'{"x":1}', {"Authorization": "Bearer k"})
            assert (response.status, await response.read()) == (200, b'{"x":1}')
            response.release()
            pool.close()
            # The system's CAs do not trust this certificate: no connection, nothing sent.
            strict = UpstreamPool()
            with pytest.raises(ConnectFailed):
                await strict.request(f"https://localhost:{port}/v1/chat/completions", b"{}", {})
            strict.close()

    asyncio.run(main())
