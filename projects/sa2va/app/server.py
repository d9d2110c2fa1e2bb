"""The web demo's back-end: a stdlib HTTP server around one :class:`Sa2VAPredictor`.

Why the standard library and not Gradio: the demo needs one form, three images and a slider. Gradio
would add a large dependency tree (FastAPI, uvicorn, a front-end bundle, ...) to a toolkit that pins
every package, and by default it reports usage analytics and fetches resources from the internet,
which a medical-imaging workstation often must not do. ``http.server.ThreadingHTTPServer`` plus one
HTML page with plain JavaScript (:mod:`.page`) needs nothing beyond what is installed, talks only to
the address it serves, and keeps the threshold slider instant: the probability map is sent once and
thresholded in the browser, so moving the slider never re-runs the model.

Endpoints (all same-origin; the page is served with a strict Content-Security-Policy):

* ``GET /`` the page; ``GET /app.js`` its script;
* ``GET /api/config`` ``{"threshold", "threshold_source", "prompt", "samples", "max_pixels",
  "max_upload_bytes"}``;
* ``POST /api/predict?prompt=P`` with the raw image file as the body, or ``?prompt=P&sample=NAME`` with
  an empty body for a bundled sample image. Answer (JSON): ``text``, ``width``, ``height``, ``image``
  (the RGB image the model saw, a PNG data URL), ``probs`` (one PNG data URL per generated ``[SEG]``,
  see :func:`encode_probs_png`), ``colors`` (overlay colour per mask), ``threshold`` (the default),
  ``mask_pixels`` (foreground pixels of each mask at the default threshold, computed here from the
  float32 probabilities), ``seconds``. The query takes only ``prompt``, ``sample`` and ``name``, each
  at most once, percent-encoded UTF-8; the body is the file itself (a JSON or multipart body is
  refused).

Every refusal and failure is answered with ``{"error": message}`` and a status, which the page shows:
400 for a bad request (the message names the problem: an empty or reserved-marker prompt, a prompt with
control characters or not in UTF-8, an unknown query parameter, a JSON body, an unreadable image, ...),
413 for a body over ``max_upload_bytes``, 403 for a refused ``Host`` or ``Origin``, 408 for a body
cut short or not received in time (if the connection is still open), 503 when busy (below), and 500
for an unexpected error inside the server before its answer was started (the traceback goes to the
log; the request is answered, not dropped).

Limits (``tools/demo_app.py`` options in brackets):

* ``timeout`` (``--timeout``, default 30 s): a client must send a whole request (request line,
  headers and body) within this time, counted from when the server starts waiting for it (an idle
  keep-alive connection included), and must take the whole answer within this time; otherwise its
  connection is closed. The deadline is checked by the serving loop about every 0.5 s; each socket
  read or write also has this timeout.
* ``max_connections`` (``--max-connections``, default 32): at most this many connections are served
  at once, one thread each, so the server runs at most this many connection threads besides the
  serving loop; a connection beyond the limit is answered 503 and closed at once.
* model calls: one at a time (the predictor is not written for concurrent calls). A request waits for
  the model at most ``queue_timeout`` (``--queue-timeout``, default 120 s), then gets 503. Waiting
  requests are bounded by ``max_connections``.
* cross-origin POSTs: a POST whose ``Origin`` header is not this server's own origin (``http://``
  plus the request's ``Host``), or whose ``Sec-Fetch-Site`` header is present and neither
  ``same-origin`` nor ``none``, gets 403, so a page of another site cannot run the model through the
  visitor's browser. The demo's own page and clients that send neither header (curl, Python) are
  served.

Nothing is written to disk: uploads are decoded in memory.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import sys
import threading
import time
import unicodedata
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from mmengine.logging import MMLogger
from PIL import Image, UnidentifiedImageError

from ..datasets.image_io import to_rgb
from ..datasets.reserved_text import ReservedTextError, check_user_text
from ..inference.io import IMAGE_EXTENSIONS, MASK_COLORS  # overlays as tools/predict.py's
from .page import APP_JS, PAGE_HTML

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_PROMPT",
    "DEFAULT_QUEUE_TIMEOUT_S",
    "DEFAULT_TIMEOUT_S",
    "BadRequestError",
    "DemoApp",
    "DemoHTTPServer",
    "encode_probs_png",
    "make_server",
]

DEFAULT_PROMPT = "Please segment the blood vessel."
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024
MAX_PROMPT_CHARS = 2000
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_CONNECTIONS = 32
DEFAULT_QUEUE_TIMEOUT_S = 120.0
QUERY_KEYS = ("prompt", "sample", "name")  # of POST /api/predict
_PROMPT_CONTROLS_ALLOWED = "\n\r\t"
_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _logger() -> MMLogger:
    return MMLogger.get_current_instance()


class BadRequestError(ValueError):
    """A request the demo refuses or cannot serve now; ``status`` is the HTTP status (400, 403, 404,
    408, 411, 413 or 503)."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = int(status)


