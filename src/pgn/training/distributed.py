"""Data-parallel training across processes (``torchrun``), with PyTorch's own machinery.

``torchrun --nproc_per_node=N -m pgn train ...`` starts N copies of ``pgn train``; torchrun
sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` and :func:`init_distributed` joins them
into one process group: NCCL when training on CUDA (one GPU per process, ``cuda:LOCAL_RANK``),
gloo on CPU. Every collective has a timeout (``PGN_DIST_TIMEOUT`` seconds, default 120), so a
dead peer ends the job with an error instead of hanging it.

With one process (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``) everything here is a no-op.

:class:`DataParallelModel` wraps the network a run trains in one ``DistributedDataParallel``
(which synchronises only what requires grad, never the frozen backbone) and converts the prompt
generator's BatchNorm to ``SyncBatchNorm``, so N processes with batch B train exactly like one with
batch N*B.
"""
from __future__ import annotations

import atexit
import gc
import importlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..errors import PGNError

TIMEOUT_ENV = "PGN_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, draws progress bars and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # What the training loop asks of the job. With one process each is nothing: the input comes back
    # as it went in, so the loop reads the same either way and never branches on the process count.

    def shard(self, dataset):
        """This rank's evaluation samples, ``r, r + W, ...`` without padding (every sample counted once)."""
        if not self.distributed:
            return dataset
        from torch.utils.data import Subset

        return Subset(dataset, range(self.rank, len(dataset), self.world_size))

    def sum(self, values: list) -> list:
        """``values`` (numbers) summed over the ranks in float64; the values themselves with one process."""
        if not self.distributed:
            return list(values)
        return all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=self.device)).tolist()

    def mean(self, stats: dict[str, float]) -> dict[str, float]:
        """Each of ``stats`` averaged over the ranks (the same keys on every rank)."""
        if not self.distributed or not stats:
            return stats
        keys = sorted(stats)
        return {k: v / self.world_size for k, v in zip(keys, self.sum([stats[k] for k in keys]))}

    def sampler(self, dataset, seed: int):
        """The training order: one seeded permutation per epoch (``set_epoch``), of which rank r takes
        ``perm[r], perm[r + W], ...`` padded by repetition so that every rank takes the same number of steps.
        With one process, the shuffle ``DataLoader(shuffle=True)`` draws, from ``seed + epoch``."""
        if not self.distributed:
            return EpochShuffle(dataset, seed)
        from torch.utils.data import DistributedSampler

        return DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed,
                                  drop_last=False)

    def seed_ranks(self, seed: int) -> None:
        """Different random streams per rank (augmentation) once the weights agree; nothing with one process."""
        if self.distributed:
            from .config import seed_everything

            seed_everything(seed + self.rank)

    @classmethod
    def from_env(cls, device_pref: str = "cpu") -> DistContext:
        """The context torchrun's ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` describe (one process without them)."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as e:
            raise PGNError(f"RANK/LOCAL_RANK/WORLD_SIZE must be integers ({e}); launch with torchrun") from e
        if world <= 1:
            return cls(device=device_pref)
        if not 0 <= rank < world:
            raise PGNError(f"RANK {rank} is outside WORLD_SIZE {world}; launch with torchrun")
        device = device_pref
        if device_pref.startswith("cuda"):
            count = torch.cuda.device_count()
            if local >= count:
                raise PGNError(f"LOCAL_RANK {local} needs a GPU, but this node has {count}; "
                               f"start torchrun with --nproc_per_node {count} or fewer")
            device = f"cuda:{local}"  # one GPU per process
        return cls(rank=rank, local_rank=local, world_size=world, device=device)


class EpochShuffle(torch.utils.data.RandomSampler):
    """A one-process shuffle drawn afresh from ``seed + epoch`` at each ``set_epoch`` (as DistributedSampler's
    is), so a resumed run sees the same order. Its ``generator`` is also the loader's: it seeds the workers."""

    def __init__(self, dataset, seed: int):
        super().__init__(dataset, generator=torch.Generator().manual_seed(seed))
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


