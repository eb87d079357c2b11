import numpy as np
import pytest
import torch
from helpers import make_tiny_vit

from pgn import PGNError
from pgn.backbones import create_backbone

# The library defaults to fp32: nothing here asks whether the CPU has native bf16 (checked: conftest).
pytestmark = pytest.mark.fp32_only


@pytest.mark.parametrize("size", [160, 96, 64])
def test_no_prompts_equals_timm_forward_features(tiny_vit, size):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ours = tiny_vit.encode(tiny_vit.tokens(x))
        ref = tiny_vit.vit.forward_features(x)[:, 0]
    assert torch.equal(ours, ref)


def test_backbone_is_frozen_and_stays_in_eval(tiny_vit):
    assert all(not p.requires_grad for p in tiny_vit.parameters())
    tiny_vit.train()
    assert not tiny_vit.training and not any(m.training for m in tiny_vit.modules())


def test_prompts_are_appended_without_position(tiny_vit):
    """No positional embedding on prompts: the CLS output cannot depend on their order."""
    x = torch.randn(2, 3, 64, 64)
    p = torch.randn(2, 5, tiny_vit.width)
    with torch.no_grad():
        t = tiny_vit.tokens(x)
        a = tiny_vit.encode(torch.cat([t, p], 1))
        b = tiny_vit.encode(torch.cat([t, p.flip(1)], 1))
        c = tiny_vit.encode(t)
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, c, atol=1e-3)
    assert t.shape == (2, 1 + 4 * 4, tiny_vit.width)


def test_interface_values_and_the_patch_embedding_as_a_linear_map(tiny_vit):
    """The interface's numbers are the timm model's, and ``patch_embed_weight``/``patch_embed_bias`` are the linear
    map the backbone embeds patches with (prompt inversion relies on it): W x + b computed here by an unfold and
    a matrix product, on a non-native grid, agrees with ``embed_patches`` in fp32 to 1e-5."""
    assert (tiny_vit.patch_size, tiny_vit.width, tiny_vit.native_grid) == (16, 64, (10, 10))
    assert tiny_vit.preprocessing.input_size == 160 == tiny_vit.native_grid[0] * tiny_vit.patch_size
    w, b = tiny_vit.patch_embed_weight(), tiny_vit.patch_embed_bias()
    assert w.shape == (64, 3, 16, 16) and b.shape == (64,)
    assert w is tiny_vit.vit.patch_embed.proj.weight and b is tiny_vit.vit.patch_embed.proj.bias
    x = torch.randn(2, 3, 64, 96)  # a 4 x 6 grid
    patches = x.unfold(2, 16, 16).unfold(3, 16, 16).permute(0, 2, 3, 1, 4, 5).reshape(2, 4, 6, 3 * 16 * 16)
    with torch.no_grad():
        got = tiny_vit.embed_patches(x)
        want = patches @ w.reshape(64, -1).T + b
    assert got.shape == (2, 4, 6, 64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_non_cls_vit_is_rejected():
    with pytest.raises(PGNError, match="has no CLS token"):
        make_tiny_vit(class_token=False, global_pool="avg")


def test_unknown_backbone_and_offline_hub_fail_fast():
    with pytest.raises(PGNError, match="unknown backbone"):
        create_backbone("resnet50")
    with pytest.raises(PGNError, match="unknown timm model"):
        create_backbone("timm:not_a_model")
    with pytest.raises(PGNError, match="`weights=PATH`"):
        create_backbone("timm:vit_small_patch16_224.dino")  # offline here: must not wait on a hub
    with pytest.raises(PGNError, match="does not exist"):
        create_backbone("timm:test_vit", weights="/nonexistent/w.safetensors")


def test_timm_backbone_from_local_weights(tmp_path):
    from safetensors.torch import save_file

    ref = make_tiny_vit(seed=3)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in ref.vit.state_dict().items()}, str(path))
    loaded = create_backbone("timm:test_vit", weights=str(path))
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(loaded(x), ref(x))


def test_embedded_backbone_matches_onnx_runtime(embedded):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from pgn.backbones import imgfocus

    model = onnx.load(str(imgfocus.onnx_path()))
    out = [n for n in model.graph.node if n.name.startswith("/backbone/layernorm/")][-1].output[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.RandomState(0).randn(2, 3, 224, 224).astype(np.float32)
    ref = sess.run([out], {"input_image": x})[0]
    with torch.no_grad():
        ours = embedded.vit.forward_features(torch.from_numpy(x)).numpy()
    assert np.abs(ours - ref).max() < 1e-4
    assert embedded.width == 384 and embedded.patch_size == 14 and embedded.native_grid == (16, 16)
