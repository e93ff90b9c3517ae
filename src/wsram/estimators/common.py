"""Shared pieces of every estimator: importance log-weights, normalised weights, ESS, bound.

All functions take per-sample log-probabilities shaped ``[B, K]`` (B examples, K samples
each) and reduce over the sample axis ``-1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class EstimatorOutput:
    """What every estimator returns.

    loss:        scalar; its gradient is minus the batch mean of the estimator.
    log_weights: ``[B, K]`` unnormalised importance log-weights log w~ (METHOD.md M5), detached.
    ess:         ``[B]`` effective sample size 1 / sum_k w_k^2, in [1, K].
    bound:       ``[B]`` the K-sample bound log 1/K sum_k w~_k (METHOD.md M8), detached.
    terms:       named scalar parts of the loss, detached, for logging.
    """

    loss: Tensor
    log_weights: Tensor
    ess: Tensor
    bound: Tensor
    terms: dict[str, Tensor]


def check_shapes(**tensors: Tensor | None) -> tuple[int, int]:
    """Check that every given tensor is ``[B, K]`` with the same B and K; return (B, K)."""
    shape = None
    for name, t in tensors.items():
        if t is None:
            continue
        if t.dim() != 2:
            raise ValueError(f"{name} must be shaped [B, K], got {tuple(t.shape)}")
        if shape is None:
            shape = t.shape
        elif t.shape != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if shape is None:
        raise ValueError("no tensor given")
    return int(shape[0]), int(shape[1])


def log_weights(log_lik: Tensor, log_prior: Tensor, log_proposal: Tensor | None) -> Tensor:
    """Unnormalised importance log-weights, ``[B, K]`` (METHOD.md M5).

    log w~_k = log p(y|a^k,x) + log p(a^k|x) - log r(a^k|x,y); with r = prior
    (``log_proposal=None``) the last two cancel and log w~_k = log p(y|a^k,x).
    """
    if log_proposal is None:
        return log_lik
    return log_lik + log_prior - log_proposal


def normalised(log_w: Tensor) -> Tensor:
    """Normalised weights w_k = w~_k / sum_j w~_j over the sample axis (METHOD.md M6)."""
    return torch.softmax(log_w, dim=-1)


def effective_sample_size(log_w: Tensor) -> Tensor:
    """ESS = 1 / sum_k w_k^2 of normalised weights, ``[B, K] -> [B]``; between 1 and K."""
    w = normalised(log_w)
    return 1.0 / (w * w).sum(-1)


def k_sample_bound(log_w: Tensor) -> Tensor:
    """L_K = log 1/K sum_k w~_k per example, ``[B, K] -> [B]`` (METHOD.md M8)."""
    return torch.logsumexp(log_w, dim=-1) - math.log(log_w.shape[-1])


def finish(loss: Tensor, log_w: Tensor, terms: dict[str, Tensor]) -> EstimatorOutput:
    """Package a surrogate loss with the diagnostics every estimator reports."""
    log_w = log_w.detach()
    return EstimatorOutput(
        loss=loss,
        log_weights=log_w,
        ess=effective_sample_size(log_w),
        bound=k_sample_bound(log_w),
        terms={k: v.detach() for k, v in terms.items()},
    )
