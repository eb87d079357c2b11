"""The Python entry point: create, train, save, load and predict, in the shape of timm and PEFT.

    import pgn

    model = pgn.create_model("dinov2-s14-imgfocus", method="pgn", classes=["functional", "defective"], img_size=112)
    pgn.train(model, "elpv", epochs=3, lr=0.01, out="runs/elpv")  # a dataset name or a DataSpec
    model.save_pretrained("adapters/elpv")
    model = pgn.load("adapters/elpv")
    model.predict(["cell.png"], top_k=2)            # [[("defective", 0.91), ("functional", 0.09)]]

The model carries its config (``model.config``, an :class:`~pgn.adapter.AdapterConfig`) and its
preprocessing (``model.transform``); mean and std always come from the backbone.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from .adapter_format import adapter_config
from .backbones import DEFAULT_BACKBONE, FrozenBackbone, create_backbone
from .data import DataSpec, build_dataset
from .errors import PGNError, ResumeMismatch
from .methods import MethodConfig, method_config_dict, method_config_of
from .model import PromptedClassifier
from .training import TrainConfig
from .training import run_training as _train_loop
from .training.run_dir import default_run_dir

logger = logging.getLogger(__name__)

_TRAIN_FIELDS = {f.name for f in fields(TrainConfig)} - {"epochs"}


def create_model(backbone: str | FrozenBackbone = DEFAULT_BACKBONE, method: str | MethodConfig = "pgn",
                 classes: Sequence[str] = (), *, img_size: int | None = None, weights: str | None = None,
                 dataset: str | None = None, data_root: str | None = None, download: bool = False, seed: int = 0,
                 **options) -> PromptedClassifier:
    """A freshly initialised classifier of ``method`` on a frozen ``backbone`` (a name or a built backbone).

    ``method``: a method config of :mod:`pgn.methods` (``PGNConfig(library_size=256)``), or its name
    with the config's fields as ``options`` (``"pgn", library_size=256``). ``classes`` are the class
    names (for the zero-shot head, the text it reads); left out, they come from ``dataset`` (its files in
    ``data_root`` where it needs them; ``download`` lets torchvision fetch the ones it knows).
    Preprocessing comes from the backbone; ``img_size`` (the backbone's input resolution) defaults to the
    one it was made for (224 for the paper's ViTs; the ``cpu`` preset of the command line uses 112).
    ``seed``: the trainable parts' initialisation (the same seed builds the same model, whatever
    ran before); ``pgn.train``'s ``seed`` then sets the data order.
    """
    if isinstance(method, str):
        method = method_config_of(method, **options)
    elif options:
        raise PGNError(f"options ({', '.join(sorted(options))}) go into the method config itself, e.g. "
                       f"{type(method).__name__}({next(iter(options))}=...)")
    bb = create_backbone(backbone, weights) if isinstance(backbone, str) else backbone
    img_size = _native_size(bb, img_size)
    if dataset is not None and (not classes or _reads_template(method)):
        data = build_dataset(dataset, img_size=img_size, root=data_root, download=download)
        classes = classes or data.class_names  # the data names its classes
        method = _with_data_template(method, data)
    if isinstance(classes, str):
        raise PGNError(f"classes is the string {classes!r}; pass a list of class names, e.g. classes=['cat', 'dog']")
    if not classes:
        raise PGNError("classes is empty; pass the class names, e.g. classes=['cat', 'dog'], or dataset=NAME "
                       "to take them from the data")
    cfg = adapter_config(bb, method, classes, img_size=img_size, dataset=dataset, backbone_weights=weights)
    return PromptedClassifier.from_config(cfg, bb, seed=seed)


def _native_size(backbone: FrozenBackbone, img_size: int | None) -> int:
    """``img_size``, or where it is None the backbone's native input resolution (logged, so it is seen)."""
    if img_size is not None:
        return img_size
    native = backbone.preprocessing.input_size
    logger.info(f"`img_size` {native}: {backbone.name}'s native input (a smaller one trains faster on a CPU)")
    return native


def _reads_template(method: MethodConfig) -> bool:
    """Whether ``method`` has a zero-shot head with no prompt template of its own (it then reads the data's)."""
    return getattr(method, "head", None) == "zeroshot" and getattr(method, "template", None) is None


def _with_data_template(method: MethodConfig, data: DataSpec) -> MethodConfig:
    """``method`` with the data's zero-shot prompt where its zero-shot head has none (the only head that reads one)."""
    if _reads_template(method) and getattr(data, "template", None):
        return dataclasses.replace(method, template=data.template)
    return method


def load(directory: str | Path, backbone: str | FrozenBackbone | None = None, weights: str | None = None,
         device: str | None = None) -> PromptedClassifier:
    """The classifier saved in ``directory`` (by ``save_pretrained`` or ``pgn train``), in eval mode.

    The backbone it names is built, unless ``backbone`` gives another (a name or a built one).
    ``device``: where it runs (default: CUDA when there is a GPU, else the CPU; as on the command line).
    """
    from .devices import resolve_device

    device = resolve_device(device)
    bb = create_backbone(backbone, weights) if isinstance(backbone, str) else backbone
    model = PromptedClassifier.from_pretrained(directory, backbone=bb, map_location=device)
    return model.to(device)


def train(model: PromptedClassifier, data: str | DataSpec, epochs: int = 10, out: str | Path | None = None, *,
          train_limit: int | None = None, test_limit: int | None = None, augment: bool = False,
          data_root: str | None = None, download: bool = False, resume: bool = False, **options) -> dict:
    """Train ``model`` on ``data`` (a dataset name, see ``pgn.data.DATASETS``, or a DataSpec).

    ``options`` are :class:`~pgn.training.TrainConfig` fields (``lr``, ``precision``, ``seed``, ``device``...);
    the rest is the ``cpu`` preset of :mod:`pgn.presets` (the paper's recipe at lr 0.01), as on the command
    line. ``seed`` (default 0) sets the data order and draws the ``train_limit``/``test_limit`` subsets,
    as ``pgn train --seed`` does. ``precision`` is ``"fp32"`` unless given (``"auto"``: bf16 where native).
    ``data_root`` / ``download``: where a named dataset's files are, as for :func:`evaluate`.
    Writes the run into ``out`` (default ``runs/<method>-<dataset>-<time>``) and returns the last epoch's
    metrics.
    """
    from .files import check_not_in_use

    cfg = model._require_config()
    if out is not None:
        check_not_in_use(out)  # before the data is built
    unknown = sorted(set(options) - _TRAIN_FIELDS)
    if unknown:
        raise PGNError(f"unknown training option(s) {', '.join(unknown)}; choose from {', '.join(sorted(_TRAIN_FIELDS))}")
    if isinstance(data, str):
        data = build_dataset(data, img_size=cfg.img_size, mean=cfg.mean, std=cfg.std, augment=augment,
                             train_limit=train_limit, test_limit=test_limit, seed=options.get("seed", 0),
                             root=data_root, download=download)
    if list(data.class_names) != list(cfg.class_names):
        raise PGNError(f"the model was created for classes {cfg.class_names[:5]}..., the dataset {data.name} has "
                       f"{list(data.class_names)[:5]}...; create the model with classes=data.class_names")
    if cfg.dataset is None:
        cfg.dataset = data.name
    out = Path(out) if out is not None else default_run_dir(cfg.method, data.name)
    from .presets import PRESETS

    # The command line's default budget (pgn.presets "cpu"), with the caller's epochs and options; the
    # device defaults as on the command line (None: CUDA when there is a GPU, resolved by the trainer).
    options.setdefault("device", None)
    recipe = dataclasses.replace(PRESETS["cpu"].train, epochs=epochs, **options)
    return _train_loop(model, cfg, data, recipe, out, resume=resume)


def train_run(backbone: str, method: str | MethodConfig, datasets: str | Sequence[str], config: TrainConfig,
              out: str | Path | None = None, *, weights: str | None = None, img_size: int | None = None,
              augment: bool = False, train_limit: int | None = None, test_limit: int | None = None,
              root: str | None = None, download: bool = False, on_device: bool = False,
              log=None) -> tuple[dict, Path]:
    """A new run from its settings, as ``pgn train`` starts one: the backbone by name, the data (one dataset
    or several combined, ``"elpv,digits"``), the model of ``method`` (a name, or its config) drawn from
    ``config.seed``, then training into ``out`` (default ``runs/<method>-<dataset>-<time>``) on
    ``config.device`` (None: CUDA when there is a GPU) at ``img_size`` (None: the backbone's native input)
    in ``config.precision`` (``"auto"``: bf16 where the device runs it natively; the choice is logged).
    Returns (the last epoch's metrics, the run).

    The ``train_limit``/``test_limit`` subsets are drawn with ``config.seed``, as :func:`train` draws them.
    ``on_device``: the loader ships stored pixels and the device resizes them (:mod:`pgn.data.device`).
    ``log``: where progress lines go (default: the ``pgn`` logger, on the main process of a torchrun job).
    """
    from .devices import resolve_device
    from .files import check_not_in_use
    from .precision import describe, resolve

    if out is not None:
        check_not_in_use(out)  # a second writer is refused now, not after the data and model are built
    method = method_config_of(method) if isinstance(method, str) else method
    if method.method == "zeroshot":
        raise PGNError("zero-shot CLIP trains nothing: evaluate it (`pgn.evaluate(pgn.create_model(backbone, "
                       "'zeroshot', classes=...), data)`)")
    log = log or _main_log
    device = resolve_device(config.device)
    asked = config.precision
    config = dataclasses.replace(config, device=device, precision=resolve(asked, device))
    log(f"precision {describe(config.precision)}{' (auto)' if asked == 'auto' else ''} on {device}")
    bb = create_backbone(backbone, weights)
    img_size = _native_size(bb, img_size)
    patch = bb.patch_size
    if img_size < patch or img_size % patch:
        raise PGNError(f"`img_size` {img_size} must be a positive multiple of the backbone's patch size {patch}")
    pre = bb.preprocessing
    data, parts = build_data(datasets, img_size=img_size, mean=pre.mean, std=pre.std, augment=augment,
                             train_limit=train_limit, test_limit=test_limit, seed=config.seed, root=root,
                             download=download, on_device=on_device)
    method = _with_data_template(method, data)
    cfg = adapter_config(bb, method, data.class_names, img_size=img_size, dataset=data.name, backbone_weights=weights,
                         extra={"datasets": parts} if parts else None)  # several datasets: a head each
    model = PromptedClassifier.from_config(cfg, bb, seed=config.seed)  # the run's seed draws the init too
    out = Path(out) if out is not None else default_run_dir(cfg.method, data.name)
    log(f"backbone {bb.name}: {bb.description}")
    log(f"dataset {data.name}: {len(data.train)} train / {len(data.test)} test, {len(data.class_names)} classes, "
        f"{img_size}px")
    log(f"trainable parameters: {model.num_trainable():,} (backbone {sum(p.numel() for p in bb.parameters()):,}, "
        "frozen)")
    return _train_loop(model, cfg, data, config, out, resume=False, log=log), out


def _main_log(line: str) -> None:
    """A progress line through the ``pgn`` logger, from the main process only (rank 0 of a torchrun job)."""
    if os.environ.get("RANK", "0") == "0":
        logger.info(line)


def build_data(names: str | Sequence[str], *, img_size: int, mean: Sequence[float], std: Sequence[float],
               augment: bool = False, train_limit: int | None = None, test_limit: int | None = None, seed: int = 0,
               root: str | None = None, download: bool = False,
               on_device: bool = False) -> tuple[DataSpec, list[dict] | None]:
    """The data of a run: one dataset, or several combined (``"elpv,digits"``: one PGN, a head each).

    ``train_limit``/``test_limit`` draw stratified subsets with ``seed``. Returns the spec and, for several
    datasets, their parts (``[{name, classes, offset}]``, what the multi-dataset head is built from).
    ``on_device``: stored pixels, resized on the training device (one dataset; :mod:`pgn.data.device`).
    """
    names = names.split(",") if isinstance(names, str) else list(names)
    kw = dict(img_size=img_size, mean=mean, std=std, augment=bool(augment), root=root,
              train_limit=train_limit, test_limit=test_limit, seed=seed, download=download, on_device=on_device)
    if on_device and len(names) > 1:
        raise PGNError("`on_device` preprocessing takes one dataset (their stored sizes differ); combine them "
                       "without it")
    if len(names) == 1:
        return build_dataset(names[0], **kw), None
    from .multi import combine

    return combine([build_dataset(n, **kw) for n in names])


# The one list of what a resumed run may change (none changes what is trained); every other setting is the
# run's own (config.json), and asking for another value of it is a ResumeMismatch. ``pgn train --resume``
# derives the flags it lets through from this list.
RESUMABLE = ("epochs", "device", "num_workers", "progress", "eval_every")


def resume(run: str | Path, epochs: int | None = None, *, changes: dict | None = None,
           backbone: str | FrozenBackbone | None = None, log=None, **options) -> dict:
    """Continue the run in ``run`` from its last finished epoch, exactly as it was configured.

    Its data (names, limits, subset seed, augmentation), batch, rates, seed and precision come from its
    config.json; ``epochs`` may extend it, ``options`` may set ``device``, ``num_workers``, ``progress``
    and ``eval_every``.
    ``changes``: settings a caller asks for again (``{"lr": 0.1}``); one that differs from the run's is a
    PGNError naming it, so a resume never silently trains another run. Returns the last epoch's metrics.
    """
    import json

    from .adapter_format import read_adapter_config
    from .devices import resolve_device
    from .files import check_not_in_use
    from .precision import resolve
    from .validation import validated

    run = Path(run)
    check_not_in_use(run)
    unknown = sorted(set(options) - set(RESUMABLE))
    if unknown:
        raise PGNError(f"a resumed run keeps its own {', '.join(unknown)}; it may change only "
                       f"{', '.join(RESUMABLE)}")
    path = run / "config.json"
    if not path.is_file():
        raise PGNError(f"cannot resume {run}: it holds no config.json (not a pgn run, or never started)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PGNError(f"cannot resume {run}: {path} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("train"), dict):
        raise PGNError(f"cannot resume {run}: {path} has no 'train' settings; it was not written by pgn train")
    acfg = read_adapter_config(run)
    recorded = dict(config["train"])
    if "bf16" in recorded:  # runs written before precision was a named choice
        recorded.setdefault("precision", "bf16" if recorded.pop("bf16") else "fp32")
    recorded = {k: v for k, v in recorded.items() if k in {f.name for f in fields(TrainConfig)}}
    data_recipe = config.get("data") or {}
    settings = {**recorded, **_flat_data(data_recipe), "dataset": acfg.dataset, "method": acfg.method,
                "backbone": acfg.backbone, "weights": acfg.backbone_weights, "img_size": acfg.img_size,
                **method_config_dict(acfg.method_config)}
    device = resolve_device(options.get("device"))
    for key, value in (changes or {}).items():
        if key in RESUMABLE or value is None:
            continue
        if key == "precision":
            value = resolve(value, device)  # "auto" asks for what this device runs, as it did at the start
        if key not in settings:
            raise ResumeMismatch(key, value)
        if _differs(value, settings[key]):
            raise ResumeMismatch(key, value, settings[key], RESUMABLE)
    recorded.update(epochs=epochs or recorded.get("epochs", 1), device=device,
                    progress=options.get("progress", recorded.get("progress", True)))
    for key in ("num_workers", "eval_every"):
        if options.get(key) is not None:
            recorded[key] = options[key]
    cfg = validated(TrainConfig, recorded, f"{path} (train)")
    bb = (create_backbone(backbone or acfg.backbone, acfg.backbone_weights if backbone is None else None)
          if not isinstance(backbone, FrozenBackbone) else backbone)
    data = _data_of_run(acfg, config, data_recipe)
    model = PromptedClassifier.from_config(acfg, bb)  # its weights come from the checkpoint
    return _train_loop(model, acfg, data, cfg, run, resume=True, log=log or _main_log)


def _flat_data(recipe: dict) -> dict:
    """The comparable data settings of a recorded recipe (one dataset, or the first of several)."""
    first = recipe.get("datasets", [recipe])[0] if recipe else {}
    return {k: first.get(k) for k in ("train_limit", "test_limit", "augment") if k in first} | (
        {"data_root": first.get("root")} if "root" in first else {}) | (
        {"on_device": bool(first.get("on_device", False))} if recipe else {})  # recorded only when True


def _differs(asked, recorded) -> bool:
    if isinstance(asked, (list, tuple)) and isinstance(recorded, (list, tuple)):  # JSON has no tuples
        return list(asked) != list(recorded)
    if isinstance(asked, (str, Path)) and isinstance(recorded, str) and Path(asked).exists():
        return Path(asked).resolve() != Path(recorded).resolve()  # one file, named two ways
    if isinstance(asked, float) or isinstance(recorded, float):
        try:
            return float(asked) != float(recorded)
        except (TypeError, ValueError):
            return True
    return asked != recorded


def _data_of_run(acfg, config: dict, recipe: dict) -> DataSpec:
    """The run's data rebuilt from its recipe; runs from before recipes were recorded, from their sizes."""
    sizes = dict(img_size=acfg.img_size, mean=acfg.mean, std=acfg.std)
    if recipe:
        parts = recipe.get("datasets", [recipe])
        first = parts[0]
        data, _ = build_data([p["name"] for p in parts], **sizes, augment=first.get("augment", False),
                             train_limit=first.get("train_limit"), test_limit=first.get("test_limit"),
                             seed=first.get("seed", 0), root=first.get("root"),
                             on_device=bool(first.get("on_device", False)))
    else:  # runs from before the data recipe was recorded: the dataset's name and the sizes of its splits
        recorded = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
        if not acfg.dataset:
            raise PGNError("cannot resume: the run's config.json records no data (no 'data' section and no dataset "
                           "name); start a new run")
        data, _ = build_data(acfg.dataset, **sizes, augment=config.get("augment", False),
                             seed=config["train"].get("seed", 0))
        limits = {}
        if recorded.get("train_size") not in (None, len(data.train)):
            limits["train_limit"] = recorded["train_size"]
        if recorded.get("test_size") not in (None, len(data.test)):
            limits["test_limit"] = recorded["test_size"]
        if limits:
            data, _ = build_data(acfg.dataset, **sizes, augment=config.get("augment", False),
                                 seed=config["train"].get("seed", 0), **limits)
    if list(data.class_names) != list(acfg.class_names):
        raise PGNError(f"cannot resume: the rebuilt data {data.name} no longer has the run's classes")
    return data


def evaluate(model: PromptedClassifier, data: str | DataSpec | None = None, *, test_limit: int | None = None,
             batch_size: int = 32, device: str | None = None, precision: str = "fp32", data_root: str | None = None,
             img_size: int | None = None, download: bool = False, progress: bool = True) -> dict:
    """Test metrics of ``model`` (loss, top-1, top-5, n) on ``data`` (default: the dataset it records).

    A dataset named here is built at the model's input size, or at ``img_size`` (a backbone that takes
    any multiple of its patch, at another resolution than it was trained at).

    A model trained on several datasets at once (``pgn.multi``) is scored per dataset (or on the one of
    them named): ``{"datasets": {name: metrics}}``. ``device``: where to run (default: where the model is).
    ``precision``: ``fp32`` (default), ``bf16`` or ``auto``; the metrics name the one that ran.
    """
    from torch.utils.data import DataLoader

    from .data.device import on_device
    from .multi import DatasetView
    from .precision import resolve
    from .training import evaluate_loader as evaluate_loop

    cfg = model._require_config()
    device = device or str(next(model.parameters()).device)
    precision = resolve(precision, device)
    model.to(device)
    if cfg.head == "labelmap-flm" and not bool(model.head.fitted):
        raise PGNError("this model's frequency label mapping is not fitted yet: train it, or fit it on training "
                       "images first (pgn.training.fit_label_map(model, data.train))")

    def split(name):
        spec = build_dataset(name, img_size=img_size or cfg.img_size, mean=cfg.mean, std=cfg.std,
                             test_limit=test_limit, root=data_root, download=download) if isinstance(name, str) else name
        return on_device(DataLoader(spec.test, batch_size=batch_size), spec, device), spec

    parts = cfg.extra.get("datasets")
    if parts:  # one model over several datasets: each part scored by its own head (or the one named)
        names = [part["name"] for part in parts]
        if data is not None and data not in names:
            raise PGNError(f"this model was trained on {', '.join(names)} at once; pass one of them as `data=NAME`, "
                           "or none to score each")
        out = {}
        for i, part in enumerate(parts):
            if data is not None and part["name"] != data:
                continue
            loader, _ = split(part["name"])
            out[part["name"]] = dict(evaluate_loop(DatasetView(model, i), loader, device, precision, progress), precision=precision)
        return {"datasets": out}
    name = data if data is not None else cfg.dataset
    if name is None:
        raise PGNError("the model does not record its dataset; pass `data=NAME`")
    loader, spec = split(name)
    if list(spec.class_names) != list(cfg.class_names):
        raise PGNError(f"{spec.name} has classes {list(spec.class_names)[:5]}..., but the model was trained on "
                       f"{cfg.dataset} with {len(cfg.class_names)} classes")
    return dict(evaluate_loop(model, loader, device, precision, progress), precision=precision)


# --------------------------------------------------------------------------- training through a model's endpoint

def train_through_api(api, data: str | DataSpec, method: str | MethodConfig = "vp", out: str | Path | None = None, *,
                      api_kind: str = "pgn", api_model: str | None = None, api_input: str = "input",
                      api_tensor_format: str = "uint8-hwc", api_output: str | None = None, timeout: float = 60,
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      img_size: int | None = None, cell_size: int | None = None, train_limit: int | None = None,
                      test_limit: int | None = None, data_root: str | None = None, download: bool = False,
                      init: str | Path | None = None, log=None, **options) -> dict:
    """Train ``method``'s adapter on ``data`` through a model you can only query; its weights are never loaded.

    ``api``: the model's URL (``api_kind`` ``pgn``: ``pgn serve``; ``oip``: an Open Inference Protocol server,
    with ``api_model`` its name there), an :class:`~pgn.client.Endpoint`, or a Python function ``(B, H, W, 3)
    uint8 canvases -> (B, S) scores``. Every forward is a call with the 8-bit canvases deployment sends.
    ``method``: ``vp`` (bounded), ``iip`` or ``pgn`` with prompts in the pixels (``library_space="pixel"``,
    ``layout="frame"``), or ``linear``: the learned readout of the model's scores, one query per training image
    (the baseline a prompt must beat); a name with its config's fields among ``options``, or a config.
    The model's preprocessing (``mean``, ``std``, ``img_size``, ``cell_size``: the prompt cells' side) comes from
    ``pgn serve``'s ``/info``; other servers and functions need it given. ``options``: fields of
    :class:`~pgn.blackbox.ZerothOrderConfig` (``steps``, ``epochs``, ``batch_size``, ``max_queries``,
    ``max_calls``, ``answers``, ``trainable``, ``head_lr``, ``readout_warmup``, ``retries``, ``seed``...) and
    SPSA-GC's settings as ``spsa_a``, ``spsa_c``, ``spsa_o``, ``spsa_alpha``, ``spsa_gamma``, ``spsa_q``, ``spsa_momentum``,
    ``spsa_gradient_correction``, ``spsa_subspace`` (:class:`~pgn.blackbox.SPSAConfig`, BlackVIP's defaults).
    ``init``: an adapter to warm-start from (a prompt trained with gradients on a model you have, or a readout
    trained through this endpoint). Writes the run into ``out`` and returns its last metrics row (calls, images
    sent, accuracy, and ``stopped``: ``done`` or ``budget``).
    """
    from .blackbox import SPSAConfig, ZerothOrderConfig, train_zeroth_order
    from .files import check_not_in_use

    if out is not None:
        check_not_in_use(out)
    _ZO_SPSA = {f"spsa_{f.name}": f.name for f in fields(SPSAConfig)}  # noqa: N806  (SPSA-GC's settings, prefixed)
    zo_fields = {f.name for f in fields(ZerothOrderConfig)} - {"spsa"}
    spsa = {_ZO_SPSA[k]: options.pop(k) for k in list(options) if k in _ZO_SPSA}
    zo = {k: options.pop(k) for k in list(options) if k in zo_fields}
    if isinstance(method, str):
        method = method_config_of(method, **options)
    elif options:
        raise PGNError(f"unknown option(s) {', '.join(sorted(options))}: give the method's in its config, and "
                       f"training's among {', '.join(sorted(zo_fields | set(_ZO_SPSA)))}")
    config = ZerothOrderConfig(**zo, spsa=SPSAConfig(**spsa))
    ep, record = _endpoint_of(api, api_kind, dict(model=api_model, input_name=api_input,
                                                  tensor_format=api_tensor_format, output=api_output, mean=mean,
                                                  std=std, timeout=timeout))
    model_input = _model_input(ep, api_kind, mean, std, img_size, cell_size, config.batch_size)
    if isinstance(data, str):
        data = build_dataset(data, img_size=model_input.img_size, mean=model_input.mean, std=model_input.std,
                             train_limit=train_limit, test_limit=test_limit, seed=config.seed, root=data_root,
                             download=download)
    out = Path(out) if out is not None else default_run_dir(method.method, data.name)
    row = train_zeroth_order(ep, data, method, model_input, out, config, init=init, endpoint_record=record,
                             log_line=log or _main_log)
    return {"run": str(out), **row}


def resume_through_api(run: str | Path, api=None, *, log=None, **options) -> dict:
    """Continue the zeroth-order run in ``run`` exactly as it was configured, bit for bit.

    ``api``: the endpoint (default: the URL recorded in the run; a Python function must be given again);
    ``options`` may change only what :data:`pgn.blackbox.RESUMABLE` lists (``steps``, ``epochs``,
    ``max_queries``, ``max_calls``, ``retries``, ``backoff``, ``progress``...). Returns the last metrics row.
    """
    import json

    from .blackbox import RESUMABLE, ModelInput, SPSAConfig, ZerothOrderConfig, train_zeroth_order
    from .files import check_not_in_use
    from .methods import method_config_from_dict

    run = Path(run)
    check_not_in_use(run)
    path = run / "config.json"
    try:
        settings = json.loads(path.read_text())["zeroth_order"]
    except (OSError, ValueError, KeyError, TypeError):
        raise PGNError(f"{run} is not a run trained through an endpoint (no zeroth-order settings in {path}); "
                       "resume a gradient-trained run with `pgn.resume`") from None
    unknown = sorted(set(options) - set(RESUMABLE))
    if unknown:
        raise PGNError(f"a resumed run keeps its own {', '.join(f'`{k}`' for k in unknown)}; it may change only "
                       f"{', '.join(f'`{k}`' for k in RESUMABLE)}")
    recorded = dict(settings["zeroth_order"])
    recorded.update({k: v for k, v in options.items() if v is not None})
    config = ZerothOrderConfig(**{**recorded, "spsa": SPSAConfig(**recorded["spsa"])})
    method = method_config_from_dict(settings["method"], settings["method_config"], str(path))
    mi = settings["model_input"]
    model_input = ModelInput(**{**mi, "mean": tuple(mi["mean"]), "std": tuple(mi["std"])})
    record = settings.get("endpoint") or {}
    if api is None:
        if not record.get("url"):
            raise PGNError(f"{run} was trained through a Python endpoint; give it again (`api`)")
        api = record["url"]
    ep, record = _endpoint_of(api, record.get("kind", "pgn"), {**record.get("options", {}), "mean": model_input.mean,
                                                                 "std": model_input.std})
    recipe = settings["data"]
    data = build_dataset(recipe["name"], img_size=model_input.img_size, mean=model_input.mean, std=model_input.std,
                         train_limit=recipe.get("train_limit"), test_limit=recipe.get("test_limit"),
                         seed=recipe.get("seed", 0), root=recipe.get("root"))
    row = train_zeroth_order(ep, data, method, model_input, run, config, init=settings.get("init"), resume=True,
                             endpoint_record=record, log_line=log or _main_log)
    return {"run": str(run), **row}


def _endpoint_of(api, kind: str, options: dict):
    """(the endpoint, how it was reached: what a resume from the command line reconnects with)."""
    from .client.endpoints import CallableEndpoint, Endpoint, endpoint

    if isinstance(api, Endpoint):
        return api, {"kind": api.kind, "url": api.url if isinstance(api.url, str) and "://" in api.url else None}
    if callable(api):
        return CallableEndpoint(api), {"kind": "callable", "url": None}
    if kind == "oip":
        keep = {k: options.get(k) for k in ("model", "input_name", "tensor_format", "output")}
        ep = endpoint(api, "oip", **keep, mean=options.get("mean"), std=options.get("std"), answers="scores",
                      timeout=options.get("timeout", 60))
        return ep, {"kind": "oip", "url": api, "options": keep}
    return endpoint(api, kind, timeout=options.get("timeout", 60)), {"kind": kind, "url": api}


def _model_input(ep, kind: str, mean, std, img_size, cell_size, batch: int):
    """The model's preprocessing: from ``pgn serve``'s /info, else as given (the protocol has no field for it)."""
    from .blackbox import ModelInput

    info = ep.client.info() if kind == "pgn" and getattr(ep, "client", None) is not None else None
    if info is not None:
        if "/classify" not in (info.get("endpoints") or []):
            raise PGNError(f"{ep.url} answers embeddings only; training through it reads the model's class scores "
                           "(serve a classifier)")
        max_batch = int(info.get("max_batch") or batch)
        if batch > max_batch:
            raise PGNError(f"`batch_size` {batch} is more than {ep.url} takes in one request ({max_batch}); a call "
                           "is one request: lower it")
        mi = ModelInput.from_pgn_serve(info, img_size, cell_size)
        if mean is not None or std is not None:
            mi = ModelInput(tuple(mean or mi.mean), tuple(std or mi.std), mi.img_size, mi.cell_size, mi.outputs,
                            mi.name)
        return mi
    missing = [n for n, v in (("mean", mean), ("std", std), ("img_size", img_size)) if v is None]
    if missing:
        raise PGNError(f"{getattr(ep, 'url', '') or 'this endpoint'} does not publish the model's preprocessing; give "
                       f"{', '.join(f'`{m}`' for m in missing)} (and `cell_size`, the prompt cells' side)")
    return ModelInput(tuple(mean), tuple(std), int(img_size), int(cell_size or 16),
                      name=f"oip:{ep.model}" if getattr(ep, "model", None) else "api")
