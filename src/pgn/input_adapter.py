"""The input adapter: everything an adapted model trains, with no backbone, as one object and one saved format.

An :class:`InputAdapter` holds the input side (VP's pixel frame, a PGN's generator and token library,
IIP's prompts, and the layout that places them) and the head that reads the model's answer::

    images (B, 3, S, S) --input_prompt--> images --prompts--> (B, K, D) tokens | (B, K, 3, P, P) patches
                                                  --layout--> the token sequence | the canvas (B, 3, Hc, Wc)
    model's answer (B, F) --head--> (B, C) logits

:class:`~pgn.model.PromptedClassifier` is an input adapter on top of a frozen backbone (training, and
deployment with a modified forward). Loaded on its own from an export (:meth:`InputAdapter.from_pretrained`
on a folder written by :func:`export_adapter`), it is the client of input-space deployment: it composes
canvases for an unmodified model and reads the model's answer, with no backbone code. Both are saved by
``save_pretrained`` in one format (:mod:`pgn.adapter_format`); an export is the same files with a
``deploy`` section (:class:`~pgn.adapter_format.DeploySpec`) and, for a latent library, the model's patch
embedding (inverting latent prompts into pixels needs it). Exports of earlier versions
(``deploy_config.json``) load too.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from . import pixels
from .adapter_format import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterConfig,
    DeploySpec,
    check_state,
    read_adapter_config,
    read_adapter_weights,
    write_adapter,
)
from .backbones.base import PatchEmbedding, Preprocessing
from .errors import PGNError
from .heads import LabelMapHead, LinearHead
from .layouts import AppendLayout, PatchInverter, make_layout
from .methods import FROZEN_HEADS, get_method

__all__ = ["InputAdapter", "export_adapter", "LEGACY_EXPORT_CONFIG"]

EMBEDDING_KEYS = ("embedding.weight", "embedding.bias")  # a latent library's export: the model's W, b
LEGACY_EXPORT_CONFIG = "deploy_config.json"               # exports of pgn <= 0.1 (format "pgn-deployable" 1)
LEGACY_EXPORT_WEIGHTS = "deploy.safetensors"


class InputAdapter(nn.Module):
    """The trained parts of an adapted model and where its prompts go, with no backbone.

    ``prompts``: (B, 3, S, S) images -> (B, K, D) tokens (:class:`~pgn.prompts.PromptGenerator`,
    IIP), or None; ``input_prompt``: images -> images (VP's frame), or None; ``head``: (B, F) answers
    -> (B, C) logits (None where the model's own head answers, e.g. CLIP's zero-shot head behind a
    server); ``layout``: where prompt tokens sit (:mod:`pgn.layouts`); ``embedding``: the model's
    :class:`~pgn.backbones.PatchEmbedding` (cells, normalisation, W and b); ``config``: the
    :class:`~pgn.adapter_format.AdapterConfig` it was built from, whose ``deploy`` section is set on
    an export.
    """

    def __init__(self, config: AdapterConfig, prompts: nn.Module | None, input_prompt: nn.Module | None,
                 head: nn.Module | None, layout=None, embedding: PatchEmbedding | None = None):
        super().__init__()
        self.config = config
        # Registration order is the parameters' order (optimiser groups, saved keys): prompts, input, head.
        self.prompts = prompts
        self.input_prompt = input_prompt
        self.head = head
        self.layout = layout if layout is not None else AppendLayout()
        self.embedding = embedding
        self.last_residual: torch.Tensor | None = None  # latent library: inversion residual of the last batch

    # ------------------------------------------------------------------ what it is

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    @property
    def img_size(self) -> int:
        return self.config.img_size

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.config.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.config.std

    @property
    def deploy(self) -> DeploySpec | None:
        """The export's deploy section (None: an adapter saved with its run, for its backbone)."""
        return self.config.deploy

    @property
    def reads_scores(self) -> bool:
        """Whether the model answers with its own head's scores (read as they are, through a label mapping, or
        through a learned linear readout), rather than with embeddings for an exported linear head."""
        if self.deploy is not None:
            return self.deploy.answers == "scores"
        return self.config.head in FROZEN_HEADS

    @property
    def head_description(self) -> str:
        """What turns the model's answer into the task's classes, in words (for reports and the app)."""
        if self.head is None:
            return "the model's own head (its scores for the task's classes)"
        if isinstance(self.head, LabelMapHead):
            return "the model's own scores through the adapter's label mapping"
        if self.reads_scores:
            return "a learned linear readout of the model's scores"
        return "the exported linear head on the model's embedding"

    def contents(self) -> list[str]:
        """What the adapter holds, in words: its prompt parts, then its head (for the export's message)."""
        from .prompts import PromptGenerator

        parts = []
        if isinstance(self.prompts, PromptGenerator):
            parts += ["generator", f"{'pixel' if self.pixel_library else 'latent'} library"]
        elif self.prompts is not None:  # IIP: prompts without a generator
            parts.append("pixel prompt patches" if self.pixel_library else "prompt tokens")
        if self.input_prompt is not None:
            parts.append("shared frame" if self.prompts is not None else "pixel frame")
        if self.embedding is not None and not self.pixel_library:
            parts.append("patch embedding")
        parts.append("label mapping" if self.label_map is not None else "no head: the model's own scores"
                     if self.head is None else "learned readout of the scores" if self.reads_scores else "head")
        return parts

    @property
    def label_map(self) -> torch.Tensor | None:
        """(C,) the source class of each task class, where the head is a label mapping of the model's scores."""
        return self.head.mapping if isinstance(self.head, LabelMapHead) else None

    @property
    def pixel_library(self) -> bool:
        return getattr(self.config.method_config, "library_space", "latent") == "pixel"

    @property
    def transform(self):
        """PIL image -> (3, S, S) normalised tensor, the preprocessing it was trained with."""
        from .data import eval_transform

        return eval_transform(self.config.img_size, self.config.mean, self.config.std)

    # ------------------------------------------------------------------ the input side

    def trainable_canvas(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, 3, Hc, Wc) what a model prompted in its input receives, with a
        gradient (training a pixel-only model): VP's framed image, or the layout's canvas of pixel patches."""
        if self.input_prompt is not None:
            images = self.input_prompt(images)
        if self.prompts is None:
            return images
        return self.layout.compose(images, self.prompts.patches(images))

    @torch.inference_mode()
    def prompt_patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised -> (B, K, 3, P, P) normalised prompt patches, 8-bit exact: a pixel library's
        mixtures, or a latent library's tokens inverted through the model's patch embedding."""
        if self.pixel_library:
            return self.prompts.library.patches(self.prompts.coefficients(images))
        if self.embedding is None or self.embedding.width < 2:
            raise PGNError("inverting latent prompts into pixels needs the model's patch embedding: export the "
                           "adapter (`pgn export`) and load the export")
        inverter = PatchInverter(self.embedding.weight, self.embedding.bias, self.mean, self.std)
        inv = inverter(self.prompts.library(self.prompts.coefficients(images)))
        self.last_residual = inv.residual
        return inv.patches.float()

    @torch.inference_mode()
    def canvas(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised -> (B, 3, Hc, Wc) normalised: the canvas an unmodified model receives
        (8-bit exact; a latent library's prompts inverted into pixels)."""
        if self.input_prompt is not None:
            images = self.input_prompt(images)
        if self.prompts is None:
            return images
        return self.layout.compose(images, self.prompt_patches(images))

    def to_uint8(self, canvas: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) normalised -> (B, H, W, 3) uint8, what is sent to the model."""
        return pixels.to_uint8(canvas, self.mean, self.std)

    def from_uint8(self, canvas_u8: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, H, W) normalised, as the model's own preprocessing computes it."""
        return pixels.from_uint8(canvas_u8, self.mean, self.std)

    def canvases(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) normalised -> (B, Hc, Wc, 3) uint8: the prompted images the model receives."""
        return self.to_uint8(self.canvas(images))

    @staticmethod
    def png_bytes(canvas_u8: np.ndarray) -> list[bytes]:
        """(B, H, W, 3) uint8 -> B lossless PNG files."""
        from PIL import Image

        out = []
        for img in canvas_u8:
            buf = io.BytesIO()
            Image.fromarray(img, "RGB").save(buf, format="PNG")
            out.append(buf.getvalue())
        return out

    # ------------------------------------------------------------------ the answer side

    @torch.inference_mode()
    def logits(self, answers: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, F) the model's answers (embeddings, or its own scores) -> (B, C) class scores."""
        answers = torch.as_tensor(np.asarray(answers) if not isinstance(answers, torch.Tensor) else answers,
                                  dtype=torch.float32)
        if self.head is None:  # the model's own head scored the task's classes (CLIP's zero-shot head)
            return answers
        return self.head(answers)

    # ------------------------------------------------------------------ build, save, load

    @classmethod
    def build(cls, config: AdapterConfig, embedding: PatchEmbedding, feature_dim: int,
              zero_shot_head=None) -> "InputAdapter":
        """A freshly initialised adapter for ``config`` on a model with ``embedding`` that answers ``feature_dim``
        features (scores): the method's parts from its registered builder (:mod:`pgn.methods`), and a head.
        ``zero_shot_head``: a callable ``(class_names, template) -> head`` (a model with a text tower)."""
        parts = get_method(config.method).build(config.method_config, embedding, config.img_size)
        if parts.layout != "append" and parts.prompts is None:
            raise PGNError(f"layout {parts.layout!r} places prompt tokens; method {config.method!r} has none (use "
                           "`layout=append`)")
        layout = make_layout(parts.layout, patch_size=embedding.patch_size, mean=embedding.mean,
                             std=embedding.std) if parts.layout != "append" else AppendLayout()
        head = _build_head(config, feature_dim, zero_shot_head)
        adapter = cls(config, parts.prompts, parts.input_prompt, head, layout, embedding)
        adapter.finetune = parts.finetune
        return adapter

    def save_pretrained(self, directory: str | Path, extra_state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write ``adapter.safetensors`` + ``adapter_config.json`` into ``directory`` (each file atomically)."""
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        if self.deploy is not None and not self.pixel_library and self.prompts is not None:
            state.update(zip(EMBEDDING_KEYS, (self.embedding.weight.detach().contiguous(),
                                              self.embedding.bias.detach().contiguous())))
        state.update(extra_state or {})
        return write_adapter(state, self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "InputAdapter":
        """The deployable adapter exported into ``directory`` (by ``pgn export``), with no backbone, in eval mode.

        Exports of earlier versions (``deploy_config.json``) load too. An adapter saved with its run (no
        ``deploy`` section) needs its backbone: load it with :func:`pgn.load`, or export it.
        """
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file() and (directory / LEGACY_EXPORT_CONFIG).is_file():
            config, state = _read_legacy_export(directory)
        else:
            if not (directory / CONFIG_FILE).is_file():
                raise PGNError(f"{directory} is not an exported adapter ({CONFIG_FILE} missing); create one with "
                               f"`pgn export RUN -o {directory}`")
            config = read_adapter_config(directory)
            if config.deploy is None:
                raise PGNError(f"{directory} holds an adapter for its backbone ({config.backbone}), not an export; "
                               f"export it with `pgn export {directory} -o EXPORT_DIR`, or load it with pgn.load")
            state = read_adapter_weights(directory)
        return cls._from_state(config, state, directory)

    @classmethod
    def _from_state(cls, config: AdapterConfig, state: dict[str, torch.Tensor], directory: Path) -> "InputAdapter":
        deploy = config.deploy
        pre = Preprocessing(config.mean, config.std, config.img_size)
        if all(k in state for k in EMBEDDING_KEYS):
            embedding = PatchEmbedding(state.pop(EMBEDDING_KEYS[0]), state.pop(EMBEDDING_KEYS[1]), pre)
            if embedding.patch_size != deploy.patch_size:
                raise PGNError(f"{directory / WEIGHTS_FILE}: its patch embedding has cells of "
                               f"{embedding.patch_size} px, but {CONFIG_FILE} says {deploy.patch_size}; export again")
        else:  # a pixel library's patches are sent as they are: the model's embedding is never needed here
            p = deploy.patch_size
            embedding = PatchEmbedding(torch.zeros(1, 3, p, p), torch.zeros(1), pre)
        if config.method != "pgn":
            raise PGNError(f"{directory}: only PGN adapters are exported for input-space deployment "
                           f"(this one is {config.method!r})")
        if config.method_config.library_space != "pixel" and embedding.width < 2:
            raise PGNError(f"{directory / WEIGHTS_FILE} lacks the model's patch embedding its latent library needs; "
                           "export the adapter again")
        adapter = cls.build(config, embedding, deploy.outputs, zero_shot_head=lambda *_: None)
        check_state(adapter.state_dict(), state, f"{directory / WEIGHTS_FILE} does not match {CONFIG_FILE}")
        adapter.load_state_dict(state, strict=True)
        return adapter.eval()


def _build_head(cfg: AdapterConfig, feature_dim: int, zero_shot_head=None) -> nn.Module | None:
    """A trained linear head on (B, F) features; a label mapping of a frozen classifier's own (B, F) scores
    (nothing trained); or CLIP's zero-shot head from its frozen text tower (``zero_shot_head``)."""
    if cfg.extra.get("datasets"):  # one PGN over several datasets: a head per dataset (pgn.multi)
        from .multi import MultiDatasetHead

        return MultiDatasetHead(feature_dim, cfg.extra["datasets"], norm=cfg.head_norm)
    if cfg.head == "linear":
        return LinearHead(feature_dim, len(cfg.class_names), norm=cfg.head_norm)
    if cfg.head.startswith("labelmap-"):
        return LabelMapHead(feature_dim, len(cfg.class_names), cfg.head[len("labelmap-"):])
    if zero_shot_head is None:
        raise PGNError(f"head {cfg.head!r} needs the model's text tower; build it on its backbone")
    return zero_shot_head(cfg.class_names, cfg.template or "This is a photo of a {}.")


def _read_legacy_export(directory: Path) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    """An export of pgn <= 0.1 (``deploy_config.json`` + ``deploy.safetensors``) as today's config and state."""
    from .adapter_format import LegacyExportConfig
    from .methods import PGNConfig
    from .prompts import GeneratorConfig
    from .validation import validated

    cfg_path, w_path = directory / LEGACY_EXPORT_CONFIG, directory / LEGACY_EXPORT_WEIGHTS
    if not w_path.is_file():
        raise PGNError(f"{directory} is an incomplete export ({LEGACY_EXPORT_WEIGHTS} missing); export it again")
    try:
        raw = json.loads(cfg_path.read_text())
        stored = load_file(str(w_path))
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as e:
        raise PGNError(f"{directory} holds a corrupt export ({e}); export it again") from None
    for key, tensor in stored.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise PGNError(f"{w_path}: tensor {key!r} holds NaN or infinite values; export the adapter again")
    old = validated(LegacyExportConfig, raw, str(cfg_path))
    gen = validated(GeneratorConfig, old.generator, f"{cfg_path} (generator)")
    if old.head == "linear":
        head = "linear"
    elif old.label_map is not None:
        head = "labelmap-flm"
    else:
        head = "zeroshot"
    state = {}
    for key, value in stored.items():
        if key.startswith("generator."):
            state["prompts." + key[len("generator."):]] = value
        elif key.startswith("head."):
            state[key] = value
        elif key in ("patch_embed.weight", "patch_embed.bias"):
            state["embedding." + key.split(".")[1]] = value
        else:
            raise PGNError(f"{w_path}: unexpected tensor {key!r}; export the adapter again")
    if head.startswith("labelmap-"):
        state["head.mapping"] = torch.as_tensor(old.label_map, dtype=torch.long)
        state["head.fitted"] = torch.tensor(True)
    method = PGNConfig(num_prompts=gen.num_prompts, library_size=gen.library_size, library_space=gen.library_space,
                       layout=old.layout, arch=gen.arch, widths=gen.widths, mixing=gen.mixing, generator_size=gen.input_size,
                       library_init_std=gen.library_init_std, output_init=gen.output_init,
                       output_init_scale=gen.output_init_scale, head=head,
                       head_norm="batchnorm" if "head.norm.running_mean" in state else "none",
                       template=old.template if head == "zeroshot" else None)
    outputs = {"linear": old.feature_dim, "labelmap-flm": old.source_classes, "zeroshot": len(old.class_names)}[head]
    deploy = DeploySpec(canvas_size=tuple(old.canvas_size), patch_size=old.patch_size,
                        answers="embeddings" if head == "linear" else "scores", outputs=outputs)
    config = AdapterConfig(method_config=method, backbone=old.backbone, backbone_width=1, class_names=old.class_names,
                           img_size=old.img_size, mean=old.mean, std=old.std, backbone_weights=old.backbone_weights,
                           dataset=old.dataset, deploy=deploy, extra={"converted_from": "pgn-deployable 1"})
    if "embedding.weight" in state:
        config.backbone_width = int(state["embedding.weight"].shape[0])
    return config, state


def export_adapter(source: str | Path, out_dir: str | Path, backbone=None) -> Path:
    """Write the deployable form of the PGN adapter in ``source`` (a run or a saved adapter) into ``out_dir``.

    ``backbone``: the frozen backbone to rebuild it on (default: the one its config names).
    """
    from .files import atomic_dir
    from .model import PromptedClassifier

    model = PromptedClassifier.from_pretrained(source, backbone)
    out_dir = Path(out_dir)
    # One unit: a reader (or a kill) sees the previous export or this one, never one's weights with the other's config.
    with atomic_dir(out_dir) as tmp:
        model.deployable().save_pretrained(tmp)
    return out_dir
