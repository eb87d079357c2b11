"""One readable training loop for every method (PGN, IIP, linear probe)."""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from ..adapter import AdapterConfig, load_adapter, save_adapter
from ..data import DataSpec
from ..errors import PGNError
from ..files import atomic_path, write_json
from ..model import PromptedClassifier
from .evaluate import evaluate, topk_correct
from .schedule import warmup_cosine

STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainConfig:
    """Optimisation settings. Defaults suit a short CPU run; ``--preset paper`` gives the paper's."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 0.1                   # prompts (generator + library, or IIP vectors)
    head_lr: float | None = None      # linear head; defaults to ``lr``
    backbone_lr: float | None = None  # full fine-tuning only; defaults to ``lr``
    optimizer: str = "sgd"            # "sgd" (momentum 0.9, paper) or "adamw"
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_epochs: float = 1.0
    final_lr_ratio: float = 0.01      # cosine decays to lr * final_lr_ratio (paper: lr/100)
    grad_clip: float | None = 1.0     # max global grad norm; None disables
    bf16: bool = False                # bfloat16 autocast for the forward pass
    seed: int = 0
    num_workers: int = 0
    device: str = "cpu"
    progress: bool = True
    cache_features: bool = True       # linear probe on un-augmented data: run the frozen ViT once

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise PGNError(f"epochs and batch size must be >= 1 (got {self.epochs}, {self.batch_size})")
        if not (self.lr > 0) or (self.head_lr is not None and not self.head_lr > 0):
            raise PGNError(f"learning rates must be positive (got lr={self.lr}, head_lr={self.head_lr})")
        if self.optimizer not in ("sgd", "adamw"):
            raise PGNError(f"unknown optimizer {self.optimizer!r}; choose sgd or adamw")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _optimizer(model: PromptedClassifier, cfg: TrainConfig) -> torch.optim.Optimizer:
    lrs = {"head": cfg.head_lr or cfg.lr, "backbone": cfg.backbone_lr or cfg.lr}
    groups = []
    for name, module in model.trainable_modules().items():
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": lrs.get(name, cfg.lr), "name": name})
    if not groups:
        raise PGNError("nothing to train: this method has no trainable parameters (zero-shot needs only `pgn eval`)")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.inference_mode()
def _extract_features(model: PromptedClassifier, loader, cfg: TrainConfig, desc: str) -> TensorDataset:
    feats, labels = [], []
    for images, y in tqdm(loader, desc=desc, leave=False, disable=not cfg.progress, dynamic_ncols=True):
        with torch.autocast(device_type=cfg.device.split(":")[0], dtype=torch.bfloat16, enabled=cfg.bf16):
            feats.append(model.backbone(images.to(cfg.device)).float())
        labels.append(y.to(cfg.device))
    return TensorDataset(torch.cat(feats), torch.cat(labels))


def _loader(ds, cfg: TrainConfig, shuffle: bool) -> DataLoader:
    # The shuffle generator is re-seeded every epoch (seed + epoch) so a resumed run sees the same order.
    g = torch.Generator().manual_seed(cfg.seed) if shuffle else None
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=shuffle, generator=g,
                      num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)


def train(model: PromptedClassifier, adapter_cfg: AdapterConfig, data: DataSpec, cfg: TrainConfig,
          run_dir: str | Path, resume: bool = False, augment: bool = False, log=print) -> dict:
    """Train ``model``'s prompts and head on ``data.train``; evaluate on ``data.test`` every epoch.

    Writes into ``run_dir``: ``config.json``, ``metrics.jsonl`` (one JSON row per epoch),
    the adapter after every epoch and ``trainer_state.pt`` for ``resume``.
    Returns the last epoch's metrics row.
    """
    run_dir = Path(run_dir)
    state_path = run_dir / STATE_FILE
    start_epoch = 0
    if resume:
        if not state_path.is_file():
            raise PGNError(f"cannot resume: {state_path} does not exist (start a new run without --resume)")
    elif (run_dir / METRICS_FILE).exists():
        raise PGNError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    model.to(cfg.device)

    frozen_features = model.prompts is None and model.input_prompt is None and not model.finetune
    use_cache = frozen_features and not augment and cfg.cache_features
    if use_cache:
        # Linear probe: the frozen features never change, so compute them once.
        train_set = _extract_features(model, _loader(data.train, cfg, False), cfg, "features train")
        test_set = _extract_features(model, _loader(data.test, cfg, False), cfg, "features test")
        net = model.head
    else:
        train_set, test_set, net = data.train, data.test, model
    train_loader = _loader(train_set, cfg, shuffle=True)
    test_loader = _loader(test_set, cfg, shuffle=False)

    optimizer = _optimizer(model, cfg)
    steps_per_epoch = len(train_loader)
    scheduler = warmup_cosine(optimizer, cfg.epochs * steps_per_epoch,
                              round(cfg.warmup_epochs * steps_per_epoch), cfg.final_lr_ratio)
    if resume:
        state = torch.load(state_path, map_location=cfg.device, weights_only=True)
        loaded, _ = load_adapter(run_dir, backbone=model.backbone, map_location=cfg.device)
        model.trainable_modules().load_state_dict(loaded.trainable_modules().state_dict())
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch = int(state["epoch"]) + 1
        log(f"resuming {run_dir} at epoch {start_epoch + 1}/{cfg.epochs}")
    write_json(run_dir / "config.json", {
        "adapter": asdict(adapter_cfg), "train": asdict(cfg), "augment": augment,
        "dataset": {"name": data.name, "train_size": len(data.train), "test_size": len(data.test),
                    "num_classes": len(data.class_names)},
        "trainable_parameters": model.num_trainable(),
    })

    row: dict = {}
    device_type = cfg.device.split(":")[0]
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        train_loader.generator.manual_seed(cfg.seed + epoch)
        t0 = time.perf_counter()
        seen = correct = 0
        loss_sum = 0.0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress,
                   leave=False, dynamic_ncols=True)
        for step, (x, y) in enumerate(bar):
            x, y = x.to(cfg.device, non_blocking=True), y.to(cfg.device, non_blocking=True)
            with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y)
            if not torch.isfinite(loss):
                raise PGNError(
                    f"loss became {loss.item()} at epoch {epoch + 1} step {step + 1}; the last good checkpoint "
                    f"(epoch {epoch}) is kept in {run_dir}; lower --lr or set --grad-clip")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            seen += y.numel()
            loss_sum += loss.item() * y.numel()
            correct += topk_correct(logits.detach().float(), y, 1)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                            lr=f"{optimizer.param_groups[-1]['lr']:.3g}")
        train_time = time.perf_counter() - t0
        test = evaluate(net, test_loader, cfg.device, cfg.bf16, cfg.progress, desc="test")
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_top1": correct / seen,
               "test_loss": test["loss"], "test_top1": test["top1"], "test_top5": test["top5"],
               "lr": optimizer.param_groups[-1]["lr"], "train_seconds": round(train_time, 2),
               "train_images_per_s": round(seen / train_time, 2)}
        if use_cache:
            row["features_cached"] = True  # images/s counts the head alone
        top5 = f" top5 {row['test_top5']:.4f}" if len(data.class_names) > 5 else ""
        log(f"epoch {epoch + 1}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_top1']:.4f}  "
            f"test loss {row['test_loss']:.4f} top1 {row['test_top1']:.4f}{top5}  ({train_time:.0f}s)")
        # Checkpoint first, then the metrics row: a row in metrics.jsonl always has its checkpoint.
        save_adapter(model, adapter_cfg, run_dir)
        with atomic_path(state_path) as tmp:
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": torch.get_rng_state(), "epoch": epoch}, tmp)
        with open(run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
    if not row:  # resumed a finished run
        rows = read_metrics(run_dir)
        row = rows[-1] if rows else {}
    return row


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
