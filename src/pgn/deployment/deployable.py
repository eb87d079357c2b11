"""Export a trained adapter for input-space deployment, and the client-side :class:`Composer`.

An export directory holds ``deploy_config.json`` and ``deploy.safetensors``: the generator
(CNN + token library), the patch embedding W, b (the pixel library's mixing and the latent
library's inversion need it), and the head. A client composes canvases with it and sends
only images to the model.
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import pixels
from ..errors import PGNError
from ..files import atomic_path, write_json
from ..heads import LinearHead
from ..layouts import PatchInverter, make_layout
from ..prompts import GeneratorConfig, PromptGenerator
from ..validation import validated

DEPLOY_CONFIG = "deploy_config.json"
DEPLOY_WEIGHTS = "deploy.safetensors"
FORMAT = "pgn-deployable"


@dataclass
class DeployConfig:
    """The fields of ``deploy_config.json`` and their types (validated on load)."""

    format: str
    version: int
    layout: str
    img_size: int
    canvas_size: tuple[int, int]
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_prompts: int
    generator: dict
    class_names: list[str]
    feature_dim: int
    backbone: str
    backbone_weights: str | None = None
    dataset: str | None = None
    # "linear": the client applies the exported head to the server's embeddings;
    # "remote": the model's own head scores on the server (CLIP zero-shot), nothing of it is exported.
    head: str = "linear"
    template: str | None = None  # the zero-shot prompt the remote head must use
    # A remote classifier's source class of each task class (pgn.heads.LabelMapHead): the client reads these
    # of the server's scores; ``source_classes`` is how many scores the server answers.
    label_map: list[int] | None = None
    source_classes: int | None = None

    def __post_init__(self):
        if self.head not in ("linear", "remote"):
            raise PGNError(f"head is {self.head!r}; choose linear or remote")
        if self.format != FORMAT:
            raise PGNError(f"format is {self.format!r}, not {FORMAT!r}: this is not a pgn export")
        if min(self.img_size, self.patch_size, self.num_prompts, self.feature_dim, *self.canvas_size) < 1:
            raise PGNError("img_size, canvas_size, patch_size, num_prompts and feature_dim must be positive")
        if self.img_size % self.patch_size:
            raise PGNError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if len(self.class_names) < 1:
            raise PGNError("class_names is empty")
        if self.label_map is not None:
            if self.head != "remote" or len(self.label_map) != len(self.class_names) or not self.source_classes:
                raise PGNError("label_map needs head 'remote', source_classes, and one source class per class name")
            if len(set(self.label_map)) != len(self.label_map) or not all(
                    0 <= s < self.source_classes for s in self.label_map):
                raise PGNError(f"label_map must name distinct source classes in 0..{self.source_classes - 1}")


@dataclass(frozen=True)
class PatchEmbedding:
    """The linear patch embedding of a ViT, carried without the rest of the model."""

    weight: torch.Tensor  # (D, 3, P, P)
    bias: torch.Tensor    # (D,)
    mean: tuple
    std: tuple

    @property
    def patch_size(self) -> int:
        return int(self.weight.shape[-1])

    @property
    def preprocessing(self):
        return self  # duck-types Preprocessing (mean, std) for PromptGenerator

    def patch_embed_weight(self) -> torch.Tensor:
        return self.weight

    def patch_embed_bias(self) -> torch.Tensor:
        return self.bias


def export_adapter(run_dir: str | Path, out_dir: str | Path, backbone=None) -> Path:
    """Write the deployable form of the PGN adapter in ``run_dir`` into ``out_dir``.

    ``backbone``: the frozen backbone to rebuild it on (default: the one its config names).
    """
    from ..adapter import load_adapter

    model, cfg = load_adapter(run_dir, backbone)
    if cfg.method != "pgn":
        raise PGNError(f"only PGN adapters deploy in the input (this one is {cfg.method!r})")
    if cfg.layout == "append":
        raise PGNError("an 'append' adapter adds tokens inside the model and cannot be sent as an image; "
                       "train with `layout=extend` or `layout=frame`")
    bb = model.backbone
    grid = (cfg.img_size // bb.patch_size, cfg.img_size // bb.patch_size)
    hc, wc = model.layout.canvas_grid(grid, cfg.num_prompts)
    state = {f"generator.{k}": v for k, v in model.prompts.state_dict().items()}
    # The frozen head lives with the model: the server scores (CLIP's zero-shot head, a classifier's own head
    # read through the adapter's label mapping).
    remote = cfg.head in ("zeroshot", "labelmap-first", "labelmap-flm")
    label_map = None
    if cfg.head.startswith("labelmap-"):
        if not bool(model.head.fitted):
            raise PGNError(f"{run_dir}: the frequency label mapping was never fitted; train the adapter first")
        label_map = [int(s) for s in model.head.mapping.tolist()]
    if not remote:
        state.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    if cfg.generator.get("library_space") != "pixel":
        # A latent library is inverted into pixels on the client, which needs the patch embedding. A pixel
        # library's patches are pixels already: nothing of the model travels with the adapter.
        state["patch_embed.weight"] = bb.patch_embed_weight().detach()
        state["patch_embed.bias"] = bb.patch_embed_bias().detach()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / DEPLOY_WEIGHTS) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"format": FORMAT})
    write_json(out_dir / DEPLOY_CONFIG, {
        "format": FORMAT, "version": 1, "layout": cfg.layout, "img_size": cfg.img_size,
        "canvas_size": [hc * bb.patch_size, wc * bb.patch_size], "patch_size": bb.patch_size,
        "mean": list(cfg.mean), "std": list(cfg.std), "num_prompts": cfg.num_prompts, "generator": cfg.generator,
        "class_names": cfg.class_names, "feature_dim": bb.feature_dim, "backbone": cfg.backbone,
        "backbone_weights": cfg.backbone_weights, "dataset": cfg.dataset,
        "head": "remote" if remote else "linear", "template": cfg.template if remote else None,
        "label_map": label_map, "source_classes": bb.feature_dim if label_map is not None else None,
    })
    return out_dir


class Composer:
    """Client side of input-space deployment: image -> prompted canvas; embedding -> class scores.

    ``canvas(images)``: (B, 3, S, S) normalised -> (B, 3, Hc, Wc) normalised canvas.
    ``to_uint8(canvas)``: -> (B, Hc, Wc, 3) uint8 RGB, what is sent to the model.
    ``head(embeddings)``: (B, F) model embeddings -> (B, C) logits.
    """

    def __init__(self, config: dict, state: dict[str, torch.Tensor]):
        self.config = config
        self.class_names = list(config["class_names"])
        self.img_size = int(config["img_size"])
        self.mean, self.std = tuple(config["mean"]), tuple(config["std"])
        if "patch_embed.weight" in state:
            embed = PatchEmbedding(state["patch_embed.weight"], state["patch_embed.bias"], self.mean, self.std)
        else:  # a pixel library: its patches are sent as they are; the model's embedding is never needed here
            p = int(config["patch_size"])
            embed = PatchEmbedding(torch.zeros(1, 3, p, p), torch.zeros(1), self.mean, self.std)
        self.generator = PromptGenerator(GeneratorConfig(**config["generator"]), embed.weight.shape[0], backbone=embed)
        self.generator.load_state_dict({k[len("generator."):]: v for k, v in state.items() if k.startswith("generator.")})
        self.generator.eval()
        # "remote": the served model's own head scores the canvases (a hosted classifier); no head here.
        self.remote_head = config.get("head", "linear") == "remote"
        # A classifier's own scores: the task's classes are these of them (the adapter's label mapping).
        self.label_map = None if config.get("label_map") is None else torch.as_tensor(config["label_map"])
        self.head = None
        if not self.remote_head:
            # Exports from before the normalised head hold a linear layer alone.
            norm = "batchnorm" if "head.norm.running_mean" in state else "none"
            self.head = LinearHead(int(config["feature_dim"]), len(self.class_names), norm=norm)
            self.head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
            self.head.eval()  # BatchNorm: running statistics
        self.layout = make_layout(config["layout"], patch_size=embed.patch_size, mean=self.mean, std=self.std)
        self.pixel_library = self.generator.config.library_space == "pixel"
        self.inverter = None if self.pixel_library else PatchInverter(embed.weight, embed.bias, self.mean, self.std)
        self.last_residual: torch.Tensor | None = None  # latent library: inversion residual of the last batch

    @classmethod
    def load(cls, directory: str | Path) -> "Composer":
        directory = Path(directory)
        cfg_path, w_path = directory / DEPLOY_CONFIG, directory / DEPLOY_WEIGHTS
        if not cfg_path.is_file() or not w_path.is_file():
            raise PGNError(f"{directory} is not an exported adapter ({DEPLOY_CONFIG} / {DEPLOY_WEIGHTS} missing); "
                           f"create one with `pgn export RUN -o {directory}`")
        try:
            config = json.loads(cfg_path.read_text())
            state = load_file(str(w_path))
        except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as e:
            raise PGNError(f"{directory} holds a corrupt export ({e}); export it again") from None
        checked = validated(DeployConfig, config, str(cfg_path))
        validated(GeneratorConfig, checked.generator, f"{cfg_path} (generator)")
        config = {**config, **asdict(checked)}  # JSON lists now tuples where the config says so
        try:
            return cls(config, state)
        except KeyError as e:
            raise PGNError(f"{w_path} lacks the tensor {e.args[0]!r}; export the adapter again") from None
        except RuntimeError as e:  # load_state_dict: shapes that do not fit the config
            raise PGNError(f"{w_path} does not match {DEPLOY_CONFIG}: {str(e).splitlines()[0]}") from None

    @torch.inference_mode()
    def prompt_patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised -> (B, K, 3, P, P) normalised prompt patches."""
        coeffs = self.generator.coefficients(images)
        if self.pixel_library:
            return self.generator.library.patches(coeffs)
        inv = self.inverter(self.generator.library(coeffs))
        self.last_residual = inv.residual
        return inv.patches.float()

    @torch.inference_mode()
    def canvas(self, images: torch.Tensor) -> torch.Tensor:
        return self.layout.compose(images, self.prompt_patches(images))

    def to_uint8(self, canvas: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) normalised -> (B, H, W, 3) uint8, what is sent to the model."""
        return pixels.to_uint8(canvas, self.mean, self.std)

    def from_uint8(self, canvas_u8: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, H, W) normalised, as the model's own preprocessing computes it."""
        return pixels.from_uint8(canvas_u8, self.mean, self.std)

    @staticmethod
    def png_bytes(canvas_u8: np.ndarray) -> list[bytes]:
        from PIL import Image

        out = []
        for img in canvas_u8:
            buf = io.BytesIO()
            Image.fromarray(img, "RGB").save(buf, format="PNG")
            out.append(buf.getvalue())
        return out

    @torch.inference_mode()
    def logits(self, embeddings: torch.Tensor | np.ndarray) -> torch.Tensor:
        if self.head is None:
            raise PGNError("this adapter has no head of its own: its class scores come from the model server "
                           "(pgn.deployment.RemoteClassifier)")
        return self.head(torch.as_tensor(embeddings, dtype=torch.float32))
