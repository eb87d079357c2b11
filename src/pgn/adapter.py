"""Adapters on disk: ``adapter.safetensors`` (trainable weights only) + ``adapter_config.json``.

The backbone is never saved: an adapter names its backbone and is rebuilt on top of
it. Both files are written atomically, so an interrupted save never leaves a
half-written adapter.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .backbones import FrozenBackbone, create_backbone
from .errors import PGNError
from .files import atomic_path, save_safetensors, write_json
from .heads import HEAD_NORMS, LinearHead
from .layouts import make_layout
from .model import PromptedClassifier
from .prompts import GeneratorConfig, InputIndependentPrompts, PaddingPrompt, PromptGenerator
from .validation import validated

FORMAT_VERSION = 1
MAX_IMG_SIZE = 4096  # a side; larger would run for minutes per image (and 16e9 overflows)
# Fields an adapter file must state: a default would silently change what the model sees.
REQUIRED_ON_LOAD = ("method", "backbone", "backbone_width", "class_names", "img_size", "mean", "std")
WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"
METHODS = ("pgn", "iip", "vp", "linear", "finetune", "zeroshot")
HEADS = ("linear", "zeroshot")


@dataclass
class AdapterConfig:
    """Everything needed to rebuild an adapted classifier on top of its backbone."""

    method: str                          # one of METHODS
    backbone: str                        # backbone name, e.g. "dinov2-s14-imgfocus"
    backbone_width: int                  # D, checked on load
    class_names: list[str]
    img_size: int = 112                  # resolution the backbone sees
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    backbone_weights: str | None = None  # local weights file, when not the backbone's default
    generator: dict | None = None        # GeneratorConfig fields (method "pgn")
    num_prompts: int = 0                 # K (pgn and iip)
    layout: str = "append"               # where prompts sit: append | extend | frame (pgn.layouts)
    head: str = "linear"                 # "linear" (trained) or "zeroshot" (CLIP text tower, frozen)
    head_norm: str = "batchnorm"         # linear head input: "batchnorm" (affine-free BN) or "none" (raw features)
    template: str | None = None          # zero-shot prompt template, e.g. "This is a photo of a {}."
    vp_pad: int = 30                     # VP frame width in pixels (Bahng et al.: 30 at 224 px)
    dataset: str | None = None
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in METHODS:
            raise PGNError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.head not in HEADS:
            raise PGNError(f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        if self.img_size < 1 or self.backbone_width < 1 or self.num_prompts < 0 or self.vp_pad < 0:
            raise PGNError(f"img_size and backbone_width must be positive and num_prompts, vp_pad not negative "
                           f"(got {self.img_size}, {self.backbone_width}, {self.num_prompts}, {self.vp_pad})")
        if not self.class_names:
            raise PGNError("class_names is empty; an adapter needs the names of its classes")
        if self.head_norm not in HEAD_NORMS:
            raise PGNError(f"unknown head_norm {self.head_norm!r}; choose one of {', '.join(HEAD_NORMS)}")
        if self.method == "zeroshot" and self.head != "zeroshot":
            raise PGNError("method zeroshot needs the zero-shot head of a CLIP backbone")
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if self.img_size > MAX_IMG_SIZE:
            raise PGNError(f"img_size {self.img_size} is larger than pgn's bound of {MAX_IMG_SIZE} pixels a side")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise PGNError(f"mean and std need 3 values each (R, G, B), got {len(self.mean)} and {len(self.std)}")
        if not all(math.isfinite(v) for v in self.mean) or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise PGNError(f"mean must be finite and std finite and positive, got mean {list(self.mean)}, "
                           f"std {list(self.std)}")
        self.class_names = list(self.class_names)
        if self.generator is not None:  # the JSON form (tuples become lists), so a config equals its reload
            self.generator = json.loads(json.dumps(self.generator))


def build_classifier(cfg: AdapterConfig, backbone: FrozenBackbone, seed: int | None = None) -> PromptedClassifier:
    """A freshly initialised classifier for ``cfg`` on ``backbone``.

    ``seed``: the trainable parts are drawn from a generator seeded with it (the global RNG is left as
    it was), so the same seed builds the same model whatever ran before; None draws from the global RNG.
    """
    if seed is None:
        return _build_classifier(cfg, backbone)
    with torch.random.fork_rng(devices=[]):  # CPU RNG only: the parts are built on the CPU
        torch.manual_seed(seed)
        return _build_classifier(cfg, backbone)


def _build_classifier(cfg: AdapterConfig, backbone: FrozenBackbone) -> PromptedClassifier:
    if backbone.width != cfg.backbone_width:
        raise PGNError(f"this adapter was made for a backbone of width {cfg.backbone_width}, but {backbone.name} "
                       f"has width {backbone.width}; use --backbone {cfg.backbone}")
    patch = backbone.patch_size
    if cfg.img_size < patch or cfg.img_size % patch:
        raise PGNError(f"img_size {cfg.img_size} is not a positive multiple of {backbone.name}'s patch size {patch}; "
                       f"use e.g. {max(1, round(cfg.img_size / patch)) * patch}")
    prompts = input_prompt = None
    if cfg.method == "pgn":
        prompts = PromptGenerator(GeneratorConfig(**(cfg.generator or {})), backbone.width, backbone=backbone)
    elif cfg.method == "iip":
        prompts = InputIndependentPrompts(cfg.num_prompts, backbone.width)
    elif cfg.method == "vp":
        input_prompt = PaddingPrompt(cfg.img_size, cfg.vp_pad)
    if cfg.layout != "append" and prompts is None:
        raise PGNError(f"layout {cfg.layout!r} places prompt tokens; method {cfg.method!r} has none (use --layout append)")
    return PromptedClassifier(backbone, prompts, build_head(cfg, backbone), make_layout(cfg.layout, backbone),
                              input_prompt=input_prompt, finetune=cfg.method == "finetune", config=cfg)


def adapter_config(backbone: FrozenBackbone, method: str, classes: Sequence[str], *, img_size: int,
                   num_prompts: int = 16, generator: GeneratorConfig | dict | None = None, layout: str = "append",
                   head: str = "linear", head_norm: str = "batchnorm", template: str | None = None,
                   vp_pad: int | None = None, dataset: str | None = None, backbone_weights: str | None = None,
                   extra: dict | None = None) -> AdapterConfig:
    """The one constructor of :class:`AdapterConfig`: preprocessing comes from ``backbone``, K is stored once.

    ``generator``: the PGN's shape (method ``pgn`` only; default ``GeneratorConfig`` with ``num_prompts``
    and ``input_size=img_size``). ``vp_pad`` defaults to the paper's 30 px at 224, scaled to ``img_size``.
    """
    if method == "pgn":
        gen = generator if isinstance(generator, GeneratorConfig) else GeneratorConfig(
            **{"num_prompts": num_prompts, "input_size": img_size, **(generator or {})})
        num_prompts = gen.num_prompts
        gen = vars(gen)
    elif generator:
        raise PGNError(f"generator options apply to method 'pgn', not {method!r}")
    else:
        gen = None
    pre = backbone.preprocessing
    return AdapterConfig(method=method, backbone=backbone.name, backbone_width=backbone.width,
                         class_names=list(classes), img_size=img_size, mean=pre.mean, std=pre.std,
                         backbone_weights=backbone_weights, generator=gen,
                         num_prompts=num_prompts if method in ("pgn", "iip") else 0, layout=layout,
                         head="zeroshot" if method == "zeroshot" else head, head_norm=head_norm, template=template,
                         vp_pad=vp_pad if vp_pad is not None else max(1, round(30 * img_size / 224)),
                         dataset=dataset, extra=dict(extra or {}))


def build_head(cfg: AdapterConfig, backbone: FrozenBackbone):
    """A trained linear head, or CLIP's zero-shot head from its frozen text tower."""
    if cfg.extra.get("datasets"):  # one PGN over several datasets: a head per dataset (pgn.multi)
        from .multi import MultiDatasetHead

        return MultiDatasetHead(backbone.feature_dim, cfg.extra["datasets"], norm=cfg.head_norm)
    if cfg.head == "linear":
        return LinearHead(backbone.feature_dim, len(cfg.class_names), norm=cfg.head_norm)
    if not hasattr(backbone, "zero_shot_head"):
        raise PGNError(f"{backbone.name} has no text tower for a zero-shot head; use a clip-* backbone or --head linear")
    return backbone.zero_shot_head(cfg.class_names, cfg.template or "This is a photo of a {}.")


