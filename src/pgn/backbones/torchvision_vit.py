"""torchvision's supervised ViT-B/32 behind the frozen-backbone interface.

torchvision adds the positional embedding *inside* ``Encoder.forward``, so the split is
re-implemented here from the same submodules (the library is not patched)::

    embed_patches   conv_proj                                          -> (B, h, w, D)
    add_position    [class_token, patches] + encoder.pos_embedding     -> (B, 1 + h*w, D)
    <prompts are appended here, without positional embedding>
    encode          encoder.dropout (eval: identity) -> encoder.layers -> encoder.ln -> CLS

With no prompts ``encode(tokens(x))`` equals ``model(x)`` with ``model.heads = nn.Identity()``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import PGNError
from . import hub
from .base import FrozenBackbone, Preprocessing
from .openclip import native_grid_error

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_MODELS = {"vit-b32": ("vit_b_32", "ViT_B_32_Weights")}  # pgn name -> (builder, weights enum)


class TorchvisionViT(FrozenBackbone):
    """Wraps a ``torchvision.models.VisionTransformer``; its classifier ``heads`` is kept for serving, never trained."""

    def __init__(self, model: nn.Module, name: str, description: str = ""):
        super().__init__()
        from torchvision.models.vision_transformer import VisionTransformer

        if not isinstance(model, VisionTransformer):
            raise PGNError(f"{name} is a {type(model).__name__}, not a torchvision VisionTransformer")
        self.vit = model
        self.name = name
        self.description = description
        self.patch_size = int(model.patch_size)
        self.width = int(model.hidden_dim)
        self.feature_dim = self.width
        g = int(model.image_size) // self.patch_size
        self.native_grid = (g, g)
        self.preprocessing = Preprocessing(mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=int(model.image_size))
        self.freeze()

    family = "torchvision"

    @property
    def classifier_outputs(self) -> int:
        layers = [m for m in self.vit.heads.modules() if isinstance(m, nn.Linear)]
        return layers[-1].out_features if layers else 0  # heads is an Identity when built without one

    @property
    def served_size(self):
        return (int(self.vit.image_size), int(self.vit.image_size))

    def library_forward(self, images):
        """torchvision's own ``forward``; the embedding is what enters ``heads``, read with a forward pre-hook
        so that the library's code runs unchanged."""
        seen = []
        hook = self.vit.heads.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            out = self.vit(images)
        finally:
            hook.remove()
        return seen[0], (out if self.classifier_outputs else None)

    def finetune_parameters(self):
        """The encoder: the model's own classifier (``heads``, kept for serving) is never trained."""
        head = {id(p) for p in self.vit.heads.parameters()}
        return (p for p in self.parameters() if id(p) not in head)

    def patch_conv(self) -> nn.Module:
        return self.vit.conv_proj

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, 1 + H*W, D) positional embedding (CLS first); only the native grid exists."""
        if tuple(grid) != self.native_grid:
            raise native_grid_error(self.name, self.native_grid, self.patch_size)
        return self.vit.encoder.pos_embedding

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        return self.vit.conv_proj(images).permute(0, 2, 3, 1)  # (B, D, h, w) -> (B, h, w, D)

    def add_position(self, grid_tokens: torch.Tensor) -> torch.Tensor:
        B, H, W, D = grid_tokens.shape
        if (H, W) != self.native_grid:
            raise native_grid_error(self.name, self.native_grid, self.patch_size)
        # torchvision: cat(class_token, patches) in VisionTransformer.forward, + pos_embedding in Encoder.forward.
        x = torch.cat([self.vit.class_token.expand(B, -1, -1), grid_tokens.reshape(B, H * W, D)], dim=1)
        return x + self.vit.encoder.pos_embedding

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        enc = self.vit.encoder
        return enc.ln(enc.layers(enc.dropout(tokens)))[:, 0]


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the line below says it all
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - whatever the unpickler says, the file is not tensors only
            raise PGNError(f"{path} is not a PyTorch state dict of plain tensors; pgn reads foreign PyTorch files "
                           "with weights_only=True and refuses anything else (save model.state_dict(), or use "
                           ".safetensors)") from None
    for key in ("model", "state_dict"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise PGNError(f"{path} holds a {type(state).__name__}, not a state dict; save model.state_dict() instead")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _classes(heads: dict) -> int:
    """Outputs of the classifier in a state dict's ``heads.*`` entries (its last linear layer's bias)."""
    biases = [v for k, v in sorted(heads.items()) if k.endswith(".bias")]
    if not biases:
        raise PGNError("the weights file's heads hold no linear classifier (no heads.*.bias)")
    return int(biases[-1].shape[0])


def create_torchvision(name: str, weights: str | None = None) -> TorchvisionViT:
    """``vit-b32``: torchvision ``vit_b_32``, ImageNet-1k weights (``IMAGENET1K_V1``) or a local state dict."""
    if name not in TORCHVISION_MODELS:
        raise PGNError(f"unknown torchvision backbone {name!r}; choose one of: {', '.join(TORCHVISION_MODELS)}")
    from torchvision.models import vision_transformer as tvvit

    builder, weights_enum = TORCHVISION_MODELS[name]
    fn = getattr(tvvit, builder)
    enum = getattr(tvvit, weights_enum).IMAGENET1K_V1
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise PGNError(f"weights file {weights} does not exist; pass an existing {fn.__name__} state dict "
                           "(.pth or .safetensors) as `weights=PATH`")
        try:
            state = _read_state_dict(path)
            heads = {k: v for k, v in state.items() if k.startswith("heads.")}
            # The file's own classifier is kept (a server answers with it); the split forward never uses it.
            model = fn(weights=None, **({"num_classes": _classes(heads)} if heads else {}))
            if not heads:
                model.heads = nn.Identity()  # a file without a classifier: embeddings only
            model.load_state_dict(state, strict=True)
        except PGNError:
            raise
        except Exception as e:  # noqa: BLE001 - a foreign, corrupt or truncated weights file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PGNError(f"could not load {path} into torchvision {fn.__name__}: {first[:300]}") from e
        source = str(path)
    else:
        if hub.torch_hub_checkpoint(enum.url) is None and not hub.reachable("download.pytorch.org"):
            raise PGNError(
                f"{name} needs torchvision's {fn.__name__} ImageNet weights from download.pytorch.org, which is not "
                f"reachable; download {enum.url} elsewhere and pass `weights=PATH`")
        try:
            model = fn(weights=enum)
        except (RuntimeError, ValueError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PGNError(f"could not download {enum.url} for {name}: {first[:300]}; "
                           "download it elsewhere and pass `weights=PATH`") from e
        source = f"{fn.__name__} {enum}"  # with its ImageNet-1k classifier, for serving; training never uses it
    return TorchvisionViT(model, name=name, description=f"torchvision {fn.__name__} (supervised ImageNet), weights {source}")
