"""The demo's single page: HTML (:data:`PAGE_HTML`) and its plain JavaScript (:data:`APP_JS`).

The script asks ``/api/config`` for the default threshold and the samples, posts the image (or a sample
name) to ``/api/predict``, decodes the returned PNGs without colour conversion, and renders in canvases:

* the overlay: the image with every mask ``p > t`` blended in, ``round_half_even(0.5 * pixel + 0.5 *
  colour)`` per mask in order, the same arithmetic as :func:`projects.sa2va.evaluation.plots.overlay`
  with ``alpha=0.5``, so the page shows exactly what ``tools/predict.py`` writes at that threshold;
* the probability map: ``max_k p_k`` as grey;
* on every slider move, the overlay and the foreground counts again, without a request.

"Download mask k" saves ``<stem>_mask{k}.png`` (0 / 255, opaque RGBA) built from the current threshold.
``window.sa2vaDemo`` exposes ``maskDataURL(k)`` and ``maskPixels()`` for scripting and tests.
"""

from __future__ import annotations

__all__ = ["APP_JS", "PAGE_HTML"]

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sa2VA demo</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; max-width: 1200px; }
  fieldset { border: 1px solid #ccc; padding: 0.8rem; margin-bottom: 1rem; }
  label { display: inline-block; margin: 0.3rem 1rem 0.3rem 0; }
  #prompt { width: 28rem; max-width: 100%; }
  #error { background: #fde8e8; color: #8a1111; border: 1px solid #e0a0a0; padding: 0.6rem; }
  #status { color: #555; min-height: 1.2em; }
  #answer { font-family: ui-monospace, monospace; background: #f4f4f4; padding: 0.4rem; }
  .panels { display: flex; flex-wrap: wrap; gap: 1rem; }
  .panel { flex: 1 1 360px; }
  .panel canvas { width: 100%; height: auto; border: 1px solid #ccc; image-rendering: pixelated; }
  #threshold { width: 22rem; vertical-align: middle; }
  #downloads a { margin-right: 1rem; }
</style>
</head>
<body>
<h1>Sa2VA referring segmentation</h1>
<form id="predict-form">
  <fieldset>
    <legend>Input</legend>
    <label>Image file <input id="file" type="file" accept="image/*"></label>
    <label>or a sample <select id="sample"><option value="">(none)</option></select></label><br>
    <label>Prompt <input id="prompt" type="text" required></label>
    <button id="run" type="submit">Segment</button>
  </fieldset>
</form>
<div id="error" role="alert" hidden></div>
<div id="status" aria-live="polite"></div>
<section id="result" hidden>
  <p>Answer: <span id="answer"></span></p>
  <p>
    <label for="threshold">Threshold</label>
    <input id="threshold" type="range" min="0" max="1" step="0.0001">
    <output id="threshold-value"></output>
    <button id="reset-threshold" type="button">reset</button>
    <span id="threshold-source"></span>
  </p>
  <p id="mask-stats"></p>
  <div class="panels">
    <div class="panel"><h2>Mask overlay</h2><canvas id="overlay"></canvas></div>
    <div class="panel"><h2>Probability map</h2><canvas id="probmap"></canvas></div>
  </div>
  <p id="downloads"></p>
</section>
<script src="/app.js"></script>
</body>
</html>
"""

APP_JS = r"""
"use strict";
const $ = (id) => document.getElementById(id);
const state = { config: null, result: null, base: null, probs: [], counts: [], stem: "image" };

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function stemOf(name) {
  const base = name.split(/[\\/]/).pop();
  const dot = base.lastIndexOf(".");
  return dot > 0 ? base.slice(0, dot) : base;
}

// numpy's rint: halves go to the even neighbour (values here are >= 0).
function rint(x) {
  const r = Math.round(x);
  return (r - x === 0.5 && r % 2 === 1) ? r - 1 : r;
}

async function decodePng(dataUrl) {
  const bin = atob(dataUrl.slice(dataUrl.indexOf(",") + 1));
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/png" }),
    { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  return ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
}

function threshold() {
  return parseFloat($("threshold").value);
}

function render() {
  const r = state.result;
  if (!r) return;
  const t = threshold();
  $("threshold-value").textContent = t.toFixed(4);
  const n = state.probs.length, npx = r.width * r.height;
  const image = new ImageData(r.width, r.height);
  const out = image.data, base = state.base;
  const counts = new Array(n).fill(0);
  for (let i = 0; i < npx; i++) {
    let red = base[4 * i], green = base[4 * i + 1], blue = base[4 * i + 2];
    for (let k = 0; k < n; k++) {
      if (state.probs[k][i] > t) {
        const c = r.colors[k];
        counts[k]++;
        red = rint(0.5 * red + 0.5 * c[0]);
        green = rint(0.5 * green + 0.5 * c[1]);
        blue = rint(0.5 * blue + 0.5 * c[2]);
      }
    }
    out[4 * i] = red; out[4 * i + 1] = green; out[4 * i + 2] = blue; out[4 * i + 3] = 255;
  }
  const canvas = $("overlay");
  canvas.width = r.width;
  canvas.height = r.height;
  canvas.getContext("2d").putImageData(image, 0, 0);
  state.counts = counts;
  $("mask-stats").textContent = n === 0
    ? "No [SEG] in the answer: no mask."
    : counts.map((c, k) => `mask ${k}: ${c} px (${(100 * c / npx).toFixed(2)}%)`).join(", ");
}

function renderProbMap() {
  const r = state.result, npx = r.width * r.height;
  const image = new ImageData(r.width, r.height);
  for (let i = 0; i < npx; i++) {
    let p = 0;
    for (const probs of state.probs) p = Math.max(p, probs[i]);
    const v = Math.round(255 * p);
    image.data[4 * i] = v; image.data[4 * i + 1] = v; image.data[4 * i + 2] = v; image.data[4 * i + 3] = 255;
  }
  const canvas = $("probmap");
  canvas.width = r.width;
  canvas.height = r.height;
  canvas.getContext("2d").putImageData(image, 0, 0);
}

function maskDataURL(k) {
  const r = state.result;
  if (!r || k < 0 || k >= state.probs.length) throw new Error(`no mask ${k}`);
  const t = threshold(), probs = state.probs[k];
  const image = new ImageData(r.width, r.height);
  for (let i = 0; i < probs.length; i++) {
    const v = probs[i] > t ? 255 : 0;
    image.data[4 * i] = v; image.data[4 * i + 1] = v; image.data[4 * i + 2] = v; image.data[4 * i + 3] = 255;
  }
  const canvas = document.createElement("canvas");
  canvas.width = r.width;
  canvas.height = r.height;
  canvas.getContext("2d").putImageData(image, 0, 0);
  return canvas.toDataURL("image/png");
}

function renderDownloads() {
  const box = $("downloads");
  box.replaceChildren();
  state.probs.forEach((_, k) => {
    const a = document.createElement("a");
    a.id = `download-${k}`;
    a.href = "#";
    a.download = `${state.stem}_mask${k}.png`;
    a.textContent = `Download mask ${k} (PNG)`;
    a.addEventListener("click", () => { a.href = maskDataURL(k); });
    box.appendChild(a);
  });
}

async function show(result) {
  state.result = result;
  state.base = await decodePng(result.image);
  state.probs = [];
  for (const url of result.probs) {
    const px = await decodePng(url);
    const p = new Float32Array(result.width * result.height);
    for (let i = 0; i < p.length; i++) p[i] = (256 * px[4 * i] + px[4 * i + 1]) / 65535;
    state.probs.push(p);
  }
  $("answer").textContent = result.text;
  $("threshold").value = String(result.threshold);
  renderProbMap();
  render();
  renderDownloads();
  $("result").hidden = false;
}

async function run(event) {
  event.preventDefault();
  showError("");
  const prompt = $("prompt").value.trim();
  const file = $("file").files[0];
  const sample = $("sample").value;
  let url = "/api/predict?prompt=" + encodeURIComponent(prompt);
  let body = new Uint8Array(0);
  if (file) {
    if (state.config && file.size > state.config.max_upload_bytes) {
      showError(`${file.name}: ${file.size} bytes, more than the limit of ${state.config.max_upload_bytes}`);
      return;
    }
    url += "&name=" + encodeURIComponent(file.name);
    body = file;
    state.stem = stemOf(file.name);
  } else if (sample) {
    url += "&sample=" + encodeURIComponent(sample);
    state.stem = stemOf(sample);
  } else {
    showError("Choose an image file or a sample first.");
    return;
  }
  $("run").disabled = true;
  $("status").textContent = "Running the model...";
  try {
    const response = await fetch(url, {
      method: "POST", body, headers: { "Content-Type": "application/octet-stream" },
    });
    const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (!response.ok) {
      $("status").textContent = "";
      showError(data.error || `HTTP ${response.status}`);
      return;
    }
    await show(data);
    $("status").textContent = `Done in ${data.seconds} s.`;
  } catch (err) {
    $("status").textContent = "";
    showError(String(err));
  } finally {
    $("run").disabled = false;
  }
}

async function init() {
  const response = await fetch("/api/config");
  const config = await response.json();
  state.config = config;
  $("prompt").value = config.prompt;
  $("threshold").value = String(config.threshold);
  $("threshold-source").textContent = `default ${config.threshold} (${config.threshold_source})`;
  for (const name of config.samples) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name;
    $("sample").appendChild(option);
  }
  $("sample").addEventListener("change", () => { if ($("sample").value) $("file").value = ""; });
  $("file").addEventListener("change", () => { if ($("file").files.length) $("sample").value = ""; });
  $("threshold").addEventListener("input", render);
  $("reset-threshold").addEventListener("click", () => {
    $("threshold").value = String(state.result ? state.result.threshold : config.threshold);
    render();
  });
  $("predict-form").addEventListener("submit", run);
  document.body.dataset.ready = "1";
}

window.sa2vaDemo = { maskDataURL, maskPixels: () => state.counts.slice(), state };
init().catch((err) => showError(`cannot load the demo settings: ${err}`));
"""
