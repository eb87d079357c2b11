"""``pgn app``: the page that composes canvases for an unmodified model behind its API.

A real model server (small random-init CLIP as a hosted classifier) and the page's server, both on
loopback. The browser test drives headless Chromium (Debian's) with Playwright; it is skipped, with
the reason, where either is missing.
"""
import base64
import io
import os
import shutil

import httpx
import numpy as np
import pytest
import torch
from helpers import CLASSES, SIZE, make_tiny_clip
from PIL import Image

import pgn
from pgn.client import RemoteClassifier
from pgn.client.app import create_page_app
from pgn.input_adapter import export_adapter
from pgn.server import create_app
from pgn.server.models import served_model
from pgn.web.background import BackgroundServer

# The library defaults to fp32: nothing here asks whether the CPU has native bf16 (checked: conftest).
pytestmark = pytest.mark.fp32_only

CHROMIUM = os.environ.get("PGN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """(export dir, model server URL, page URL, sample image paths)."""
    root = tmp_path_factory.mktemp("app")
    clip = make_tiny_clip()
    model = pgn.create_model(clip, "pgn", CLASSES, img_size=SIZE, head="zeroshot", layout="frame",
                             library_space="pixel", library_size=16, dataset="digits")
    model.save_pretrained(root / "run")
    export = export_adapter(root / "run", root / "export", backbone=clip)
    samples = []
    for i in range(3):
        path = root / f"sample{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
        samples.append(path)
    with BackgroundServer(create_app(served_model(clip, CLASSES), scores_only=True)) as model_server:
        remote = RemoteClassifier(export, model_server.url)
        offered = [(p.name, p.read_bytes()) for p in samples]
        with BackgroundServer(create_page_app(remote, offered, max_upload_bytes=PAGE_MAX_UPLOAD)) as page:
            yield export, model_server.url, page.url, samples
        remote.close()


PAGE_MAX_UPLOAD = 200_000


def expected_label(export, url, path) -> str:
    with RemoteClassifier(export, url) as remote:
        return remote.predict([path])[0][0][0]


def test_page_endpoint_answers_with_and_without_the_adapter(deployed):
    export, url, page, samples = deployed
    r = httpx.post(page + "/classify", files={"file": ("s.png", samples[0].read_bytes(), "image/png")}, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["with"][0]["label"] == expected_label(export, url, samples[0])
    canvas = Image.open(io.BytesIO(base64.b64decode(out["canvas"].split(",", 1)[1])))
    assert canvas.size == (SIZE, SIZE)  # the frame layout: the model's native input
    plain = torch.tensor(np.array(Image.open(io.BytesIO(base64.b64decode(out["image"].split(",", 1)[1])))))
    assert not torch.equal(plain, torch.tensor(np.array(canvas)))  # the prompts are in the canvas
    # Bad uploads: one-line 4xx, and the page keeps working.
    # The page shares the model server's upload handling (pgn.web.uploads): status, one line of JSON.
    r = httpx.post(page + "/classify", files={"file": ("x.png", b"not an image", "image/png")}, timeout=60)
    assert r.status_code == 415 and "not an image" in r.json()["detail"]
    r = httpx.post(page + "/classify", data={"other": "1"}, timeout=60)
    assert r.status_code == 422 and "field 'file'" in r.json()["detail"]
    r = httpx.post(page + "/classify", files={"file": ("big.png", b"0" * (PAGE_MAX_UPLOAD + 1), "image/png")},
                   timeout=60)
    assert r.status_code == 413 and f"limit of {PAGE_MAX_UPLOAD} bytes" in r.json()["detail"]

    def streamed():  # no Content-Length: the cap applies as the body arrives
        yield b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"s.png\"\r\n\r\n"
        for _ in range(4):
            yield b"0" * (PAGE_MAX_UPLOAD // 2)

    r = httpx.post(page + "/classify", content=streamed(), headers={"content-type": "multipart/form-data; boundary=x"},
                   timeout=60)
    assert r.status_code == 413 and "\n" not in r.json()["detail"], r.text
    assert httpx.get(page + "/samples").json()["samples"] == [p.name for p in samples]
    assert httpx.get(page + "/samples/7").status_code == 404


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install chromium) for the browser test")
def test_page_in_a_real_browser(deployed):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    export, url, page_url, samples = deployed
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(page_url)
            page.set_input_files("#file", str(samples[1]))
            page.click("#go")
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            assert page.inner_text("#label") == expected_label(export, url, samples[1])
            assert page.get_attribute("#canvas", "src").startswith("data:image/png;base64,")
            before = page.get_attribute("#image", "src")
            page.click("#samples img >> nth=2")  # picking a sample classifies it too
            page.wait_for_function(f"document.getElementById('image').src !== {before!r}", timeout=60_000)
            assert page.inner_text("#label") == expected_label(export, url, samples[2])
            page.screenshot(path=os.environ.get("PGN_SCREENSHOT", str(samples[0].parent / "page.png")), full_page=True)
        finally:
            browser.close()
