"""The paper's backbones (CLIP ViT-B/32 via open_clip, torchvision ViT-B/32, DINO ViT-S/16 via timm).

Random init of the real architectures: no weights are downloaded (HF_HUB_OFFLINE=1 via conftest).
"""
import os
import time

import pytest
import torch
from torch import nn

from pgn import PGNError
from pgn.backbones import OpenCLIPViT, TimmViT, TorchvisionViT, create_backbone, hub
from pgn.heads import ClipZeroShotHead

# The library defaults to fp32: nothing here asks whether the CPU has native bf16 (checked: conftest).
pytestmark = pytest.mark.fp32_only

open_clip = pytest.importorskip("open_clip")
torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

CLIP_ARCH = "ViT-B-32-quickgelu"


@pytest.fixture(scope="module")
def clip_model():
    torch.manual_seed(0)
    return open_clip.create_model(CLIP_ARCH, pretrained=None)


@pytest.fixture(scope="module")
def clip(clip_model):
    return OpenCLIPViT(clip_model, name="clip-vit-b32", arch=CLIP_ARCH)


@pytest.fixture(scope="module")
def tv_model():
    torch.manual_seed(1)
    model = torchvision.models.vit_b_32(weights=None)
    model.heads = nn.Identity()  # the library forward then ends at the CLS feature
    return model.eval()


@pytest.fixture(scope="module")
def tv(tv_model):
    return TorchvisionViT(tv_model, name="vit-b32")


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(2)
    return torch.randn(1, 3, 224, 224)  # one image: a heavily loaded 2-core CPU runs these tests


@pytest.fixture(scope="module")
def clip_out(clip, images):
    with torch.no_grad():
        return clip.encode(clip.tokens(images))


@pytest.fixture(scope="module")
def clip_ref(clip_model, images):
    with torch.no_grad():
        return clip_model.eval().encode_image(images)


@pytest.fixture(scope="module")
def tv_out(tv, images):
    with torch.no_grad():
        return tv.encode(tv.tokens(images))


# --- CLIP (open_clip) ---

def test_clip_no_prompts_equals_encode_image(clip_out, clip_ref):
    assert clip_out.shape == (1, 512)
    assert torch.equal(clip_out, clip_ref)


def test_clip_prompts_are_appended_without_position(clip, images, clip_out):
    torch.manual_seed(3)
    p = torch.randn(1, 16, clip.width) * 0.5
    with torch.no_grad():
        t = clip.tokens(images)
        a = clip.encode(torch.cat([t, p], 1))
        b = clip.encode(torch.cat([t, p.flip(1)], 1))
    assert t.shape == (1, 1 + 49, 768)
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, clip_out, atol=1e-3)


def test_clip_interface(clip):
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    assert (clip.patch_size, clip.width, clip.feature_dim, clip.native_grid) == (32, 768, 512, (7, 7))
    assert clip.patch_embed_weight().shape == (768, 3, 32, 32)
    assert torch.equal(clip.patch_embed_bias(), torch.zeros(768))
    assert clip.preprocessing.mean == tuple(OPENAI_DATASET_MEAN) and clip.preprocessing.std == tuple(OPENAI_DATASET_STD)
    assert clip.preprocessing.input_size == 224
    assert all(not p.requires_grad for p in clip.parameters())
    assert any(n.startswith("clip.transformer.") for n, _ in clip.named_parameters())  # text tower kept
    clip.train()
    assert not any(m.training for m in clip.modules())


