"""Image-classification datasets: ``build_dataset(name)`` -> :class:`DataSpec`.

Every dataset yields ``(image tensor (3, S, S) float normalised, label int)`` and exposes
``.targets`` (int labels). Known names: :data:`DATASETS`; the paper's 12 benchmarks
(:data:`PAPER_DATASETS`) are read from :func:`data_root` (docs/datasets.md).
"""
from pgn.data.datasets import DATASETS, DataSpec, build_dataset, load_image
from pgn.data.paper import PAPER_DATASETS, data_root
from pgn.data.transforms import eval_transform, train_transform

__all__ = ["DATASETS", "PAPER_DATASETS", "DataSpec", "build_dataset", "data_root", "eval_transform", "load_image",
           "train_transform"]
