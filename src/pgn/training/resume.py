"""What a resumed run needs, saved with every checkpoint and restored from the last one: the trained
weights, the optimizer and scheduler states, and every random generator (per rank under torchrun),
so that killed-and-resumed equals uninterrupted, bit for bit."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..errors import PGNError
from ..model import PromptedClassifier
from .checkpoint import checkpoint_rows, latest_checkpoint, load_state
from .config import TrainConfig, seed_everything
from .distributed import DistContext, broadcast_object, gather_objects


def restore(model: PromptedClassifier, optimizer, scheduler, run_dir: Path, cfg: TrainConfig, ctx: DistContext,
             log) -> tuple[int, list[dict]]:
    """Load the last checkpoint's weights, optimizer, scheduler and RNG states; (first epoch to run, rows so far)."""
    device, world = ctx.device, ctx.world_size
    if ctx.distributed:
        weights, state, rows = _load_resume_shared(model, run_dir, ctx)
    else:
        checkpoint = latest_checkpoint(run_dir)
        state = load_state(checkpoint, device)
        loaded = PromptedClassifier.from_pretrained(checkpoint, backbone=model.backbone, map_location=device)
        weights = loaded.trainable_modules().state_dict()
        rows = checkpoint_rows(checkpoint)
    from .run_dir import run_fingerprint

    recorded, current = state.get("run_fingerprint"), run_fingerprint(run_dir)
    if recorded is not None and current is not None and recorded != current:  # checkpoints before 0.2 hold none
        raise PGNError(f"cannot resume {run_dir}: its checkpoint was written by another run, or its config.json was "
                       "edited since (the model, data, seed or recipe differ); restore the run's own config.json, or "
                       "start a new run")
    model.trainable_modules().load_state_dict(weights)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as e:
        raise PGNError(f"cannot resume {run_dir}: its optimizer state does not fit this version's parameter "
                       f"groups ({e}); start a new run") from e
    scheduler.load_state_dict(state["scheduler"])
    start_epoch = int(state["epoch"]) + 1
    if ctx.distributed:
        trained_on = int(state.get("world_size", 1))
        per_rank = state.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == world:
            torch.set_rng_state(per_rank[ctx.rank])
        else:
            seed_everything(cfg.seed + ctx.rank + 1_000 * start_epoch)
        if trained_on != world:
            log(f"note: this run was trained on {trained_on} process(es) and resumes on {world}: the data order "
                f"and steps per epoch change, the learning rates stay those of the checkpoint")
    else:
        _set_rng(state)
    if start_epoch >= cfg.epochs:
        log(f"{run_dir} has finished all {start_epoch} of its epochs; nothing to train (ask for more epochs to "
            "extend it)")
    else:
        log(f"resuming {run_dir} at epoch {start_epoch + 1}/{cfg.epochs}")
    return start_epoch, rows


def trainer_state(optimizer, scheduler, epoch: int, ctx: DistContext, fingerprint: str | None = None) -> dict:
    """Optimizer, scheduler and RNG states after ``epoch`` (every rank's torch RNG when distributed), and the
    run's fingerprint (:func:`pgn.training.run_dir.run_fingerprint`), which ties the checkpoint to its run."""
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
             **_rng_states()}
    if fingerprint is not None:
        state["run_fingerprint"] = fingerprint
    if ctx.distributed:
        state["rng_per_rank"] = gather_objects(torch.get_rng_state())
        state["world_size"] = ctx.world_size
    return state


def _rng_states() -> dict:
    """Every random generator a training step may draw from (torch, Python, NumPy), in a weights-only form."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"rng": torch.get_rng_state(), "py_rng": random.getstate(),
            "np_rng": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                       float(cached)]}


def _set_rng(state: dict) -> None:
    torch.set_rng_state(state["rng"])
    if "py_rng" in state:  # checkpoints from before they were saved hold torch's alone
        version, internal, gauss = state["py_rng"]
        random.setstate((version, tuple(internal), gauss))
    if "np_rng" in state:
        name, keys, pos, has_gauss, cached = state["np_rng"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _load_resume_shared(model: PromptedClassifier, run_dir: Path, ctx: DistContext) -> tuple[dict, dict, list]:
    """Rank 0 reads the last checkpoint and sends it to every rank (no shared disk needed)."""
    payload = None
    if ctx.is_main:
        try:
            checkpoint = latest_checkpoint(run_dir)
            state = load_state(checkpoint)
            loaded = PromptedClassifier.from_pretrained(checkpoint, backbone=model.backbone, map_location="cpu")
            payload = {"weights": loaded.trainable_modules().state_dict(), "state": state,
                       "rows": checkpoint_rows(checkpoint)}
        except PGNError as e:
            payload = {"error": str(e)}
    payload = broadcast_object(payload)
    if "error" in payload:
        raise PGNError(payload["error"])
    return payload["weights"], payload["state"], payload["rows"]
