"""Layouts and inversion: the unmodified model on the canvas equals the latent prompted forward."""
import pytest
import torch
from helpers import make_tiny_vit

from pgn import PGNError
from pgn.adapter_format import AdapterConfig
from pgn.backbones import TimmViT
from pgn.layouts import ExtendLayout, FrameLayout, OverlayLayout, invert_tokens, make_layout, pixel_box
from pgn.methods import PGNConfig
from pgn.model import PromptedClassifier
from pgn.prompts import GeneratorConfig

# The library defaults to fp32: nothing here asks whether the CPU has native bf16 (checked: conftest).
pytestmark = pytest.mark.fp32_only

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def vit(patch: int, dim: int, seed: int = 0) -> TimmViT:
    # Random-init timm ViTs with 3P^2 >= D, so prompt patches can realise any token (MLP ratio 4: the weights
    # timm's vit_tiny_patch16_224 gave with these overrides, bit for bit).
    return make_tiny_vit(seed, name=f"vit-p{patch}-d{dim}", patch_size=patch, embed_dim=dim, depth=2, num_heads=2,
                         mlp_ratio=4, img_size=patch * 10)


def random_patches(b, k, p):
    rgb = torch.rand(b, k, 3, p, p)
    return (rgb - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def scale_close(a, b, rel=1e-4):
    return (a - b).abs().max() <= rel * b.abs().max()


@pytest.mark.parametrize("patch,dim", [(16, 64), (8, 192), (14, 384)])
@pytest.mark.parametrize("layout_name", ["extend", "frame", "overlay"])
@pytest.mark.parametrize("K", [1, 5, 16])
def test_canvas_forward_equals_latent_forward(patch, dim, layout_name, K):
    bb = vit(patch, dim)
    layout = make_layout(layout_name, bb)
    images = torch.randn(2, 3, 6 * patch, 6 * patch)
    patches = random_patches(2, K, patch)
    prompts = bb.embed_patches(patches.flatten(0, 1)).reshape(2, K, dim)  # W x + b per patch
    with torch.no_grad():
        latent = bb.encode(layout.latent_tokens(bb, images, prompts))
        canvas = layout.compose(images, patches)
        unmodified = bb.vit.forward_features(canvas)[:, 0]
    assert scale_close(unmodified, latent)


def test_geometry_and_extra_tokens():
    ext, frame = ExtendLayout(14, MEAN, STD), FrameLayout(14, MEAN, STD)
    assert ext.canvas_grid((8, 8), 16) == (10, 8) and ext.extra_tokens((8, 8), 16) == 16
    assert ext.canvas_grid((8, 8), 17) == (11, 8)
    assert frame.canvas_grid((8, 8), 16) == (8, 8) and frame.extra_tokens((8, 8), 16) == 0
    cells = frame.prompt_cells((8, 8), 28)
    assert len(set(cells)) == 28 and all(r in (0, 7) or c in (0, 7) for r, c in cells)
    with pytest.raises(PGNError, match="border cells"):
        frame.prompt_cells((8, 8), 29)
    with pytest.raises(PGNError, match="unknown layout"):
        make_layout("spiral")
    # overlay: the frame's cells, over the image kept whole (every cell not taken by a prompt is the image's)
    overlay = OverlayLayout(14, MEAN, STD)
    assert overlay.canvas_grid((8, 8), 16) == (8, 8) and overlay.extra_tokens((8, 8), 16) == 0
    assert overlay.prompt_cells((8, 8), 16) == frame.prompt_cells((8, 8), 16)
    images, patches = torch.randn(1, 3, 112, 112), random_patches(1, 16, 14)
    canvas = overlay.compose(images, patches)
    cells = canvas.reshape(1, 3, 8, 14, 8, 14).permute(0, 2, 4, 1, 3, 5)
    image_cells = images.reshape(1, 3, 8, 14, 8, 14).permute(0, 2, 4, 1, 3, 5)
    taken = overlay.prompt_cells((8, 8), 16)
    for r in range(8):
        for c in range(8):
            want = patches[0, taken.index((r, c))] if (r, c) in taken else image_cells[0, r, c]
            assert torch.equal(cells[0, r, c], want), (r, c)
    canvas = ext.compose(torch.zeros(1, 3, 112, 112), random_patches(1, 16, 14))
    assert canvas.shape == (1, 3, 140, 112)


@pytest.mark.parametrize("layout_name", ["extend", "frame", "overlay"])
def test_pixel_library_generator_deploys_exactly(layout_name):
    bb = vit(16, 64)
    method = PGNConfig(num_prompts=6, library_size=12, generator_size=64, library_space="pixel", layout=layout_name)
    cfg = AdapterConfig(method_config=method, backbone=bb.name, backbone_width=64, class_names=["a", "b", "c"],
                        img_size=96, mean=bb.preprocessing.mean, std=bb.preprocessing.std)
    model = PromptedClassifier.from_config(cfg, bb).eval()
    torch.nn.init.normal_(model.head.fc.weight)
    images = torch.randn(4, 3, 96, 96)
    with torch.no_grad():
        latent = model.features(images)
        coeffs = model.prompts.coefficients(images)
        canvas = model.layout.compose(images, model.prompts.library.patches(coeffs))
        unmodified = bb.vit.forward_features(canvas)[:, 0]
    assert scale_close(unmodified, latent)
    # 8-bit exactness: the canvas of an 8-bit image is itself 8-bit (prompt patches are rounded in training too).
    pre = bb.preprocessing  # the library normalises with the backbone's own mean/std
    m, s = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)
    u8_images = ((torch.rand(4, 3, 96, 96) * 255).round() / 255 - m) / s
    with torch.no_grad():
        c8 = model.layout.compose(u8_images, model.prompts.library.patches(model.prompts.coefficients(u8_images)))
        latent8 = model.features(u8_images)
    rgb = c8 * s + m
    assert (rgb * 255 - (rgb * 255).round()).abs().max() < 1e-3
    assert scale_close(bb.vit.forward_features(((rgb * 255).round() / 255 - m) / s)[:, 0], latent8)
    lo, hi = pixel_box(pre.mean, pre.std, torch.float32)
    patches = model.prompts.library.patches(coeffs)
    assert (patches >= lo.view(3, 1, 1) - 1e-6).all() and (patches <= hi.view(3, 1, 1) + 1e-6).all()


