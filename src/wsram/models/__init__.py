"""Networks: the attention model (prediction network, inference network, VAR baseline)."""

from .ram import AttentionModel, Rollout

__all__ = ["AttentionModel", "Rollout"]
