"""The adapter's on-disk format: ``adapter_config.json`` (the schema, formats 1 to 3) + ``adapter.safetensors``.

One format for every adapter: one saved with its run (rebuilt on the backbone it names,
:meth:`pgn.model.PromptedClassifier.from_pretrained`) and one exported for input-space deployment
(loaded on its own, :meth:`pgn.input_adapter.InputAdapter.from_pretrained`), which has a ``deploy``
section (:class:`DeploySpec`: the canvas the model receives and what it answers). The backbone is
never saved. Format 3 adds ``deploy``; format 2 saves the method's own config (:mod:`pgn.methods`)
tagged with its name; format-1 files (one flat union of every method's fields) still load, and so do
the separate export files of earlier versions (:class:`LegacyExportConfig`). Both files are written
atomically, so an interrupted save never leaves a half-written file.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import PGNError
from .files import atomic_path, save_safetensors, write_json
from .methods import MethodConfig, get_method, method_config_dict, method_config_from_dict, method_config_of
from .validation import validated

__all__ = ["AdapterConfig", "DeploySpec", "adapter_config", "read_adapter_config", "write_adapter", "read_adapter_weights",
           "check_state", "FORMAT_VERSION", "CONFIG_FILE", "WEIGHTS_FILE"]

# 3: an optional ``deploy`` section (exports are adapters); 2: the method's own config, tagged (pgn.methods);
# 1: one flat union of every method's fields
FORMAT_VERSION = 3
ANSWERS = ("embeddings", "scores")  # what the deployed model answers: features for the adapter's head, or its own scores
MAX_IMG_SIZE = 4096  # a side; larger would run for minutes per image (and 16e9 overflows)
# Fields an adapter file must state: a default would silently change what the model sees.
REQUIRED_ON_LOAD = ("method", "backbone", "backbone_width", "class_names", "img_size", "mean", "std")
WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"


@dataclass
class DeploySpec:
    """An export's ``deploy`` section: what crosses the wire between the client and the unmodified model.

    ``canvas_size`` (H, W): the prompted image the model receives; ``patch_size``: its cells' side;
    ``answers``: ``embeddings`` (the model's features, read by the adapter's own head) or ``scores``
    (the model's own head: a classifier's scores read through the adapter's label mapping, or CLIP's
    zero-shot scores of the adapter's classes); ``outputs``: how many numbers it answers per image.
    """

    canvas_size: tuple[int, int]
    patch_size: int
    answers: str
    outputs: int

    def __post_init__(self):
        self.canvas_size = tuple(self.canvas_size)
        if len(self.canvas_size) != 2 or min(self.patch_size, self.outputs, *self.canvas_size) < 1:
            raise PGNError("deploy: canvas_size (two sides), patch_size and outputs must be positive")
        if max(self.canvas_size) > MAX_IMG_SIZE:
            raise PGNError(f"deploy: canvas_size {list(self.canvas_size)} is larger than pgn's bound of "
                           f"{MAX_IMG_SIZE} pixels a side")
        if any(side % self.patch_size for side in self.canvas_size):
            raise PGNError(f"deploy: canvas_size {list(self.canvas_size)} is not a multiple of patch_size {self.patch_size}")
        if self.answers not in ANSWERS:
            raise PGNError(f"deploy: answers is {self.answers!r}; choose {' or '.join(ANSWERS)}")


@dataclass
class LegacyExportConfig:
    """The fields of an export's ``deploy_config.json`` (pgn <= 0.1, format ``pgn-deployable`` 1), validated
    on load and converted to an :class:`AdapterConfig` with a :class:`DeploySpec`."""

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
    head: str = "linear"                 # "linear": the exported head; "remote": the model's own head scores
    template: str | None = None
    label_map: list[int] | None = None
    source_classes: int | None = None

    def __post_init__(self):
        if self.format != "pgn-deployable" or self.version != 1:
            raise PGNError(f"format {self.format!r} version {self.version!r} is not a pgn export")
        if self.head not in ("linear", "remote"):
            raise PGNError(f"head is {self.head!r}; choose linear or remote")
        if self.label_map is not None:
            if self.head != "remote" or len(self.label_map) != len(self.class_names) or not self.source_classes:
                raise PGNError("label_map needs head 'remote', source_classes, and one source class per class name")
            if len(set(self.label_map)) != len(self.label_map) or not all(
                    0 <= s < self.source_classes for s in self.label_map):
                raise PGNError(f"label_map must name distinct source classes in 0..{self.source_classes - 1}")


@dataclass
class AdapterConfig:
    """Everything needed to rebuild an adapted classifier on top of its backbone.

    ``method_config`` is the method and its options (a config of :mod:`pgn.methods`, e.g.
    :class:`~pgn.methods.PGNConfig`); the rest is what every method shares: the backbone, the
    classes and the preprocessing. Saved as JSON with the method's name beside its config.
    """

    method_config: Any                   # a registered method config (pgn.methods), resolved for img_size
    backbone: str                        # backbone name, e.g. "dinov2-s14-imgfocus"
    backbone_width: int                  # D, checked on load
    class_names: list[str]
    img_size: int = 112                  # resolution the backbone sees
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    backbone_weights: str | None = None  # local weights file, when not the backbone's default
    dataset: str | None = None
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)
    deploy: DeploySpec | None = None     # set on an export (pgn.input_adapter.export_adapter)

    def __post_init__(self):
        get_method(getattr(self.method_config, "method", None) or "?")  # a registered method's config
        if self.img_size < 1 or self.backbone_width < 1:
            raise PGNError(f"img_size and backbone_width must be positive (got {self.img_size}, {self.backbone_width})")
        if not self.class_names:
            raise PGNError("class_names is empty; an adapter needs the names of its classes")
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if self.img_size > MAX_IMG_SIZE:
            raise PGNError(f"img_size {self.img_size} is larger than pgn's bound of {MAX_IMG_SIZE} pixels a side")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise PGNError(f"mean and std need 3 values each (R, G, B), got {len(self.mean)} and {len(self.std)}")
        if not all(math.isfinite(v) for v in self.mean) or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise PGNError(f"mean must be finite and std finite and positive, got mean {list(self.mean)}, "
                           f"std {list(self.std)}")
        self.class_names = list(self.class_names)
        if len(set(self.class_names)) != len(self.class_names):
            dup = next(c for c in self.class_names if self.class_names.count(c) > 1)
            raise PGNError(f"class name {dup!r} appears more than once; each class needs its own name")
        if isinstance(self.deploy, dict):
            self.deploy = validated(DeploySpec, self.deploy, "deploy")
        # answers "scores" goes with a label mapping, CLIP's zero-shot head (it scores the task's classes on the
        # server), or a linear head on a scores-only model (width 1: no tokens), the learned readout of its scores.
        if self.deploy is not None and self.deploy.answers == "scores" and self.head == "linear" and self.backbone_width != 1:
            raise PGNError("deploy: a linear head on a model with tokens reads embeddings, but answers is 'scores'")
        if self.deploy is not None and self.deploy.answers == "embeddings" and self.head != "linear":
            raise PGNError(f"deploy: head {self.head!r} reads the model's own scores, but answers is 'embeddings'")
        if getattr(self.method_config, "resolved", None) is not None:  # defaults that depend on the resolution, stated
            self.method_config = self.method_config.resolved(self.img_size)

    # What the rest of pgn reads, whatever the method (a method without prompts has K = 0, append).
    @property
    def method(self) -> str:
        return self.method_config.method

    @property
    def num_prompts(self) -> int:
        return getattr(self.method_config, "num_prompts", 0)

    @property
    def layout(self) -> str:
        return getattr(self.method_config, "layout", "append")

    @property
    def head(self) -> str:
        return getattr(self.method_config, "head", "linear")

    @property
    def head_norm(self) -> str:
        return getattr(self.method_config, "head_norm", "batchnorm")

    @property
    def template(self) -> str | None:
        return getattr(self.method_config, "template", None)

    @property
    def generator(self) -> dict | None:
        """The PGN's :class:`~pgn.prompts.GeneratorConfig` fields (JSON form), or None for other methods."""
        if self.method != "pgn":
            return None
        return json.loads(json.dumps(vars(self.method_config.generator_config(self.img_size))))

    def to_dict(self) -> dict:
        """The JSON form: the method's name, its config, then the shared fields."""
        out = {"format_version": self.format_version, "method": self.method,
               "method_config": method_config_dict(self.method_config)}
        out.update({f.name: getattr(self, f.name) for f in fields(self) if f.name not in out})
        if self.deploy is None:
            del out["deploy"]  # an adapter saved with its run reads as format 2 did
        else:
            out["deploy"] = {f.name: getattr(self.deploy, f.name) for f in fields(self.deploy)}
        return json.loads(json.dumps(out))

    @classmethod
    def from_dict(cls, raw, source: str) -> "AdapterConfig":
        """``raw`` (parsed JSON, format 1 or 2) -> a validated config, or a one-line error about ``source``."""
        if not isinstance(raw, dict):
            raise PGNError(f"{source} must hold a JSON object, not {type(raw).__name__}; regenerate the file")
        missing = [k for k in REQUIRED_ON_LOAD if k not in raw]
        if missing:
            raise PGNError(f"{source}: field {missing[0]!r} is missing; an adapter states its preprocessing and "
                           "shape (retrain, or restore the file)")
        raw = dict(raw)
        version = raw.get("format_version", 1)
        if not isinstance(version, int) or version < 1:
            raise PGNError(f"{source}: format_version {version!r} is not a version of pgn's adapters; restore the file")
        if version > FORMAT_VERSION:
            raise PGNError(f"{source} was written by a newer pgn (format {version}); upgrade pgn")
        if version == 1:
            raw = _format_1_to_2(raw, source)
        raw["format_version"] = FORMAT_VERSION  # read into today's form (formats 1 and 2 have no deploy section)
        name = raw.pop("method")
        if not isinstance(name, str):
            raise PGNError(f"{source}: field 'method' must name a method, got {name!r}")
        try:
            get_method(name)
        except PGNError as e:
            raise PGNError(f"{source}: {e}") from None
        raw["method_config"] = method_config_from_dict(name, raw.get("method_config", {}), source)
        return validated(cls, raw, source)


# Format 1 kept every method's fields side by side; which of them each method reads.
_FORMAT_1_FIELDS = {"pgn": ("num_prompts", "layout", "head", "head_norm", "template"),
                    "iip": ("num_prompts", "layout", "head", "head_norm", "template"),
                    "vp": ("head", "head_norm", "template"), "linear": ("head_norm",),
                    "finetune": ("head_norm",), "zeroshot": ("template",)}
_FORMAT_1_ONLY = ("generator", "num_prompts", "layout", "head", "head_norm", "template", "vp_pad")


def _format_1_to_2(raw: dict, source: str) -> dict:
    """A format-1 adapter config as format 2 (the flat fields into the method's own config)."""
    name = raw.get("method")
    if name not in _FORMAT_1_FIELDS:
        raise PGNError(f"{source}: unknown method {name!r} for a format-1 adapter; choose one of "
                       f"{', '.join(_FORMAT_1_FIELDS)}")
    # Adapters written before the normalised head existed have a linear layer on raw features.
    old = {"head_norm": "none", **{k: raw.pop(k) for k in _FORMAT_1_ONLY if k in raw}}
    options = {k: old[k] for k in _FORMAT_1_FIELDS[name] if k in old}
    if name == "vp" and "vp_pad" in old:
        options["pad"] = old["vp_pad"]
    if name == "pgn":
        from .prompts import GeneratorConfig

        gen = validated(GeneratorConfig, old.get("generator") or {}, f"{source} (generator)")
        options.update(num_prompts=gen.num_prompts, library_size=gen.library_size, library_space=gen.library_space,
                       arch=gen.arch, widths=list(gen.widths), mixing=gen.mixing, generator_size=gen.input_size,
                       library_init_std=gen.library_init_std, output_init=gen.output_init)
    return {**raw, "format_version": FORMAT_VERSION, "method_config": options}


def adapter_config(backbone, method: str | MethodConfig, classes: Sequence[str], *, img_size: int,
                   dataset: str | None = None, backbone_weights: str | None = None, extra: dict | None = None,
                   **options) -> AdapterConfig:
    """The one constructor of :class:`AdapterConfig`: preprocessing comes from ``backbone``.

    ``method``: a method config of :mod:`pgn.methods`, or its name with the config's fields as ``options``.
    """
    if isinstance(method, str):
        method = method_config_of(method, **options)
    elif options:
        raise PGNError(f"options ({', '.join(sorted(options))}) go into the method config itself, e.g. "
                       f"{type(method).__name__}({next(iter(options))}=...)")
    pre = backbone.preprocessing
    if backbone_weights is not None and Path(backbone_weights).expanduser().is_file():
        # A local file is recorded by its absolute path, so the run and its export load from any folder.
        backbone_weights = str(Path(backbone_weights).expanduser().resolve())
    return AdapterConfig(method_config=method, backbone=backbone.name, backbone_width=backbone.width,
                         class_names=list(classes), img_size=img_size, mean=pre.mean, std=pre.std,
                         backbone_weights=backbone_weights, dataset=dataset, extra=dict(extra or {}))


def write_adapter(state: dict[str, torch.Tensor], cfg: AdapterConfig, directory: str | Path) -> Path:
    """Write ``state`` (the trainable parts' tensors) and ``cfg`` into ``directory``, each file atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_safetensors(state, tmp, metadata={"format": "pgn-adapter", "version": str(FORMAT_VERSION)})
    write_json(directory / CONFIG_FILE, cfg.to_dict())
    return directory


def read_adapter_config(directory: str | Path) -> AdapterConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise PGNError(f"no adapter in {directory}: {CONFIG_FILE} is missing (train one with `pgn train`)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PGNError(f"{path} is not valid JSON ({e}); retrain or restore the file") from None
    return AdapterConfig.from_dict(raw, str(path))


def read_adapter_weights(directory: str | Path, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise PGNError(f"no adapter weights in {directory}: {WEIGHTS_FILE} is missing")
    try:
        state = load_file(str(path), device=map_location)
    except (SafetensorError, OSError) as e:
        raise PGNError(f"{path} is corrupt or not a safetensors file ({e}); retrain or restore it") from e
    for key, tensor in state.items():  # a NaN or an infinity would answer garbage for every image, silently
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise PGNError(f"{path}: tensor {key!r} holds NaN or infinite values; retrain or restore the adapter")
    return state


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