def test_pixel_library_needs_softmax():
    with pytest.raises(PGNError, match="softmax"):
        GeneratorConfig(library_space="pixel", mixing="sigmoid")


def test_inversion_finds_in_box_patches_when_they_exist():
    torch.manual_seed(0)
    D, P = 384, 14
    W, b = torch.randn(D, 3, P, P) * 0.02, torch.randn(D) * 0.1
    x = random_patches(1, 20, P)[0]                                  # valid patches (20, 3, P, P)
    targets = x.flatten(1) @ W.flatten(1).T + b
    inv = invert_tokens(targets, W, b, MEAN, STD)
    assert not inv.min_norm_in_box.all()  # the pseudo-inverse alone leaves the box: the null space is needed
    assert inv.residual.max() < 1e-5
    lo, hi = pixel_box(MEAN, STD, torch.float32)
    assert (inv.patches >= lo.view(3, 1, 1) - 1e-6).all() and (inv.patches <= hi.view(3, 1, 1) + 1e-6).all()
    again = inv.patches.flatten(1) @ W.flatten(1).T + b
    assert torch.allclose(again, targets, atol=1e-4)


def test_inversion_reports_what_it_cannot_reach():
    torch.manual_seed(0)
    W, b = torch.randn(64, 3, 4, 4), torch.zeros(64)  # 3P^2 = 48 < D = 64: rank deficient (like ViT-L/14)
    inv = invert_tokens(torch.randn(5, 64) * 10, W, b, MEAN, STD)
    assert inv.rank_deficient and (inv.residual > 1e-2).all()


def test_latent_library_inversion_deploys_through_the_canvas():
    bb = vit(16, 64)
    layout = make_layout("extend", bb)
    images = torch.randn(2, 3, 64, 64)
    x = random_patches(2, 4, 16)
    prompts = bb.embed_patches(x.flatten(0, 1)).reshape(2, 4, 64)  # reachable latent prompts
    inv = invert_tokens(prompts, bb.patch_embed_weight(), bb.patch_embed_bias(), MEAN, STD)
    with torch.no_grad():
        latent = bb.encode(layout.latent_tokens(bb, images, prompts))
        deployed = bb.vit.forward_features(layout.compose(images, inv.patches))[:, 0]
    assert inv.residual.max() < 1e-4 and scale_close(deployed, latent)


def test_embedded_backbone_canvas_and_uint8(embedded):
    """Real DINOv2 weights: float canvases are exact; uint8 canvases keep the prediction."""
    for layout_name in ("extend", "frame"):
        method = PGNConfig(num_prompts=16, library_size=32, generator_size=112, library_space="pixel",
                           layout=layout_name)
        cfg = AdapterConfig(method_config=method, backbone=embedded.name, backbone_width=384,
                            class_names=list("abcd"), img_size=112)
        torch.manual_seed(1)
        model = PromptedClassifier.from_config(cfg, embedded).eval()
        torch.nn.init.normal_(model.head.fc.weight, std=0.05)
        images = torch.randn(4, 3, 112, 112).clamp(-2, 2)
        with torch.no_grad():
            latent = model.features(images)
            canvas = model.layout.compose(images, model.prompts.library.patches(model.prompts.coefficients(images)))
            unmodified = embedded.vit.forward_features(canvas)[:, 0]
            assert scale_close(unmodified, latent)
            m, s = torch.tensor(embedded.preprocessing.mean).view(3, 1, 1), torch.tensor(embedded.preprocessing.std).view(3, 1, 1)
            u8 = ((canvas * s + m).clamp(0, 1) * 255).round() / 255
            from_png = embedded.vit.forward_features((u8 - m) / s)[:, 0]
        assert (model.head(from_png).argmax(-1) == model.head(latent).argmax(-1)).all()
