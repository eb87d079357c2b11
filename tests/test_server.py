"""The embedding server, run for real with uvicorn on a tiny random-init ViT."""
import io
import os
import socket
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import make_tiny_vit  # noqa: E402
from PIL import Image  # noqa: E402

from pgn.backbones import TimmViT  # noqa: E402
from pgn.client import EmbeddingClient
from pgn.errors import PGNError  # noqa: E402
from pgn.server import create_app, serve  # noqa: E402
from pgn.web.background import BackgroundServer  # noqa: E402
from pgn.web.net import bind, is_loopback  # noqa: E402

MAX_UPLOAD = 64 * 1024
MAX_SIDE = 256


RunningServer = BackgroundServer


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_vit()


@pytest.fixture(scope="module")
def server(tiny):
    with RunningServer(create_app(tiny, max_upload_bytes=MAX_UPLOAD, max_side=MAX_SIDE, precision="fp32")) as s:
        yield s


def rand_pixels(h, w, seed=0, channels=3):
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def encode(pixels, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **kw)
    return buf.getvalue()


def reference(backbone: TimmViT, pixels: np.ndarray, head: bool = False):
    """The backbone's own forward, computed in-process from uint8 (B, H, W, 3) pixels."""
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(backbone.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.preprocessing.std).view(1, 3, 1, 1)
    x = (x - mean) / std
    with torch.no_grad():
        feats = backbone.vit.forward_features(x)
        out = feats[:, 0].numpy()
        return (out, backbone.vit.forward_head(feats).numpy()) if head else out


def post(url, **kw):
    return httpx.post(url + "/embed", timeout=30, **kw)


