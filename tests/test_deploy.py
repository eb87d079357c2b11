"""End to end: train in latent space, export, compose canvases, classify through a real HTTP server."""
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from helpers import make_tiny_vit, one_line_error, pgn, start_pgn_serve, stop_server
from PIL import Image


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("deploy")
    weights = root / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in make_tiny_vit().vit.state_dict().items()}, str(weights))
    run, exp = root / "run", root / "export"
    r = pgn("train", "--backbone", "timm:test_vit", "--weights", weights, "--dataset", "digits", "--img-size", 64,
            "--layout", "extend", "--library-space", "pixel", "-K", 4, "-N", 8, "--generator-size", 32,
            "--epochs", 1, "--train-limit", 64, "--test-limit", 48, "--out", run, "--no-progress")
    assert r.returncode == 0, r.stderr
    r = pgn("export", run, "-o", exp)
    assert r.returncode == 0, r.stderr
    server, url = start_pgn_serve("timm:test_vit", weights, "--max-upload-mb", "1", tries=300)
    yield {"run": run, "export": exp, "url": url, "weights": weights, "root": root}
    stop_server(server)


def test_api_predictions_equal_latent_model(deployed):
    from pgn.client import EmbeddingClient
    from pgn.data import build_dataset
    from pgn.input_adapter import InputAdapter
    from pgn.model import PromptedClassifier

    model = PromptedClassifier.from_pretrained(deployed["run"])
    cfg = model.config
    model.eval()
    composer = InputAdapter.from_pretrained(deployed["export"])
    data = build_dataset("digits", img_size=64, mean=cfg.mean, std=cfg.std, test_limit=48)
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    with torch.no_grad():
        latent = model(x)
    with EmbeddingClient(deployed["url"]) as client:
        emb, _ = client.embed_png(composer.png_bytes(composer.to_uint8(composer.canvas(x))))
    api = composer.logits(emb)
    assert torch.equal(api.argmax(-1), latent.argmax(-1))
    assert (api - latent).abs().max() < 1e-2 * latent.abs().max()  # only uint8 rounding separates them

    r = pgn("eval", deployed["export"], "--api", deployed["url"], "--test-limit", 48)
    assert r.returncode == 0, r.stderr
    through_api = json.loads(r.stdout.strip().splitlines()[-1])
    acc = float((latent.argmax(-1) == torch.as_tensor(data.test.targets)).float().mean())
    assert through_api["n"] == 48 and through_api["top1"] == pytest.approx(acc)


def test_compose_and_predict_through_api(deployed, tmp_path):
    img = tmp_path / "digit.png"
    Image.fromarray((np.random.RandomState(1).rand(20, 30) * 255).astype("uint8"), "L").save(img)
    out = tmp_path / "canvas.png"
    r = pgn("compose", img, "--adapter", deployed["export"], "-o", out)
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (64, 80)  # 4x4 image cells + one row of prompt cells, 16 px each
    r = pgn("predict", img, "--adapter", deployed["export"], "--api", deployed["url"], "--json")
    assert r.returncode == 0, r.stderr
    from pgn.model import PromptedClassifier

    model = PromptedClassifier.from_pretrained(deployed["run"])
    latent = model.eval().predict([img])[0][0]  # the latent model on the same image, no API
    assert json.loads(r.stdout.strip())["top"][0]["label"] == latent[0]


def test_server_rejects_bad_uploads(deployed):
    url = deployed["url"] + "/embed"
    assert httpx.post(url, files={"file": ("x.png", b"not an image", "image/png")}).status_code in (400, 415)
    big = np.zeros((64, 64, 3), np.uint8)
    r = httpx.post(url, files={"file": ("x.bin", b"\0" * (2 * 2**20), "image/png")})
    assert r.status_code == 413
    import io

    buf = io.BytesIO()
    Image.fromarray(big[:, :50]).save(buf, format="PNG")
    assert httpx.post(url, files={"file": ("x.png", buf.getvalue(), "image/png")}).status_code == 422
    assert httpx.get(deployed["url"] + "/health").status_code == 200


def test_deployment_errors(deployed, tmp_path):
    assert "not an exported adapter" in one_line_error(pgn("compose", "x.png", "--adapter", tmp_path, "-o", "o.png"))
    img = tmp_path / "grey.png"
    Image.fromarray(np.full((16, 16), 128, np.uint8), "L").save(img)
    assert "not reachable" in one_line_error(
        pgn("predict", img, "--adapter", deployed["export"], "--api", "http://127.0.0.1:9"))
    r = pgn("train", "--backbone", "timm:test_vit", "--weights", deployed["weights"], "--dataset", "digits",
            "--img-size", 64, "--epochs", 1, "--train-limit", 32, "--test-limit", 16, "--out", tmp_path / "app",
            "--no-progress", "-K", 2, "-N", 4)
    assert r.returncode == 0, r.stderr
    assert "cannot be sent as an image" in one_line_error(pgn("export", tmp_path / "app", "-o", tmp_path / "e"))


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_compose_into_a_place_it_cannot_write_is_one_line_and_writes_nothing(deployed, tmp_path, where):
    from helpers import one_line_error

    img = tmp_path / "digit.png"
    Image.fromarray((np.random.RandomState(2).rand(20, 30) * 255).astype("uint8"), "L").save(img)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "canvas.png" if where == "under-a-file" else Path("/proc/pgn-canvas.png")  # root cannot write /proc
    line = one_line_error(pgn("compose", img, "--adapter", deployed["export"], "-o", out))
    assert str(out.parent if where == "under-a-file" else out) in line, line  # it names the place
    assert blocker.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "digit.png"]
