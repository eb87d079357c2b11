"""A classifier prompted in its input pixels only (a CNN with 1000 scores), and its label mappings."""
import numpy as np
import pytest
import torch
from helpers import RandomImages

import pgn
from pgn import PGNError
from pgn.data import DataSpec
from pgn.heads import LabelMapHead, frequency_label_map
from pgn.training import fit_label_map

# The library defaults to fp32: nothing here asks whether the CPU has native bf16 (checked: conftest).
pytestmark = pytest.mark.fp32_only

CNN = "test-cnn-timm"  # timm test_efficientnet, random init, 64 px input, 8 px canvas cells
SMALL_PGN = dict(num_prompts=4, library_size=8, widths=(4, 4, 4, 4), generator_size=32, layout="frame",
                 library_space="pixel")


def _data(n=24) -> DataSpec:
    return DataSpec(name="random", class_names=["a", "b", "c"], train=RandomImages(n, size=64),
                    test=RandomImages(8, size=64, seed=1))


def test_frequency_label_map_is_one_to_one_and_follows_the_counts():
    # Class 0's images are mostly predicted as source 5, class 1's as 5 too (fewer), class 2's never top anything.
    scores = torch.full((7, 10), -5.0)
    top = [5, 5, 5, 5, 2, 3, 7]  # class 0: 5, 5, 5; class 1: 5, 2; class 2: 3, 7
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    scores[torch.arange(7), top] = 5.0
    mapping = frequency_label_map(scores, targets, 3)
    assert mapping.tolist()[0] == 5                 # the largest count goes first
    assert mapping.tolist()[1] == 2                 # 5 is taken: class 1's next most frequent
    assert mapping.tolist()[2] in (3, 7)            # a tie of one image each: the lower index
    assert mapping.tolist()[2] == 3
    assert len(set(mapping.tolist())) == 3
    # A class never predicted as a free source class gets the free source class it scores highest on average.
    scores2 = torch.zeros(4, 6)
    scores2[:, 1] = 9.0                             # every image's top is source 1
    scores2[2:, 4] = 3.0                            # class 1's images lean to 4 after that
    mapping2 = frequency_label_map(scores2, torch.tensor([0, 0, 1, 1]), 2)
    assert mapping2.tolist() == [1, 4]


def test_the_canvas_is_what_the_unmodified_classifier_sees_and_gradients_reach_the_prompts():
    model = pgn.create_model(CNN, "pgn", classes=["a", "b", "c"], img_size=64, head="labelmap-first", **SMALL_PGN)
    assert isinstance(model.head, LabelMapHead) and model.head.mapping.tolist() == [0, 1, 2]
    x = torch.randn(2, 3, 64, 64)
    canvas = model.canvas(x)
    assert canvas.shape == (2, 3, 64, 64)
    with torch.no_grad():  # the prompted forward is the model's own forward on the canvas, read at classes 0..2
        torch.testing.assert_close(model(x), model.backbone.model(canvas)[:, :3], rtol=0, atol=0)
    cells = canvas.reshape(2, 3, 8, 8, 8, 8).permute(0, 2, 4, 1, 3, 5)  # (B, 8x8 cells of 3x8x8)
    patches = model.prompts.library.patches(model.prompts.coefficients(x))  # 8-bit exact patches
    rows, cols = zip(*model.layout.prompt_cells((8, 8), 4))
    torch.testing.assert_close(cells[:, list(rows), list(cols)], patches, rtol=0, atol=1e-6)
    model.train()
    model(x).sum().backward()
    assert model.prompts.library.logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())


