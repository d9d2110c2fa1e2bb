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
  float32 probabilities), ``seconds``. A bad request gets ``{"error": message}`` with status 400
  (413 for a body over ``max_upload_bytes``), which the page shows.

Nothing is written to disk: uploads are decoded in memory.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from mmengine.logging import MMLogger
from PIL import Image, UnidentifiedImageError

from ..datasets.image_io import to_rgb
from ..datasets.reserved_text import ReservedTextError, check_user_text
from ..inference.io import IMAGE_EXTENSIONS, MASK_COLORS  # overlays as tools/predict.py's
from .page import APP_JS, PAGE_HTML

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_PROMPT",
    "BadRequestError",
    "DemoApp",
    "encode_probs_png",
    "make_server",
]

DEFAULT_PROMPT = "Please segment the blood vessel."
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024
MAX_PROMPT_CHARS = 2000
_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _logger() -> MMLogger:
    return MMLogger.get_current_instance()


class BadRequestError(ValueError):
    """A request the demo refuses; ``status`` is the HTTP status (400, 404 or 413)."""

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
    ) -> None:
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

    def check_prompt(self, prompt: str | None) -> str:
        prompt = (prompt or "").strip()
        if not prompt:
            raise BadRequestError(
                "the prompt is empty; type a question such as 'Please segment the blood vessel.'"
            )
        if len(prompt) > MAX_PROMPT_CHARS:
            raise BadRequestError(f"the prompt has {len(prompt)} characters, more than {MAX_PROMPT_CHARS}")
        try:
            return check_user_text(prompt, "the prompt")
        except ReservedTextError as e:
            raise BadRequestError(str(e)) from None

    def predict(self, image: np.ndarray, prompt: str) -> dict[str, Any]:
        """Run the model on one ``[H, W, 3]`` uint8 image; the JSON answer of ``POST /api/predict``."""
        start = time.perf_counter()
        with self._lock:
            pred = self.predictor.predict([image], prompt, max_new_tokens=self.max_new_tokens)[0]
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


def _make_handler(app: DemoApp, loopback_only: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "Sa2VADemo/1"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            _logger().debug("demo_app: " + format % args)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", _CSP)
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

        def _handle(self, method: str) -> None:
            try:
                self._check_host()
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                if method == "GET" and url.path == "/":
                    self._send(200, PAGE_HTML.encode(), "text/html; charset=utf-8")
                elif method == "GET" and url.path == "/app.js":
                    self._send(200, APP_JS.encode(), "text/javascript; charset=utf-8")
                elif method == "GET" and url.path == "/api/config":
                    self._json(200, app.config())
                elif method == "POST" and url.path == "/api/predict":
                    self._json(200, self._predict(query))
                else:
                    raise BadRequestError(f"no such page: {method} {url.path}", HTTPStatus.NOT_FOUND)
            except BadRequestError as e:
                _logger().warning(f"demo_app: {e.status} {method} {self.path}: {e}")
                self.close_connection = True
                self._json(e.status, {"error": str(e)})

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding"):
                raise BadRequestError("chunked uploads are not supported; send a Content-Length", 411)
            length = self.headers.get("Content-Length")
            if length is None:  # HTTP/1.1: no length and no chunking means no body
                return b""
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
            return self.rfile.read(n)

        def _predict(self, query: dict[str, str]) -> dict[str, Any]:
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


def make_server(app: DemoApp, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Bind the demo (port 0: a free port, read it from ``server.server_address``); call
    ``serve_forever()`` on the result. Requests whose ``Host`` is not a loopback name are refused
    (403) when ``host`` is a loopback address."""
    loopback_only = host in _LOOPBACK_NAMES or host.startswith("127.")
    server = ThreadingHTTPServer((host, port), _make_handler(app, loopback_only))
    server.daemon_threads = True
    return server


def server_url(server: ThreadingHTTPServer) -> str:
    """``http://host:port/`` of a bound server (IPv6 hosts in brackets)."""
    host, port = server.server_address[:2]
    host = str(host)
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
