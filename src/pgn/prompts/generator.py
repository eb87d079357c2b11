"""The Prompt Generation Network: a small CNN that maps an image to K library mixtures."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PGNError
from .library import PixelTokenLibrary, TokenLibrary


@dataclass
class GeneratorConfig:
    """Shape of a PGN. Defaults are the paper's, except ``input_size`` (224 in the paper)."""

    num_prompts: int = 16          # K: prompt tokens per image
    library_size: int = 128        # N: tokens in the library (256 for CLIP in the paper)
    arch: str = "resnet10"         # "resnet10" (official) or "resnet18" (torchvision, random init)
    widths: tuple[int, ...] = (16, 32, 64, 128)  # resnet10 stage widths
    input_size: int = 112          # images are resized to this before the generator
    mixing: str = "softmax"        # "softmax" (paper default) or "sigmoid"
    library_space: str = "latent"  # "latent" (paper: D-dim vectors) or "pixel" (RGB patches; exact inversion)
    channels_last: bool = True     # faster convolutions on CPU and GPU
    # Initialisation (ablations in docs/ablations.md; the defaults are the paper's):
    library_init_std: float | None = None  # None: N(0, 0.02) latent tokens (paper), N(0, 1) pixel-patch logits
    output_init: str = "default"   # "default" (PyTorch's Linear init) or "zero": uniform mixtures at step 0
    # The last layer's initial weight and bias times this: the inverse temperature of the mixtures at step 0
    # (> 1: sharper, < 1: nearer uniform). An ablation of how fast the mixtures can leave uniform.
    output_init_scale: float = 1.0

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        if self.num_prompts < 1:
            raise PGNError(f"num_prompts must be >= 1 for a PGN, got {self.num_prompts}")
        if self.library_size < 1:
            raise PGNError(f"library_size must be >= 1, got {self.library_size}")
        if self.arch not in ("resnet10", "resnet18"):
            raise PGNError(f"unknown generator arch {self.arch!r}; choose resnet10 or resnet18")
        if self.mixing not in ("softmax", "sigmoid"):
            raise PGNError(f"unknown mixing {self.mixing!r}; choose softmax or sigmoid")
        if self.library_space not in ("latent", "pixel"):
            raise PGNError(f"unknown library_space {self.library_space!r}; choose latent or pixel")
        if self.library_space == "pixel" and self.mixing != "softmax":
            raise PGNError("a pixel-space library needs softmax mixing (coefficients must sum to 1)")
        if self.output_init not in ("default", "zero"):
            raise PGNError(f"unknown output_init {self.output_init!r}; choose default or zero")
        if not (math.isfinite(self.output_init_scale) and self.output_init_scale > 0):
            raise PGNError(f"output_init_scale must be a positive number, got {self.output_init_scale}")
        if self.library_init_std is not None and not self.library_init_std >= 0:
            raise PGNError(f"library_init_std must be >= 0, got {self.library_init_std}")
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise PGNError(f"widths must be four positive stage widths, got {self.widths}")
        if self.input_size < 32:
            raise PGNError(f"generator input_size must be >= 32 px, got {self.input_size}")


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus a shortcut (1x1 conv with bias where the shape changes).

    The shortcut is the official strided 1x1 convolution, computed as its definition: keep every
    ``stride``-th pixel, then a stride-1 1x1 convolution (the same weights, the same function). Why not
    ``nn.Conv2d(..., stride=2)``: on CPUs without AVX-512 (AMD EPYC), oneDNN's channels-last 1x1 kernel
    with stride 2 and fewer than 8 input channels writes past its workspace in the weight gradient
    (uxlfoundation/oneDNN#6035): heap corruption on one thread, silently wrong gradients on two (measured
    with torch 2.14.1: max error 6.7 against the reference convolution's 3e-4). Stride 1 does not take
    that path.
    """

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.stride = stride
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if (stride != 1 or c_in != c_out) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c_in, H, W) -> (B, c_out, ceil(H / stride), ceil(W / stride))."""
        if self.shortcut is None:
            skip = x
        else:  # a 1x1 convolution of stride s, no padding, reads exactly the pixels [::s, ::s]
            skip = self.shortcut(x[..., ::self.stride, ::self.stride] if self.stride > 1 else x)
        return F.relu(self.body(x) + skip)


class ResNet10(nn.Module):
    """The official PGN "resnet10": stem, four one-block stages, global pool, linear head."""

    def __init__(self, out_features: int, widths=(16, 32, 64, 128)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        ins = (widths[0],) + tuple(widths[:-1])
        self.stages = nn.ModuleList(BasicBlock(i, o, 1 if s == 0 else 2) for s, (i, o) in enumerate(zip(ins, widths)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], out_features))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


def _resnet18(out_features: int) -> nn.Module:
    from torchvision.models import resnet18

    net = resnet18(weights=None)  # random init: nothing is downloaded
    net.fc = nn.Linear(net.fc.in_features, out_features)
    return net


class PromptGenerator(nn.Module):
    """Image -> K prompt tokens, each a mixture over a :class:`TokenLibrary`.

    ``forward(images)``: (B, 3, H, W) normalised images -> (B, K, D) prompts.
    ``coefficients(images)``: (B, K, N) mixture weights (softmax or sigmoid).

    A pixel-space library (``config.library_space == "pixel"``) needs the model's
    :class:`~pgn.backbones.PatchEmbedding` (``embedding``), through which its patches are mixed.
    """

    def __init__(self, config: GeneratorConfig, dim: int, embedding=None):
        super().__init__()
        self.config = config
        out = config.num_prompts * config.library_size
        self.net = ResNet10(out, config.widths) if config.arch == "resnet10" else _resnet18(out)
        last = self.net.head[-1] if config.arch == "resnet10" else self.net.fc
        if config.output_init == "zero":
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        elif config.output_init_scale != 1.0:
            with torch.no_grad():
                last.weight.mul_(config.output_init_scale)
                last.bias.mul_(config.output_init_scale)
        init = {} if config.library_init_std is None else {"init_std": config.library_init_std}
        if config.library_space == "pixel":
            if embedding is None:
                raise PGNError("a pixel-space library needs the model's patch embedding")
            self.library = PixelTokenLibrary(config.library_size, embedding.patch_size, embedding.weight,
                                             embedding.bias, embedding.mean, embedding.std, **init)
        else:
            self.library = TokenLibrary(config.library_size, dim, **init)
        if config.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.last_coefficients: torch.Tensor | None = None  # (B, K, N) of the last forward, detached

    @property
    def num_prompts(self) -> int:
        return self.config.num_prompts

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, K, N) unnormalised mixture logits."""
        size = self.config.input_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images).view(images.shape[0], self.config.num_prompts, self.config.library_size)

    def coefficients(self, images: torch.Tensor) -> torch.Tensor:
        z = self.logits(images).float()
        return z.softmax(-1) if self.config.mixing == "softmax" else z.sigmoid()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        coefficients = self.coefficients(images)
        # Kept (detached, B x K x N floats) so that the trainer can log how sharp the mixtures are.
        self.last_coefficients = coefficients.detach()
        return self.library(coefficients)

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, K, 3, P, P) normalised prompt patches, with a gradient (a pixel library only):
        the prompts of a model prompted in pixels (:class:`~pgn.backbones.PixelClassifier`)."""
        if not isinstance(self.library, PixelTokenLibrary):
            raise PGNError("prompt patches need a pixel-space library (`library_space=pixel`)")
        coefficients = self.coefficients(images)
        self.last_coefficients = coefficients.detach()
        return self.library.trainable_patches(coefficients)