def test_clip_zero_shot_head_matches_open_clip_and_is_cached(clip, clip_model, clip_out, clip_ref, tmp_path,
                                                             monkeypatch):
    monkeypatch.setenv("PGN_HOME", str(tmp_path))
    calls = []
    real = clip_model.encode_text
    monkeypatch.setattr(clip_model, "encode_text", lambda *a, **k: calls.append(1) or real(*a, **k))
    names = ["cat", "dog", "airplane"]
    template = "This is a photo of a {}."

    head = clip.zero_shot_head(names, template)
    assert isinstance(head, ClipZeroShotHead) and head.num_classes == 3
    assert list(head.parameters()) == []
    files = list((tmp_path / "text_features").glob("*.safetensors"))
    assert len(calls) == 1 and len(files) == 1
    with torch.no_grad():
        logits = head(clip_out)
        tok = open_clip.get_tokenizer(CLIP_ARCH)
        img = nn.functional.normalize(clip_ref, dim=-1)  # = encode_image(x, normalize=True)
        txt = real(tok([template.format(n) for n in names]), normalize=True)
        ref = clip_model.logit_scale.exp() * img @ txt.T
    assert logits.shape == (1, 3)
    assert torch.allclose(logits, ref, atol=1e-5, rtol=0)

    mtime = files[0].stat().st_mtime_ns
    again = clip.zero_shot_head(names, template)
    assert len(calls) == 1, "second call must read the cache, not run the text tower"
    assert files[0].stat().st_mtime_ns == mtime
    assert torch.equal(again.text_features, head.text_features)

    clip.zero_shot_head(names, "A photo of a {}.")  # another template: another cache entry
    assert len(calls) == 2 and len(list((tmp_path / "text_features").glob("*.safetensors"))) == 2

    # the head sits in a training graph: gradients flow to the image features
    feats = torch.randn(2, 512, requires_grad=True)
    head(feats).sum().backward()
    assert feats.grad is not None


def test_zero_shot_head_formula():
    text = torch.randn(4, 8)
    head = ClipZeroShotHead(text, torch.tensor(2.0))
    x = torch.randn(3, 8)
    ref = torch.tensor(2.0).exp() * nn.functional.normalize(x, dim=-1) @ nn.functional.normalize(text, dim=-1).T
    assert torch.allclose(head(x), ref, atol=1e-6)
    assert sorted(n for n, _ in head.named_buffers()) == ["logit_scale", "text_features"]


def test_clip_from_local_weights_calls_open_clip(clip_model, tmp_path, monkeypatch):
    # Loading a 600 MB checkpoint is open_clip's job; check the factory hands it the right arch and file.
    path = tmp_path / "clip.safetensors"
    path.write_bytes(b"stub")
    seen = {}

    def fake_create_model(arch, pretrained=None, **kw):
        seen.update(arch=arch, pretrained=pretrained, **kw)
        return clip_model

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    loaded = create_backbone("clip-vit-b32", weights=str(path))
    assert seen == {"arch": CLIP_ARCH, "pretrained": str(path)}
    assert isinstance(loaded, OpenCLIPViT) and loaded.arch == CLIP_ARCH
    assert loaded.weights_id.startswith("file:") and str(path) in loaded.description


def test_openclip_rejects_non_vit_model():
    with pytest.raises(PGNError, match="open_clip CLIP"):
        OpenCLIPViT(nn.Linear(2, 2), name="x")


# --- torchvision ViT-B/32 ---

def test_torchvision_no_prompts_equals_library_forward(tv_out, tv_model, images):
    with torch.no_grad():
        ref = tv_model(images)  # torchvision's own forward, heads = Identity
    assert tv_out.shape == (1, 768)
    assert torch.equal(tv_out, ref)


def test_torchvision_prompts_and_interface(tv, images):
    p = torch.randn(1, 4, 768)
    with torch.no_grad():
        t = tv.tokens(images)
        a = tv.encode(torch.cat([t, p], 1))
        b = tv.encode(torch.cat([t, p.flip(1)], 1))
    assert torch.allclose(a, b, atol=1e-5)
    assert (tv.patch_size, tv.width, tv.feature_dim, tv.native_grid) == (32, 768, 768, (7, 7))
    assert tv.patch_embed_weight().shape == (768, 3, 32, 32)
    assert tv.patch_embed_bias().shape == (768,)
    assert tv.preprocessing.mean == (0.485, 0.456, 0.406) and tv.preprocessing.input_size == 224
    assert all(not p.requires_grad for p in tv.parameters())
    assert tv.takes_tokens and not tv.has_zero_shot_head  # what it declares, checked against what it does:
    with pytest.raises(PGNError, match="no text tower"):
        tv.zero_shot_head(["a"], "{}")


