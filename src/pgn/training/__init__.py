"""Training and evaluation."""
from .evaluate import evaluate
from .schedule import warmup_cosine
from .trainer import TrainConfig, read_metrics, train

__all__ = ["TrainConfig", "evaluate", "read_metrics", "train", "warmup_cosine"]
