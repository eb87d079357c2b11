"""One readable training loop for every registered method (:mod:`pgn.methods`; zero-shot trains nothing).

What a run directory holds once an epoch has finished (:mod:`pgn.training.checkpoint` has it in full):
``config.json`` (what was trained, written once at the start: :mod:`pgn.training.run_dir`); one
``checkpoints/epoch-NNNN/``, the last complete epoch (``adapter.safetensors``, ``adapter_config.json``,
``trainer_state.pt``, ``metrics.json``), renamed into place in one step, older ones removed; top-level
copies of its adapter (``adapter.safetensors``, ``adapter_config.json``: what ``pgn eval RUN`` loads) and
of its rows (``metrics.jsonl``); and :mod:`pgn.files`' ownership marker ``.pgn-run`` and writer lock
``.pgn.lock``.

The same loop runs data-parallel under ``torchrun`` (see :mod:`pgn.training.distributed`
and ``docs/distributed.md``): ``train`` notices ``WORLD_SIZE > 1`` in the environment and
shards the data, syncs the generator's BatchNorm and wraps the trainable parts in DDP.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler, TensorDataset

from ..adapter_format import AdapterConfig
from ..data import DataSpec
from ..data.base import check_classes
from ..data.device import on_device
from ..devices import resolve_device
from ..errors import DivergedError, PGNError
from ..files import LOCK_FILE, check_owned, run_lock
from ..heads import LinearHead
from ..model import PromptedClassifier
from ..precision import autocast, resolve
from .checkpoint import latest_checkpoint, read_metrics, save_checkpoint
from .config import TrainConfig, seed_everything
from .distributed import (
    DataParallelModel,
    DistContext,
    all_gather,
    barrier,
    broadcast_object,
    init_distributed,
)
from .evaluate import SUMS, evaluation_sums, has_mixtures, metrics_of, mixture_ablation, topk_correct
from .monitor import OptimizerMonitor
from .optimizers import build_optimizer
from .progress import Progress
from .resume import restore, trainer_state
from .run_dir import check_run_dir, remove_new_run, run_fingerprint, write_run_config
from .schedule import warmup_cosine

logger = logging.getLogger(__name__)


@torch.inference_mode()
def _extract_features(model: PromptedClassifier, loader, device: str, precision: str, progress: bool,
                      desc: str) -> TensorDataset:
    feats, labels = [], []
    for images, y in Progress(loader, desc, progress):
        with autocast(device, precision):
            feats.append(model.backbone(images.to(device)).float())
        labels.append(y.to(device))
    return TensorDataset(torch.cat(feats), torch.cat(labels))


def _gather_features(model: PromptedClassifier, data: DataSpec, cfg: TrainConfig, ctx: DistContext,
                     progress: bool) -> TensorDataset:
    """Frozen features of all of ``data.train`` on every process, each process computing one shard of them."""
    ds = data.train
    # Without shuffling, rank r's shard is positions r, r + W, ... of the dataset padded (by repeating
    # its first samples) to a multiple of W, so stacking the shards rank-minor restores the order.
    sampler = DistributedSampler(ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False, drop_last=False)
    loader = on_device(DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers),
                       data, ctx.device)
    feats, labels = _extract_features(model, loader, ctx.device, cfg.precision, progress, "features train").tensors
    feats = torch.stack(all_gather(feats), dim=1).flatten(0, 1)[:len(ds)]
    labels = torch.stack(all_gather(labels), dim=1).flatten(0, 1)[:len(ds)]
    return TensorDataset(feats, labels)


def _eval_loader(ds, cfg: TrainConfig) -> DataLoader:
    """In order; evaluation draws nothing random, so its workers may live from epoch to epoch.

    Its own generator: each iterator draws its workers' base seed, which without one comes from the global
    torch RNG that augmentation also draws from, so how often the test split is scored would change the crops.
    """
    return DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                      persistent_workers=cfg.num_workers > 0, generator=torch.Generator().manual_seed(0))


def evaluates(cfg: TrainConfig, epoch: int) -> bool:
    """Whether the test split is scored after ``epoch`` (0-based): every ``eval_every``-th and the last."""
    return epoch + 1 == cfg.epochs or (cfg.eval_every > 0 and (epoch + 1) % cfg.eval_every == 0)


def _quiet(*args, **kwargs) -> None:
    pass


def run_training(model: PromptedClassifier, adapter_cfg: AdapterConfig, data: DataSpec, cfg: TrainConfig,
          run_dir: str | Path, resume: bool = False, log=None) -> dict:
    """Train ``model``'s prompts and head on ``data.train``; evaluate on ``data.test`` every
    ``cfg.eval_every`` epochs and after the last (an epoch's metrics row then has no ``test_*`` keys).

    Writes into ``run_dir`` the layout of this module's docstring: ``config.json``, a checkpoint
    after every epoch (the adapter, ``trainer_state.pt`` for ``resume``, the rows so far) and the
    top-level adapter and ``metrics.jsonl`` (one JSON row per epoch) copied from it.
    Returns the last epoch's metrics row.

    Under ``torchrun`` (``WORLD_SIZE > 1``) this is one of ``WORLD_SIZE`` data-parallel
    processes: ``cfg.batch_size`` is per process, metrics are over the whole test set,
    and only rank 0 logs and writes files (the others ignore ``run_dir``). Every rank
    returns the same row; ``model`` comes back free of DDP wrappers and SyncBatchNorm.
    """
    # Joins the process group on the first call; it then lives as long as the process (a group
    # cannot be re-created in the same torchrun job), so ``train`` can be called again.
    cfg = dataclasses.replace(cfg, device=resolve_device(cfg.device))
    ctx = init_distributed(cfg.device)
    check_classes(data)
    run_dir = Path(run_dir)
    with ExitStack() as stack:
        # One writer per run directory: rank 0 holds an OS lock for the whole run.
        problem = None
        if ctx.is_main:
            try:
                check_owned(run_dir)  # before the lock creates anything in it
                stack.enter_context(run_lock(run_dir))
            except PGNError as e:
                problem = str(e)
        problem = broadcast_object(problem)
        if problem:
            raise PGNError(problem)
        new = ctx.is_main and not resume and not any(p.name not in (LOCK_FILE,) for p in run_dir.iterdir())
        try:
            return _train(model, adapter_cfg, data, cfg, run_dir, resume, log or logger.info, ctx)
        except Exception:
            if new and latest_checkpoint(run_dir) is None:
                remove_new_run(run_dir)  # a run that failed before its first epoch leaves nothing behind
            raise


def _train(model: PromptedClassifier, adapter_cfg: AdapterConfig, data: DataSpec, cfg: TrainConfig, run_dir: Path,
           resume: bool, log, ctx: DistContext) -> dict:
    """The loop: prepare, then per epoch train, evaluate, log, checkpoint (helpers below, in that order)."""
    main, world = ctx.is_main, ctx.world_size
    log = log if main else _quiet
    progress = cfg.progress and main
    check_run_dir(run_dir, resume, ctx)
    # "auto" becomes what runs on this device, once; config.json records the answer.
    cfg = dataclasses.replace(cfg, precision=resolve(cfg.precision, ctx.device))
    seed_everything(cfg.seed)  # the same on every rank
    model.to(ctx.device)
    if not resume:  # a frozen classifier's frequency label mapping, from the model as built (a resumed run has it)
        from .label_map import fit_label_map

        fit_label_map(model, data.train, cfg.batch_size, ctx.device, cfg.precision, data.device_transform)
    batches = _prepare_data(model, data, cfg, ctx, progress)
    cfg = batches.cfg
    scale = cfg.lr_scale(world)
    optimizer = build_optimizer(model, cfg, scale)
    steps_per_epoch = len(batches.train)  # per process
    scheduler = warmup_cosine(optimizer, cfg.epochs * steps_per_epoch,
                              round(cfg.warmup * steps_per_epoch), cfg.final_lr_ratio)
    if ctx.distributed:
        log(_lr_rule(cfg, world, optimizer))
    start_epoch, rows = restore(model, optimizer, scheduler, run_dir, cfg, ctx, log) if resume else (0, [])
    if main:
        write_run_config(run_dir, model, adapter_cfg, data, cfg, ctx, batches.augment, scale)
    fingerprint = run_fingerprint(run_dir) if main else None  # only the main process writes checkpoints
    barrier()

    if not resume and cfg.head_init == "zero" and isinstance(model.head, LinearHead):
        nn.init.zeros_(model.head.fc.weight)  # an ablation: no gradient reaches the features at step 0
        nn.init.zeros_(model.head.fc.bias)
    monitor = OptimizerMonitor(optimizer, model.prompts)
    parts = DataParallelModel(batches.net, model, ctx)  # one DDP wrapper + SyncBatchNorm; nothing with one process
    if not resume:
        ctx.seed_ranks(cfg.seed)  # weights are identical by now; augmentation differs per rank
    # The last epoch: would the same library, with every image given the mean (or another image's)
    # mixture, do as well? Measured on the whole test split, so in a one-process run.
    ablate_after = cfg.epochs if has_mixtures(model) and not ctx.distributed else None
    row: dict = {}
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            seen, loss_sum, correct = _train_epoch(model, batches, parts, optimizer, scheduler, monitor, cfg, ctx,
                                                   epoch, run_dir, progress)
            train_time = time.perf_counter() - t0
            _check_weights_finite(model, epoch, run_dir)  # before anything of this epoch is evaluated or saved
            row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_top1": correct / seen}
            if evaluates(cfg, epoch):
                test = _evaluate(batches.net, batches.test, batches.n_test, cfg, ctx, progress)
                row.update({"test_loss": test["loss"], "test_top1": test["top1"], "test_top5": test["top5"]})
            row.update({"lr": optimizer.param_groups[-1]["lr"], "train_seconds": round(train_time, 2),
                        "train_images_per_s": round(seen / train_time, 2), **_monitor_stats(monitor, ctx)})
            if batches.use_cache:
                row["features_cached"] = True  # images/s counts the head alone
            if epoch + 1 == ablate_after:
                # The drop from top-1 is what the prompts' input dependence adds.
                ablation = mixture_ablation(model, batches.test, ctx.device, cfg.precision, seed=cfg.seed)
                row.update({f"test_{k}": v for k, v in ablation.items()})
            top5 = f" top5 {row['test_top5']:.4f}" if len(data.class_names) > 5 and "test_top5" in row else ""
            test = f"test loss {row['test_loss']:.4f} top1 {row['test_top1']:.4f}{top5}" if "test_top1" in row \
                else "test not scored this epoch"
            log(f"epoch {epoch + 1}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_top1']:.4f}  "
                f"{test}  ({train_time:.0f}s)")
            rows.append(row)
            state = trainer_state(optimizer, scheduler, epoch, ctx, fingerprint)
            if main:
                # Weights, trainer state and every metrics row so far, as one directory renamed into place.
                save_checkpoint(run_dir, epoch + 1, lambda d: model.save_pretrained(d), state, rows)
            barrier()  # the files of this epoch are complete before any rank goes on
    finally:
        parts.close()  # no DDP, BatchNorm again: the model that is returned is plain
    if not row:  # resumed a finished run
        rows = read_metrics(run_dir) if main else []
        row = broadcast_object(rows[-1] if rows else {})
    return row


@dataclass
class _Batches:
    """What the loop iterates: the trained network's input, loaders, and how the data was prepared."""

    net: nn.Module        # the model, or its head alone when the frozen features are cached
    train: DataLoader
    test: DataLoader
    sampler: Sampler       # the epoch order: set_epoch(epoch) before each pass (DistContext.sampler)
    n_test: int           # test samples of this rank
    use_cache: bool
    augment: bool
    cfg: TrainConfig      # num_workers is 0 when features are cached


def _prepare_data(model: PromptedClassifier, data: DataSpec, cfg: TrainConfig, ctx: DistContext,
                  progress: bool) -> _Batches:
    frozen_features = model.prompts is None and model.input_prompt is None and not model.finetune
    augment = getattr(data, "augmented", False)  # the dataset decides (DataSpec.augmented)
    use_cache = frozen_features and not augment and cfg.cache_features
    # Evaluation is sharded without padding (rank r takes test samples r, r + W, ...), so every
    # test sample is counted exactly once; the sums are added up over the ranks.
    test_set = ctx.shard(data.test)
    n_test = len(test_set)
    train_set = data.train
    if use_cache:
        # Linear probe: the frozen features never change, so compute them once.
        train_set = _gather_features(model, data, cfg, ctx, progress)
        if n_test:  # a rank may hold no test sample
            test_set = _extract_features(model, on_device(_eval_loader(test_set, cfg), data, ctx.device), ctx.device,
                                         cfg.precision, progress, "features test")
        # Features already sit on the device: worker processes could neither use nor speed them.
        cfg = dataclasses.replace(cfg, num_workers=0)
    sampler = ctx.sampler(train_set, cfg.seed)
    # The workers' base seed (their augmentation RNGs) is drawn by each epoch's iterator: from the shuffle's
    # generator with one process (re-seeded by set_epoch), from the checkpointed per-rank torch RNG with
    # several. So training workers start afresh every epoch (not persistent): persistent workers would carry
    # RNG states from epoch to epoch that no checkpoint holds, and a resumed augmented run would draw other crops.
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler,
                              generator=getattr(sampler, "generator", None), num_workers=cfg.num_workers,
                              persistent_workers=False)
    test_loader = _eval_loader(test_set, cfg)
    if not use_cache:  # stored pixels become the backbone's input on the device (cached features already are)
        train_loader, test_loader = on_device(train_loader, data, ctx.device), on_device(test_loader, data, ctx.device)
    return _Batches(net=model.head if use_cache else model, train=train_loader,
                    test=test_loader, sampler=sampler, n_test=n_test,
                    use_cache=use_cache, augment=augment, cfg=cfg)


