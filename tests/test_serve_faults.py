"""`rpo-jax serve` under faults and load, on loopback (the shared tiny judge, tests/serve_fixtures.py): every client
error is a JSON answer with its 4xx, limits hold before work (body cap, read timeouts, queue, prompt length, API key,
Host/Origin checks), an early answer leaves the connection usable, and a bounded barrage (100 idle connections,
half-sent heads and bodies, oversized bodies, streams dropped mid-way, 64 concurrent requests) leaves memory and
latency bounded with every request answered in JSON."""

from __future__ import annotations

import json
import resource
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from serve_fixtures import JUDGE_ANSWER, judge_settings, shared_judge

from rpo_jax.generate.serving import KEEP_ALIVE_S, ChatServer

KEY = "test-key-123"
USER = [{"role": "user", "content": "Is this fine?"}]
GOOD = {"model": "judge", "messages": USER, "temperature": 0}
CAP = 64 * 1024
TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder, engine = shared_judge(tmp_path_factory.getbasetemp())
    limits = dict(api_key=KEY, max_body_bytes=CAP, max_queue=16, read_timeout_s=TIMEOUT_S, batch_wait_ms=50)
    chat_server = ChatServer(judge_settings(folder, **limits), engine).start()
    yield chat_server
    chat_server.close()


def request(method="POST", path="/v1/chat/completions", body: object = GOOD, key=KEY, **headers) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", f"Host: {headers.pop('host', '127.0.0.1')}", f"Content-Length: {len(data)}"]
    lines += [f"Authorization: Bearer {key}"] * (key is not None) + [f"{k}: {v}" for k, v in headers.items()]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + data


