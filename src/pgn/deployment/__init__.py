"""Input-space deployment: export a trained adapter so a client can turn any image into a
prompted canvas for an unmodified model (no backbone code needed), and apply the head
to the embedding the model returns."""
from .deployable import DEPLOY_CONFIG, DEPLOY_WEIGHTS, Composer, export_adapter
from .remote import RemoteClassifier

__all__ = ["DEPLOY_CONFIG", "DEPLOY_WEIGHTS", "Composer", "RemoteClassifier", "export_adapter"]