def adapter_state(model: PromptedClassifier) -> dict[str, torch.Tensor]:
    """The trainable parts (and their buffers, e.g. BatchNorm statistics), never the backbone."""
    return {k: v.detach().contiguous() for k, v in model.trainable_modules().state_dict().items()}


def save_adapter(model: PromptedClassifier, cfg: AdapterConfig, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_safetensors(adapter_state(model), tmp, metadata={"format": "pgn-adapter", "version": str(FORMAT_VERSION)})
    write_json(directory / CONFIG_FILE, asdict(cfg))
    return directory


def read_adapter_config(directory: str | Path) -> AdapterConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise PGNError(f"no adapter in {directory}: {CONFIG_FILE} is missing (train one with `pgn train`)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PGNError(f"{path} is not valid JSON ({e}); retrain or restore the file") from None
    if isinstance(raw, dict):
        missing = [k for k in REQUIRED_ON_LOAD if k not in raw]
        if missing:
            raise PGNError(f"{path}: field {missing[0]!r} is missing; an adapter states its preprocessing and "
                           "shape (retrain, or restore the file)")
        # Adapters written before the normalised head existed have a linear layer on raw features.
        raw.setdefault("head_norm", "none")
    cfg = validated(AdapterConfig, raw, str(path))
    if cfg.generator is not None:
        validated(GeneratorConfig, cfg.generator, f"{path} (generator)")
    return cfg


def load_adapter(directory: str | Path, backbone: FrozenBackbone | None = None,
                 map_location: str = "cpu") -> tuple[PromptedClassifier, AdapterConfig]:
    """Rebuild the classifier saved in ``directory`` (on ``backbone``, or the one it names)."""
    cfg = read_adapter_config(directory)
    if cfg.format_version > FORMAT_VERSION:
        raise PGNError(f"{directory} was written by a newer pgn (format {cfg.format_version}); upgrade pgn")
    if backbone is None:
        backbone = create_backbone(cfg.backbone, cfg.backbone_weights)
    model = build_classifier(cfg, backbone)
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise PGNError(f"no adapter weights in {directory}: {WEIGHTS_FILE} is missing")
    try:
        state = load_file(str(path), device=map_location)
    except (SafetensorError, OSError) as e:
        raise PGNError(f"{path} is corrupt or not a safetensors file ({e}); retrain or restore it") from e
    check_state(model.trainable_modules().state_dict(), state, f"{path} does not match {CONFIG_FILE}")
    model.trainable_modules().load_state_dict(state, strict=True)
    return model.eval(), cfg  # inference mode for BatchNorm (the head's, the generator's); train() switches back


def check_state(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], what: str) -> None:
    """One line naming the first missing, unexpected or misshaped key of ``got`` against ``expected``."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [k for k in expected if k in got and tuple(expected[k].shape) != tuple(got[k].shape)]
    if missing:
        raise PGNError(f"{what}: key {missing[0]!r} is missing ({len(missing)} missing in all)")
    if unexpected:
        raise PGNError(f"{what}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all)")
    if shapes:
        k = shapes[0]
        raise PGNError(f"{what}: {k!r} has shape {tuple(got[k].shape)} but this model's is {tuple(expected[k].shape)}")


def import_official(checkpoint: str | Path, backbone: FrozenBackbone, class_names: list[str], dataset: str | None = None,
                    template: str | None = None, img_size: int = 224) -> tuple[PromptedClassifier, AdapterConfig]:
    """A released PGN checkpoint (paper's code) as a pgn adapter on ``backbone``.

    CLIP checkpoints get the zero-shot head (the paper's setting, so the adapter is complete);
    the releases hold no linear head for other backbones, so theirs starts untrained and
    ``cfg.extra["head_trained"]`` says so.
    """
    from .prompts import load_official

    gen = load_official(checkpoint, input_size=img_size)
    width = gen.library.tokens.shape[1]
    if width != backbone.width:
        raise PGNError(f"{checkpoint} holds prompts of width {width}, but {backbone.name} has width {backbone.width}; "
                       "pick the backbone it was trained for")
    zero_shot = hasattr(backbone, "zero_shot_head")
    cfg = adapter_config(backbone, "pgn", class_names, img_size=img_size, generator=gen.config, dataset=dataset,
                         head="zeroshot" if zero_shot else "linear", template=template,
                         extra={"imported_from": Path(checkpoint).name, "head_trained": zero_shot})
    model = build_classifier(cfg, backbone)
    model.prompts.load_state_dict(gen.state_dict(), strict=True)
    return model, cfg
