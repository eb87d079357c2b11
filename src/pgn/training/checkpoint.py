"""Per-epoch checkpoints written as one atomic unit, and the run files derived from them.

Layout of a run directory::

    config.json                      what was trained (written once, at the start)
    checkpoints/epoch-0007/          the last complete epoch, renamed into place in one step:
        adapter.safetensors            trainable weights (+ BatchNorm statistics)
        adapter_config.json
        trainer_state.pt               optimizer, scheduler, RNG states, epoch
        metrics.json                   every epoch's metrics row so far
    adapter.safetensors              copies of the last checkpoint's adapter (``pgn eval RUN``)
    adapter_config.json
    metrics.jsonl                    rebuilt from the last checkpoint's rows

A checkpoint directory is first written under a temporary name and then renamed, so it is
either complete or absent: a process killed at any point leaves the previous epoch's
checkpoint intact. The top-level copies are derived and repaired on the next start
(:func:`repair`), so ``metrics.jsonl`` always matches the checkpoint a resume continues from.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import PGNError
from ..files import atomic_path, remove_stale_temp_files, save_tensors

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
ROWS_FILE = "metrics.json"
METRICS_FILE = "metrics.jsonl"
ADAPTER_FILES = ("adapter.safetensors", "adapter_config.json")


def _name(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory of ``run_dir``, or None.

    A run written before checkpoints were directories (``trainer_state.pt`` beside the adapter)
    counts as its own checkpoint.
    """
    run_dir = Path(run_dir)
    found = sorted(p for p in (run_dir / CHECKPOINTS).glob("epoch-*") if p.is_dir() and not p.name.endswith(".tmp")
                   and is_complete(p))  # an empty or partly deleted epoch folder is not a checkpoint
    if found:
        return found[-1]
    return run_dir if (run_dir / STATE_FILE).is_file() else None


def is_complete(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` holds every file a checkpoint is written with."""
    return all((checkpoint / name).is_file() for name in (*ADAPTER_FILES, STATE_FILE))


def adapter_source(directory: str | os.PathLike) -> Path:
    """Where the adapter of ``directory`` is: a run's newest complete checkpoint (the commit point: a run killed
    between a checkpoint and the copy of its adapter to the run's top level is read at that checkpoint, not at
    the epoch before), else ``directory`` itself (a saved adapter, an export)."""
    directory = Path(directory)
    if (directory / CHECKPOINTS).is_dir():
        latest = latest_checkpoint(directory)
        if latest is not None and (latest / ADAPTER_FILES[0]).is_file():
            return latest
    return directory


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl`` (none if it does not exist)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def checkpoint_rows(checkpoint: Path) -> list[dict]:
    """The metrics rows stored with a checkpoint (a legacy run: its ``metrics.jsonl``)."""
    path = checkpoint / ROWS_FILE
    if not path.is_file():
        return read_metrics(checkpoint)
    try:
        rows = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PGNError(f"{path} is not valid JSON ({e}); the checkpoint is damaged, start a new run") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise PGNError(f"{path} must hold a list of metrics rows, not {type(rows).__name__}; the checkpoint is "
                       "damaged, start a new run")
    return rows


def load_state(checkpoint: Path, map_location: str = "cpu") -> dict:
    path = checkpoint / STATE_FILE
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a foreign or damaged file: say which, never unpickle arbitrary objects
        raise PGNError(f"cannot read {path} ({str(e).splitlines()[0][:200]}); start a new run") from None
    missing = [k for k in ("optimizer", "scheduler", "epoch") if not isinstance(state, dict) or k not in state]
    if missing:
        what = type(state).__name__ if not isinstance(state, dict) else f"a dict without {missing[0]!r}"
        raise PGNError(f"{path} holds {what}, not a pgn trainer state; start a new run")
    return state


def save_checkpoint(run_dir: Path, epoch: int, write_adapter, state: dict, rows: list[dict]) -> Path:
    """Write epoch ``epoch``'s checkpoint atomically, then refresh the derived run files.

    ``write_adapter(directory)`` writes the adapter files into a directory; ``state`` is the
    trainer state (optimizer, scheduler, RNG, epoch); ``rows`` are all metrics rows so far.
    """
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / _name(epoch)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{_name(epoch)}.", suffix=".tmp"))
    try:
        write_adapter(tmp)
        save_tensors(state, tmp / STATE_FILE)  # a full disk is named as such
        (tmp / ROWS_FILE).write_text(json.dumps(rows))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700: ordinary permissions, like the run's other files
        if final.exists():  # left by an earlier attempt at this epoch that died after its rename
            shutil.rmtree(final)
        os.replace(tmp, final)  # the commit point: one rename of a complete directory
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    publish(run_dir, final)
    return final


def publish(run_dir: Path, checkpoint: Path) -> None:
    """Make the run's top-level adapter and ``metrics.jsonl`` those of ``checkpoint``; drop older checkpoints."""
    if checkpoint != run_dir:
        for name in ADAPTER_FILES:
            with atomic_path(run_dir / name) as tmp:
                shutil.copyfile(checkpoint / name, tmp)
    rows = checkpoint_rows(checkpoint)
    with atomic_path(run_dir / METRICS_FILE) as tmp:
        Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in rows))
    for old in (run_dir / CHECKPOINTS).glob("epoch-*"):
        if old.is_dir() and old.name < checkpoint.name and checkpoint != run_dir:
            shutil.rmtree(old, ignore_errors=True)


def repair(run_dir: Path) -> Path | None:
    """Remove what killed writers left (temp files and directories) and re-derive the run files from the
    newest complete checkpoint. Call only while holding the run's lock. Returns that checkpoint."""
    remove_stale_temp_files(run_dir)
    root = run_dir / CHECKPOINTS
    if root.is_dir():
        for stale in root.glob(".epoch-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        publish(run_dir, checkpoint)
    return checkpoint