class InputIndependentPixelPrompts(nn.Module):
    """IIP in the input: K free RGB patches, the same for every image (a pixel library of K patches, each
    prompt taking its own with weight 1), so they deploy in the image as a PGN's pixel library does.

    ``forward(images)``: (B, 3, H, W) -> (B, K, D) patch embeddings; ``patches(images)``: (B, K, 3, P, P).
    """

    def __init__(self, num_prompts: int, embedding):
        """``embedding``: the model's :class:`~pgn.backbones.PatchEmbedding`."""
        super().__init__()
        if num_prompts < 1:
            raise PGNError(f"num_prompts must be >= 1 for IIP, got {num_prompts}")
        self.library = PixelTokenLibrary(num_prompts, embedding.patch_size, embedding.weight, embedding.bias,
                                         embedding.mean, embedding.std)
        self.register_buffer("choice", torch.eye(num_prompts), persistent=False)  # (K, K): prompt k is patch k

    @property
    def num_prompts(self) -> int:
        return self.choice.shape[0]

    def coefficients(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, K, K): prompt k takes patch k, whatever the image (so a deployed canvas composes
        them as it composes a PGN's mixtures)."""
        return self.choice.unsqueeze(0).expand(images.shape[0], -1, -1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.library(self.coefficients(images))

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        return self.library.trainable_patches(self.coefficients(images))


class InputIndependentPrompts(nn.Module):
    """IIP baseline: K free prompt vectors (std 0.02), the same for every image.

    ``forward(images)``: (B, 3, H, W) -> (B, K, D).
    """

    def __init__(self, num_prompts: int, dim: int, init_std: float = 0.02):
        super().__init__()
        if num_prompts < 1:
            raise PGNError(f"num_prompts must be >= 1 for IIP, got {num_prompts}")
        self.prompts = nn.Parameter(torch.randn(num_prompts, dim) * init_std)

    @property
    def num_prompts(self) -> int:
        return self.prompts.shape[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.prompts.unsqueeze(0).expand(images.shape[0], -1, -1)