def test_train_fits_the_frequency_mapping_then_trains_only_the_prompts_and_it_saves_and_loads(tmp_path):
    model = pgn.create_model(CNN, "pgn", classes=["a", "b", "c"], img_size=64, head="labelmap-flm", seed=0,
                             **SMALL_PGN)
    assert not bool(model.head.fitted)
    with pytest.raises(PGNError, match="label mapping is not fitted"):
        pgn.evaluate(model, _data(), progress=False)
    before = model.prompts.library.logits.detach().clone()
    pgn.train(model, _data(), epochs=1, out=tmp_path / "run", batch_size=8, lr=0.5, progress=False, device="cpu")
    assert bool(model.head.fitted) and len(set(model.head.mapping.tolist())) == 3
    assert not torch.equal(model.prompts.library.logits, before)
    model.eval()
    with torch.no_grad():  # the mapping is the model's predictions at the start, which the prompts then moved
        expected = frequency_label_map(pgn.create_model(CNN, "pgn", classes=["a", "b", "c"], img_size=64, seed=0,
                                                        **SMALL_PGN).eval().features(_data().train.x),
                                       _data().train.targets, 3)
    assert model.head.mapping.tolist() == expected.tolist()
    model.save_pretrained(tmp_path / "adapter")
    loaded = pgn.load(tmp_path / "adapter", device="cpu")
    assert loaded.head.mapping.tolist() == model.head.mapping.tolist() and bool(loaded.head.fitted)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("method, options", [("vp", {"pad": 8}), ("iip", dict(num_prompts=4, layout="frame",
                                                                              library_space="pixel"))])
def test_vp_and_input_independent_pixel_prompts_train_against_the_classifier(method, options, tmp_path):
    model = pgn.create_model(CNN, method, classes=["a", "b", "c"], img_size=64, head="labelmap-flm", **options)
    params = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    assert params and not any(k.startswith("backbone") for k in params)
    pgn.train(model, _data(), epochs=1, out=tmp_path / "run", batch_size=8, lr=0.5, progress=False, device="cpu")
    assert any(not torch.equal(v, params[k]) for k, v in model.named_parameters() if k in params)


def test_zero_shot_label_mapping_needs_only_a_fit():
    model = pgn.create_model(CNN, "zeroshot", classes=["a", "b", "c"], img_size=64, head="labelmap-flm")
    assert model.num_trainable() == 0
    assert fit_label_map(model, _data().train) and not fit_label_map(model, _data().train)  # fitted once, kept
    metrics = pgn.evaluate(model, _data(), progress=False)
    assert metrics["n"] == 8 and 0 <= metrics["top1"] <= 1


@pytest.mark.parametrize("options, message", [
    (dict(SMALL_PGN, layout="append"), "prompted in its input pixels only"),
    (dict(SMALL_PGN, library_space="latent"), "prompted in its input pixels only"),
])
def test_token_prompts_on_a_pixel_classifier_are_refused(options, message):
    with pytest.raises(PGNError, match=message):
        pgn.create_model(CNN, "pgn", classes=["a", "b", "c"], img_size=64, head="labelmap-flm", **options)


def test_a_label_mapping_needs_a_classifier():
    with pytest.raises(PGNError, match="label mapping reads the scores of a classifier"):
        pgn.create_model("test-vit-timm", "vp", classes=["a", "b"], img_size=64,
                         head="labelmap-flm")