def test_health_and_info_are_all_a_client_needs(server, tiny):
    """/info describes what the server computes: normalising with its mean and std alone reproduces the served
    embedding (fp32, 1e-5), its patch size gives the served grid, its width the embedding's length."""
    assert httpx.get(server.url + "/health").json() == {"status": "ok", "backbone": tiny.name}
    info = httpx.get(server.url + "/info").json()
    assert info["backbone"] == tiny.name == "timm:test_vit"
    assert (info["patch_size"], info["width"], info["input_size"]) == (tiny.patch_size, tiny.width,
                                                                        tiny.preprocessing.input_size) == (16, 64, 160)
    assert info["mean"] == pytest.approx(list(tiny.preprocessing.mean))
    assert info["std"] == pytest.approx(list(tiny.preprocessing.std))
    assert info["max_upload_bytes"] == MAX_UPLOAD and info["max_side"] == MAX_SIDE
    px = rand_pixels(info["input_size"], 48, seed=7)
    r = post(server.url, files={"file": ("a.png", encode(px), "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["grid"] == [info["input_size"] // info["patch_size"], 48 // info["patch_size"]]
    mean, std = (torch.tensor(info[k], dtype=torch.float32).view(1, 3, 1, 1) for k in ("mean", "std"))
    x = (torch.from_numpy(px).permute(2, 0, 1)[None].float() / 255.0 - mean) / std  # from /info only
    with torch.no_grad():
        want = tiny.vit.forward_features(x)[:, 0].numpy()
    emb = np.asarray(r.json()["embeddings"], dtype=np.float32)
    assert emb.shape == (1, info["width"])
    assert np.abs(emb - want).max() <= 1e-5


def test_single_png_matches_in_process_forward(server, tiny):
    px = rand_pixels(64, 96)
    r = post(server.url, files={"file": ("a.png", encode(px), "image/png")})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["grid"] == [4, 6] and out["size"] == [64, 96]
    assert "logits" not in out
    emb = np.asarray(out["embeddings"], dtype=np.float32)
    assert emb.shape == (1, 64)
    assert np.abs(emb - reference(tiny, px[None])).max() <= 1e-5


def test_batch_via_client(server, tiny):
    px = np.stack([rand_pixels(64, 96, seed=1), rand_pixels(64, 96, seed=2)])
    with EmbeddingClient(server.url) as client:
        assert client.info()["patch_size"] == 16
        emb, logits = client.embed_png([encode(p) for p in px])
    assert logits is None
    assert emb.dtype == np.float32 and emb.shape == (2, 64)
    assert np.abs(emb - reference(tiny, px)).max() <= 1e-5


def test_grey_rgba_and_jpeg_accepted(server, tiny):
    grey = rand_pixels(32, 48, seed=3, channels=1)
    r = post(server.url, files={"file": ("g.png", encode(grey), "image/png")})
    assert r.status_code == 200, r.text
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    assert np.abs(np.asarray(r.json()["embeddings"]) - reference(tiny, rgb[None])).max() <= 1e-5

    rgba = rand_pixels(32, 32, seed=4, channels=4)
    r = post(server.url, files={"file": ("a.png", encode(rgba), "image/png")})
    assert r.status_code == 200, r.text
    assert np.abs(np.asarray(r.json()["embeddings"]) - reference(tiny, rgba[None, ..., :3].copy())).max() <= 1e-5

    jpeg = encode(rand_pixels(48, 64, seed=5), fmt="JPEG", quality=90)
    r = post(server.url, files={"file": ("j.jpg", jpeg, "image/jpeg")})
    assert r.status_code == 200, r.text
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))  # the pixels the server sees
    assert r.json()["size"] == [48, 64]
    assert np.abs(np.asarray(r.json()["embeddings"]) - reference(tiny, decoded[None].copy())).max() <= 1e-5


def test_classifier_head_returns_logits():
    backbone = make_tiny_vit(num_classes=5)
    px = rand_pixels(32, 64, seed=6)
    with RunningServer(create_app(backbone, max_side=MAX_SIDE, precision="fp32")) as s:
        assert httpx.get(s.url + "/info").json()["num_classes"] == 5
        emb, logits = EmbeddingClient(s.url).embed_png([encode(px)])
    ref_emb, ref_logits = reference(backbone, px[None], head=True)
    assert logits.shape == (1, 5)
    assert np.abs(emb - ref_emb).max() <= 1e-5
    assert np.abs(logits - ref_logits).max() <= 1e-5


def _detail(r) -> str:
    body = r.json()
    assert isinstance(body["detail"], str) and "\n" not in body["detail"]
    return body["detail"]


def test_errors_are_one_line_json_and_server_survives(server):
    # Too large, declared by Content-Length.
    big = bytes(MAX_UPLOAD + 1000)
    r = post(server.url, files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and str(MAX_UPLOAD) in _detail(r)

    # Too large, streamed without Content-Length (chunked): caught while reading.
    def chunks():
        yield b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(20):
            yield bytes(8192)
    r = post(server.url, content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413, r.text
    _detail(r)

    # Not an image.
    r = post(server.url, files={"file": ("x.png", b"this is not a png at all", "image/png")})
    assert r.status_code in (400, 415) and _detail(r)
    # Corrupt: a truncated PNG.
    r = post(server.url, files={"file": ("t.png", encode(rand_pixels(64, 64))[:300], "image/png")})
    assert r.status_code in (400, 415) and _detail(r)
    # Unsupported format (GIF).
    r = post(server.url, files={"file": ("g.gif", encode(rand_pixels(64, 64), fmt="GIF"), "image/gif")})
    assert r.status_code in (400, 415) and _detail(r)

    # Size not a multiple of the patch size: the message names the valid sizes.
    r = post(server.url, files={"file": ("odd.png", encode(rand_pixels(64, 65)), "image/png")})
    assert r.status_code == 422
    msg = _detail(r)
    assert "65x64" in msg and "16" in msg and "64 or 80" in msg
    # Larger than max_side (and a decompression-bomb-like header is refused before decoding).
    r = post(server.url, files={"file": ("wide.png", encode(np.zeros((16, MAX_SIDE + 16, 3), np.uint8)), "image/png")})
    assert r.status_code == 422 and str(MAX_SIDE) in _detail(r)
    bomb = encode(np.zeros((4096, 4096), np.uint8))  # a few KB of PNG for 16 M pixels
    assert len(bomb) < MAX_UPLOAD
    r = post(server.url, files={"file": ("bomb.png", bomb, "image/png")})
    assert r.status_code == 422 and _detail(r)

    # Batch of mixed sizes.
    files = [("files", ("a.png", encode(rand_pixels(32, 32)), "image/png")),
             ("files", ("b.png", encode(rand_pixels(32, 48)), "image/png"))]
    r = post(server.url, files=files)
    assert r.status_code == 422 and "same size" in _detail(r)

    # Missing image field: another field, and no body at all.
    r = post(server.url, files={"image": ("a.png", encode(rand_pixels(32, 32)), "image/png")})
    assert r.status_code == 422 and "'file'" in _detail(r)
    r = post(server.url)
    assert r.status_code == 422 and _detail(r)
    r = post(server.url, data={"file": "not a file"})
    assert r.status_code == 422 and _detail(r)

    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    px = rand_pixels(32, 32, seed=9)
    assert post(server.url, files={"file": ("ok.png", encode(px), "image/png")}).status_code == 200


def test_concurrent_requests(server, tiny):
    pxs = [rand_pixels(48, 48, seed=20 + i) for i in range(4)]
    results = [None] * len(pxs)

    def work(i):
        results[i] = post(server.url, files={"file": ("c.png", encode(pxs[i]), "image/png")})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pxs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for px, r in zip(pxs, results):
        assert r is not None and r.status_code == 200
        assert np.abs(np.asarray(r.json()["embeddings"]) - reference(tiny, px[None])).max() <= 1e-5


def test_client_errors(server):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    with pytest.raises(PGNError, match="not reachable.*pgn serve --backbone"):
        EmbeddingClient(f"http://127.0.0.1:{port}", timeout=5).info()
    with pytest.raises(PGNError, match=r"answered 422: .*multiples of the patch size 16"):
        EmbeddingClient(server.url).embed_png([encode(rand_pixels(40, 40))])


def test_serve_helpers():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")
    with pytest.raises(PGNError, match="unknown backbone"):
        serve("no-such-backbone")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        with pytest.raises(PGNError, match="cannot listen on 127.0.0.1.*another `port`"):
            bind("127.0.0.1", busy.getsockname()[1])
    finally:
        busy.close()


def test_batch_limit_and_client_splitting(tiny):
    pngs = [encode(rand_pixels(16, 32, seed=30 + i)) for i in range(5)]
    with RunningServer(create_app(tiny, max_side=MAX_SIDE, max_batch=2, precision="fp32")) as s:
        for n in (3, 5):
            files = [("files", (f"{i}.png", pngs[i], "image/png")) for i in range(n)]
            r = post(s.url, files=files)
            assert r.status_code == 413 and "limit of 2 images" in _detail(r)
        emb, _ = EmbeddingClient(s.url).embed_png(pngs)  # the client splits into batches of <= 2
    px = np.stack([np.asarray(Image.open(io.BytesIO(p))) for p in pngs])
    assert emb.shape == (5, 64)
    assert np.abs(emb - reference(tiny, px)).max() <= 1e-5


@pytest.mark.parametrize("request_bytes", [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                                           b"GET /\x00 HTTP/1.1\r\n\r\n"])
def test_requests_the_http_layer_cannot_parse_get_the_same_one_line_json(server, request_bytes):
    """uvicorn answers unparseable requests itself; they get pgn's {"detail": ...} shape, and the server lives on."""
    import json

    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request_bytes)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower()
    detail = json.loads(body)["detail"]
    assert detail.startswith("malformed HTTP request") and "\n" not in detail
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
