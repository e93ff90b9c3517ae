"""Reweighted wake-sleep for attention: the WS-RAM estimator (METHOD.md M4-M12)."""

from __future__ import annotations

from torch import Tensor

from .common import EstimatorOutput, check_shapes, finish, log_weights, normalised


def wake_sleep(
    log_lik: Tensor,
    log_prior: Tensor,
    log_proposal: Tensor | None = None,
    control_variate: bool = True,
    gamma: float = 1.0,
) -> EstimatorOutput:
    """WS-RAM wake updates of the prediction network (theta) and the proposal (eta).

    Shapes: every input ``[B, K]``; samples a^k were drawn from the proposal r, which is
    the prior when ``log_proposal is None`` (WS-RAM) and q(a|x,y) otherwise (WS-RAM+q).
    Samples enter only through these log-probabilities, so they must not carry gradient.

    Without control variates the loss's gradient is minus the batch mean of
        g_theta = sum_k w_k [d log p(y|a^k,x) + d log p(a^k|x)]          (M7)
        g_eta   = sum_k w_k d log q(a^k|x,y)                              (M9)
    and with them
        g_theta = sum_k w_k d log p(y|a^k,x) + sum_k (w_k - v_k) d log p(a^k|x)   (M11)
        g_eta   = sum_k (w_k - 1/K) d log q(a^k|x,y)                             (M12)
    where w are the normalised weights (M5, M6) and v_k the normalised prior/proposal
    ratios (1/K with the prior as proposal). ``gamma`` scales both baselines.
    """
    B, K = check_shapes(log_lik=log_lik, log_prior=log_prior, log_proposal=log_proposal)
    log_w = log_weights(log_lik, log_prior, log_proposal)
    w = normalised(log_w.detach())  # (B, K): rewards; held fixed in the surrogate

    prior_coef = w
    proposal_coef = w
    if control_variate:
        if log_proposal is None:
            v = w.new_full((B, K), 1.0 / K)
        else:
            v = normalised((log_prior - log_proposal).detach())
        prior_coef = w - gamma * v
        proposal_coef = w - gamma / K

    lik_term = (w * log_lik).sum(-1).mean()
    prior_term = (prior_coef * log_prior).sum(-1).mean()
    loss = -(lik_term + prior_term)
    terms = {"lik": lik_term, "prior": prior_term}
    if log_proposal is not None:
        proposal_term = (proposal_coef * log_proposal).sum(-1).mean()
        loss = loss - proposal_term
        terms["proposal"] = proposal_term
    return finish(loss, log_w, terms)
