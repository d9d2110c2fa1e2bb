"""The demo page in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven
with selenium, against ``tools/demo_app.py`` on the tiny overfit model.

A user uploads a bundled image, submits the prompt, sees the answer, the overlay and the probability map;
the overlay equals ``projects.sa2va.evaluation.plots.overlay`` of ``probs > t`` pixel for pixel at two
slider positions, the slider changes the downloadable mask without a new request, and a non-image upload
shows the server's error on the page. A screenshot is kept in ``work_dirs/test_artifacts/demo_app.png``.
Skipped (with the reason) where Chromium or selenium is missing, except on CI (``CI`` set), where
``.ci/run`` installs Chromium and a missing browser is a failure.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from projects.sa2va.app.server import decode_probs_png
from projects.sa2va.evaluation.plots import overlay
from tests.app.conftest import ROOT
from tests.app.tiny_checkpoint import PROMPT

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SAMPLE = ROOT / "data/chase_db1/images/Image_01L.jpg"
SCREENSHOT = ROOT / "work_dirs/test_artifacts/demo_app.png"
WAIT_S = 60


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} not found (apt-get install -y {package}; .ci/run does this on CI)"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator:
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run on CI: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium_profile")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--window-size=1280,1300",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def canvas_pixels(driver, element_id: str) -> np.ndarray:
    url = driver.execute_script(f"return document.getElementById('{element_id}').toDataURL('image/png');")
    return png_rgb(url)


def png_rgb(data_url: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as im:
        return np.asarray(im.convert("RGB"))


def set_threshold(driver, value: float) -> float:
    """As a user dragging the slider: set the value, fire ``input``; returns the value the slider took
    (it snaps to its step, 0.0001)."""
    return float(
        driver.execute_script(
            "const s = document.getElementById('threshold'); s.value = arguments[0];"
            "s.dispatchEvent(new Event('input', {bubbles: true})); return s.value;",
            str(value),
        )
    )


def test_upload_segment_and_move_the_threshold(browser, demo_server) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, WAIT_S)
    driver.get(demo_server.url)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert driver.find_element(By.ID, "prompt").get_attribute("value") == PROMPT
    samples = [o.text for o in driver.find_elements(By.CSS_SELECTOR, "#sample option")]
    assert "Image_01L.jpg" in samples

    # Upload a bundled image (through the file input, as a user would) and run the model.
    driver.find_element(By.ID, "file").send_keys(str(SAMPLE))
    driver.find_element(By.ID, "run").click()
    wait.until(ec.visibility_of_element_located((By.ID, "result")))
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("Done"))
    assert driver.find_element(By.ID, "answer").text == "Sure, [SEG]."
    assert driver.find_element(By.ID, "error").is_displayed() is False
    assert float(driver.find_element(By.ID, "threshold").get_attribute("value")) == 0.5

    # What the page decoded must be what the server sent; the overlay must equal plots.overlay.
    status, answer = demo_server.request(
        "/api/predict?" + urllib.parse.urlencode({"prompt": PROMPT, "name": SAMPLE.name}),
        body=SAMPLE.read_bytes(),
    )
    assert status == 200, answer
    probs = decode_probs_png(png_rgb(answer["probs"][0])).astype(np.float32)
    with Image.open(SAMPLE) as im:
        image = np.asarray(im.convert("RGB"))
    probmap = canvas_pixels(driver, "probmap")[..., 0]
    np.testing.assert_array_equal(probmap, np.rint(probs.astype(np.float64) * 255).astype(np.uint8))

    counts, masks = {}, {}
    for q in (0.2, 0.8):
        t = set_threshold(driver, float(np.quantile(probs, q)))
        expected = overlay(image, probs > np.float32(t), color=(255, 0, 0), alpha=0.5)
        np.testing.assert_array_equal(canvas_pixels(driver, "overlay"), expected)
        counts[t] = driver.execute_script("return window.sa2vaDemo.maskPixels();")[0]
        mask_url = driver.execute_script("return window.sa2vaDemo.maskDataURL(0);")
        masks[t] = png_rgb(mask_url)[..., 0]
        np.testing.assert_array_equal(masks[t] == 255, probs > np.float32(t))
        assert counts[t] == int((probs > np.float32(t)).sum())
        assert f"mask 0: {counts[t]} px" in driver.find_element(By.ID, "mask-stats").text
    low, high = sorted(counts)
    assert counts[low] > counts[high] > 0
    assert (masks[low] != masks[high]).any()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOT))  # at the high threshold

    # Keyboard on the slider: End -> threshold 1, nothing is above it.
    driver.find_element(By.ID, "threshold").send_keys(Keys.END)
    assert driver.find_element(By.ID, "threshold-value").text == "1.0000"
    assert driver.execute_script("return window.sa2vaDemo.maskPixels();") == [0]
    np.testing.assert_array_equal(canvas_pixels(driver, "overlay"), image)
    link = driver.find_element(By.ID, "download-0")
    assert link.get_attribute("download") == "Image_01L_mask0.png"


def test_a_non_image_upload_shows_the_error(browser, demo_server, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(demo_server.url)
    wait = WebDriverWait(driver, WAIT_S)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a picture")
    driver.find_element(By.ID, "file").send_keys(str(bad))
    driver.find_element(By.ID, "run").click()
    wait.until(ec.visibility_of_element_located((By.ID, "error")))
    assert "upload notes.png: not an image file" in driver.find_element(By.ID, "error").text
    assert not driver.find_element(By.ID, "result").is_displayed()
    shutil.rmtree(tmp_path, ignore_errors=True)