def _train_epoch(model: PromptedClassifier, batches: _Batches, parts: DataParallelModel, optimizer, scheduler,
                 monitor: OptimizerMonitor, cfg: TrainConfig, ctx: DistContext, epoch: int, run_dir: Path,
                 progress: bool) -> tuple[int, float, int]:
    """One pass over the training data; (images seen, summed loss, correct top-1), summed over ranks."""
    device = ctx.device
    batches.net.train()
    batches.sampler.set_epoch(epoch)  # this epoch's order, from the seed and the epoch alone
    seen = correct = 0
    loss_sum = 0.0
    # disable=None: tqdm draws bars on a terminal and stays quiet in a redirected log.
    bar = Progress(batches.train, f"epoch {epoch + 1}/{cfg.epochs}", progress)
    # A head may define its own loss (pgn.multi: each sample sees only its dataset's classes).
    loss_fn = getattr(model.head, "loss", None) or F.cross_entropy
    forward = parts.forward  # the DDP wrapper, when distributed
    for step, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, cfg.precision):
            logits = forward(x)
        loss = loss_fn(logits.float(), y)
        _check_finite(loss, ctx, epoch, step, run_dir)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        monitor.before_step()  # gradient norms as computed, before any clipping
        if cfg.grad_clip:
            total = torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                                   cfg.grad_clip)
            monitor.clipped(total, cfg.grad_clip)
        optimizer.step()
        monitor.after_step()
        scheduler.step()
        seen += y.numel()
        loss_sum += loss.item() * y.numel()
        correct += topk_correct(logits.detach().float(), y, 1)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                        lr=f"{optimizer.param_groups[-1]['lr']:.3g}")
    seen, loss_sum, correct = ctx.sum([seen, loss_sum, correct])  # over the ranks
    return int(seen), float(loss_sum), int(correct)


