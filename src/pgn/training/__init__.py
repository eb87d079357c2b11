"""Training and evaluation."""
from .config import TrainConfig
from .distributed import DistContext, init_distributed
from .evaluate import evaluate
from .label_map import fit_label_map
from .schedule import warmup_cosine
from .trainer import read_metrics, train

__all__ = ["DistContext", "TrainConfig", "evaluate", "fit_label_map", "init_distributed", "read_metrics", "train", "warmup_cosine"]
