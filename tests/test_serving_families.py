"""The model server beyond timm: open_clip and torchvision ViTs, the hosted classifier, batching under load.

Random-init models of the real architectures (small configurations), real servers on loopback.
"""
import io
import threading

import httpx
import numpy as np
import pytest
import torch
from conftest import make_tiny_vit
from PIL import Image
from torch import nn

from pgn import PGNError
from pgn.backbones import OpenCLIPViT, TorchvisionViT
from pgn.serving import create_app
from pgn.serving.background import BackgroundServer
from pgn.serving.batching import Batcher
from pgn.serving.models import read_class_file, served_model
from pgn.serving.server import normalise

open_clip = pytest.importorskip("open_clip")
torchvision = pytest.importorskip("torchvision")

SIZE = 96  # native input of the small CLIP and torchvision ViTs below (patch 16: a 6x6 grid)
CLASSES = [str(i) for i in range(10)]


def small_clip() -> OpenCLIPViT:
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16,
                                                        image_size=SIZE),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
                 quick_gelu=True)
    return OpenCLIPViT(model.eval(), name="clip:small", tokenizer=open_clip.get_tokenizer("ViT-B-32"))


def small_torchvision(classes: int = 5) -> TorchvisionViT:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(1)
    model = VisionTransformer(image_size=SIZE, patch_size=16, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128,
                              num_classes=classes)
    return TorchvisionViT(model.eval(), name="torchvision:small")


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def pixels(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def post(url: str, path: str, images: list[bytes]) -> httpx.Response:
    files = [("files", (f"i{i}.png", b, "image/png")) for i, b in enumerate(images)]
    return httpx.post(url + path, files=files, timeout=120)


def test_each_family_serves_its_own_library_forward():
    images = [pixels(SIZE, SIZE, seed) for seed in range(3)]
    clip, tv, timm_vit = small_clip(), small_torchvision(), make_tiny_vit()
    for backbone in (clip, tv, timm_vit):
        pre = backbone.preprocessing
        x = normalise(np.stack(images), pre.mean, pre.std)
        with torch.inference_mode():
            if backbone is clip:
                want, logits = clip.clip.encode_image(x), None
            elif backbone is tv:
                v = tv.vit  # torchvision's forward, step by step, up to what enters ``heads``
                tokens = v._process_input(x)
                tokens = torch.cat([v.class_token.expand(len(x), -1, -1), tokens], dim=1)
                want, logits = v.encoder(tokens)[:, 0], v(x)
            else:
                want, logits = timm_vit.vit.forward_features(x)[:, 0], None
        with BackgroundServer(create_app(backbone, precision="fp32")) as s:
            r = post(s.url, "/embed", [png(p) for p in images])
            assert r.status_code == 200, r.text
            got = torch.tensor(r.json()["embeddings"])
            torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
            if logits is not None:
                torch.testing.assert_close(torch.tensor(r.json()["logits"]), logits, rtol=1e-5, atol=1e-5)
            if backbone is not timm_vit:  # a fixed positional grid: the native size only, never resized
                r = post(s.url, "/embed", [png(pixels(SIZE + 16, SIZE))])
                assert r.status_code == 422 and f"{SIZE}x{SIZE} only" in r.json()["detail"]


def test_hosted_clip_classifier_deploys_a_pgn_with_scores_only(tmp_path):
    """A PGN trained against CLIP's frozen zero-shot head, frame layout: the API's scores decide alone."""
    import pgn
    from pgn.data import build_dataset
    from pgn.deployment import RemoteClassifier, export_adapter

    clip = small_clip()
    model = pgn.create_model(clip, "pgn", CLASSES, img_size=SIZE, head="zeroshot", layout="frame",
                             library_space="pixel", library_size=16, dataset="digits").eval()
    model.save_pretrained(tmp_path / "run")
    export = export_adapter(tmp_path / "run", tmp_path / "export", backbone=clip)
    assert not any(k.startswith("head") for k in __import__("safetensors.torch").torch.load_file(
        str(export / "deploy.safetensors")))  # nothing of the head travels with the client
    data = build_dataset("digits", img_size=SIZE, mean=clip.preprocessing.mean, std=clip.preprocessing.std,
                         test_limit=24)
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    labels = torch.as_tensor(data.test.targets)
    with torch.inference_mode():
        latent = model(x)
    served = served_model(clip, CLASSES, model.config.template)
    with BackgroundServer(create_app(served, scores_only=True, precision="fp32")) as s:
        assert httpx.get(s.url + "/info").json()["endpoints"] == ["/classify"]
        r = post(s.url, "/embed", [png(pixels(SIZE, SIZE))])
        assert r.status_code == 403 and "class scores only" in r.json()["detail"]
        r = post(s.url, "/classify", [png(pixels(SIZE, SIZE))])
        assert set(r.json()) == {"scores", "classes"}  # no embedding crosses the wire
        assert post(s.url, "/classify", [b"GIF89a not a png"]).status_code == 415  # bad input: 4xx, still serving
        assert post(s.url, "/classify", [png(pixels(SIZE, SIZE + 16))]).status_code == 422
        with RemoteClassifier(export, s.url) as remote:
            api = remote.logits(list(x))
    assert torch.equal(api.argmax(-1), latent.argmax(-1))  # every test image
    assert (api.argmax(-1) == labels).float().mean() == (latent.argmax(-1) == labels).float().mean()
    assert (api - latent).abs().max() < 1e-2 * latent.abs().max()  # only the canvas's uint8 rounding differs


def test_remote_classifier_refuses_a_server_with_other_classes(tmp_path):
    import pgn
    from pgn.deployment import RemoteClassifier, export_adapter

    clip = small_clip()
    model = pgn.create_model(clip, "pgn", CLASSES, img_size=SIZE, head="zeroshot", layout="frame",
                             library_space="pixel", library_size=16)
    model.save_pretrained(tmp_path / "run")
    export = export_adapter(tmp_path / "run", tmp_path / "export", backbone=clip)
    with BackgroundServer(create_app(served_model(clip, ["cat", "dog"]), scores_only=True)) as s:
        with pytest.raises(PGNError, match="adapter's class names"):
            RemoteClassifier(export, s.url)
    with BackgroundServer(create_app(clip)) as s:
        with pytest.raises(PGNError, match="answers embeddings only"):
            RemoteClassifier(export, s.url)


def test_concurrent_requests_share_forwards_and_get_the_answers_they_get_alone():
    vit = make_tiny_vit(num_classes=4)
    images = [png(pixels(64, 64, seed)) for seed in range(16)]
    app = create_app(vit, precision="fp32", forward_batch=16, max_wait_ms=50)
    with BackgroundServer(app) as s:
        alone = [post(s.url, "/classify", [im]).json()["scores"][0] for im in images]
        forwards_alone = app.state.batcher.forwards
        got: dict[int, list] = {}
        barrier = threading.Barrier(len(images))

        def client(i):
            barrier.wait()
            got[i] = post(s.url, "/classify", [images[i]]).json()["scores"][0]

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(images))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        under_load = app.state.batcher.forwards - forwards_alone
    assert forwards_alone == len(images)
    assert under_load < len(images)  # gathered: fewer forwards than requests
    for i in range(len(images)):
        np.testing.assert_allclose(got[i], alone[i], rtol=1e-4, atol=1e-5)
        assert np.argmax(got[i]) == np.argmax(alone[i])


