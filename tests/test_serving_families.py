"""The model server beyond timm: open_clip and torchvision ViTs, the hosted classifier, batching under load.

Random-init models of the real architectures (small configurations), real servers on loopback.
"""
import threading

import httpx
import numpy as np
import pytest
import torch
from helpers import CLASSES, SIZE, make_tiny_clip, make_tiny_torchvision_vit, make_tiny_vit, pixels, png, post
from torch import nn

from pgn import PGNError
from pgn.server import create_app
from pgn.server.batching import Batcher
from pgn.server.models import read_class_file, served_model
from pgn.server.server import normalise
from pgn.web.background import BackgroundServer

open_clip = pytest.importorskip("open_clip")
torchvision = pytest.importorskip("torchvision")

def test_each_family_serves_its_own_library_forward():
    images = [pixels(SIZE, SIZE, seed) for seed in range(3)]
    clip, tv, timm_vit = make_tiny_clip(), make_tiny_torchvision_vit(), make_tiny_vit()
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
    from pgn.client import RemoteClassifier
    from pgn.data import build_dataset
    from pgn.input_adapter import export_adapter

    clip = make_tiny_clip()
    model = pgn.create_model(clip, "pgn", CLASSES, img_size=SIZE, head="zeroshot", layout="frame",
                             library_space="pixel", library_size=16, dataset="digits").eval()
    model.save_pretrained(tmp_path / "run")
    export = export_adapter(tmp_path / "run", tmp_path / "export", backbone=clip)
    assert not any(k.startswith("head") for k in __import__("safetensors.torch").torch.load_file(
        str(export / "adapter.safetensors")))  # nothing of the head travels with the client
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
    from pgn.client import RemoteClassifier
    from pgn.input_adapter import export_adapter

    clip = make_tiny_clip()
    model = pgn.create_model(clip, "pgn", CLASSES, img_size=SIZE, head="zeroshot", layout="frame",
                             library_space="pixel", library_size=16)
    model.save_pretrained(tmp_path / "run")
    export = export_adapter(tmp_path / "run", tmp_path / "export", backbone=clip)
    with BackgroundServer(create_app(served_model(clip, ["cat", "dog"]), scores_only=True)) as s:
        with pytest.raises(PGNError, match="adapter's class names"):
            RemoteClassifier(export, s.url)
    # The right classes with another prompt template are another classifier: refused before any request.
    with BackgroundServer(create_app(served_model(clip, CLASSES, "a photo of a {}."), scores_only=True)) as s:
        assert httpx.get(s.url + "/info").json()["template"] == "a photo of a {}."
        with pytest.raises(PGNError, match="prompt template 'a photo of a {}.'.*trained with 'This is a photo"):
            RemoteClassifier(export, s.url)
    with BackgroundServer(create_app(served_model(clip, CLASSES), scores_only=True)) as s:
        RemoteClassifier(export, s.url).close()  # the default template on both sides
    with BackgroundServer(create_app(clip)) as s:
        with pytest.raises(PGNError, match="answers embeddings only"):
            RemoteClassifier(export, s.url)