@pytest.mark.parametrize("layout, shared_frame", [("overlay", 0), ("overlay", 6), ("frame", 6)])
def test_every_pixel_form_trains_on_exactly_the_8_bit_canvas_the_classifier_is_sent(layout, shared_frame):
    """PGN's forms for a scores-only model: the image whole under K border patches (overlay), and a learned frame
    shared by all images beside the per-image patches. The prompted forward is the unmodified model's own forward
    on the canvas decoded from its 8-bit form, and gradients reach the generator, the library and the frame."""
    from pgn.pixels import from_uint8, to_uint8

    model = pgn.create_model(CNN, "pgn", classes=["a", "b", "c"], img_size=64, head="linear", seed=0,
                             **dict(SMALL_PGN, layout=layout, shared_frame=shared_frame)).eval()
    assert (model.input_prompt is not None) == bool(shared_frame)
    if shared_frame:  # a frame that starts at zero would leave the canvas as it is: give it something to draw
        with torch.no_grad():
            for p in model.input_prompt.parameters():
                p.normal_(0, 0.7)
    pre = model.backbone.preprocessing
    x = from_uint8(np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8), pre.mean, pre.std)
    with torch.no_grad():
        canvas = model.canvas(x)
        decoded = from_uint8(to_uint8(canvas, pre.mean, pre.std), pre.mean, pre.std)
        torch.testing.assert_close(canvas, decoded, rtol=0, atol=1e-5)  # 8-bit exact (normalisation's float error)
        torch.testing.assert_close(model(x), model.head(model.backbone.model(decoded)), rtol=1e-5, atol=1e-5)
    cells = canvas.reshape(3, 3, 8, 8, 8, 8).permute(0, 2, 4, 1, 3, 5)
    image_cells = x.reshape(3, 3, 8, 8, 8, 8).permute(0, 2, 4, 1, 3, 5)
    if layout == "overlay" and not shared_frame:  # the image is whole but for the K prompt cells
        taken = set(model.layout.prompt_cells((8, 8), 4))
        kept = [(r, c) for r in range(8) for c in range(8) if (r, c) not in taken]
        assert all(torch.equal(cells[:, r, c], image_cells[:, r, c]) for r, c in kept)
    if shared_frame:  # the frame draws on the border; the centre stays the image's (within the 8-bit rounding)
        torch.testing.assert_close(canvas[..., 24:40, 24:40], x[..., 24:40, 24:40] if layout == "overlay" else
                                   canvas[..., 24:40, 24:40], rtol=0, atol=1e-5)
        assert not torch.allclose(canvas[..., :6, 16:48], x[..., :6, 16:48], atol=0.05)
    model.train()
    model(x).sum().backward()
    grads = {"generator": model.prompts.net.parameters(), "library": [model.prompts.library.logits],
             "head": model.head.parameters(), "frame": model.input_prompt.parameters() if shared_frame else []}
    for part, params in grads.items():
        params = list(params)
        assert not params or any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), part
    assert all(p.grad is None for p in model.backbone.parameters())


def test_a_shared_frame_is_a_width_in_pixels():
    with pytest.raises(PGNError, match="shared_frame is a width in pixels"):
        pgn.create_model(CNN, "pgn", classes=["a", "b", "c"], img_size=64, **dict(SMALL_PGN, shared_frame=-1))
    with pytest.raises(PGNError, match="does not fit"):
        pgn.create_model(CNN, "pgn", classes=["a", "b", "c"], img_size=64, **dict(SMALL_PGN, shared_frame=32))


def test_the_learned_readout_alone_reads_the_scores_of_the_unmodified_image(tmp_path):
    """No prompt, a linear map of the model's scores (the hosted setting's linear probe): only the head trains,
    and the classifier's answer is that head on the model's own scores."""
    model = pgn.create_model(CNN, "linear", classes=["a", "b", "c"], img_size=64, seed=0)
    assert model.num_trainable() == 1000 * 3 + 3
    before = model.head.fc.weight.detach().clone()
    pgn.train(model, _data(), epochs=1, out=tmp_path / "run", batch_size=8, lr=0.1, progress=False, device="cpu")
    assert not torch.equal(model.head.fc.weight, before)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), model.head(model.backbone.model(x)), rtol=0, atol=0)


@pytest.mark.parametrize("options, parts", [
    (dict(layout="overlay", shared_frame=6, head="linear"), ["shared frame", "learned readout of the scores"]),
    (dict(layout="frame", head="labelmap-first"), ["label mapping"]),
])
def test_an_export_says_what_it_holds(options, parts):
    """`pgn export`'s message: the shared frame and the learned readout are named, so a user sees they travel."""
    model = pgn.create_model(CNN, "pgn", classes=["a", "b", "c"], img_size=64, seed=0, **dict(SMALL_PGN, **options))
    assert model.deployable().contents() == ["generator", "pixel library", *parts]
