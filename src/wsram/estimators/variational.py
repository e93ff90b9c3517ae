"""The variational / REINFORCE estimator of Ba et al. 2015 (VAR, METHOD.md M2-M3)."""

from __future__ import annotations

from torch import Tensor

from .common import EstimatorOutput, check_shapes, finish, log_weights


def variational(
    log_lik: Tensor,
    log_prior: Tensor,
    baseline: Tensor | None = None,
) -> EstimatorOutput:
    """Score-function gradient of F = E_p(a|x)[log p(y|a,x)] (M2), samples from the prior.

    Shapes: ``log_lik``, ``log_prior`` ``[B, K]``; ``baseline`` (the predicted reward b,
    "+c") ``[B, K]`` or ``[B]``, or None for b = 0. The loss's gradient is minus the batch
    mean of
        1/K sum_k [d log p(y|a^k,x) + (log p(y|a^k,x) - b) d log p(a^k|x)]     (M3)
    and, when a baseline is given, the loss also holds the squared error
    mean (b - log p(y|a,x))^2 that fits it (its gradient reaches only the baseline).
    """
    check_shapes(log_lik=log_lik, log_prior=log_prior)
    reward = log_lik.detach()
    terms = {}
    fit = None
    if baseline is not None:
        if baseline.dim() == 1:
            baseline = baseline.unsqueeze(-1)
        if baseline.dim() != 2 or baseline.shape[0] != log_lik.shape[0] or (
            baseline.shape[1] not in (1, log_lik.shape[1])
        ):
            raise ValueError(
                f"baseline must be shaped [B] or [B, K] for log_lik {tuple(log_lik.shape)}, "
                f"got {tuple(baseline.shape)}"
            )
        advantage = reward - baseline.detach()
        fit = ((baseline - reward) ** 2).mean()
        terms["baseline_mse"] = fit
    else:
        advantage = reward

    lik_term = log_lik.mean()
    prior_term = (advantage * log_prior).mean()
    loss = -(lik_term + prior_term)
    if fit is not None:
        loss = loss + fit
    terms.update(lik=lik_term, prior=prior_term)
    return finish(loss, log_weights(log_lik, log_prior, None), terms)
