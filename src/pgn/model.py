"""The adapted classifier: prompt source + frozen backbone + head."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from .adapter_format import CONFIG_FILE, WEIGHTS_FILE, AdapterConfig, check_state, read_adapter_config, read_adapter_weights, write_adapter
from .backbones import FrozenBackbone
from .errors import PGNError
from .heads import LabelMapHead, LinearHead
from .layouts import AppendLayout, make_layout
from .methods import get_method


class PromptedClassifier(nn.Module):
    """image -> [pixel prompt] -> [prompt tokens placed by a layout] -> ViT -> head -> logits.

    ``prompts`` maps (B, 3, H, W) images to (B, K, D) tokens
    (:class:`~pgn.prompts.PromptGenerator`, :class:`~pgn.prompts.InputIndependentPrompts`);
    ``input_prompt`` maps images to images (:class:`~pgn.prompts.PaddingPrompt`, the VP
    baseline). Either may be ``None``; with both ``None`` and a frozen backbone this is a
    linear probe (or zero-shot CLIP). The backbone is frozen unless ``finetune`` is set.
    """

    def __init__(self, backbone: FrozenBackbone, prompts: nn.Module | None, head: nn.Module, layout=None,
                 input_prompt: nn.Module | None = None, finetune: bool = False, config=None):
        super().__init__()
        self.config = config  # the AdapterConfig this classifier was built from (pgn.adapter), if any
        self.backbone = backbone
        self.prompts = prompts
        self.input_prompt = input_prompt
        self.head = head
        self.layout = layout if layout is not None else AppendLayout()  # where prompts sit (pgn.layouts)
        self.finetune = finetune
        if finetune:
            # Fine-tuning owns a copy: the backbone it was given, and every other classifier built on it,
            # stays frozen and unchanged however this one trains.
            self.backbone = backbone = copy.deepcopy(backbone)
            for p in backbone.finetune_parameters():
                p.requires_grad_(True)

    def trainable_modules(self) -> nn.ModuleDict:
        """The modules an adapter saves: everything that was trained (and its buffers)."""
        mods = {"head": self.head}
        for name in ("prompts", "input_prompt"):
            if getattr(self, name) is not None:
                mods[name] = getattr(self, name)
        if self.finetune:
            mods["backbone"] = self.backbone
        return nn.ModuleDict(mods)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def canvas(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, 3, Hc, Wc) what a model prompted in its input receives:
        VP's framed image, or the layout's canvas with the prompt patches (a pixel library)."""
        if self.input_prompt is not None:
            images = self.input_prompt(images)
        if self.prompts is None:
            return images
        return self.layout.compose(images, self.prompts.patches(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, F) prompted CLS features (a pixel classifier's scores)."""
        if getattr(self.backbone, "pixel_only", False):  # no tokens: the prompt is composed in pixels
            if self.prompts is None and self.input_prompt is None and not self.finetune:
                with torch.no_grad():
                    return self.backbone(images)
            return self.backbone(self.canvas(images))
        if self.input_prompt is not None:
            images = self.input_prompt(images)
        elif self.prompts is None and not self.finetune:
            # Nothing upstream of the head is trainable: skip building a graph through the ViT.
            with torch.no_grad():
                return self.backbone(images)
        if self.prompts is None:
            return self.backbone(images)
        prompts = self.prompts(images)                                          # (B, K, D)
        tokens = self.layout.latent_tokens(self.backbone, images, prompts)      # (B, T, D)
        return self.backbone.encode(tokens)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C) logits."""
        return self.head(self.features(images))

    # ------------------------------------------------------------------ the Python API (pgn.api)

    def _require_config(self):
        if self.config is None:
            raise PGNError("this classifier carries no config; build it with pgn.create_model or pgn.load")
        return self.config

    @property
    def class_names(self) -> list[str]:
        return list(self._require_config().class_names)

    @property
    def transform(self):
        """The preprocessing this classifier expects: PIL image -> normalised (3, S, S) tensor."""
        from .data import eval_transform

        cfg = self._require_config()
        return eval_transform(cfg.img_size, cfg.mean, cfg.std)

    preprocess = transform  # open_clip's name for it

    # ------------------------------------------------------------------ build, save, load

    @classmethod
    def from_config(cls, cfg: AdapterConfig, backbone: FrozenBackbone, seed: int | None = None) -> "PromptedClassifier":
        """A freshly initialised classifier for ``cfg`` on ``backbone``: the method's parts from its registered
        builder (:mod:`pgn.methods`), and a head.

        ``seed``: the trainable parts are drawn from a generator seeded with it (the global RNG is left as
        it was), so the same seed builds the same model whatever ran before; None draws from the global RNG.
        """
        if seed is None:
            return cls._from_config(cfg, backbone)
        with torch.random.fork_rng(devices=[]):  # CPU RNG only: the parts are built on the CPU
            torch.manual_seed(seed)
            return cls._from_config(cfg, backbone)

    @classmethod
    def _from_config(cls, cfg: AdapterConfig, backbone: FrozenBackbone) -> "PromptedClassifier":
        if backbone.width != cfg.backbone_width:
            raise PGNError(f"this adapter was made for a backbone of width {cfg.backbone_width}, but {backbone.name} "
                           f"has width {backbone.width}; build it on `backbone={cfg.backbone}`")
        patch = backbone.patch_size
        if cfg.img_size < patch or cfg.img_size % patch:
            raise PGNError(f"img_size {cfg.img_size} is not a positive multiple of {backbone.name}'s patch size "
                           f"{patch}; use e.g. {max(1, round(cfg.img_size / patch)) * patch}")
        parts = get_method(cfg.method).build(cfg.method_config, backbone, cfg.img_size)
        if parts.layout != "append" and parts.prompts is None:
            raise PGNError(f"layout {parts.layout!r} places prompt tokens; method {cfg.method!r} has none (use "
                           "`layout=append`)")
        if getattr(backbone, "pixel_only", False) and parts.prompts is not None and (
                parts.layout == "append" or not hasattr(parts.prompts, "library")
                or getattr(cfg.method_config, "library_space", "latent") != "pixel"):
            raise PGNError(f"{backbone.name} is prompted in its input pixels only: use `layout=frame` (or extend) "
                           "with `library_space=pixel`")
        return cls(backbone, parts.prompts, _build_head(cfg, backbone), make_layout(parts.layout, backbone),
                   input_prompt=parts.input_prompt, finetune=parts.finetune, config=cfg)

    @classmethod
    def from_pretrained(cls, directory: str | Path, backbone: FrozenBackbone | None = None,
                        map_location: str = "cpu") -> "PromptedClassifier":
        """The classifier saved in ``directory`` by :meth:`save_pretrained`, on ``backbone`` (default: the one
        its config names, built), in eval mode; the inverse of :meth:`save_pretrained`."""
        cfg = read_adapter_config(directory)
        if backbone is None:
            from .backbones import create_backbone

            backbone = create_backbone(cfg.backbone, cfg.backbone_weights)
        model = cls.from_config(cfg, backbone)
        state = read_adapter_weights(directory, map_location)
        check_state(model.trainable_modules().state_dict(), state,
                    f"{Path(directory) / WEIGHTS_FILE} does not match {CONFIG_FILE}")
        model.trainable_modules().load_state_dict(state, strict=True)
        return model.eval()  # inference mode for BatchNorm (the head's, the generator's); train() switches back

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The trainable parts (and their buffers, e.g. BatchNorm statistics), never the backbone."""
        return {k: v.detach().contiguous() for k, v in self.trainable_modules().state_dict().items()}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the adapter (``adapter.safetensors`` + ``adapter_config.json``) into ``directory``."""
        return write_adapter(self.adapter_state(), self._require_config(), directory)

    @torch.inference_mode()
    def predict(self, images, top_k: int = 1, batch_size: int = 32) -> list[list[tuple[str, float]]]:
        """Classify image files, PIL images or a (B, 3, S, S) normalised tensor.

        Returns, per image, the ``top_k`` (class name, probability) pairs, best first.
        """
        from PIL import Image

        from .data import load_image

        names = self.class_names
        if isinstance(images, torch.Tensor):
            batch = images if images.ndim == 4 else images.unsqueeze(0)
        else:
            if isinstance(images, (str, Image.Image)) or hasattr(images, "__fspath__"):
                images = [images]
            tf = self.transform
            batch = torch.stack([tf(im if isinstance(im, Image.Image) else load_image(im)) for im in images])
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = []
        for chunk in batch.split(batch_size):
            probs = self(chunk.to(device)).float().softmax(-1)
            top = probs.topk(min(top_k, probs.shape[1]), dim=1)
            out += [[(names[int(i)], float(p)) for p, i in zip(ps, idx)] for ps, idx in zip(top.values, top.indices)]
        self.train(was_training)
        return out


def _build_head(cfg: AdapterConfig, backbone: FrozenBackbone):
    """A trained linear head; CLIP's zero-shot head from its frozen text tower; or a label mapping of a frozen
    classifier's own scores (nothing trained)."""
    if cfg.extra.get("datasets"):  # one PGN over several datasets: a head per dataset (pgn.multi)
        from .multi import MultiDatasetHead

        return MultiDatasetHead(backbone.feature_dim, cfg.extra["datasets"], norm=cfg.head_norm)
    if cfg.head == "linear":
        return LinearHead(backbone.feature_dim, len(cfg.class_names), norm=cfg.head_norm)
    if cfg.head.startswith("labelmap-"):
        if not getattr(backbone, "pixel_only", False) or len(cfg.class_names) > backbone.feature_dim:
            raise PGNError(f"a label mapping reads the scores of a classifier with at least {len(cfg.class_names)} "
                           f"classes; {backbone.name} answers {backbone.feature_dim} "
                           f"{'scores' if getattr(backbone, 'pixel_only', False) else 'features'} (use `head=linear`)")
        return LabelMapHead(backbone.feature_dim, len(cfg.class_names), cfg.head[len("labelmap-"):])
    if not hasattr(backbone, "zero_shot_head"):
        raise PGNError(f"{backbone.name} has no text tower for a zero-shot head; use a clip-* backbone or `head=linear`")
    return backbone.zero_shot_head(cfg.class_names, cfg.template or "This is a photo of a {}.")
