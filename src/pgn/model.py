"""The adapted classifier: an input adapter (:mod:`pgn.input_adapter`) on a frozen backbone."""
from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import torch
from torch import nn

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
from .backbones import FrozenModel
from .errors import PGNError
from .input_adapter import InputAdapter
from .methods import FROZEN_HEADS


class PromptedClassifier(nn.Module):
    """image -> [pixel prompt] -> [prompt tokens placed by a layout] -> frozen model -> head -> logits.

    ``adapter`` (:class:`~pgn.input_adapter.InputAdapter`) holds everything trained: ``prompts`` maps
    (B, 3, H, W) images to (B, K, D) tokens (:class:`~pgn.prompts.PromptGenerator`,
    :class:`~pgn.prompts.InputIndependentPrompts`); ``input_prompt`` maps images to images
    (:class:`~pgn.prompts.PaddingPrompt`, the VP baseline); ``head`` reads the features. With no
    prompts and a frozen backbone this is a linear probe (or zero-shot CLIP). The backbone is frozen
    unless the method fine-tunes it (a copy of it).
    """

    def __init__(self, backbone: FrozenModel, adapter: InputAdapter):
        super().__init__()
        self.backbone = backbone
        self.adapter = adapter
        self.finetune = bool(getattr(adapter, "finetune", False))
        if self.finetune:
            # Fine-tuning owns a copy: the backbone it was given, and every other classifier built on it,
            # stays frozen and unchanged however this one trains.
            self.backbone = backbone = copy.deepcopy(backbone)
            for p in backbone.finetune_parameters():
                p.requires_grad_(True)

    # The adapter's parts, by the names the trainer and the analysis read them.
    @property
    def config(self) -> AdapterConfig:
        return self.adapter.config

    @property
    def prompts(self) -> nn.Module | None:
        return self.adapter.prompts

    @property
    def input_prompt(self) -> nn.Module | None:
        return self.adapter.input_prompt

    @property
    def head(self) -> nn.Module:
        return self.adapter.head

    @property
    def layout(self):
        return self.adapter.layout

    def trainable_modules(self) -> nn.ModuleDict:
        """The modules an adapter saves: everything that was trained (and its buffers)."""
        mods = {"head": self.head}
        for name in ("prompts", "input_prompt"):
            if getattr(self.adapter, name) is not None:
                mods[name] = getattr(self.adapter, name)
        if self.finetune:
            mods["backbone"] = self.backbone
        return nn.ModuleDict(mods)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def canvas(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, 3, Hc, Wc) what a model prompted in its input receives:
        VP's framed image, or the layout's canvas with the prompt patches (a pixel library)."""
        return self.adapter.trainable_canvas(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, F) prompted CLS features (a pixel classifier's scores)."""
        if not self.backbone.takes_tokens:  # pixels only: the prompt is composed into the image
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

    def _require_config(self) -> AdapterConfig:
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
    def from_config(cls, cfg: AdapterConfig, backbone: FrozenModel, seed: int | None = None) -> "PromptedClassifier":
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
    def _from_config(cls, cfg: AdapterConfig, backbone: FrozenModel) -> "PromptedClassifier":
        if backbone.width != cfg.backbone_width:
            raise PGNError(f"this adapter was made for a backbone of width {cfg.backbone_width}, but {backbone.name} "
                           f"has width {backbone.width}; build it on `backbone={cfg.backbone}`")
        patch = backbone.patch_size
        if cfg.img_size < patch or cfg.img_size % patch:
            raise PGNError(f"img_size {cfg.img_size} is not a positive multiple of {backbone.name}'s patch size "
                           f"{patch}; use e.g. {max(1, round(cfg.img_size / patch)) * patch}")
        if not backbone.takes_tokens and cfg.num_prompts and (
                cfg.layout == "append" or getattr(cfg.method_config, "library_space", "latent") != "pixel"):
            raise PGNError(f"{backbone.name} is prompted in its input pixels only: use `layout=frame` (or extend) "
                           "with `library_space=pixel`")
        if cfg.head.startswith("labelmap-") and (backbone.takes_tokens or len(cfg.class_names) > backbone.feature_dim):
            raise PGNError(f"a label mapping reads the scores of a classifier with at least {len(cfg.class_names)} "
                           f"classes; {backbone.name} answers {backbone.feature_dim} "
                           f"{'features' if backbone.takes_tokens else 'scores'} (use `head=linear`)")
        if cfg.head == "zeroshot" and not backbone.has_zero_shot_head:
            raise PGNError(f"{backbone.name} has no text tower for a zero-shot head; use a clip-* backbone or `head=linear`")
        adapter = InputAdapter.build(cfg, backbone.patch_embedding(), backbone.feature_dim,
                                     zero_shot_head=backbone.zero_shot_head)
        return cls(backbone, adapter)

    @classmethod
    def from_pretrained(cls, directory: str | Path, backbone: FrozenModel | None = None,
                        map_location: str = "cpu") -> "PromptedClassifier":
        """The classifier saved in ``directory`` by :meth:`save_pretrained`, on ``backbone`` (default: the one
        its config names, built), in eval mode; the inverse of :meth:`save_pretrained`. For a run, its newest
        complete checkpoint (:func:`pgn.training.checkpoint.adapter_source`)."""
        from .training.checkpoint import adapter_source

        directory = adapter_source(directory)
        cfg = read_adapter_config(directory)
        if cfg.deploy is not None:
            raise PGNError(f"{directory} is an export for input-space deployment; load it with "
                           "pgn.InputAdapter.from_pretrained (`pgn compose`, `pgn predict --api`), or use the run it came from")
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
        return write_adapter(self.adapter_state(), self.config, directory)

    def deployable(self) -> InputAdapter:
        """This PGN's input adapter with a ``deploy`` section: what a client needs to prompt an unmodified model
        in its input (:func:`pgn.input_adapter.export_adapter` saves it). Shares this model's modules."""
        cfg = self.config
        if cfg.method != "pgn":
            raise PGNError(f"only PGN adapters deploy in the input (this one is {cfg.method!r})")
        if cfg.layout == "append":
            raise PGNError("an 'append' adapter adds tokens inside the model and cannot be sent as an image; "
                           "train with `layout=extend`, `layout=frame` or `layout=overlay`")
        if cfg.head.startswith("labelmap-") and not bool(self.head.fitted):
            raise PGNError("the frequency label mapping was never fitted; train the adapter first")
        bb, patch = self.backbone, self.backbone.patch_size
        hc, wc = self.layout.canvas_grid((cfg.img_size // patch, cfg.img_size // patch), cfg.num_prompts)
        # A frozen head lives with the model: the server scores (CLIP's zero-shot head; a classifier's own head,
        # read through the adapter's label mapping, which travels with the export). A scores-only model answers
        # its scores whatever the head: a linear head on them is the learned readout, applied on the client.
        reads_scores = cfg.head in FROZEN_HEADS or not bb.takes_tokens
        outputs = len(cfg.class_names) if cfg.head == "zeroshot" else bb.feature_dim
        deploy = DeploySpec(canvas_size=(hc * patch, wc * patch), patch_size=patch,
                            answers="scores" if reads_scores else "embeddings", outputs=outputs)
        config = dataclasses.replace(cfg, deploy=deploy, extra=dict(cfg.extra))
        head = None if cfg.head == "zeroshot" else self.head
        return InputAdapter(config, self.prompts, self.input_prompt, head, self.layout, bb.patch_embedding()).eval()

    def _as_batch(self, images) -> torch.Tensor:
        """What :meth:`predict` accepts -> (B, 3, S, S) normalised float32, or a PGNError naming the problem."""
        from PIL import Image

        from .data import load_image

        size = self.config.img_size
        if isinstance(images, torch.Tensor):
            return self._checked_tensor(images if images.ndim == 4 else images.unsqueeze(0), size)
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        if not isinstance(images, (list, tuple)):
            raise PGNError(f"predict takes image paths, PIL images or a float32 tensor, not {type(images).__name__}; "
                           "for a NumPy array use PIL.Image.fromarray")
        if not images:
            raise PGNError("predict needs at least one image (got an empty list)")
        tf, batch = self.transform, []
        for im in images:
            if isinstance(im, Image.Image):
                batch.append(tf(im))
            elif isinstance(im, (str, os.PathLike)):
                batch.append(tf(load_image(im)))
            elif isinstance(im, torch.Tensor) and im.ndim == 3:
                batch.append(self._checked_tensor(im.unsqueeze(0), size)[0])
            else:
                raise PGNError(f"predict takes image paths, PIL images or float32 tensors, not {type(im).__name__}")
        return torch.stack(batch)

    def _checked_tensor(self, batch: torch.Tensor, size: int) -> torch.Tensor:
        if batch.ndim != 4 or batch.shape[1] != 3 or tuple(batch.shape[2:]) != (size, size):
            raise PGNError(f"a tensor for predict is (B, 3, {size}, {size}) or (3, {size}, {size}), got "
                           f"{tuple(batch.shape)}; use model.transform on a PIL image")
        if batch.dtype != torch.float32:
            raise PGNError(f"a tensor for predict is float32 normalised with the adapter's mean and std, got "
                           f"{batch.dtype}; use model.transform on a PIL image")
        if not bool(torch.isfinite(batch).all()):
            raise PGNError("the tensor for predict holds NaN or infinite values")
        mean, std = torch.tensor(self.config.mean), torch.tensor(self.config.std)
        lo, hi = float(((0 - mean) / std).min()), float(((1 - mean) / std).max())
        if float(batch.min()) < lo - 0.5 or float(batch.max()) > hi + 0.5:  # beyond what normalised pixels can be
            raise PGNError(f"the tensor for predict has values in [{float(batch.min()):.3g}, {float(batch.max()):.3g}], "
                           f"outside normalised pixels ([{lo:.2f}, {hi:.2f}]): normalise 0-1 pixels with the adapter's "
                           "mean and std (model.transform does)")
        return batch

    @torch.inference_mode()
    def predict(self, images, top_k: int = 1, batch_size: int = 32) -> list[list[tuple[str, float]]]:
        """Classify image files (paths), PIL images, or a float32 tensor normalised as :attr:`transform` makes it,
        (B, 3, S, S) or (3, S, S) with S the adapter's ``img_size``; a list of them is a batch.

        Returns, per image, the ``top_k`` (class name, probability) pairs, best first. Anything else is a
        PGNError naming what is wrong (a uint8 or 0-255 tensor, another size, NaN, an empty list, ...).
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise PGNError(f"top_k must be a whole number >= 1, got {top_k!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise PGNError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        names = self.class_names
        batch = self._as_batch(images)
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


