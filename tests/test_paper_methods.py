"""Every method on random-init models of the paper's architectures; official checkpoints round-trip."""

import open_clip
import pytest
import torch
from helpers import OFFICIAL, needs_official
from torchvision.models import vit_b_32

from pgn.adapter_format import AdapterConfig
from pgn.backbones import OpenCLIPViT, TorchvisionViT
from pgn.methods import PGNConfig, VPConfig, method_config_of
from pgn.model import PromptedClassifier
from pgn.released import import_official

# The library defaults to fp32: nothing here asks whether the CPU has native bf16 (checked: conftest).
pytestmark = pytest.mark.fp32_only

CLASSES = ["airplane", "automobile", "bird"]


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return OpenCLIPViT(open_clip.create_model("ViT-B-32-quickgelu", pretrained=None), name="clip-vit-b32")


@pytest.fixture(scope="module")
def tv():
    torch.manual_seed(0)
    model = vit_b_32(weights=None)
    model.heads = torch.nn.Identity()
    return TorchvisionViT(model, name="vit-b32")


def config(method, backbone, head="linear"):
    options = {"pgn": dict(num_prompts=4, library_size=8, generator_size=64, head=head),
               "iip": dict(num_prompts=4, head=head), "vp": dict(head=head)}.get(method, {})
    return AdapterConfig(method_config=method_config_of(method, **options), backbone=backbone.name,
                         backbone_width=backbone.width, class_names=CLASSES, img_size=224,
                         mean=backbone.preprocessing.mean, std=backbone.preprocessing.std)


@pytest.mark.parametrize("method", ["pgn", "iip", "vp", "linear", "zeroshot"])
def test_clip_methods_gradients(clip, method):
    head = "zeroshot" if method in ("zeroshot", "pgn", "iip", "vp") else "linear"
    model = PromptedClassifier.from_config(config(method, clip, head), clip)
    logits = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 3)
    if method == "zeroshot":
        assert model.num_trainable() == 0 and not logits.requires_grad
        return
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert all(p.grad is None for p in clip.parameters())
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)
    if head == "zeroshot":  # the CLIP head is the frozen text tower: nothing of it trains
        assert sum(p.numel() for p in model.head.parameters()) == 0


@pytest.mark.parametrize("method", ["pgn", "iip", "vp", "linear"])
def test_torchvision_methods_gradients(tv, method):
    model = PromptedClassifier.from_config(config(method, tv), tv)
    torch.nn.init.normal_(model.head.fc.weight, std=0.1)
    torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 224, 224)), torch.tensor([0, 1])).backward()
    assert all(p.grad is None for p in tv.parameters())
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_paper_parameter_counts(clip, tv):
    # CLIP: K 16, N 256 -> the released 1,032,304; VP at 224 px, pad 30 -> 69,840.
    cfg = AdapterConfig(method_config=PGNConfig(num_prompts=16, library_size=256, generator_size=224, head="zeroshot"),
                        backbone=clip.name, backbone_width=768, class_names=CLASSES, img_size=224)
    assert PromptedClassifier.from_config(cfg, clip).num_trainable() == 1_032_304
    vp = AdapterConfig(method_config=VPConfig(head="zeroshot"), backbone=clip.name, backbone_width=768,
                       class_names=CLASSES, img_size=224)
    assert PromptedClassifier.from_config(vp, clip).num_trainable() == 69_840


@needs_official
def test_official_clip_checkpoint_imports_and_round_trips(clip, tmp_path):
    model, cfg = import_official(OFFICIAL / "pgn_clip_cifar10.pt", clip, CLASSES, "cifar10",
                                 "This is a photo of a {}.")
    raw = torch.load(OFFICIAL / "pgn_clip_cifar10.pt", map_location="cpu", weights_only=True)
    assert torch.equal(model.prompts.library.tokens, raw["tl_vectors"])
    assert model.num_trainable() == 1_032_304 and cfg.head == "zeroshot" and cfg.extra["head_trained"]
    model.save_pretrained(tmp_path / "a")
    loaded = PromptedClassifier.from_pretrained(tmp_path / "a", backbone=clip)
    cfg2 = loaded.config
    x = torch.randn(2, 3, 224, 224)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert cfg2 == cfg


@needs_official
def test_official_checkpoint_for_another_width(tv):
    from pgn import PGNError

    with pytest.raises(PGNError, match="width 384"):
        import_official(OFFICIAL / "pgn_dino_cifar100.pt", tv, CLASSES)
    model, cfg = import_official(OFFICIAL / "pgn_vit_sun397.pt", tv, CLASSES)
    assert not cfg.extra["head_trained"] and model.prompts(torch.randn(1, 3, 224, 224)).shape == (1, 16, 768)
