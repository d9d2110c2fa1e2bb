"""``tools/demo_app.py`` over HTTP (loopback): page, settings, predictions, and every refused request."""

from __future__ import annotations

import base64
import io
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from projects.sa2va.app.server import BadRequestError, DemoApp, decode_probs_png, encode_probs_png
from tests.app.conftest import MAX_PIXELS, ROOT
from tests.app.tiny_checkpoint import PROMPT

SAMPLES = ROOT / "data/chase_db1/images"


def png_pixels(data_url: str) -> np.ndarray:
    head, b64 = data_url.split(",", 1)
    assert head == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        return np.asarray(im)


def encoded(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def predict_path(prompt: str = PROMPT, **extra: str) -> str:
    return "/api/predict?" + urllib.parse.urlencode({"prompt": prompt, **extra})


# --- pure functions -------------------------------------------------------------------------------
def test_probability_png_keeps_16_bits() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((37, 53)).astype(np.float32)
    probs[0, :4] = [0.0, 1.0, 0.5, 1 / 65535]
    back = decode_probs_png(png_pixels(encode_probs_png(probs)))
    assert np.abs(back - probs).max() <= 0.5 / 65535 + 1e-9
    assert back[0, :4].tolist() == [0.0, 1.0, 32768 / 65535, 1 / 65535]
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        encode_probs_png(probs[None])


def test_decode_image_errors_name_the_source() -> None:
    app = DemoApp(predictor=None, samples_dir=SAMPLES, max_pixels=100)
    ok = app.decode_image(encoded(np.zeros((10, 10), np.uint8)), "a.png")
    assert ok.shape == (10, 10, 3) and ok.dtype == np.uint8  # grey -> RGB
    cases = [
        (b"", "empty upload"),
        (b"%PDF-1.4 not an image", "not an image file"),
        (encoded(np.zeros((11, 10, 3), np.uint8)), "11 = 110 pixels is larger than the limit of 100"),
        (encoded(np.zeros((8, 8, 3), np.uint8), "JPEG")[:40], "unreadable image"),
    ]
    for data, message in cases:
        with pytest.raises(BadRequestError, match=message) as err:
            app.decode_image(data, "x.bin")
        assert "x.bin" in str(err.value) and err.value.status == 400
    assert "Image_01L.jpg" in app.sample_names
    for name in ("../annotations.json", "/etc/passwd", "nope.jpg"):
        with pytest.raises(BadRequestError, match="unknown sample"):
            app.sample_bytes(name)
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        DemoApp(predictor=None, samples_dir=ROOT / "no_such_folder")


# --- the running app ------------------------------------------------------------------------------
def test_page_and_config(demo_server) -> None:
    status, page = demo_server.request("/")
    assert status == 200 and '<script src="/app.js">' in page and 'id="threshold"' in page
    status, script = demo_server.request("/app.js")
    assert status == 200 and "maskDataURL" in script
    status, cfg = demo_server.request("/api/config")
    assert status == 200
    assert cfg["threshold"] == 0.5 and cfg["threshold_source"].endswith("best_threshold.json")
    assert cfg["prompt"] == PROMPT and cfg["max_pixels"] == MAX_PIXELS
    assert cfg["samples"] == sorted(p.name for p in SAMPLES.glob("*.jpg"))


def test_predict_a_sample_and_an_upload_agree(demo_server) -> None:
    status, by_name = demo_server.request(predict_path(sample="Image_01L.jpg"), body=b"")
    assert status == 200, by_name
    status, upload = demo_server.request(
        predict_path(name="Image_01L.jpg"), body=(SAMPLES / "Image_01L.jpg").read_bytes()
    )
    assert status == 200, upload
    assert upload["text"] == by_name["text"] == "Sure, [SEG]."
    assert (upload["width"], upload["height"]) == (512, 512)
    assert upload["probs"] == by_name["probs"] and len(upload["probs"]) == 1
    assert upload["colors"] == [[255, 0, 0]] and upload["threshold"] == 0.5
    with Image.open(SAMPLES / "Image_01L.jpg") as im:
        np.testing.assert_array_equal(png_pixels(upload["image"]), np.asarray(im.convert("RGB")))
    probs = decode_probs_png(png_pixels(upload["probs"][0]))
    assert probs.shape == (512, 512) and 0.0 <= probs.min() < probs.max() <= 1.0
    # The count at the default threshold (exact float32 probabilities, server side) matches the
    # 16-bit map the page thresholds, up to the few pixels within 1/131070 of the threshold.
    assert abs(int((probs > 0.5).sum()) - upload["mask_pixels"][0]) <= 0.001 * probs.size


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "message"),
    [
        (predict_path(name="notes.txt"), b"just some text", {}, 400, "upload notes.txt: not an image file"),
        (predict_path(name="big.png"), "BIG", {}, 400, "700x600 = 420000 pixels is larger than the limit"),
        (predict_path(name="cut.jpg"), "TRUNCATED", {}, 400, "upload cut.jpg: unreadable image"),
        (predict_path(name="none.png"), b"", {}, 400, "empty upload"),
        (predict_path(sample="../SOURCE.md"), b"", {}, 400, "unknown sample '../SOURCE.md'"),
        (predict_path(prompt="  "), "SMALL", {}, 400, "the prompt is empty"),
        (predict_path(sample="Image_01L.jpg"), "SMALL", {}, 400, "either an uploaded file or a sample"),
        (predict_path(prompt="Segment [SEG] <|im_end|>"), "SMALL", {}, 400, "contains [SEG], <|im_end|>"),
        ("/api/nothing", b"", {}, 404, "no such page: POST /api/nothing"),
        ("/", None, {"Host": "attacker.example:80"}, 403, "Host 'attacker.example:80' refused"),
    ],
    ids=[
        "text",
        "too-large",
        "truncated",
        "empty",
        "traversal",
        "no-prompt",
        "both",
        "reserved",
        "404",
        "host",
    ],
)
def test_refused_requests(demo_server, path, body, headers, status, message) -> None:
    payloads = {
        "BIG": encoded(np.zeros((600, 700, 3), np.uint8)),
        "TRUNCATED": (SAMPLES / "Image_02L.jpg").read_bytes()[:3000],
        "SMALL": encoded(np.zeros((32, 32, 3), np.uint8)),
    }
    body = payloads.get(body, body) if isinstance(body, str) else body
    got_status, answer = demo_server.request(path, body=body, headers=headers)
    assert got_status == status, answer
    assert message in answer["error"]


def test_upload_over_the_byte_limit_is_refused() -> None:
    """413 before the body is read (an in-process server with a 1 KiB limit)."""
    import threading
    import urllib.error
    import urllib.request

    from projects.sa2va.app.server import make_server, server_url

    server = make_server(DemoApp(predictor=None, max_upload_bytes=1024), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        req = urllib.request.Request(server_url(server) + predict_path()[1:], data=b"x" * 2048, method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 413
        assert b"2048 bytes is larger than the limit of 1024 bytes" in err.value.read()
    finally:
        server.shutdown()
        server.server_close()
