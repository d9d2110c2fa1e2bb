"""The demo server under abuse, in-process on 127.0.0.1 with a fake predictor: slow and dripping clients,
the connection limit, 50 parallel requests with one model call at a time, the queue timeout, cross-origin
POSTs, malformed requests, and an exception inside the predictor. Every socket has a timeout, every wait
a deadline.

The fake predictor has the interface :class:`~projects.sa2va.app.server.DemoApp` calls (``threshold`` and
``predict(images, prompt, max_new_tokens=)`` returning :class:`Prediction` objects); the real tiny model
behind ``tools/demo_app.py`` is exercised by ``test_demo_app.py``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
from mmengine.logging import MMLogger
from PIL import Image

from projects.sa2va.app import server as server_mod
from projects.sa2va.app.server import DemoApp, DemoHTTPServer, make_server
from projects.sa2va.inference.predictor import Prediction
from tests.app.conftest import ROOT

SOCKET_TIMEOUT_S = 20  # of every client socket: no test can hang on the network


class FakePredictor:
    """Answers ``prompt`` back as the text with one all-0.75 mask after ``delay`` seconds; counts calls and
    the most calls ever running at once; raises ``error`` instead when it is set."""

    threshold = 0.5

    def __init__(self, delay: float = 0.0, error: Exception | None = None) -> None:
        self.delay = delay
        self.error = error
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def predict(self, images: list[np.ndarray], prompt: str, *, max_new_tokens: int) -> list[Prediction]:
        with self._lock:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay)
            if self.error is not None:
                raise self.error
            h, w = images[0].shape[:2]
            probs = np.full((1, h, w), 0.75, np.float32)
            return [Prediction(prompt, probs, probs > 0.5, 0.5, [1, 2], np.zeros((1, 4), np.float32))]
        finally:
            with self._lock:
                self.active -= 1


def png(h: int = 8, w: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@contextmanager
def serving(app: DemoApp, **limits: float) -> Iterator[DemoHTTPServer]:
    """``make_server(app, "127.0.0.1", 0, **limits)`` serving in a thread; shut down on exit."""
    server = make_server(app, "127.0.0.1", 0, **limits)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def connect(server: DemoHTTPServer) -> socket.socket:
    sock = socket.create_connection(server.server_address[:2], timeout=SOCKET_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def parse_answer(raw: bytes) -> tuple[int, dict]:
    """``(status, JSON body)`` of one raw HTTP answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body)


def exchange(server: DemoHTTPServer, raw: bytes, half_close: bool = False) -> tuple[int, dict]:
    """Send ``raw`` on a fresh connection (then close our sending side if ``half_close``) and parse the
    answer; every request here asks the server to close the connection after answering."""
    with connect(server) as sock:
        sock.sendall(raw)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return parse_answer(read_until_closed(sock))