def _monitor_stats(monitor: OptimizerMonitor, ctx: DistContext) -> dict:
    """The epoch's optimiser statistics, to 5 significant digits; mixture statistics averaged over ranks."""
    stats = ctx.mean(monitor.epoch_summary())  # gradients already agree across ranks; mixtures are per rank
    return {k: float(f"{v:.5g}") for k, v in stats.items()}


def _lr_rule(cfg: TrainConfig, world: int, optimizer: torch.optim.Optimizer) -> str:
    """One line stating the batch and learning-rate rule of a data-parallel run."""
    lrs = {g.get("name", ""): g.get("initial_lr", g["lr"]) for g in optimizer.param_groups}  # before warm-up
    base = cfg.lr * cfg.lr_scale(world)
    lr = f"lr {base:g}" + (f" = {cfg.lr:g} x {world}" if cfg.lr_scaling == "linear" else "")
    others = ", ".join(f"{name} lr {value:g}" for name, value in lrs.items() if value != base)
    return (f"global batch {world * cfg.batch_size} = {world} x {cfg.batch_size}; {lr}"
            f"{'; ' + others if others else ''} (scaling: {cfg.lr_scaling})")


def _check_finite(loss: torch.Tensor, ctx: DistContext, epoch: int, step: int, run_dir: Path) -> None:
    """Stop on a NaN/inf loss; with several processes all stop together (the check is an all-reduce)."""
    # ``epoch`` is 0-based: epochs 1..epoch are finished and the newest of them is checkpointed.
    if epoch > 0:
        kept = f"the checkpoint of epoch {epoch} in {run_dir} is kept"
    else:
        kept = "no epoch had finished, so no checkpoint was written"
    hint = f"{kept}; lower the learning rate or set a gradient clip (`lr`, `grad_clip`)"
    (total,) = ctx.sum([loss.item()])  # non-finite as soon as one rank's loss is
    if not math.isfinite(total):
        where = f" (on at least one of {ctx.world_size} processes)" if ctx.distributed else ""
        raise DivergedError(f"loss became {total} at epoch {epoch + 1} step {step + 1}{where}; {hint}")


def _check_weights_finite(model: PromptedClassifier, epoch: int, run_dir: Path) -> None:
    """Stop when a trained weight or buffer (BatchNorm's running statistics too) is no longer finite.

    A loss can stay finite while a running variance overflows; an adapter holding ``inf`` then answers one
    class for every image. Every rank holds the same weights, so each checks its own copy.
    """
    for name, tensor in model.trainable_modules().state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            kept = (f"the checkpoint of epoch {epoch} in {run_dir} is kept" if epoch > 0
                    else "no epoch had finished, so no checkpoint was written")
            raise DivergedError(f"training diverged in epoch {epoch + 1}: {name} holds non-finite values; {kept}; "
                                "lower the learning rate or set a gradient clip")


def _evaluate(net, loader, n_local: int, cfg: TrainConfig, ctx: DistContext, progress: bool) -> dict:
    """Test metrics over the whole test set: every rank's sums over its shard, added up, then divided."""
    sums = (evaluation_sums(net, loader, ctx.device, cfg.precision, progress, desc="test") if n_local
            else dict.fromkeys(SUMS, 0))
    return metrics_of(dict(zip(SUMS, ctx.sum([sums[k] for k in SUMS]))))
