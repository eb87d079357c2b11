"""Backbones by name, from one registry (timm's shape): the tiny test models of each family included."""
import pytest
import torch

import pgn
from pgn import PGNError
from pgn.backbones import create_backbone, list_backbones, register_backbone

# The library defaults to fp32: nothing here asks whether the CPU has native bf16 (checked: conftest).
pytestmark = pytest.mark.fp32_only

TEST_MODELS = ("test-vit-timm", "test-vit-clip", "test-vit-torchvision")


def test_the_registry_lists_the_papers_backbones_and_hides_test_models_unless_asked():
    names = list_backbones()
    assert {"dinov2-s14-imgfocus", "clip-vit-b32", "clip-vit-b16", "clip-vit-l14", "vit-b32", "dino-vit-s16"} <= set(names)
    assert not set(TEST_MODELS) & set(names) and set(TEST_MODELS) <= set(list_backbones(include_test=True))
    with pytest.raises(PGNError, match="unknown backbone 'nope'.*test-vit|unknown backbone 'nope'.*vit-b32"):
        create_backbone("nope")


@pytest.mark.parametrize("name", TEST_MODELS)
def test_each_family_has_a_tiny_model_by_name_that_saves_and_loads_by_name(name, tmp_path):
    a, b = create_backbone(name), create_backbone(name)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))  # seed 0
    size = a.preprocessing.input_size if a.native_grid is not None and name != "test-vit-timm" else 64
    model = pgn.create_model(name, "pgn", classes=["a", "b"], img_size=size, num_prompts=2, library_size=4,
                             widths=(4, 4, 4, 4), seed=0).eval()
    model.save_pretrained(tmp_path / "adapter")
    loaded = pgn.load(tmp_path / "adapter", device="cpu")  # rebuilds its backbone by name
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)  # one process, one machine: exact


def test_a_backbone_registered_outside_the_library_is_created_by_name():
    from helpers import make_tiny_vit

    @register_backbone("toy-from-a-test", "a user's own backbone")
    def toy(weights=None):
        return make_tiny_vit(seed=3)

    assert "toy-from-a-test" in list_backbones()
    assert create_backbone("toy-from-a-test").width == 64
    with pytest.raises(ValueError, match="registered already"):
        register_backbone("toy-from-a-test")(toy)
