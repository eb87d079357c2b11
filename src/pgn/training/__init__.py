"""Training and evaluation."""
from .distributed import DistContext, init_distributed
from .evaluate import evaluate
from .schedule import warmup_cosine
from .trainer import TrainConfig, read_metrics, train

__all__ = ["DistContext", "TrainConfig", "evaluate", "init_distributed", "read_metrics", "train", "warmup_cosine"]