def test_a_pixel_library_export_carries_nothing_of_the_hosted_model(tmp_path):
    """Only the generator and its RGB library cross to the client: no patch embedding, no head."""
    from safetensors.torch import load_file

    import pgn
    from pgn.input_adapter import InputAdapter, export_adapter

    clip = make_tiny_clip()
    model = pgn.create_model(clip, "pgn", CLASSES, img_size=SIZE, head="zeroshot", layout="frame",
                             library_space="pixel", library_size=16, seed=0).eval()
    model.save_pretrained(tmp_path / "run")
    export = export_adapter(tmp_path / "run", tmp_path / "export", backbone=clip)
    keys = set(load_file(str(export / "adapter.safetensors")))
    assert keys and all(k.startswith("prompts.") for k in keys), sorted(keys)
    assert not any(clip.patch_embed_weight().shape == t.shape
                   for t in load_file(str(export / "adapter.safetensors")).values())
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.inference_mode():  # the canvas is still the one training saw
        want = model.layout.compose(x, model.prompts.library.patches(model.prompts.coefficients(x)))
    torch.testing.assert_close(InputAdapter.from_pretrained(export).canvas(x), want, rtol=0, atol=0)


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
            assert httpx.get(s.url + "/info").json()["precision"] == precision
            answers[precision] = np.array(post(s.url, "/classify", images).json()["scores"])
    fp32, bf16 = answers["fp32"], answers["bf16"]
    assert not np.array_equal(fp32, bf16)  # bf16 really ran
    # bf16 through a ViT: within 5e-2 of the scores' scale, and the same answer wherever fp32's margin
    # between its two best classes is larger than that error (never asked of near ties).
    error = np.abs(fp32 - bf16).max()
    assert error <= 5e-2 * np.abs(fp32).max()
    top2 = np.sort(fp32, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * error
    # Never vacuous: these 8 images have fp32 margins of at least 0.069 (seed 0 model, measured), while the bound
    # above allows 2 * error <= 0.036, so all 8 are clear wherever that bound holds; 6 leaves room for rounding.
    assert clear.sum() >= 6, f"only {clear.sum()} of {len(clear)} answers are clear of the bf16 error {error:.3g}"
    assert (fp32.argmax(-1)[clear] == bf16.argmax(-1)[clear]).all()


def test_class_files_and_mismatched_heads(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("template: a photo of a {}.\ncat\n\ndog\n")
    assert read_class_file(f) == (["cat", "dog"], "a photo of a {}.")
    f.write_text("cat\n")
    with pytest.raises(PGNError, match="at least 2"):
        read_class_file(f)
    with pytest.raises(PGNError, match="5 classifier outputs but 2"):
        served_model(make_tiny_torchvision_vit(5), ["a", "b"])
    with pytest.raises(PGNError, match="no classifier head"):
        create_app(make_tiny_vit(), scores_only=True)
    tv = make_tiny_torchvision_vit()
    tv.vit.heads = nn.Sequential()  # no classifier: embeddings only, and scores are refused by name
    assert served_model(tv).classes is None
    with pytest.raises(PGNError, match="without a classifier head"):
        served_model(tv, ["a", "b"])


def _serve_from_factory(tmp_path, backbone: str, weights, *extra):
    """``pgn serve --backbone NAME --weights FILE`` as a user starts it; (the process, its URL)."""
    from helpers import start_pgn_serve

    return start_pgn_serve(backbone, weights, *extra, tries=1200)


def _stop(server):
    from helpers import stop_server

    stop_server(server)


def test_vit_b32_is_served_from_its_own_factory(tmp_path):
    """The torchvision factory's model (random init, with its 1000-way classifier) behind ``pgn serve``."""
    from torchvision.models import vit_b_32

    from pgn.backbones import create_backbone

    torch.manual_seed(0)
    weights = tmp_path / "vit_b_32.pth"
    torch.save(vit_b_32(weights=None).state_dict(), weights)
    reference = create_backbone("vit-b32", weights=str(weights)).eval()
    images = [pixels(224, 224, seed) for seed in range(2)]
    x = normalise(np.stack(images), reference.preprocessing.mean, reference.preprocessing.std)
    with torch.inference_mode():
        want_logits = reference.vit(x)  # torchvision's own forward, its own head
        want_emb = reference(x)         # pgn's split forward: the CLS feature that enters the head
    classes = tmp_path / "imagenet.txt"
    classes.write_text("\n".join(f"class {i}" for i in range(1000)) + "\n")
    for extra in ((), ("--classes", classes)):
        server, url = _serve_from_factory(tmp_path, "vit-b32", weights, *extra)
        try:
            info = httpx.get(url + "/info").json()
            assert info["family"] == "torchvision" and info["precision"] == "fp32" and info["num_classes"] == 1000
            if not extra:
                r = post(url, "/embed", [png(p) for p in images])
                assert r.status_code == 200, r.text
                torch.testing.assert_close(torch.tensor(r.json()["embeddings"]), want_emb, rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(torch.tensor(r.json()["logits"]), want_logits, rtol=1e-4, atol=1e-4)
            r = post(url, "/classify", [png(p) for p in images])
            assert r.status_code == 200, r.text
            torch.testing.assert_close(torch.tensor(r.json()["scores"]), want_logits, rtol=1e-4, atol=1e-4)
        finally:
            _stop(server)
    # A file without a classifier serves embeddings only, and says so when asked for scores.
    headless = tmp_path / "headless.pth"
    torch.save({k: v for k, v in torch.load(weights, weights_only=True).items() if not k.startswith("heads.")},
               headless)
    server, url = _serve_from_factory(tmp_path, "vit-b32", headless)
    try:
        assert httpx.get(url + "/info").json()["endpoints"] == ["/embed"]
        r = post(url, "/embed", [png(images[0])])
        assert r.status_code == 200 and "logits" not in r.json()
        torch.testing.assert_close(torch.tensor(r.json()["embeddings"]), want_emb[:1], rtol=1e-4, atol=1e-4)
    finally:
        _stop(server)


def test_timm_and_clip_are_served_from_their_own_factories(tmp_path, tiny_weights):
    """timm (by name, from a weights file) and clip-vit-b32 (random init of the real architecture) behind pgn serve."""
    from safetensors.torch import save_file

    from pgn.backbones import create_backbone

    open_clip_model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    clip_weights = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip_model.state_dict().items()}, str(clip_weights))
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\nbird\n")
    for name, weights, size in (("timm:test_vit", tiny_weights, 64), ("clip-vit-b32", clip_weights, 224)):
        reference = create_backbone(name, weights=str(weights)).eval()
        images = [pixels(size, size, seed) for seed in range(2)]
        x = normalise(np.stack(images), reference.preprocessing.mean, reference.preprocessing.std)
        served = served_model(reference, ["cat", "dog", "bird"] if name.startswith("clip") else None)
        with torch.inference_mode():
            want_emb = served.embed(x)[0].float()
            want_scores = served.scores(x).float() if name.startswith("clip") else None
        server, url = _serve_from_factory(tmp_path, name, weights)
        try:
            r = post(url, "/embed", [png(p) for p in images])
            assert r.status_code == 200, r.text
            torch.testing.assert_close(torch.tensor(r.json()["embeddings"]), want_emb, rtol=1e-4, atol=1e-4)
        finally:
            _stop(server)
        if want_scores is not None:  # CLIP as a hosted classifier: its zero-shot head over the class file
            server, url = _serve_from_factory(tmp_path, name, weights, "--classes", classes)
            try:
                r = post(url, "/classify", [png(p) for p in images])
                assert r.status_code == 200, r.text
                torch.testing.assert_close(torch.tensor(r.json()["scores"]), want_scores, rtol=1e-4, atol=1e-4)
            finally:
                _stop(server)