def test_a_small_request_is_not_starved_by_a_large_one():
    vit = make_tiny_vit()
    order = []

    def forward(kind, x):
        with torch.inference_mode():
            out = {"embeddings": vit.vit.forward_features(x)[:, 0]}
        order.append(len(x))
        return out

    batcher = Batcher(forward, max_batch=2, max_wait_ms=0)
    try:
        big = batcher.submit("embed", [torch.randn(3, 128, 128) for _ in range(12)])
        small = batcher.submit("embed", [torch.randn(3, 128, 128)])
        small.result(timeout=60)
        assert not big.done()  # the small request went into one of the first forwards, round robin
        assert len(big.result(timeout=60)) == 12
        assert sum(order) == 13 and max(order) <= 2
    finally:
        batcher.close()


def test_work_per_request_is_bounded():
    vit = make_tiny_vit()
    with BackgroundServer(create_app(vit, max_side=1024, max_request_pixels=4 * 256 * 256)) as s:
        four = [png(np.zeros((256, 256, 3), np.uint8))] * 4
        assert post(s.url, "/embed", four).status_code == 200
        r = post(s.url, "/embed", four + four[:1])
        assert r.status_code == 413 and "pixels of work" in r.json()["detail"]
        # The server keeps serving.
        assert post(s.url, "/embed", four[:1]).status_code == 200


def test_bf16_and_fp32_serving_agree_on_predictions():
    vit = make_tiny_vit(num_classes=5)
    images = [png(pixels(64, 64, seed)) for seed in range(8)]
    answers = {}
    for precision in ("fp32", "bf16"):
        app = create_app(vit, precision=precision)
        with BackgroundServer(app) as s:
            assert httpx.get(s.url + "/info").json()["precision"] == ("fp32" if precision == "fp32" else "bf16 autocast")
            answers[precision] = np.array(post(s.url, "/classify", images).json()["scores"])
    assert (answers["fp32"].argmax(-1) == answers["bf16"].argmax(-1)).all()
    assert not np.array_equal(answers["fp32"], answers["bf16"])  # bf16 really ran


def test_class_files_and_mismatched_heads(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("template: a photo of a {}.\ncat\n\ndog\n")
    assert read_class_file(f) == (["cat", "dog"], "a photo of a {}.")
    f.write_text("cat\n")
    with pytest.raises(PGNError, match="at least 2"):
        read_class_file(f)
    with pytest.raises(PGNError, match="5 classifier outputs but 2"):
        served_model(small_torchvision(5), ["a", "b"])
    with pytest.raises(PGNError, match="no classifier head"):
        create_app(make_tiny_vit(), scores_only=True)
    torch.manual_seed(0)
    tv = small_torchvision()
    tv.vit.heads = nn.Sequential()
    with pytest.raises(PGNError, match="no linear classifier"):
        served_model(tv)
