"""``pgn app``: a web page that shows input-space adaptation to a person.

The page's server is the *client* of the model: it holds the exported adapter (generator and prompt
library, and a linear head unless the model's own head scores), composes the prompted canvas, and
calls the unmodified model's API (``pgn serve``). The model server stays prompt-free. For each image
the page shows the image, the canvas the model receives, and the model's answer with the adapter and
without it (the plain image, resized to the model's input, sent to the same API).

Endpoints: ``GET /`` the page; ``GET /samples`` and ``GET /samples/{i}`` example images;
``POST /classify`` (multipart ``file``) -> ``{"image", "canvas", "with", "without", "model"}``.
"""
from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, File, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..errors import EndpointError, PGNError
from ..web.uploads import BodySizeLimit, Reject, error, install_error_handlers, read_image
from .remote import RemoteClassifier

log = logging.getLogger(__name__)
__all__ = ["create_page_app", "run_app"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_UPLOAD_BYTES = 10 * 2**20


def _data_url(pixels: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _top(scores: torch.Tensor, names: list[str], k: int = 3) -> list[dict]:
    probs = scores.float().softmax(-1)
    top = probs.topk(min(k, probs.numel()))
    return [{"label": names[int(i)], "probability": round(float(p), 4)} for p, i in zip(top.values, top.indices)]


def create_page_app(remote: RemoteClassifier, samples: list[tuple[str, bytes]] | None = None,
                    max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    """The page and its JSON endpoint, around a :class:`RemoteClassifier` (adapter + model API).

    ``samples``: (name, PNG/JPEG bytes) of example images the page offers to pick from.
    """
    adapter = remote.adapter
    tf = remote.transform
    samples = list(samples or [])
    server = remote.client.info()
    app = FastAPI(title="pgn: input-space adaptation", version="1")

    # The model server's own upload handling: the body cap, one-line JSON errors, the header-first decode.
    app.add_middleware(BodySizeLimit, max_bytes=max_upload_bytes)
    install_error_handlers(app, max_upload_bytes, fields="'file'")

    def classify(data: bytes) -> dict:
        pil = read_image(data, "the upload", formats=None)  # any format Pillow reads: the page resizes it
        x = tf(pil).unsqueeze(0)  # (1, 3, S, S) normalised, the adapter's preprocessing
        canvas = remote.canvases(x)
        plain = adapter.to_uint8(x)  # what the model would receive without the adapter
        with_adapter = remote.scores_of_pngs(adapter.png_bytes(canvas))[0]
        without = remote.scores_of_pngs(adapter.png_bytes(plain))[0]
        return {"image": _data_url(plain[0]), "canvas": _data_url(canvas[0]),
                "with": _top(with_adapter, remote.class_names), "without": _top(without, remote.class_names),
                "model": server.get("backbone"),
                "head": adapter.head_description}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.replace("{{title}}", f"{server.get('backbone')} adapted to {adapter.config.dataset or 'your task'}")

    @app.get("/samples")
    def sample_list() -> dict:
        return {"samples": [name for name, _ in samples]}

    @app.get("/samples/{index}")
    def sample(index: int) -> Response:
        if not 0 <= index < len(samples):
            return error(404, f"no sample {index}; there are {len(samples)}")
        name, data = samples[index]
        return Response(data, media_type="image/jpeg" if name.lower().endswith((".jpg", ".jpeg")) else "image/png")

    @app.post("/classify")
    async def classify_upload(file: UploadFile | None = File(None, description="one image")):
        if file is None:
            raise Reject(422, "no image: send multipart/form-data with field 'file'")
        data = await file.read()
        try:
            return JSONResponse(await run_in_threadpool(classify, data))
        except EndpointError as e:  # the model's API failed, or answered outside the contract
            return error(502, str(e))
        except PGNError as e:  # the upload itself: not an image, too large once resized, ...
            return error(422, str(e))

    return app


def sample_files(directory: str | Path) -> list[tuple[str, bytes]]:
    """The images of a directory (at most 24), as (name, bytes)."""
    d = Path(directory)
    if not d.is_dir():
        raise PGNError(f"`samples` {d} is not a directory of images")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PGNError(f"`samples` {d} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return [(p.name, p.read_bytes()) for p in files[:24]]


def dataset_samples(name: str, n: int = 12) -> list[tuple[str, bytes]]:
    """``n`` test images of dataset ``name`` (a stratified subset), as PNGs named after their class."""
    from ..data import build_dataset

    data = build_dataset(name, img_size=32, test_limit=n)  # the transform is not used: raw images are sent
    out = []
    for k, index in enumerate(data.test.indices):
        img, label = data.test.base[int(index)]
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="PNG")
        out.append((f"{k:02d}-{data.class_names[int(label)]}.png", buf.getvalue()))
    return out


def run_app(adapter: str, api: str, samples: str | None = None, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve the page until interrupted (blocks)."""

    from ..web.net import bind, is_loopback, run_app

    remote = RemoteClassifier(adapter, api)
    dataset = remote.adapter.config.dataset
    if samples is not None:
        offered = sample_files(samples)
    elif dataset:
        try:  # the adapter's own task: a few of its test images
            offered = dataset_samples(dataset)
        except PGNError as e:
            log.warning(f"note: no example images ({e}); pass `samples=DIR`")
            offered = []
    else:
        offered = []
    app = create_page_app(remote, offered)
    if not is_loopback(host):
        log.warning(f"warning: serving the page on {host}, which is not a loopback address")
    sock = bind(host, port)
    log.info(f"page on http://{host}:{sock.getsockname()[1]} (adapter {adapter}, model API {api})")
    try:
        run_app(app, sock, log_level="warning")
    finally:
        remote.close()


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pgn: {{title}}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 920px; color: #222; }
 h1 { font-size: 1.3rem; } .muted { color: #666; font-size: .9rem; }
 #samples img { width: 56px; height: 56px; object-fit: cover; margin: 2px; cursor: pointer; border: 2px solid #ddd; }
 #samples img:hover { border-color: #36c; }
 .row { display: flex; gap: 1.5rem; flex-wrap: wrap; margin-top: 1rem; }
 .card { border: 1px solid #ddd; border-radius: 8px; padding: .8rem; min-width: 200px; }
 .card img { width: 224px; height: 224px; image-rendering: pixelated; display: block; }
 .answer { font-size: 1.2rem; font-weight: 600; } #error { color: #b00; }
 ol { margin: .3rem 0 0 1.2rem; padding: 0; }
</style></head><body>
<h1>{{title}}</h1>
<p class="muted">The model behind the API is unmodified and knows nothing about prompts. This page holds the
adapter: it turns your image into a canvas with the prompts in its frame, sends only that image to the model,
and shows what comes back, next to the model's answer for the plain image.</p>
<form id="form"><input type="file" id="file" name="file" accept="image/*">
<button type="submit" id="go">Classify</button></form>
<div id="samples"></div>
<p id="error" role="alert"></p>
<div class="row" id="result" hidden>
 <div class="card"><div class="muted">your image</div><img id="image" alt="input image"></div>
 <div class="card"><div class="muted">what the model receives</div><img id="canvas" alt="prompted canvas"></div>
 <div class="card"><div class="muted">with the adapter</div><div class="answer" id="label"></div><ol id="with"></ol>
  <div class="muted" style="margin-top:1rem">without it (plain image)</div><div class="answer" id="plain"></div>
  <ol id="without"></ol><div class="muted" id="head"></div></div>
</div>
<script>
const $ = (id) => document.getElementById(id);
function list(el, items) { el.innerHTML = ""; for (const t of items || []) {
  const li = document.createElement("li"); li.textContent = `${t.label} (${(100 * t.probability).toFixed(1)} %)`;
  el.appendChild(li); } }
async function send(blob, name) {
  $("error").textContent = ""; $("go").disabled = true;
  const body = new FormData(); body.append("file", blob, name);
  try {
    const r = await fetch("classify", { method: "POST", body });
    const out = await r.json();
    if (!r.ok) { $("error").textContent = out.detail || r.statusText; return; }
    $("image").src = out.image; $("canvas").src = out.canvas;
    $("label").textContent = out.with[0].label; list($("with"), out.with);
    $("plain").textContent = out.without ? out.without[0].label : "n/a"; list($("without"), out.without);
    $("head").textContent = `scored by ${out.head}; model: ${out.model}`;
    $("result").hidden = false;
  } catch (e) { $("error").textContent = String(e); } finally { $("go").disabled = false; }
}
$("form").addEventListener("submit", (e) => { e.preventDefault();
  const f = $("file").files[0]; if (f) send(f, f.name); else $("error").textContent = "choose an image first"; });
fetch("samples").then((r) => r.json()).then(({ samples }) => samples.forEach((name, i) => {
  const img = document.createElement("img"); img.src = `samples/${i}`; img.alt = name; img.title = name;
  img.onclick = async () => send(await (await fetch(img.src)).blob(), name); $("samples").appendChild(img); }));
</script></body></html>
"""
