"""Progress bars over data loaders that open one iterator, not two.

``tqdm.auto``'s bar (``tqdm_asyncio``) calls ``iter()`` on what it wraps when it is made, and iterates it
again when it is read. Over a DataLoader that is a second iterator per epoch: with worker processes, a second
set of workers that start, prefetch ``prefetch_factor`` batches each that nobody reads, and live as long as
the bar. :class:`Progress` draws the bar itself and iterates the loader once.

That first iterator also drew the workers' base seed from the loader's generator (the shuffle's) or, where a
loader has none, from torch's global RNG, and the shuffle and augmentation that followed depended on it.
:func:`spend_unused_draw` makes that one draw still, so every run recorded before this change (docs/records,
the README's figures: all single-process, without workers) keeps its data order bit for bit. With workers the
old second iterator also drew the shuffle's permutation while prefetching; such runs now see another order.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm


def spend_unused_draw(loader) -> None:
    """The one random draw that the unused iterator of ``tqdm.auto`` made (see the module docstring)."""
    inner = getattr(loader, "loader", loader)  # a DeviceLoader's DataLoader
    if isinstance(inner, DataLoader):
        torch.empty((), dtype=torch.int64).random_(generator=inner.generator)


class Progress:
    """``for batch in Progress(loader, "epoch 1/10", enabled)``: one pass over ``loader`` with a bar that
    shows on a terminal only (``disable=None``) and not at all when ``enabled`` is False."""

    def __init__(self, loader, desc: str, enabled: bool, leave: bool = False):
        spend_unused_draw(loader)
        self.loader = loader
        try:
            total = len(loader)
        except TypeError:  # an iterable-style dataset: a bar without an end
            total = None
        self.bar = tqdm(total=total, desc=desc, leave=leave, disable=None if enabled else True, dynamic_ncols=True)

    def __iter__(self):
        try:
            for item in self.loader:
                yield item
                self.bar.update()
        finally:
            self.bar.close()

    def set_postfix(self, **values) -> None:
        self.bar.set_postfix(**values)
