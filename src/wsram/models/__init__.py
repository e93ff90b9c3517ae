"""Networks: the attention model (prediction network, inference network, VAR baseline) and
the convolutional baseline."""

from .cnn import ConvClassifier
from .ram import AttentionModel, Rollout

__all__ = ["AttentionModel", "ConvClassifier", "Rollout"]
