"""Gradient estimators for stochastic attention, as pure functions on ``[B, K]`` log-probs.

Each returns an :class:`EstimatorOutput` whose ``.loss`` is a surrogate: minimising it
follows the estimator. They know nothing of images or glimpses.
"""

from .common import (
    EstimatorOutput,
    effective_sample_size,
    k_sample_bound,
    log_weights,
    normalised,
)
from .variational import variational
from .vimco import vimco
from .wake_sleep import wake_sleep

__all__ = [
    "EstimatorOutput",
    "effective_sample_size",
    "k_sample_bound",
    "log_weights",
    "normalised",
    "variational",
    "vimco",
    "wake_sleep",
]
