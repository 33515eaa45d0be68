"""Open-loop load generator: requests at a fixed arrival rate, whatever the answers do.

Raw asyncio sockets, no HTTP client library: one request's bytes are built once and
written as they are; an answer is read up to its Content-Length (every target here
answers with one). Each connection carries one request at a time; a request due while
every connection is busy opens another, so a slow answer never delays the next send
(no coordinated omission). Latency is measured from the request's *scheduled* time, and
also from when it was actually written, so the generator's own lateness is visible.

    python benchmarks/router/loadgen.py --url http://127.0.0.1:PORT/v1/chat/completions \\
        --rate 500 --seconds 5 [--body JSON] [--processes 1] [--uvloop-site DIR]

Prints one JSON object: the latencies (ms, from schedule and from send) of every answered
request, errors, the rate achieved, how late sends were, and the generator's own CPU
time. With ``--processes N`` the arrivals are split over N processes (request i goes to
process i mod N, at the same instants), and their results are merged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

# Every timestamp is time.perf_counter(): uvloop's loop.time() moves in milliseconds.

_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
WARM_CONNECTIONS = 32


class Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.need: int | None = None
        self.status = 0
        self.scheduled = self.sent = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, scheduled: float, now: float) -> None:
        assert self.transport is not None
        self.busy, self.scheduled, self.sent = True, scheduled, now
        self.transport.write(self.generator.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.need is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            match = _LENGTH.search(head)
            if match is None:
                self.generator.fail(self, "an answer without Content-Length")
                return
            self.status = int(head[9:12])
            self.need = end + 4 + int(match.group(1))
        if len(self.buffer) < self.need:
            return
        del self.buffer[: self.need]
        self.need = None
        self.generator.answered(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.busy:
            self.generator.fail(self, f"connection lost: {exc}")
        self.generator.lost(self)


class Generator:
    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.loop = asyncio.get_running_loop()
        self.idle: deque[Connection] = deque()
        self.from_schedule: list[float] = []
        self.from_send: list[float] = []
        self.late: list[float] = []
        self.errors: dict[str, int] = {}
        self.in_flight = 0
        self.opened = 0
        self.done = asyncio.Event()
        self.record = False
        self.began = (0.0, 0.0)  # (perf_counter, CPU seconds) when the timed part started

    async def connect(self) -> Connection:
        _, protocol = await self.loop.create_connection(lambda: Connection(self), self.host, self.port)
        self.opened += 1
        return protocol

    def answered(self, connection: Connection) -> None:
        now = time.perf_counter()
        connection.busy = False
        self.in_flight -= 1
        if connection.status != 200:
            self._count(f"HTTP {connection.status}")
        elif self.record:
            self.from_schedule.append((now - connection.scheduled) * 1000)
            self.from_send.append((now - connection.sent) * 1000)
        self.idle.append(connection)
        if not self.in_flight:
            self.done.set()

    def fail(self, connection: Connection, why: str) -> None:
        if connection.busy:
            connection.busy = False
            self.in_flight -= 1
            self._count(why)
            if not self.in_flight:
                self.done.set()
        if connection.transport is not None:
            connection.transport.close()

    def lost(self, connection: Connection) -> None:
        if connection in self.idle:
            self.idle.remove(connection)

    def _count(self, why: str) -> None:
        if self.record:  # the warm-up's answers are not counted, whatever they are
            self.errors[why] = self.errors.get(why, 0) + 1

    def fire(self, scheduled: float) -> None:
        """Send one request now, on an idle connection or a new one."""
        self.in_flight += 1
        self.done.clear()
        now = time.perf_counter()
        if self.record:
            self.late.append((now - scheduled) * 1000)
        if self.idle:
            self.idle.popleft().send(scheduled, now)
            return

        async def on_new() -> None:
            try:
                connection = await self.connect()
            except OSError as error:
                self.in_flight -= 1
                self._count(f"connect: {error}")
                return
            connection.send(scheduled, time.perf_counter())

        self.loop.create_task(on_new())

    async def run(self, rate: float, seconds: float, index: int, processes: int, start_at: float) -> None:
        # Warm: open the connections and send one request on each, unrecorded.
        connections = await asyncio.gather(*(self.connect() for _ in range(WARM_CONNECTIONS)))
        self.idle.extend(connections)
        for _ in range(WARM_CONNECTIONS):
            self.fire(time.perf_counter())
        await asyncio.wait_for(self.done.wait(), 30)
        self.record = True
        # start_at is a wall-clock instant shared by every process; perf_counter from here.
        start = time.perf_counter() + max(0.0, start_at - time.time())
        if start > time.perf_counter():
            await asyncio.sleep(start - time.perf_counter())
        # The generator's own cost is counted from here: sending, reading, bookkeeping.
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.began = (time.perf_counter(), usage.ru_utime + usage.ru_stime)
        total = int(rate * seconds)
        for i in range(index, total, processes):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self.fire(scheduled)
        try:
            await asyncio.wait_for(self.done.wait(), 30)
        except TimeoutError:
            self._count("unanswered after 30 s")


def _request(url: str, body: bytes) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return host, port, head.encode() + body


def one_process(url: str, body: bytes, rate: float, seconds: float, index: int, processes: int, start_at: float) -> dict:
    host, port, request = _request(url, body)

    async def main() -> dict:
        generator = Generator(host, port, request)
        await generator.run(rate, seconds, index, processes, start_at)
        after = resource.getrusage(resource.RUSAGE_SELF)
        began, cpu = generator.began
        return {
            "fromScheduleMs": generator.from_schedule, "fromSendMs": generator.from_send, "lateMs": generator.late,
            "errors": generator.errors, "connections": generator.opened,
            "cpuSeconds": (after.ru_utime + after.ru_stime) - cpu, "elapsedSeconds": time.perf_counter() - began,
        }

    return asyncio.run(main())


def generate(url: str, body: bytes, rate: float, seconds: float, processes: int = 1,
             uvloop_site: str | None = None, at_start: Callable[[], None] | None = None) -> dict:
    """Run ``processes`` generator processes together; their results merged.
    ``at_start`` is called when the timed part begins (after the processes warmed up)."""
    start_at = time.time() + 1.0 + 0.3 * processes  # after every process has warmed up
    argv = [sys.executable, __file__, "--child", "--url", url, "--body", body.decode(), "--rate", str(rate),
            "--seconds", str(seconds), "--processes", str(processes), "--start-at", str(start_at)]
    if uvloop_site:
        argv += ["--uvloop-site", uvloop_site]
    # Each in its own session: a session of its own is a scheduling group of its own under
    # Linux's autogroup scheduling (see run.py's OWN_SESSION).
    children = [subprocess.Popen(argv + ["--index", str(i)], stdout=subprocess.PIPE, text=True, start_new_session=True)
                for i in range(processes)]
    if at_start is not None:
        time.sleep(max(0.0, start_at - time.time()))
        at_start()
    parts = []
    for child in children:
        out, _ = child.communicate(timeout=seconds + 120)
        if child.returncode != 0:
            raise RuntimeError(f"a load generator process exited with {child.returncode}")
        parts.append(json.loads(out))
    errors: dict[str, int] = {}
    for part in parts:
        for why, n in part["errors"].items():
            errors[why] = errors.get(why, 0) + n
    return {
        "fromScheduleMs": [x for p in parts for x in p["fromScheduleMs"]],
        "fromSendMs": [x for p in parts for x in p["fromSendMs"]],
        "lateMs": [x for p in parts for x in p["lateMs"]],
        "errors": errors,
        "connections": sum(p["connections"] for p in parts),
        "cpuSeconds": sum(p["cpuSeconds"] for p in parts),
        "elapsedSeconds": max(p["elapsedSeconds"] for p in parts),
        "scheduled": int(rate * seconds),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", default=json.dumps({"model": "fake-model", "max_tokens": 16,
                                                      "messages": [{"role": "user", "content": "Hello, how are you today?"}]}))
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--uvloop-site", default=None, help="a folder holding uvloop, used for the generator's loop")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.uvloop_site:
            sys.path.insert(0, args.uvloop_site)
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        result = one_process(args.url, args.body.encode(), args.rate, args.seconds, args.index, args.processes, args.start_at)
    else:
        result = generate(args.url, args.body.encode(), args.rate, args.seconds, args.processes, args.uvloop_site)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