def post(
    server: DemoHTTPServer, query: dict[str, str], body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict]:
    host, port = server.server_address[:2]
    head = [
        f"POST /api/predict?{urllib.parse.urlencode(query)} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return exchange(server, ("\r\n".join(head) + "\r\n\r\n").encode() + body)


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# --- slow clients and the connection limit ---------------------------------------------------------
def test_slow_clients_are_closed_and_threads_stay_bounded() -> None:
    """4 clients (the limit) send half a request and stall: each is closed within the 1 s timeout (plus
    the 0.5 s check interval); 8 more connections meanwhile get an immediate 503 JSON; the thread count
    never exceeds the limit and the server serves normally afterwards."""
    predictor = FakePredictor()
    with serving(DemoApp(predictor), timeout=1.0, max_connections=4) as server:
        base_threads = threading.active_count()
        half = b"POST /api/predict?prompt=x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"
        start = time.monotonic()
        slow = [connect(server) for _ in range(4)]
        for sock in slow:
            sock.sendall(half)
        assert wait_for(lambda: threading.active_count() == base_threads + 4, 5)
        refused = []
        for _ in range(8):
            with connect(server) as sock:
                refused.append(parse_answer(read_until_closed(sock)))
            assert threading.active_count() <= base_threads + 4
        for status, answer in refused:
            assert status == 503 and "its limit (--max-connections)" in answer["error"]
        for sock in slow:
            with sock:
                assert read_until_closed(sock) == b""  # closed without an answer (it sent no request)
        elapsed = time.monotonic() - start
        assert 1.0 <= elapsed < 1.0 + 0.5 + 2.0, elapsed
        assert wait_for(lambda: threading.active_count() == base_threads, 5)
        status, answer = exchange(
            server, b"GET /api/config HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        assert status == 200 and answer["threshold"] == 0.5
    assert predictor.calls == 0


def test_dripping_client_is_closed_at_the_deadline() -> None:
    """A client that sends one byte of its request every 0.1 s never lets a single read wait long; the
    whole-request deadline still closes it after about 1 s; an idle keep-alive connection likewise."""
    with serving(DemoApp(FakePredictor()), timeout=1.0) as server:
        request = b"GET /api/config HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"
        with connect(server) as sock:
            start = time.monotonic()
            sent = 0
            with pytest.raises(OSError):  # a broken pipe or reset once the server has closed
                for byte in request:
                    sock.sendall(bytes([byte]))
                    sent += 1
                    time.sleep(0.1)
                    assert time.monotonic() - start < 5, "the server never closed the dripping client"
            elapsed = time.monotonic() - start
        assert 1.0 <= elapsed < 3.5 and sent < len(request), (elapsed, sent)

        with connect(server) as sock:  # keep-alive: one answer, then idle
            sock.sendall(b"GET /api/config HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            start = time.monotonic()
            raw = read_until_closed(sock)
            elapsed = time.monotonic() - start
        assert raw.startswith(b"HTTP/1.1 200 ") and 1.0 <= elapsed < 3.5, (raw[:20], elapsed)


# --- concurrency of model calls --------------------------------------------------------------------
def test_fifty_parallel_requests_all_answered_one_model_call_at_a_time() -> None:
    predictor = FakePredictor(delay=0.01)
    with serving(DemoApp(predictor), max_connections=64) as server:
        base_threads = threading.active_count()
        peak_threads = [base_threads]
        barrier = threading.Barrier(50, timeout=SOCKET_TIMEOUT_S)

        def one(k: int) -> tuple[int, dict]:
            barrier.wait()
            peak_threads.append(threading.active_count())
            return post(server, {"prompt": f"Segment object {k}."}, png(8 + k % 3, 8))

        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(one, range(50)))
    for k, (status, answer) in enumerate(answers):
        assert status == 200, answer
        assert answer["text"] == f"Segment object {k}." and answer["height"] == 8 + k % 3
        assert answer["mask_pixels"] == [answer["width"] * answer["height"]]
    assert predictor.calls == 50 and predictor.max_active == 1
    assert max(peak_threads) <= base_threads + 50 + 64  # the clients' threads plus at most the limit


def test_a_request_waiting_longer_than_the_queue_timeout_gets_503() -> None:
    predictor = FakePredictor(delay=1.5)
    with serving(DemoApp(predictor, queue_timeout=0.3)) as server:
        barrier = threading.Barrier(4, timeout=SOCKET_TIMEOUT_S)

        def one(k: int) -> tuple[int, dict]:
            barrier.wait()
            return post(server, {"prompt": "Segment."}, png())

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(one, range(4)))
    statuses = sorted(status for status, _ in answers)
    assert statuses[0] == 200 and statuses[-1] == 503 and set(statuses) == {200, 503}, answers
    for status, answer in answers:
        if status == 503:
            assert "the model is busy with another request; waited 0.3 s (--queue-timeout)" in answer["error"]
    assert predictor.max_active == 1 and predictor.calls == statuses.count(200)


# --- cross-origin POSTs ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Origin": "http://evil.example"}, "Origin 'http://evil.example' is not this server"),
        ({"Origin": "null"}, "Origin 'null' is not this server"),
        ({"Origin": "http://127.0.0.1:1"}, "Origin 'http://127.0.0.1:1' is not this server"),
        ({"Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site is 'cross-site'"),
        ({"Origin": "OWN", "Sec-Fetch-Site": "same-site"}, "Sec-Fetch-Site is 'same-site'"),
    ],
    ids=["other-site", "null", "other-port", "sec-fetch-only", "same-site"],
)
def test_cross_origin_post_is_refused(headers: dict[str, str], message: str) -> None:
    predictor = FakePredictor()
    with serving(DemoApp(predictor)) as server:
        own = f"http://127.0.0.1:{server.server_address[1]}"
        headers = {k: own if v == "OWN" else v for k, v in headers.items()}
        status, answer = post(server, {"prompt": "Segment."}, png(), headers)
        assert status == 403 and "cross-origin POST refused" in answer["error"] and message in answer["error"]
        # The demo's own page (as a browser sends it) and a client without these headers are served.
        for allowed in ({"Origin": own, "Sec-Fetch-Site": "same-origin"}, {}):
            status, answer = post(server, {"prompt": "Segment."}, png(), allowed)
            assert status == 200 and answer["text"] == "Segment.", answer
    assert predictor.calls == 2


# --- malformed requests ----------------------------------------------------------------------------
HEAD = "Host: 127.0.0.1\r\nConnection: close\r\n"