def test_torchvision_from_local_weights(tv_model, tv_out, tmp_path, images):
    path = tmp_path / "vit_b_32.pth"
    torch.save(tv_model.state_dict(), path)
    loaded = create_backbone("vit-b32", weights=str(path))
    assert isinstance(loaded, TorchvisionViT) and loaded.name == "vit-b32"
    with torch.no_grad():
        assert torch.equal(loaded(images), tv_out)


def test_torchvision_state_dict_reader(tmp_path):
    from safetensors.torch import save_file

    from pgn.backbones.torchvision_vit import _read_state_dict

    save_file({"module.conv_proj.bias": torch.ones(3)}, str(tmp_path / "w.safetensors"))
    torch.save({"model": {"conv_proj.bias": torch.ones(3)}}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        state = _read_state_dict(tmp_path / name)
        assert list(state) == ["conv_proj.bias"] and torch.equal(state["conv_proj.bias"], torch.ones(3))


# --- DINO ViT-S/16 (timm) ---

def test_dino_no_prompts_equals_forward_features(tmp_path, images):
    from safetensors.torch import save_file

    torch.manual_seed(4)
    vit = timm.create_model("vit_small_patch16_224.dino", pretrained=False, num_classes=0, dynamic_img_size=True)
    dino = TimmViT(vit, name="dino-vit-s16")
    with torch.no_grad():
        ours = dino.encode(dino.tokens(images))
        ref = vit.forward_features(images)[:, 0]
    assert torch.equal(ours, ref)
    assert (dino.patch_size, dino.width, dino.native_grid) == (16, 384, (14, 14))
    assert dino.patch_embed_weight().shape == (384, 3, 16, 16)

    # the registry name goes through timm's loader with a local file
    path = tmp_path / "dino.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    loaded = create_backbone("dino-vit-s16", weights=str(path))
    assert isinstance(loaded, TimmViT) and loaded.name == "dino-vit-s16"
    small = images[:, :, :64, :64]  # any multiple of 16 works for timm; keep the second forward cheap
    with torch.no_grad():
        assert torch.equal(loaded(small), dino(small))


# --- registry, offline behaviour, grids ---

@pytest.mark.parametrize("name", ["clip-vit-b32", "vit-b32", "dino-vit-s16"])
def test_offline_without_weights_fails_fast(name, monkeypatch):
    import pgn.backbones as registry

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "hf_cached_file", lambda *a, **k: None)  # even if this machine has a cache
    monkeypatch.setattr(hub, "torch_hub_checkpoint", lambda *a, **k: None)
    monkeypatch.setattr(registry, "_hub_cached_file", lambda *a, **k: None)
    t0 = time.monotonic()
    with pytest.raises(PGNError, match="`weights=PATH`"):
        create_backbone(name)
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("name", ["clip-vit-b32", "vit-b32"])
def test_missing_weights_file(name):
    with pytest.raises(PGNError, match="does not exist"):
        create_backbone(name, weights=os.path.join("/nonexistent", "w.safetensors"))


def test_non_native_grid_is_rejected(clip, tv):
    x = torch.randn(1, 3, 256, 256)
    for backbone in (clip, tv):
        with torch.no_grad():
            grid = backbone.embed_patches(x)
            assert grid.shape == (1, 8, 8, 768)
            with pytest.raises(PGNError, match=r"native 7x7 grid \(224 px\); use `img_size=224` or `layout=frame`"):
                backbone.add_position(grid)
