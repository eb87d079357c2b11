"""A run directory's lifecycle: refuse to start over a run or to resume nothing, record the run's config,
and remove what a new run wrote when it fails before its first epoch. (The writer lock and the ownership
marker are :mod:`pgn.files`; checkpoints are :mod:`pgn.training.checkpoint`.)"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..adapter_format import AdapterConfig
from ..data import DataSpec
from ..errors import PGNError
from ..files import LOCK_FILE, RUN_MARKER, mark_owned, write_json
from ..model import PromptedClassifier
from .checkpoint import METRICS_FILE, repair
from .config import TrainConfig
from .distributed import DistContext, broadcast_object


def remove_new_run(run_dir: Path) -> None:
    """Remove what a new run wrote before failing (config.json, the marker, the lock file; the folder if empty)."""
    for name in ("config.json", METRICS_FILE, RUN_MARKER, LOCK_FILE):
        (run_dir / name).unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        pass  # it holds something else: leave it


def check_run_dir(run_dir: Path, resume: bool, ctx: DistContext) -> None:
    """Refuse to start over a run, or to resume nothing; rank 0 looks and tells every rank."""
    problem = None
    if ctx.is_main:  # the others may not even share its disk
        # Under the lock: clear what a killed writer left and re-derive metrics.jsonl from the last checkpoint.
        checkpoint = repair(run_dir)
        if resume:
            if checkpoint is None:
                problem = (f"cannot resume: {run_dir} holds no finished epoch (no checkpoint); start a new run "
                           "instead (without `resume`)")
        elif checkpoint is not None or (run_dir / METRICS_FILE).exists():
            problem = (f"{run_dir} already holds a run; resume it (`resume`) or choose another "
                       "run directory")
    problem = broadcast_object(problem)
    if problem:
        raise PGNError(problem)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        mark_owned(run_dir)


def write_run_config(run_dir: Path, model: PromptedClassifier, adapter_cfg: AdapterConfig, data: DataSpec,
                      cfg: TrainConfig, ctx: DistContext, augment: bool, scale: int) -> None:
    config = {
        "adapter": adapter_cfg.to_dict(), "train": asdict(cfg), "augment": augment,
        "dataset": {"name": data.name, "train_size": len(data.train), "test_size": len(data.test),
                    "num_classes": len(data.class_names)},
        "data": data.recipe,  # how the data was built: a resumed run rebuilds the same images (pgn.api.resume)
        "trainable_parameters": model.num_trainable(),
    }
    if ctx.distributed:
        config["distributed"] = {"world_size": ctx.world_size, "global_batch_size": ctx.world_size * cfg.batch_size,
                                 "lr_scale": scale}
    write_json(run_dir / "config.json", config)


# What a resume may change (pgn.api.RESUMABLE, by the names config.json's "train" section uses) and what is
# plumbing of the machine: neither is part of what the run trains, so neither is in its fingerprint.
_NOT_THE_RUN = ("epochs", "device", "num_workers", "progress", "eval_every")


def run_fingerprint(run_dir: Path) -> str | None:
    """A hash of what ``run_dir``'s config.json says is trained (model, data, recipe, seed), without what a
    resume may change; saved with every checkpoint, so that a checkpoint is tied to its run. None: no config."""
    import hashlib
    import json

    path = Path(run_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    train = {k: v for k, v in (config.get("train") or {}).items() if k not in _NOT_THE_RUN}
    what = {"adapter": config.get("adapter"), "train": train, "data": config.get("data"),
            "augment": config.get("augment")}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def default_run_dir(method: str, dataset: str) -> Path:
    """Where a run goes when none is named: ``runs/<method>-<dataset>-<YYYYmmdd-HHMMSS>`` (the one rule of
    ``pgn.train`` and ``pgn train``); a dataset name's ``:`` and ``/`` (``folder:PATH``) become ``_``."""
    import time

    safe = dataset.replace(":", "_").replace("/", "_")
    return Path("runs") / f"{method}-{safe}-{time.strftime('%Y%m%d-%H%M%S')}"
