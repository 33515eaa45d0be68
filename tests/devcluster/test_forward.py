"""The dev cluster's localhost forwarder, against real TCP servers on loopback."""

import asyncio
import socket

from shoal.devcluster.forward import Forwarder


def _free_port(host="127.0.0.1"):
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


async def _named_server(name: str, host: str):
    async def answer(reader, writer):
        data = await reader.read(100)
        writer.write(name.encode() + b":" + data)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, host, 0)


async def _ask(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"hi")
    await writer.drain()
    writer.write_eof()
    try:
        data = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        data = b""  # closed with our bytes unread: no backend took the connection
    writer.close()
    return data


def test_forwarder_takes_turns_skips_a_dead_backend_and_follows_backend_changes():
    async def scenario():
        a = await _named_server("a", "127.61.0.1")
        b = await _named_server("b", "127.61.0.2")
        backends = [("127.61.0.1", a.sockets[0].getsockname()[1]), ("127.61.0.2", b.sockets[0].getsockname()[1])]
        forwarder = Forwarder("default/small")
        forwarder.bind()
        url_port = forwarder.port
        await forwarder.serve()
        try:
            assert forwarder.url == f"http://127.0.0.1:{url_port}"
            # No backend yet: the connection is closed without an answer.
            assert await _ask(url_port) == b""
            forwarder.set_backends(backends)
            answers = sorted([await _ask(url_port) for _ in range(4)])
            assert answers == [b"a:hi", b"a:hi", b"b:hi", b"b:hi"]
            # A backend that refuses connections (its processes are gone) is skipped.
            dead = ("127.61.0.3", _free_port("127.61.0.3"))
            forwarder.set_backends([dead, backends[1]])
            assert [await _ask(url_port) for _ in range(3)] == [b"b:hi"] * 3
            forwarder.set_backends([backends[0]])
            assert await _ask(url_port) == b"a:hi"
            assert forwarder.refused_total == 1
        finally:
            await forwarder.close()
            a.close()
            b.close()

    asyncio.run(scenario())
