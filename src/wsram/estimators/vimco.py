"""VIMCO: multi-sample bound with leave-one-out baselines (Mnih and Rezende 2016)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import EstimatorOutput, check_shapes, finish, log_weights, normalised


def vimco(log_lik: Tensor, log_prior: Tensor) -> EstimatorOutput:
    """Unbiased gradient of the K-sample bound L_K (M8) with samples from the prior.

    Shapes: ``[B, K]`` with K >= 2. The loss's gradient is minus the batch mean of
        sum_k w_k d log p(y|a^k,x) + sum_k (L_K - L_K^(-k)) d log p(a^k|x)
    where L_K^(-k) is L_K with log w~_k replaced by the mean of the other K-1 log-weights
    (METHOD.md, Beyond the paper).
    """
    B, K = check_shapes(log_lik=log_lik, log_prior=log_prior)
    if K < 2:
        raise ValueError(f"vimco needs at least 2 samples per example, got K={K}")
    log_w = log_weights(log_lik, log_prior, None).detach()
    w = normalised(log_w)

    # Leave-one-out: row k of `loo` is log_w with entry k replaced by the others' mean.
    others_mean = (log_w.sum(-1, keepdim=True) - log_w) / (K - 1)  # (B, K)
    eye = torch.eye(K, dtype=torch.bool, device=log_w.device)
    loo = torch.where(eye, others_mean.unsqueeze(-1), log_w.unsqueeze(-2))  # (B, K, K)
    bound = torch.logsumexp(log_w, -1) - math.log(K)  # (B,)
    bound_loo = torch.logsumexp(loo, -1) - math.log(K)  # (B, K)
    reward = bound.unsqueeze(-1) - bound_loo

    lik_term = (w * log_lik).sum(-1).mean()
    prior_term = (reward * log_prior).sum(-1).mean()
    loss = -(lik_term + prior_term)
    return finish(loss, log_w, {"lik": lik_term, "prior": prior_term})