def _png_data_url(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def encode_probs_png(probs: np.ndarray) -> str:
    """One probability map as a PNG data URL with 16 bits of precision.

    Args:
        probs: ``[H, W]`` float probabilities in ``[0, 1]``.

    Returns:
        an RGB PNG (data URL) with ``q = round(65535 * p)`` split into red (``q >> 8``) and green
        (``q & 255``); blue is 0. The page decodes ``p = (256 * r + g) / 65535`` without colour
        conversion, so a threshold set in the browser matches ``probs > t`` to within ``1 / 131070``.
    """
    if probs.ndim != 2:
        raise ValueError(f"probs must be [H, W], got shape {probs.shape}")
    q = np.rint(np.clip(probs.astype(np.float64), 0.0, 1.0) * 65535.0).astype(np.uint16)
    rgb = np.zeros((*q.shape, 3), dtype=np.uint8)
    rgb[..., 0] = (q >> 8).astype(np.uint8)
    rgb[..., 1] = (q & 0xFF).astype(np.uint8)
    return _png_data_url(rgb)


def decode_probs_png(rgb: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_probs_png` on the decoded ``[H, W, 3]`` uint8 pixels -> ``[H, W]`` float64."""
    return (rgb[..., 0].astype(np.float64) * 256.0 + rgb[..., 1]) / 65535.0


class DemoApp:
    """What the server does, independent of HTTP: list samples, check uploads, run the predictor.

    Args:
        predictor: a :class:`~projects.sa2va.inference.predictor.Sa2VAPredictor` (its ``threshold`` is
            the slider's default). Calls are serialised with a lock: one prediction at a time.
        queue_timeout: longest wait in seconds for the model while another request uses it; then
            :meth:`predict` raises a 503 :class:`BadRequestError`.
        samples_dir: folder of images offered as samples (not recursive); ``None``: no samples.
        max_pixels: largest accepted ``width * height`` of an image.
        max_upload_bytes: largest accepted request body.
        prompt: the prompt pre-filled on the page.
        max_new_tokens: generation budget per request.
        threshold_source: where the default threshold comes from, shown on the page.
    """

    def __init__(
        self,
        predictor: Any,
        *,
        samples_dir: str | Path | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        prompt: str = DEFAULT_PROMPT,
        max_new_tokens: int = 64,
        threshold_source: str = "default",
        queue_timeout: float = DEFAULT_QUEUE_TIMEOUT_S,
    ) -> None:
        if queue_timeout <= 0:
            raise ValueError(f"queue_timeout must be > 0, got {queue_timeout}")
        if max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
        if max_upload_bytes < 1:
            raise ValueError(f"max_upload_bytes must be >= 1, got {max_upload_bytes}")
        self.predictor = predictor
        self.max_pixels = int(max_pixels)
        self.max_upload_bytes = int(max_upload_bytes)
        self.prompt = prompt
        self.max_new_tokens = int(max_new_tokens)
        self.threshold_source = threshold_source
        self.queue_timeout = float(queue_timeout)
        self._lock = threading.Lock()
        self._samples: dict[str, Path] = {}
        if samples_dir is not None:
            folder = Path(samples_dir)
            if not folder.is_dir():
                raise FileNotFoundError(f"samples folder {folder} not found")
            self._samples = {
                p.name: p
                for p in sorted(folder.iterdir())
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            }

    @property
    def threshold(self) -> float:
        return float(self.predictor.threshold)

    @property
    def sample_names(self) -> list[str]:
        return list(self._samples)

    def config(self) -> dict[str, Any]:
        """The page's start-up settings (``GET /api/config``)."""
        return {
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "prompt": self.prompt,
            "samples": self.sample_names,
            "max_pixels": self.max_pixels,
            "max_upload_bytes": self.max_upload_bytes,
        }

    def sample_bytes(self, name: str) -> bytes:
        """The file of a listed sample; any other name (paths included) is refused."""
        path = self._samples.get(name)
        if path is None:
            raise BadRequestError(
                f"unknown sample {name!r}; samples: {', '.join(self.sample_names) or 'none'}"
            )
        return path.read_bytes()

    def decode_image(self, data: bytes, source: str) -> np.ndarray:
        """Check and decode an uploaded file -> ``[H, W, 3]`` uint8 RGB.

        Raises:
            BadRequestError: empty, not an image, larger than ``max_pixels``, or not decodable; the message
                names ``source``.
        """
        if not data:
            raise BadRequestError(f"{source}: empty upload; choose an image file or a sample")
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > self.max_pixels:
                    raise BadRequestError(
                        f"{source}: image of {w}x{h} = {w * h} pixels is larger than the limit of "
                        f"{self.max_pixels} pixels (--max-pixels)"
                    )
                im.load()  # the whole image: a truncated upload fails here
                rgb = np.asarray(to_rgb(im, source))  # the toolkit's one rule (datasets/image_io.py)
        except BadRequestError:
            raise
        except UnidentifiedImageError:
            raise BadRequestError(f"{source}: not an image file (PIL cannot identify its format)") from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise BadRequestError(f"{source}: unreadable image ({e})") from None
        if rgb.size == 0:
            raise BadRequestError(f"{source}: image has no pixels ({w}x{h})")
        return np.ascontiguousarray(rgb)

    @staticmethod
    def parse_query(query: str) -> dict[str, str]:
        """The query string of ``POST /api/predict`` -> ``{key: value}``.

        Raises:
            BadRequestError: not percent-encoded UTF-8, a key other than :data:`QUERY_KEYS`, or a key
                given twice.
        """
        try:
            pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError as e:
            raise BadRequestError(f"the query string is not percent-encoded UTF-8 ({e})") from None
        out: dict[str, str] = {}
        for key, value in pairs:
            if key not in QUERY_KEYS:
                raise BadRequestError(f"unknown query parameter {key!r}; known: {', '.join(QUERY_KEYS)}")
            if key in out:
                raise BadRequestError(f"query parameter {key!r} given more than once")
            out[key] = value
        return out

    def check_prompt(self, prompt: str | None) -> str:
        prompt = (prompt or "").strip()
        if not prompt:
            raise BadRequestError(
                "the prompt is empty; type a question such as 'Please segment the blood vessel.'"
            )
        if len(prompt) > MAX_PROMPT_CHARS:
            raise BadRequestError(f"the prompt has {len(prompt)} characters, more than {MAX_PROMPT_CHARS}")
        for i, c in enumerate(prompt):
            if unicodedata.category(c) == "Cc" and c not in _PROMPT_CONTROLS_ALLOWED:
                raise BadRequestError(
                    f"the prompt has the control character {c!r} at position {i}; remove it"
                )
        try:
            return check_user_text(prompt, "the prompt")
        except ReservedTextError as e:
            raise BadRequestError(str(e)) from None

    def predict(self, image: np.ndarray, prompt: str) -> dict[str, Any]:
        """Run the model on one ``[H, W, 3]`` uint8 image; the JSON answer of ``POST /api/predict``."""
        start = time.perf_counter()
        if not self._lock.acquire(timeout=self.queue_timeout):
            raise BadRequestError(
                f"the model is busy with another request; waited {self.queue_timeout:g} s "
                "(--queue-timeout); try again",
                HTTPStatus.SERVICE_UNAVAILABLE,
            )
        try:
            pred = self.predictor.predict([image], prompt, max_new_tokens=self.max_new_tokens)[0]
        finally:
            self._lock.release()
        seconds = time.perf_counter() - start
        h, w = image.shape[:2]
        _logger().info(
            f"demo_app: {w}x{h} image, {pred.num_masks} mask(s) in {seconds:.2f} s, text {pred.text!r}"
        )
        return {
            "text": pred.text,
            "width": int(w),
            "height": int(h),
            "image": _png_data_url(image),
            "probs": [encode_probs_png(p) for p in pred.probs],
            "colors": [list(MASK_COLORS[k % len(MASK_COLORS)]) for k in range(pred.num_masks)],
            "threshold": float(pred.threshold),
            "mask_pixels": [int(m.sum()) for m in pred.masks],
            "seconds": round(seconds, 3),
        }


class DemoHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with a connection limit and per-connection deadlines.

    Args:
        address: ``(host, port)`` to bind.
        handler: the request handler class (:func:`_make_handler`).
        max_connections: connections served at once (one thread each); the next one is answered 503.
        timeout: seconds a connection may take to send a request or take an answer (see
            :meth:`arm`); the serving loop closes it after that.
    """

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.max_connections = int(max_connections)
        self.io_timeout = float(timeout)  # ``timeout`` is BaseServer's handle_request() timeout
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self.request_queue_size = max(5, self.max_connections)  # listen backlog: a burst is not delayed
        self._guard = threading.Lock()
        self._deadlines: dict[socket.socket, float] = {}
        self._expired: set[socket.socket] = set()
        super().__init__(address, handler)

    # --- deadlines: checked by serve_forever() after each poll (every 0.5 s at most) -------------
    def arm(self, sock: socket.socket) -> None:
        """Close ``sock`` unless :meth:`disarm` is called within ``timeout`` seconds from now."""
        with self._guard:
            self._deadlines[sock] = time.monotonic() + self.io_timeout

    def disarm(self, sock: socket.socket) -> bool:
        """Stop the deadline of ``sock``; ``True`` if it had already passed (the socket is shut down)."""
        with self._guard:
            self._deadlines.pop(sock, None)
            expired = sock in self._expired
            self._expired.discard(sock)
        return expired

    def service_actions(self) -> None:
        super().service_actions()
        now = time.monotonic()
        with self._guard:
            late = [s for s, t in self._deadlines.items() if t <= now]
            for s in late:
                del self._deadlines[s]
                self._expired.add(s)
        for s in late:
            with contextlib.suppress(OSError):
                peer = s.getpeername()[0]
                _logger().warning(
                    f"demo_app: closing the connection from {peer}: no whole request sent or answer "
                    f"taken within {self.io_timeout:g} s (--timeout)"
                )
                s.shutdown(socket.SHUT_RDWR)  # the handler's blocked read or write returns

    # --- connection limit ------------------------------------------------------------------------
    def process_request(self, request: socket.socket, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse_busy(request, client_address)
            return
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse_busy(self, request: socket.socket, client_address: Any) -> None:
        message = (
            f"the demo is serving {self.max_connections} connections, its limit (--max-connections); "
            "try again"
        )
        _logger().warning(f"demo_app: 503 to {client_address[0]}: {message}")
        body = json.dumps({"error": message}).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            request.settimeout(1.0)  # a few hundred bytes into a fresh socket's buffer: no wait
            request.sendall(head.encode() + body)
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """An exception that left a connection's handler: a client that went away or timed out is
        logged at debug level, anything else with its traceback (never printed to stderr)."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            _logger().debug(f"demo_app: connection from {client_address[0]} ended: {error!r}")
        else:
            _logger().error(f"demo_app: error on the connection from {client_address[0]}", exc_info=True)


def _make_handler(app: DemoApp, loopback_only: bool, io_timeout: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server: DemoHTTPServer
        server_version = "Sa2VADemo/1"
        protocol_version = "HTTP/1.1"
        timeout = io_timeout  # of each socket read and write (StreamRequestHandler.setup)

        def log_message(self, format: str, *args: Any) -> None:
            _logger().debug("demo_app: " + format % args)

        def handle_one_request(self) -> None:
            self._answered = False
            self.server.arm(self.connection)  # the whole request must arrive in time
            super().handle_one_request()

        def finish(self) -> None:
            self.server.disarm(self.connection)
            super().finish()

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """http.server's own refusals (bad request line, headers too long, unknown method) as JSON."""
            _logger().warning(f"demo_app: {int(code)} {self.requestline!r}: {message}")
            self.close_connection = True
            self._json(code, {"error": message or HTTPStatus(code).phrase})

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self._answered = True
            self.server.arm(self.connection)  # the whole answer must be taken in time
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", _CSP)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8")

        def _check_host(self) -> None:
            # A page from another site cannot reach a loopback-bound demo through DNS rebinding.
            if not loopback_only:
                return
            host = urlsplit("//" + (self.headers.get("Host") or "")).hostname or ""
            if host not in _LOOPBACK_NAMES and f"[{host}]" not in _LOOPBACK_NAMES:
                raise BadRequestError(f"Host {self.headers.get('Host')!r} refused", HTTPStatus.FORBIDDEN)

        def _check_origin(self) -> None:
            # Browsers send Origin (and Sec-Fetch-Site) with every POST; a page of another site must
            # not run the model through its visitor's browser.
            own = "http://" + (self.headers.get("Host") or "")
            origin = self.headers.get("Origin")
            if origin is not None and origin.lower() != own.lower():
                raise BadRequestError(
                    f"cross-origin POST refused: Origin {origin!r} is not this server ({own})",
                    HTTPStatus.FORBIDDEN,
                )
            site = self.headers.get("Sec-Fetch-Site")
            if site is not None and site.lower() not in ("same-origin", "none"):
                raise BadRequestError(
                    f"cross-origin POST refused: Sec-Fetch-Site is {site!r}", HTTPStatus.FORBIDDEN
                )

        def _handle(self, method: str) -> None:
            try:
                self._check_host()
                if method == "POST":
                    self._check_origin()
                url = urlsplit(self.path)
                if method == "GET" and url.path == "/":
                    self._send(200, PAGE_HTML.encode(), "text/html; charset=utf-8")
                elif method == "GET" and url.path == "/app.js":
                    self._send(200, APP_JS.encode(), "text/javascript; charset=utf-8")
                elif method == "GET" and url.path == "/api/config":
                    self._json(200, app.config())
                elif method == "POST" and url.path == "/api/predict":
                    self._json(200, self._predict(url.query))
                else:
                    raise BadRequestError(f"no such page: {method} {url.path}", HTTPStatus.NOT_FOUND)
            except BadRequestError as e:
                _logger().warning(f"demo_app: {e.status} {method} {self.path}: {e}")
                self.close_connection = True
                self._json(e.status, {"error": str(e)})
            except Exception as e:
                self.close_connection = True
                if self._answered:  # failed while writing the answer: the client went away or was slow
                    raise
                _logger().error(f"demo_app: 500 {method} {self.path}: unexpected error", exc_info=True)
                self._json(500, {"error": f"internal error ({type(e).__name__}: {e}); see the server log"})

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding"):
                raise BadRequestError("chunked uploads are not supported; send a Content-Length", 411)
            length = self.headers.get("Content-Length")
            n = 0  # HTTP/1.1: no length and no chunking means no body
            if length is not None:
                try:
                    n = int(length)
                except ValueError:
                    raise BadRequestError(f"bad Content-Length {length!r}") from None
            if n < 0:
                raise BadRequestError(f"bad Content-Length {length!r}")
            if n > app.max_upload_bytes:
                raise BadRequestError(
                    f"upload of {n} bytes is larger than the limit of {app.max_upload_bytes} bytes",
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                )
            try:
                data = self.rfile.read(n) if n else b""
            except TimeoutError:
                data = b""
            # Past this point the model may run for longer than the timeout: the deadline stops here.
            if self.server.disarm(self.connection) or len(data) < n:
                raise BadRequestError(
                    f"the request was not received within {io_timeout:g} s (--timeout): "
                    f"{len(data)} of {n} body bytes arrived",
                    HTTPStatus.REQUEST_TIMEOUT,
                )
            return data

        def _predict(self, query_string: str) -> dict[str, Any]:
            query = app.parse_query(query_string)
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype == "application/json" or ctype.startswith("multipart/"):  # not the page's request
                raise BadRequestError(
                    f"POST /api/predict takes the image file itself as the body and the prompt in the "
                    f"query (?prompt=...), not {ctype}"
                )
            body = self._read_body()
            prompt = app.check_prompt(query.get("prompt"))
            sample = query.get("sample")
            if sample and body:
                raise BadRequestError("send either an uploaded file or a sample name, not both")
            if sample:
                image = app.decode_image(app.sample_bytes(sample), f"sample {sample}")
            else:
                image = app.decode_image(body, f"upload {query.get('name') or '(unnamed)'}")
            return app.predict(image, prompt)

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

    return Handler


def make_server(
    app: DemoApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> DemoHTTPServer:
    """Bind the demo (port 0: a free port, read it from ``server.server_address``); call
    ``serve_forever()`` on the result. Requests whose ``Host`` is not a loopback name are refused
    (403) when ``host`` is a loopback address. ``timeout`` and ``max_connections``: see
    :class:`DemoHTTPServer` and the module docstring."""
    loopback_only = host in _LOOPBACK_NAMES or host.startswith("127.")
    return DemoHTTPServer(
        (host, port),
        _make_handler(app, loopback_only, float(timeout)),
        max_connections=max_connections,
        timeout=timeout,
    )


def server_url(server: ThreadingHTTPServer) -> str:
    """``http://host:port/`` of a bound server (IPv6 hosts in brackets)."""
    host, port = server.server_address[:2]
    host = str(host)
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
