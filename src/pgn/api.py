"""The Python entry point: create, train, save, load and predict, in the shape of timm and PEFT.

    import pgn

    model = pgn.create_model("dinov2-s14-imgfocus", method="pgn", classes=["functional", "defective"])
    pgn.train(model, "elpv", epochs=3, lr=0.01, out="runs/elpv")  # a dataset name or a DataSpec
    model.save_pretrained("adapters/elpv")
    model = pgn.load("adapters/elpv")
    model.predict(["cell.png"], top_k=2)            # [[("defective", 0.91), ("functional", 0.09)]]

The model carries its config (``model.config``, an :class:`~pgn.adapter.AdapterConfig`) and its
preprocessing (``model.transform``); mean and std always come from the backbone.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from .adapter import adapter_config, build_classifier, load_adapter
from .backbones import DEFAULT_BACKBONE, FrozenBackbone, create_backbone
from .data import DataSpec, build_dataset
from .errors import PGNError
from .methods import MethodConfig, method_config_of
from .model import PromptedClassifier
from .training import TrainConfig
from .training import train as _train_loop

_TRAIN_FIELDS = {f.name for f in fields(TrainConfig)} - {"epochs"}


def create_model(backbone: str | FrozenBackbone = DEFAULT_BACKBONE, method: str | MethodConfig = "pgn",
                 classes: Sequence[str] = (), *, img_size: int = 112, weights: str | None = None,
                 dataset: str | None = None, **options) -> PromptedClassifier:
    """A freshly initialised classifier of ``method`` on a frozen ``backbone`` (a name or a built backbone).

    ``method``: a method config of :mod:`pgn.methods` (``PGNConfig(library_size=256)``), or its name
    with the config's fields as ``options`` (``"pgn", library_size=256``). ``classes`` are the class
    names (for the zero-shot head, the text it reads). Preprocessing comes from the backbone.
    """
    if isinstance(method, str):
        method = method_config_of(method, **options)
    elif options:
        raise PGNError(f"options ({', '.join(sorted(options))}) go into the method config itself, e.g. "
                       f"{type(method).__name__}({next(iter(options))}=...)")
    if not classes:
        raise PGNError("classes is empty; pass the class names, e.g. classes=['cat', 'dog']")
    bb = create_backbone(backbone, weights) if isinstance(backbone, str) else backbone
    cfg = adapter_config(bb, method.method, classes, img_size=img_size, dataset=dataset, backbone_weights=weights,
                         **method.adapter_kwargs(img_size))
    return build_classifier(cfg, bb)


def load(directory: str | Path, backbone: str | FrozenBackbone | None = None, weights: str | None = None,
         device: str = "cpu") -> PromptedClassifier:
    """The classifier saved in ``directory`` (by ``save_pretrained`` or ``pgn train``), in eval mode.

    The backbone it names is built, unless ``backbone`` gives another (a name or a built one).
    """
    bb = create_backbone(backbone, weights) if isinstance(backbone, str) else backbone
    model, _ = load_adapter(directory, backbone=bb, map_location=device)
    return model.to(device)


def train(model: PromptedClassifier, data: str | DataSpec, epochs: int = 10, out: str | Path | None = None, *,
          train_limit: int | None = None, test_limit: int | None = None, augment: bool = False,
          resume: bool = False, **options) -> dict:
    """Train ``model`` on ``data`` (a dataset name, see ``pgn.data.DATASETS``, or a DataSpec).

    ``options`` are :class:`~pgn.training.TrainConfig` fields (``lr``, ``bf16``, ``seed``, ``device``...);
    the rest is the ``cpu`` preset of :mod:`pgn.presets` (the paper's recipe at lr 0.01), as on the command
    line. Writes the run into ``out`` (default ``runs/<dataset>-<method>-<time>``) and returns the last
    epoch's metrics.
    """
    cfg = model._require_config()
    unknown = sorted(set(options) - _TRAIN_FIELDS)
    if unknown:
        raise PGNError(f"unknown training option(s) {', '.join(unknown)}; choose from {', '.join(sorted(_TRAIN_FIELDS))}")
    if isinstance(data, str):
        data = build_dataset(data, img_size=cfg.img_size, mean=cfg.mean, std=cfg.std, augment=augment,
                             train_limit=train_limit, test_limit=test_limit)
    if list(data.class_names) != list(cfg.class_names):
        raise PGNError(f"the model was created for classes {cfg.class_names[:5]}..., the dataset {data.name} has "
                       f"{list(data.class_names)[:5]}...; create the model with classes=data.class_names")
    if cfg.dataset is None:
        cfg.dataset = data.name
    out = Path(out) if out is not None else Path("runs") / f"{data.name}-{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    from .presets import PRESETS

    # The command line's default budget (pgn.presets "cpu"), with the caller's epochs and options.
    recipe = dataclasses.replace(PRESETS["cpu"].train, epochs=epochs, **options)
    return _train_loop(model, cfg, data, recipe, out, resume=resume)


def evaluate(model: PromptedClassifier, data: str | DataSpec | None = None, *, test_limit: int | None = None,
             batch_size: int = 32, device: str | None = None, bf16: bool = False, data_root: str | None = None,
             progress: bool = True) -> dict:
    """Test metrics of ``model`` (loss, top-1, top-5, n) on ``data`` (default: the dataset it records).

    A model trained on several datasets at once (``pgn.multi``) is scored per dataset:
    ``{"datasets": {name: metrics}}``. ``device``: where to run (default: where the model is).
    """
    from torch.utils.data import DataLoader

    from .multi import DatasetView
    from .training import evaluate as evaluate_loop

    cfg = model._require_config()
    device = device or str(next(model.parameters()).device)
    model.to(device)

    def split(name):
        spec = build_dataset(name, img_size=cfg.img_size, mean=cfg.mean, std=cfg.std, test_limit=test_limit,
                             root=data_root) if isinstance(name, str) else name
        return DataLoader(spec.test, batch_size=batch_size), spec

    if cfg.extra.get("datasets") and data is None:
        out = {}
        for i, part in enumerate(cfg.extra["datasets"]):
            loader, _ = split(part["name"])
            out[part["name"]] = evaluate_loop(DatasetView(model, i), loader, device, bf16, progress)
        return {"datasets": out}
    name = data if data is not None else cfg.dataset
    if name is None:
        raise PGNError("the model does not record its dataset; pass data=NAME")
    loader, spec = split(name)
    if list(spec.class_names) != list(cfg.class_names):
        raise PGNError(f"{spec.name} has classes {list(spec.class_names)[:5]}..., but the model was trained on "
                       f"{cfg.dataset} with {len(cfg.class_names)} classes")
    return evaluate_loop(model, loader, device, bf16, progress)
