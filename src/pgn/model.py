"""The adapted classifier: prompt source + frozen backbone + head."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from .backbones import FrozenBackbone
from .layouts import AppendLayout


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

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, F) prompted CLS features."""
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
            from .errors import PGNError

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

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the adapter (``adapter.safetensors`` + ``adapter_config.json``) into ``directory``."""
        from .adapter import save_adapter

        return save_adapter(self, self._require_config(), directory)

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