@pytest.mark.parametrize(
    ("raw", "half_close", "status", "message"),
    [
        (f"POST /api/predict?prompt=%FF%FE HTTP/1.1\r\n{HEAD}\r\n", False, 400, "not percent-encoded UTF-8"),
        (
            f"POST /api/predict?prompt=Seg%00ment HTTP/1.1\r\n{HEAD}\r\n",
            False,
            400,
            "the prompt has the control character '\\x00' at position 3",
        ),
        (
            f"POST /api/predict?prompt=a&prompt=b HTTP/1.1\r\n{HEAD}\r\n",
            False,
            400,
            "'prompt' given more than once",
        ),
        (f"POST /api/predict?promt=a HTTP/1.1\r\n{HEAD}\r\n", False, 400, "unknown query parameter 'promt'"),
        (
            f"POST /api/predict?prompt=a HTTP/1.1\r\n{HEAD}Content-Type: application/json\r\n"
            f'Content-Length: 15\r\n\r\n{{"prompt": "a"}}',
            False,
            400,
            "takes the image file itself as the body",
        ),
        (
            f"POST /api/predict?prompt=a HTTP/1.1\r\n{HEAD}Content-Type: multipart/form-data; boundary=x\r\n"
            "Content-Length: 0\r\n\r\n",
            False,
            400,
            "not multipart/form-data",
        ),
        (
            f"POST /api/predict?prompt=a HTTP/1.1\r\n{HEAD}Content-Length: ten\r\n\r\n",
            False,
            400,
            "bad Content-Length 'ten'",
        ),
        (
            f"POST /api/predict?prompt=a HTTP/1.1\r\n{HEAD}Content-Length: 10\r\n\r\nab",
            True,
            408,
            "2 of 10 body bytes arrived",
        ),
        (f"GET /a b HTTP/1.1\r\n{HEAD}\r\n", False, 400, "Bad request syntax"),
        (f"PUT / HTTP/1.1\r\n{HEAD}\r\n", False, 501, "Unsupported method ('PUT')"),
    ],
    ids=[
        "not-utf8",
        "control-char",
        "twice",
        "unknown-key",
        "json",
        "multipart",
        "bad-length",
        "short-body",
        "syntax",
        "put",
    ],
)
def test_malformed_requests_are_answered_with_the_problem(
    raw: str, half_close: bool, status: int, message: str
) -> None:
    predictor = FakePredictor()
    with serving(DemoApp(predictor)) as server:
        got_status, answer = exchange(server, raw.encode("latin-1"), half_close=half_close)
    assert got_status == status and message in answer["error"], answer
    assert predictor.calls == 0


# --- unexpected errors -----------------------------------------------------------------------------
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_an_exception_in_the_predictor_answers_500_json_and_logs_the_traceback() -> None:
    predictor = FakePredictor(error=RuntimeError("out of memory (fake)"))
    logger = MMLogger.get_current_instance()
    records = _Records()
    logger.addHandler(records)
    try:
        with serving(DemoApp(predictor)) as server:
            status, answer = post(server, {"prompt": "Segment."}, png())
            assert status == 500
            assert answer == {
                "error": "internal error (RuntimeError: out of memory (fake)); see the server log"
            }
            predictor.error = None  # the server goes on serving
            status, answer = post(server, {"prompt": "Segment."}, png())
            assert status == 200 and answer["text"] == "Segment."
    finally:
        logger.removeHandler(records)
    errors = [r for r in records.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "500 POST /api/predict" in errors[0].getMessage()
    assert errors[0].exc_info and str(errors[0].exc_info[1]) == "out of memory (fake)"


# --- options ---------------------------------------------------------------------------------------
def test_demo_app_limit_options() -> None:
    spec = importlib.util.spec_from_file_location("demo_app_tool_limits", ROOT / "tools/demo_app.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = tool.parse_args(["--config", "c.py"])
    assert args.timeout == server_mod.DEFAULT_TIMEOUT_S
    assert args.max_connections == server_mod.DEFAULT_MAX_CONNECTIONS
    assert args.queue_timeout == server_mod.DEFAULT_QUEUE_TIMEOUT_S
    for bad in (["--timeout", "0"], ["--queue-timeout", "nan"], ["--max-connections", "0"]):
        with pytest.raises(SystemExit) as err:
            tool.parse_args(["--config", "c.py", *bad])
        assert err.value.code == 2
    with pytest.raises(ValueError, match="queue_timeout must be > 0"):
        DemoApp(FakePredictor(), queue_timeout=0)
    with pytest.raises(ValueError, match="max_connections must be >= 1"):
        make_server(DemoApp(FakePredictor()), max_connections=0)
