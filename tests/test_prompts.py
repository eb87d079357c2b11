import pytest
import torch
from helpers import OFFICIAL, needs_official

from pgn import PGNError
from pgn.prompts import GeneratorConfig, InputIndependentPrompts, PromptGenerator, load_official

# The library defaults to fp32: nothing here asks whether the CPU has native bf16 (checked: conftest).
pytestmark = pytest.mark.fp32_only

# file -> (width D, trainable parameters stated for the release)
RELEASED = {
    "pgn_clip_cifar10.pt": (768, 1_032_304),
    "pgn_clip_eurosat.pt": (768, 1_032_304),
    "pgn_dino_cifar100.pt": (384, 620_656),
    "pgn_vit_sun397.pt": (768, 669_808),
}


@pytest.mark.parametrize("mixing", ["softmax", "sigmoid"])
def test_generator_shapes_and_mixing(mixing):
    gen = PromptGenerator(GeneratorConfig(num_prompts=4, library_size=10, input_size=64, mixing=mixing), dim=32)
    x = torch.randn(3, 3, 96, 96)
    coeffs = gen.coefficients(x)
    assert coeffs.shape == (3, 4, 10)
    if mixing == "softmax":
        assert torch.allclose(coeffs.sum(-1), torch.ones(3, 4), atol=1e-6)
    else:
        assert ((coeffs > 0) & (coeffs < 1)).all()
    prompts = gen(x)
    assert prompts.shape == (3, 4, 32)
    assert torch.allclose(prompts, torch.einsum("bkn,nd->bkd", coeffs, gen.library.tokens), atol=1e-6)


def test_generator_is_input_dependent_and_iip_is_not():
    gen = PromptGenerator(GeneratorConfig(num_prompts=2, library_size=8, input_size=64), dim=16).eval()
    a, b = gen(torch.randn(1, 3, 64, 64)), gen(torch.randn(1, 3, 64, 64))
    assert not torch.allclose(a, b)
    iip = InputIndependentPrompts(2, 16)
    assert torch.equal(iip(torch.randn(2, 3, 8, 8))[0], iip(torch.randn(2, 3, 8, 8))[1])


ONEDNN_OFF = pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # said by mkldnn.flags


@ONEDNN_OFF
@pytest.mark.parametrize("widths", [(4, 4, 4, 4), (4, 8, 16, 32)])
def test_generator_gradients_equal_the_reference_convolutions_on_every_cpu(widths):
    """The generator's gradients match PyTorch's reference (non-oneDNN) convolutions, in fp32 to 1e-4.

    Fails where the shortcut is a channels-last strided 1x1 convolution with fewer than 8 input channels
    on a CPU without AVX-512 (oneDNN#6035: wrong weight gradients on two threads, a heap corruption on
    one); the tests' tiny generators have 4 channels, so they took that path on AMD EPYC.
    """
    def grads(reference: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        gen = PromptGenerator(GeneratorConfig(num_prompts=2, library_size=4, widths=widths, input_size=32), dim=8)
        x = torch.randn(16, 3, 32, 32)
        with torch.backends.mkldnn.flags(enabled=not reference):
            gen(x).square().sum().backward()
        return [p.grad for p in gen.parameters()]

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the wrong-gradient case needs two threads; one thread crashes instead
    try:
        fast, ref = grads(reference=False), grads(reference=True)
    finally:
        torch.set_num_threads(threads)
    for f, r in zip(fast, ref):
        torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-4)


@ONEDNN_OFF
def test_the_shortcut_is_the_strided_1x1_convolution():
    """Keeping every second pixel then a stride-1 1x1 convolution is the official stride-2 shortcut."""
    from pgn.prompts.generator import BasicBlock

    torch.manual_seed(0)
    block = BasicBlock(4, 8, stride=2).eval()
    for size in (8, 7):  # even and odd sizes: both give ceil(size / 2)
        x = torch.randn(2, 4, size, size)
        conv = block.shortcut
        with torch.backends.mkldnn.flags(enabled=False):
            want = torch.nn.functional.relu(block.body(x) + torch.nn.functional.conv2d(x, conv.weight, conv.bias, 2))
            got = block(x)
        assert got.shape == (2, 8, (size + 1) // 2, (size + 1) // 2)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_paper_parameter_count():
    # DINO ViT-S/16 setting of the paper: K 16, N 128, D 384 -> 620,656 trainable parameters.
    gen = PromptGenerator(GeneratorConfig(num_prompts=16, library_size=128), dim=384)
    assert sum(p.numel() for p in gen.parameters()) == 620_656


def test_resnet18_generator_is_torchvisions_resnet18_mixing_the_library():
    """``arch="resnet18"``: torchvision's own ResNet-18 with a K*N-way head gives the (B, K, N) logits, whose
    softmax rows sum to 1 and mix the library. One process, same kernels and memory format: exact."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    gen = PromptGenerator(GeneratorConfig(num_prompts=3, library_size=5, arch="resnet18", input_size=64), dim=8).eval()
    ref = resnet18(weights=None, num_classes=3 * 5).eval().to(memory_format=torch.channels_last)
    ref.load_state_dict(gen.net.state_dict())  # strict: the same network, its head K*N = 15 outputs
    # Parameters: the reference network plus the N x D library, nothing else.
    assert sum(p.numel() for p in gen.parameters()) == sum(p.numel() for p in ref.parameters()) + 5 * 8
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = ref(x.contiguous(memory_format=torch.channels_last)).view(2, 3, 5)
        logits, coeffs, prompts = gen.logits(x), gen.coefficients(x), gen(x)
    assert want.std() > 0  # a head that is not constant: the comparisons below can fail
    torch.testing.assert_close(logits, want, rtol=0, atol=0)
    torch.testing.assert_close(coeffs, want.softmax(-1), rtol=0, atol=0)
    torch.testing.assert_close(coeffs.sum(-1), torch.ones(2, 3), rtol=0, atol=1e-6)
    torch.testing.assert_close(prompts, want.softmax(-1) @ gen.library.tokens, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [dict(num_prompts=0), dict(arch="vgg"), dict(mixing="relu"), dict(widths=(1, 2))])
def test_bad_generator_config(bad):
    with pytest.raises(PGNError):
        GeneratorConfig(**bad)


@needs_official
@pytest.mark.parametrize("name", sorted(RELEASED))
def test_official_checkpoints_load_strictly(name):
    dim, count = RELEASED[name]
    gen = load_official(OFFICIAL / name).eval()
    assert sum(p.numel() for p in gen.parameters()) == count
    with torch.no_grad():
        prompts = gen(torch.randn(2, 3, 224, 224))
    assert prompts.shape == (2, 16, dim)
    raw = torch.load(OFFICIAL / name, map_location="cpu", weights_only=True)
    assert torch.equal(gen.library.tokens, raw["tl_vectors"])


def test_official_loader_rejects_bad_files(tmp_path):
    with pytest.raises(PGNError, match="does not exist"):
        load_official(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PGNError, match="not a readable"):
        load_official(junk)
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(PGNError, match="not an official PGN checkpoint"):
        load_official(other)
