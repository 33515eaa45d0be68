"""Hostile and broken clients: clear errors, bounded resources, nothing leaked."""

from __future__ import annotations

import json
import socket

import pytest

from .conftest import ladder_config, wait_for

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("path", "body", "code", "param"),
    [
        ("/v1/chat/completions", b"{not json", "invalid_json", None),
        ("/v1/chat/completions", b"[1, 2]", "invalid_type", None),
        ("/v1/chat/completions", b"[" * 100000, "invalid_json", None),
        ("/v1/chat/completions", b"\xff\xfe not utf-8", "invalid_json", None),
        ("/v1/chat/completions", b'{"model": "x", "messages": "hi"}', "invalid_type", "messages"),
        ("/v1/chat/completions", b'{"model": "x", "messages": []}', "invalid_type", "messages"),
        ("/v1/chat/completions", b'{"model": "x", "messages": [{"content": "no role"}]}', "invalid_type", "messages[0]"),
        ("/v1/chat/completions", b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', "invalid_type", "model"),
        ("/v1/chat/completions", b'{"model": "x", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}', "invalid_type", "stream"),
        ("/v1/chat/completions", b'{"model": "x", "temperature": "hot", "messages": [{"role": "user", "content": "x"}]}', "invalid_type", "temperature"),
        ("/v1/chat/completions", b'{"model": "x", "max_tokens": 1.5, "messages": [{"role": "user", "content": "x"}]}', "invalid_type", "max_tokens"),
        ("/v1/completions", b'{"model": "x", "prompt": 12}', "invalid_type", "prompt"),
        ("/v1/embeddings", b'{"model": "x"}', "invalid_type", "input"),
    ],
)
def test_malformed_requests_get_400_with_an_openai_error_naming_the_field(fresh_engines, start_router, tmp_path, path, body, code, param):
    router = _router(fresh_engines, start_router, tmp_path)
    status, headers, raw = router.post(path, body)
    assert status == 400
    error = json.loads(raw)["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert headers["content-type"].startswith("application/json")
    assert fresh_engines["small"].stats()["requests"] == 0


def test_absurdly_deep_json_is_a_400_not_a_crash(fresh_engines, start_router, tmp_path):
    import json as stdlib_json

    from shoal.router import server

    router = _router(fresh_engines, start_router, tmp_path)
    deep = b'{"model": "x", "messages": [' + b"[" * 100000 + b"]" * 100000 + b"]}"
    status, _, raw = router.post("/v1/chat/completions", deep)
    error = json.loads(raw)["error"]
    # The stdlib parser gives up on the depth; orjson parses it and the shape check
    # refuses the first message. Either way: 400, and the router keeps serving.
    expected = ("invalid_json", None) if server._loads is stdlib_json.loads else ("invalid_type", "messages[0]")
    assert (status, error["code"], error["param"]) == (400, *expected)
    assert router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})[0] == 200


def _router(engines, start_router, tmp_path, **overrides):
    return start_router(ladder_config(engines, tmp_path, **overrides))


def test_body_over_the_limit_is_refused_with_413_before_it_is_read(fresh_engines, start_router, tmp_path):
    router = _router(fresh_engines, start_router, tmp_path, limits={"maxRequestBytes": 2048})
    # Announce 50 MB and send nothing: the answer must come from the header alone.
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 52428800\r\n\r\n"
    )
    response = _read_response(sock)
    sock.close()
    assert response.startswith(b"HTTP/1.1 413")
    error = json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]
    assert (error["code"], error["message"]) == ("request_too_large", "request body of 52428800 bytes exceeds the limit of 2048 bytes")


def test_chunked_body_over_the_limit_is_refused_with_413(fresh_engines, start_router, tmp_path):
    router = _router(fresh_engines, start_router, tmp_path, limits={"maxRequestBytes": 2048})
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 1000
    for _ in range(4):
        sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    response = _read_response(sock)
    sock.close()
    assert response.startswith(b"HTTP/1.1 413")
    assert fresh_engines["small"].stats()["requests"] == 0


def test_a_body_within_the_limit_is_served(fresh_engines, start_router, tmp_path):
    router = _router(fresh_engines, start_router, tmp_path, limits={"maxRequestBytes": 4096})
    body = {"model": "x", "messages": [{"role": "user", "content": "y" * 3000}]}
    assert router.post("/v1/chat/completions", body)[0] == 200


def test_slow_client_body_times_out_with_400_and_the_router_keeps_serving(fresh_engines, start_router, tmp_path):
    router = _router(fresh_engines, start_router, tmp_path, server={"bodyTimeoutSeconds": 0.5})
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"mo")
    response = _read_response(sock)
    sock.close()
    assert response.startswith(b"HTTP/1.1 400")
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "body_timeout"
    assert router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})[0] == 200


def test_idle_keepalive_connections_are_closed_after_the_timeout(fresh_engines, start_router, tmp_path):
    router = _router(fresh_engines, start_router, tmp_path, server={"keepaliveTimeoutSeconds": 0.5})
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _read_response(sock).startswith(b"HTTP/1.1 200")
    # Idle after a response: the router closes the connection (recv returns b"").
    sock.settimeout(10)
    assert sock.recv(1) == b""
    sock.close()


def test_thousands_of_idle_connections_do_not_stop_service(fresh_engines, start_router, tmp_path):
    router = _router(fresh_engines, start_router, tmp_path)
    idle = []
    try:
        for _ in range(2000):
            idle.append(socket.create_connection(("127.0.0.1", router.port), timeout=10))
        status, headers, _ = router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})
        assert (status, headers["x-shoal-tier"]) == (200, "small")
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: router.metric("shoal_router_requests_in_flight") == 0.0, "no request in flight")


def test_unknown_paths_and_methods_are_refused(fresh_engines, start_router, tmp_path):
    router = _router(fresh_engines, start_router, tmp_path)
    assert router.get("/v1/nothing")[0] == 404
    assert router.get("/v1/chat/completions")[0] == 405


def _read_response(sock: socket.socket) -> bytes:
    """Read one HTTP response (headers and a Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_client_trickling_its_request_head_is_disconnected_after_the_keepalive_timeout(fresh_engines, start_router, tmp_path):
    import time

    router = _router(fresh_engines, start_router, tmp_path, server={"keepaliveTimeoutSeconds": 1})
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    sock.settimeout(0.2)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    sent = 0
    closed = False
    for byte in head:
        try:
            sock.sendall(bytes([byte]))
            sent += 1
            closed = sock.recv(1) == b""
        except TimeoutError:
            continue
        except OSError:
            closed = True
        if closed:
            break
        time.sleep(0.05)
    sock.close()
    # 200+ bytes at one per ~0.25 s would take a minute; the router hangs up long before.
    assert closed
    assert sent < len(head)
    assert router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})[0] == 200