def read_answer(sock: socket.socket) -> tuple[int, dict, object]:
    """(status, headers, JSON body) of the next answer on `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in head.decode().split("\r\n")[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed inside an answer: {head!r}"
        body += chunk
    assert headers["content-type"] == "application/json", headers
    return status, headers, json.loads(body)


def exchange(server, data: bytes, wait_s: float = 60) -> tuple[int, dict, object]:
    with socket.create_connection(("127.0.0.1", port(server)), timeout=wait_s) as sock:
        sock.sendall(data)
        return read_answer(sock)


def port(server) -> int:
    return server.socket.getsockname()[1]


HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY.encode()
CHUNKED = HEAD + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + (b"8000\r\n" + b" " * 0x8000 + b"\r\n") * 5 + b"0\r\n\r\n"
GOOD_BYTES = json.dumps(GOOD).encode()
CHUNKED_GOOD = HEAD + b"\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(GOOD_BYTES), GOOD_BYTES)
SYSTEM_LATE = {**GOOD, "messages": [*USER, {"role": "system", "content": "Be brief."}]}
LONG = {**GOOD, "messages": [{"role": "user", "content": "word " * 12000}]}  # 60 kB: fits the body cap, not the context


@pytest.mark.parametrize(
    ("raw", "status", "param"),
    [
        pytest.param(request(key=None), 401, None, id="no API key"),
        pytest.param(request(key="wrong"), 401, None, id="wrong API key"),
        pytest.param(request(host="rebound.example:8000"), 403, None, id="Host of a rebound DNS name"),
        pytest.param(request(Origin="https://page.example"), 403, None, id="a web page's Origin"),
        pytest.param(HEAD + b"\r\nContent-Length: abc\r\n\r\n{}", 400, None, id="bad Content-Length"),
        pytest.param(HEAD + b"\r\nContent-Length: 1000000000000\r\n\r\n", 413, None, id="Content-Length 10**12"),
        pytest.param(CHUNKED, 413, None, id="chunked body over the cap"),
        pytest.param(CHUNKED_GOOD, 200, None, id="chunked body"),
        pytest.param(request(body=b"[" * 30000 + b"]" * 30000), 400, None, id="JSON nested 30000 deep"),
        pytest.param(request(body=b"{not json"), 400, None, id="not JSON"),
        pytest.param(request(body=b'{"model": "\xff"}'), 400, None, id="not UTF-8"),
        pytest.param(
            request(body=json.dumps({**GOOD, "messages": [{"role": "user", "content": "\ud800"}]}).encode()),
            400,
            "messages[0].content",
            id="lone surrogate",
        ),
        pytest.param(request(body=SYSTEM_LATE), 400, "messages", id="system message not first"),
        pytest.param(request(body=LONG), 400, "messages", id="prompt over the context"),
        pytest.param(request(body={**GOOD, "max_tokens": 5000}), 400, "max_tokens", id="max_tokens over the context"),
        pytest.param(request("GET", "/v1/nothing", b""), 404, None, id="unknown route"),
        pytest.param(request("GET", "/v1/chat/completions", b""), 405, None, id="GET a POST route"),
        pytest.param(request("DELETE", "/v1/models", b""), 405, None, id="DELETE"),
        pytest.param(request("GET", "/v1/models?limit=1&x", b""), 200, None, id="query string ignored"),
        pytest.param(request("GET", "/health", b""), 200, None, id="health"),
    ],
)
def test_every_answer_is_json_with_its_status(server, raw, status, param):
    got, headers, body = exchange(server, raw)
    assert got == status, body
    if status >= 400:
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["param"] == param
        assert "Traceback" not in body["error"]["message"] and "/tmp" not in body["error"]["message"]
    if status == 401:
        assert headers["www-authenticate"] == "Bearer"
    if param == "messages" and "context" in body["error"]["message"]:  # the prompt over the context:
        assert "at least" in body["error"]["message"]  # refused on the cheap bound, before the tokenizer ran


def test_half_sent_requests_time_out_with_408(server):
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        head = pool.submit(exchange, server, HEAD + b"\r\nContent-Len")  # the head never ends
        body = pool.submit(exchange, server, HEAD + b'\r\nContent-Length: 100\r\n\r\n{"model"')  # nor the body
        assert [head.result()[0], body.result()[0]] == [408, 408]
    assert time.monotonic() - started < TIMEOUT_S + 5


def test_an_early_answer_leaves_the_connection_usable(server):
    with socket.create_connection(("127.0.0.1", port(server)), timeout=60) as sock:
        for raw, status in [(request(path="/v1/elsewhere"), 404), (request(key="bad"), 401), (request(), 200)]:
            sock.sendall(raw)
            got, _, body = read_answer(sock)
            assert got == status, body
    assert body["choices"][0]["message"]["content"] == JUDGE_ANSWER


def test_clients_gone_before_their_answer_cancel_their_requests(server):
    """A client that leaves while its request decodes ends its row; one that leaves while its request waits has it
    dropped unstarted (no batch runs for it)."""
    cancelled, dropped, batches = server.engine.rows_cancelled, server.batcher.dropped, server.engine.batches
    running = socket.create_connection(("127.0.0.1", port(server)), timeout=60)
    running.sendall(request(body={**GOOD, "temperature": 2.0, "max_tokens": 500}))  # would run 500 tokens
    deadline = time.monotonic() + 60
    while server.engine.batches == batches and time.monotonic() < deadline:
        time.sleep(0.01)
    waiting = socket.create_connection(("127.0.0.1", port(server)), timeout=60)
    waiting.sendall(request())
    while server.batcher.queued() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    waiting.close()
    while not server.batcher.waiting[0].cancelled.is_set() and time.monotonic() < deadline:
        time.sleep(0.001)
    running.close()
    while server.batcher.dropped == dropped and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (server.engine.rows_cancelled, server.batcher.dropped) == (cancelled + 1, dropped + 1)
    assert server.engine.batches == batches + 1


def _streams_dropped_after_their_first_event(server, count: int) -> None:
    """Streams that would run 500 tokens (temperature 2 almost never draws EOS here), each closed by its client
    once its first event came (the later ones may wait for the batch of the earlier ones to end)."""
    socks = [socket.create_connection(("127.0.0.1", port(server)), timeout=60) for _ in range(count)]
    for sock in socks:
        sock.sendall(request(body={**GOOD, "temperature": 2.0, "max_tokens": 500, "stream": True}))
    for sock in socks:
        data = b""
        while b"data: " not in data and (chunk := sock.recv(65536)):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200") and b"data: " in data, data
        sock.close()


def _post_timed(server, raw: bytes) -> tuple[int, dict, object, float]:
    started = time.monotonic()
    return *exchange(server, raw), time.monotonic() - started


def test_load_and_faults_keep_memory_and_latency_bounded(server):
    assert exchange(server, request())[0] == 200  # compiled and warm
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    cancelled = server.engine.rows_cancelled
    started = time.monotonic()
    idle = [socket.create_connection(("127.0.0.1", port(server)), timeout=30) for _ in range(100)]
    assert time.monotonic() - started < 5  # accepted at once (a listen backlog of 5 took 16 s)
    oversized = HEAD + b"\r\nContent-Length: 20000000\r\n\r\n"
    half_sent = HEAD + b"\r\nContent-Length: 100\r\n\r\n{"
    with ThreadPoolExecutor(80) as pool:
        faults = [pool.submit(exchange, server, raw) for raw in [oversized] * 4 + [half_sent] * 4]
        _streams_dropped_after_their_first_event(server, 4)  # before the flood, which would find the queue full
        flood = [pool.submit(_post_timed, server, request()) for _ in range(64)]
        answers = [f.result() for f in flood]
        assert sorted(f.result()[0] for f in faults) == [408] * 4 + [413] * 4
    statuses = sorted({status for status, *_ in answers})
    assert set(statuses) <= {200, 503} and 200 in statuses, statuses
    for status, headers, body, seconds in answers:
        if status == 200:
            assert body["choices"][0]["message"]["content"] == JUDGE_ANSWER and seconds < 60
        else:
            assert headers["retry-after"] == "1" and "busy" in body["error"]["message"]
    _, _, probe, seconds = _post_timed(server, request())  # 100 idle connections still open
    assert probe["choices"][0]["message"]["content"] == JUDGE_ANSWER and seconds < 10
    deadline = time.monotonic() + 10  # the engine sees a cancel between decode chunks
    while server.engine.rows_cancelled < cancelled + 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.engine.rows_cancelled == cancelled + 4  # the dropped streams were no longer decoded
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mb < 200, f"peak RSS grew {grown_mb:.0f} MB"
    for sock in idle:  # idle connections are closed by the server, not held forever
        sock.settimeout(KEEP_ALIVE_S + 10)
        assert sock.recv(1) == b""
        sock.close()
