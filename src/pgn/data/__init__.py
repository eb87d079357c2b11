"""Image-classification datasets: ``build_dataset(name)`` -> :class:`DataSpec`.

Every dataset yields ``(image tensor (3, S, S) float normalised, label int)`` and exposes
``.targets`` (int labels). Known names: :data:`DATASETS`.
"""
from pgn.data.datasets import DATASETS, DataSpec, build_dataset, load_image
from pgn.data.transforms import eval_transform, train_transform

__all__ = ["DATASETS", "DataSpec", "build_dataset", "load_image", "eval_transform", "train_transform"]