def timeout_seconds() -> float:
    """Collective timeout: ``PGN_DIST_TIMEOUT`` seconds, default 120."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise PGNError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def init_distributed(device_pref: str = "cpu") -> DistContext:
    """Join the process group torchrun describes; a plain :class:`DistContext` for one process.

    Backend NCCL on CUDA (device ``cuda:LOCAL_RANK``), gloo on CPU. The group is created
    once per process and ended at exit (or by :func:`cleanup`); later calls, and a group
    the caller made itself, reuse the existing one.
    """
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        if world <= 1:
            return DistContext(device=device_pref)
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
        device = f"cuda:{local}" if device_pref.startswith("cuda") else device_pref
        return DistContext(rank=rank, local_rank=local, world_size=world, device=device)
    ctx = DistContext.from_env(device_pref)
    if not ctx.distributed:
        return ctx
    if not dist.is_available():
        raise PGNError("this PyTorch build has no torch.distributed; run a single process")
    # DistributedDataParallel imports torch.distributed.nn.functional, whose functions take
    # ``group=group.WORLD`` as a default argument: imported after the group exists, they hold
    # it for good, destroy_process_group cannot free it, and freeing it at interpreter exit
    # can abort a finished process ("terminate called without an active exception", gloo).
    # Imported before, the defaults are None.
    importlib.import_module("torch.distributed.nn.functional")

    cuda = ctx.device.startswith("cuda")
    kwargs = {}
    if cuda:
        torch.cuda.set_device(ctx.local_rank)
        kwargs["device_id"] = torch.device(ctx.device)
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_seconds()),
                            rank=ctx.rank, world_size=ctx.world_size, **kwargs)
    # The group lives as long as the process: under torchrun it cannot be created a second time.
    atexit.register(cleanup)
    return ctx


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place; returns it (unchanged with one process)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every process's ``tensor`` (same shape on all), in rank order."""
    if not _active():
        return [tensor]
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor.contiguous())
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` (any picklable object), on every process."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj) -> list:
    """Every process's ``obj``, in rank order (on every process)."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if _active():
        dist.barrier()


def cleanup() -> None:
    """End the process group (registered to run at exit by :func:`init_distributed`)."""
    if dist.is_available() and dist.is_initialized():
        # A training stopped by an exception (a NaN loss, say) leaves its frames, and the DDP
        # wrappers in them, in reference cycles. Collected after the group is destroyed, a gloo
        # wrapper aborts the finished process ("terminate called without an active exception"):
        # collect them while the group still exists.
        gc.collect()
        dist.destroy_process_group()


# --------------------------------------------------------------------------- SyncBatchNorm on CPU

class _AllReduceSum(torch.autograd.Function):
    """Sum over processes, differentiable: the gradient of a sum of per-process copies is their sum too.

    Used only for BatchNorm statistics (as ``SyncBatchNorm`` does); parameter gradients are
    averaged by ``DistributedDataParallel``.
    """

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


class _CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """What a ``SyncBatchNorm`` layer becomes on CPU (gloo).

    PyTorch's ``SyncBatchNorm`` runs only on GPUs (its forward and DDP both refuse CPU
    modules). This computes the same thing: batch mean and (biased) variance over the union
    of every process's batch, through a differentiable all-reduce of the per-channel sums
    (its backward all-reduces their gradients), so the backward pass is that of one big
    batch, as with ``SyncBatchNorm``. Running statistics are updated exactly as
    ``BatchNorm`` does (unbiased variance, momentum). In eval mode or without a process
    group it is plain ``BatchNorm``. It has the attributes of the ``SyncBatchNorm`` it is
    made from (a ``_BatchNorm`` plus ``process_group``).
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        group = getattr(self, "process_group", None) or (dist.group.WORLD if dist.is_initialized() else None)
        if not (self.training and group is not None and dist.get_world_size(group) > 1):
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        x = input.float()
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), x.new_tensor([x.numel() // c])]), group)
        count = totals[c].detach()
        mean = totals[:c] / count
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims), group) / count
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                n = float(count)
                unbiased = var * (n / max(n - 1.0, 1.0))
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return y.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: str = "cuda"):
    """Swap every BatchNorm inside ``module`` (in place) for ``SyncBatchNorm``; returns a function undoing it.

    Uses ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, which shares the parameters and
    running-statistics buffers with the original layers, so restoring the originals keeps
    everything trained. On CPU the converted layers become :class:`_CPUSyncBatchNorm`.
    """
    originals = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
                 if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm)]
    if not originals:
        return lambda: None
    nn.SyncBatchNorm.convert_sync_batchnorm(module)  # replaces the children of ``module`` in place
    if device.split(":")[0] == "cpu":
        for parent, name, _ in originals:
            getattr(parent, name).__class__ = _CPUSyncBatchNorm  # same attributes; a forward that runs on CPU

    def restore() -> None:
        for parent, name, original in originals:
            original.train(getattr(parent, name).training)
            setattr(parent, name, original)

    return restore


# --------------------------------------------------------------------------- DDP for the trainable parts

class DataParallelModel:
    """One ``DistributedDataParallel`` around the network a run trains; nothing with one process.

    ``net`` is the classifier itself, or its head alone when the frozen features are cached.
    DDP synchronises only parameters that require grad, so the frozen backbone inside the
    wrapper costs no communication. While training, the prompt generator's and the head's
    BatchNorm become ``SyncBatchNorm`` (they see the global batch); :meth:`close` restores them
    and drops the wrapper, so what is saved and returned is free of DDP.
    """

    def __init__(self, net: nn.Module, model: nn.Module, ctx: DistContext):
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.net = net
        self.forward: nn.Module = net  # what the training step calls
        self._restore_bn = lambda: None
        if not ctx.distributed:
            return
        restores = [convert_sync_batchnorm(part, ctx.device) for part in (getattr(model, "prompts", None), model.head)
                    if part is not None]
        self._restore_bn = lambda: [restore() for restore in restores]
        if any(p.requires_grad for p in net.parameters()):
            # DDP broadcasts rank 0's parameters and buffers here, so all ranks start identical.
            self.forward = DDP(net, device_ids=[ctx.local_rank] if ctx.device.startswith("cuda") else None)

    @property
    def synchronised(self) -> list[str]:
        """The top-level parts whose gradients DDP averages (for tests and logs)."""
        if self.forward is self.net:
            return []
        # A classifier's parts by the names an adapter saves them under (its input adapter's prompts, head...).
        from ..model import PromptedClassifier

        parts = (self.net.trainable_modules().items() if isinstance(self.net, PromptedClassifier)
                 else self.net.named_children())
        return sorted(name for name, part in parts if any(p.requires_grad for p in part.parameters()))

    def close(self) -> None:
        # Drop the DDP wrapper now: it holds the process group, which must not outlive
        # destroy_process_group (a gloo group freed at interpreter exit can abort the process).
        self.forward = self.net
        self._restore_bn()
        self._restore_bn = lambda: None
