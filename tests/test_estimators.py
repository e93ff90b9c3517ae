"""The gradient estimators checked against EXACT ENUMERATION on a tiny discrete model.

Tiny model (METHOD.md notation, one fixed image x and label y): two actions a = (a_1, a_2),
each in {0, 1, 2}, so 9 trajectories, flattened as ``3 * a_1 + a_2``.
  theta (prediction network): prior logits ``prior1`` [3] for a_1 and ``prior2`` [3, 3]
      for a_2 given a_1; likelihood logits ``lik`` [9], log p(y|a,x) = log sigmoid(lik[a]).
  eta (inference network): proposal logits ``q1`` [3], ``q2`` [3, 3], same shapes as the prior.
Everything exact (M1, M2, M8, the KL, their gradients) is computed by summing over the 9
trajectories (or the 9^K tuples of K trajectories) and differentiating with autograd.

Monte-Carlo side: B independent replicas of K samples each. Every replica gets its own copy
of the parameters (leaves with a leading [B] axis, all equal), so the gradient of the loss
(minus the batch mean of the estimator) times -B is each replica's own estimate. Means are
compared with exact values within 5 standard errors across replicas (plus, for the
self-normalised WS-RAM estimators, their leading O(1/K) bias, itself computed exactly).
All seeds are fixed, so the tests are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from wsram.estimators import EstimatorOutput, variational, vimco, wake_sleep

DTYPE = torch.float64
N_TRAJ = 9
THETA = ("prior1", "prior2", "lik")
ETA = ("q1", "q2")
Params = dict[str, Tensor]

# ----------------------------------------------------------------------------- tiny model


def tiny_model(seed: int = 0) -> Params:
    """Parameters (theta and eta) of the tiny model, float64, from a fixed seed."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=DTYPE)

    return {
        "prior1": randn(3),
        "prior2": randn(3, 3),
        "lik": 2.0 * randn(N_TRAJ) - 0.5,  # p(y|a) spread over about (0.02, 0.95)
        "q1": randn(3),
        "q2": randn(3, 3),
    }


def _chain_log_probs(first: Tensor, second: Tensor) -> Tensor:
    """Chain log-probs log pi(a_1) + log pi(a_2|a_1), ``[..., 3], [..., 3, 3] -> [..., 9]``."""
    return (first.log_softmax(-1)[..., :, None] + second.log_softmax(-1)).flatten(-2)


def log_prior_table(p: Params) -> Tensor:
    """log p(a|x) of every trajectory, ``[..., 9]``."""
    return _chain_log_probs(p["prior1"], p["prior2"])


def log_q_table(p: Params) -> Tensor:
    """log q(a|x,y) of every trajectory, ``[..., 9]``."""
    return _chain_log_probs(p["q1"], p["q2"])


def log_lik_table(p: Params) -> Tensor:
    """log p(y|a,x) of every trajectory, ``[..., 9]``."""
    return F.logsigmoid(p["lik"])


def leaves(model: Params, batch: int | None = None) -> Params:
    """Fresh leaf copies of the parameters that require grad; with ``batch``, one per replica."""
    if batch is None:
        return {n: v.detach().clone().requires_grad_() for n, v in model.items()}
    return {
        n: v.detach().expand(batch, *v.shape).clone().requires_grad_() for n, v in model.items()
    }


def n_params(model: Params, names: tuple[str, ...]) -> int:
    return sum(model[n].numel() for n in names)


# ----------------------------------------------------------------------------- exact values


def log_evidence(p: Params) -> Tensor:
    """log p(y|x) = log sum_a p(a|x) p(y|a,x)  (METHOD.md M1)."""
    return torch.logsumexp(log_prior_table(p) + log_lik_table(p), -1)


def expected_log_lik(p: Params) -> Tensor:
    """F = sum_a p(a|x) log p(y|a,x)  (METHOD.md M2)."""
    return (log_prior_table(p).exp() * log_lik_table(p)).sum(-1)


def log_posterior_table(p: Params) -> Tensor:
    """log p(a|x,y) of every trajectory, ``[9]``."""
    return (log_prior_table(p) + log_lik_table(p)).log_softmax(-1)


def neg_kl_posterior_q(p: Params) -> Tensor:
    """-KL(p(a|x,y) || q(a|x,y)); its eta-gradient is sum_a p(a|x,y) d log q(a)  (M9)."""
    log_post = log_posterior_table(p)
    return -(log_post.exp() * (log_post - log_q_table(p))).sum(-1)


def all_tuples(k: int) -> Tensor:
    """All 9^K tuples (a^1..a^K) of trajectory indices, ``[9^K, K]``."""
    return torch.cartesian_prod(*[torch.arange(N_TRAJ)] * k).reshape(-1, k)


def k_sample_bound_exact(p: Params, k: int) -> Tensor:
    """L_K = E_{a^k ~ p(a|x)} log 1/K sum_k p(y|a^k,x), summing over all 9^K tuples (M8)."""
    tuples = all_tuples(k)
    log_prob = log_prior_table(p)[tuples].sum(-1)
    inner = torch.logsumexp(log_lik_table(p)[tuples], -1) - math.log(k)
    return (log_prob.exp() * inner).sum()


def flat_grads(value: Tensor, params: list[Tensor]) -> list[Tensor]:
    """d value / d params, with zeros (not None) for parameters that ``value`` does not use."""
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(params, grads, strict=True)]


def exact_grad(
    objective: Callable[[Params], Tensor], model: Params, names: tuple[str, ...]
) -> Tensor:
    """Flat gradient of ``objective(params)`` w.r.t. the parameters ``names`` (autograd)."""
    p = leaves(model)
    return torch.cat([g.flatten() for g in flat_grads(objective(p), [p[n] for n in names])])


def per_trajectory_grads(
    table: Callable[[Params], Tensor], model: Params, names: tuple[str, ...]
) -> Tensor:
    """``[9, P]``: row a is d table(params)[a] / d params, e.g. d log p(a|x) / d theta."""
    rows = [exact_grad(lambda p, a=a: table(p)[a], model, names) for a in range(N_TRAJ)]
    return torch.stack(rows)


def exact_ws_expectation(model: Params, k: int, proposal: str) -> tuple[Tensor, Tensor]:
    """Exact E[g_theta] (M7) and E[g_eta] (M9) at finite K, by enumerating all 9^K tuples.

    Tuples are drawn from r = prior or q; the weights (M5, M6) are held fixed, as in the
    estimator. Returns flat (theta, eta) vectors.
    """
    p = leaves(model)
    tuples = all_tuples(k)
    ll, lp, lq = (t(p)[tuples] for t in (log_lik_table, log_prior_table, log_q_table))
    log_r = lp if proposal == "prior" else lq
    prob = log_r.detach().sum(-1).exp()
    w = (ll + lp - log_r).detach().softmax(-1)
    theta_obj = (prob[:, None] * w * (ll + lp)).sum()
    eta_obj = (prob[:, None] * w * lq).sum()
    g_theta = torch.autograd.grad(theta_obj, [p[n] for n in THETA])
    g_eta = torch.autograd.grad(eta_obj, [p[n] for n in ETA])
    return torch.cat([g.flatten() for g in g_theta]), torch.cat([g.flatten() for g in g_eta])


def first_order_bias(log_w: Tensor, log_r: Tensor, h: Tensor, k: int) -> Tensor:
    """Leading O(1/K) bias of the self-normalised estimator sum_k w_k h(a^k), a^k ~ r (M6, M7).

    With w~ the unnormalised weights (``log_w`` ``[9]``), r the proposal (``log_r`` ``[9]``)
    and h ``[9, P]``, the delta method gives
        E[sum_k w_k h_k] - g* = E_r[w~^2 (g* - h)] / (K E_r[w~]^2) + O(1/K^2),
    g* = E_r[w~ h] / E_r[w~] (the value it converges to).
    """
    r = log_r.exp()
    wt = (log_w - log_w.max()).exp()
    mu = (r * wt).sum()
    g_star = ((r * wt)[:, None] * h).sum(0) / mu
    return ((r * wt * wt)[:, None] * (g_star - h)).sum(0) / (k * mu * mu)


# ----------------------------------------------------------------------------- Monte Carlo


@dataclass
class SampleLogProbs:
    """Per-sample log-probabilities ``[B, K]``, differentiable w.r.t. the replica parameters."""

    lik: Tensor
    prior: Tensor
    q: Tensor


@dataclass
class ReplicaEstimates:
    """Each replica's estimate (= -B * gradient of the loss), ``[B, P]`` for theta and eta."""

    theta: Tensor
    eta: Tensor
    output: EstimatorOutput | None


def sample_trajectories(log_table: Tensor, batch: int, k: int, seed: int) -> Tensor:
    """``[B, K]`` trajectory indices drawn i.i.d. from the distribution ``log_table`` [9]."""
    g = torch.Generator().manual_seed(seed)
    probs = log_table.detach().exp()
    return torch.multinomial(probs, batch * k, replacement=True, generator=g).view(batch, k)


def replica_estimates(
    model: Params,
    traj: Tensor,
    estimator: Callable[[SampleLogProbs], EstimatorOutput | Tensor],
) -> ReplicaEstimates:
    """Run ``estimator`` on the samples ``traj`` ``[B, K]`` with one parameter copy per replica.

    The loss is minus the batch mean of the estimator, so -B times the gradient w.r.t.
    replica b's parameters is replica b's estimate.
    """
    batch = traj.shape[0]
    p = leaves(model, batch)
    lp = SampleLogProbs(
        lik=log_lik_table(p).gather(-1, traj),
        prior=log_prior_table(p).gather(-1, traj),
        q=log_q_table(p).gather(-1, traj),
    )
    out = estimator(lp)
    loss = out.loss if isinstance(out, EstimatorOutput) else out
    names = THETA + ETA
    flat = [-batch * g.flatten(1) for g in flat_grads(loss, [p[n] for n in names])]
    return ReplicaEstimates(
        theta=torch.cat(flat[: len(THETA)], 1),
        eta=torch.cat(flat[len(THETA) :], 1),
        output=out if isinstance(out, EstimatorOutput) else None,
    )


def mismatch(estimates: Tensor, exact: Tensor, allowance: Tensor | float = 0.0) -> float:
    """max over components of |mean - exact| / (5 SE + allowance + tiny); < 1 means they agree."""
    mean = estimates.mean(0)
    se = estimates.std(0) / math.sqrt(estimates.shape[0])
    tol = 5.0 * se + allowance + 1e-9 * (1.0 + exact.abs())
    return float(((mean - exact).abs() / tol).max())


def trace_variance(estimates: Tensor) -> float:
    """Sum over parameters of the per-parameter variance across replicas (METHOD.md Metrics)."""
    return float(estimates.var(0).sum())


def assert_variance_lower(low: Tensor, high: Tensor) -> float:
    """Paired test on the same replicas: trace variance of ``low`` < that of ``high``.

    Per replica d_b = ||high_b - mean(high)||^2 - ||low_b - mean(low)||^2; require
    mean(d) > 5 SE(d). Returns the variance ratio low / high.
    """
    d = ((high - high.mean(0)) ** 2).sum(1) - ((low - low.mean(0)) ** 2).sum(1)
    assert d.mean() > 5.0 * d.std() / math.sqrt(d.shape[0]), (
        f"variance not lower: {trace_variance(low):.4g} vs {trace_variance(high):.4g}"
    )
    return trace_variance(low) / trace_variance(high)


@pytest.fixture(scope="module")
def model() -> Params:
    return tiny_model()


# ----------------------------------------------------------------------------- exact helpers


def test_exact_enumeration_is_consistent(model: Params) -> None:
    """The exact helpers obey M2 <= M8 <= M1, L_1 = F, KL >= 0, and M4 (posterior expectation)."""
    F_, log_p = expected_log_lik(model), log_evidence(model)
    bounds = [k_sample_bound_exact(model, k) for k in (1, 2, 3)]
    torch.testing.assert_close(bounds[0], F_)
    assert F_ < bounds[1] < bounds[2] < log_p
    assert neg_kl_posterior_q(model) < 0
    # M4: d log p(y|x) = E_{p(a|x,y)} [d log p(y|a,x) + d log p(a|x)]
    h = per_trajectory_grads(lambda p: log_lik_table(p) + log_prior_table(p), model, THETA)
    post = log_posterior_table(model).exp()
    torch.testing.assert_close(post @ h, exact_grad(log_evidence, model, THETA))
    # the tiny model is not degenerate: log p(y|x) and F have clearly different gradients
    gap = exact_grad(log_evidence, model, THETA) - exact_grad(expected_log_lik, model, THETA)
    assert gap.abs().max() > 0.2


@pytest.mark.parametrize("proposal", ["prior", "q"])
def test_first_order_bias_matches_exact_finite_k_bias(model: Params, proposal: str) -> None:
    """The O(1/K) bias helper (used for tolerances) explains most of WS-RAM's exact bias at K=5."""
    k = 5
    lp, ll, lq = log_prior_table(model), log_lik_table(model), log_q_table(model)
    log_r = lp if proposal == "prior" else lq
    theta_k, eta_k = exact_ws_expectation(model, k, proposal)  # 9^5 tuples
    h_theta = per_trajectory_grads(lambda p: log_lik_table(p) + log_prior_table(p), model, THETA)
    h_eta = per_trajectory_grads(log_q_table, model, ETA)
    cases = [(theta_k, exact_grad(log_evidence, model, THETA), h_theta)]
    if proposal == "q":
        cases.append((eta_k, exact_grad(neg_kl_posterior_q, model, ETA), h_eta))
    for expectation, limit, h in cases:
        bias = expectation - limit
        predicted = first_order_bias(ll + lp - log_r, log_r, h, k)
        assert bias.norm() > 0.01  # there is a bias to explain
        assert (bias - predicted).norm() < 0.35 * bias.norm()


# ----------------------------------------------------------------------------- 1. VAR

VAR_B, VAR_K = 40_000, 4


def _var_baseline(kind: str, batch: int, k: int, F_: float) -> Tensor | None:
    """None (b = 0), the exact F as ``[B]``, or a sample-independent ``[B, K]`` b near F."""
    if kind == "none":
        return None
    if kind == "F[B]":
        return torch.full((batch,), F_, dtype=DTYPE)
    g = torch.Generator().manual_seed(7)
    return F_ + 0.3 * torch.randn(batch, k, generator=g, dtype=DTYPE)


@pytest.mark.parametrize("baseline", ["none", "F[B]", "noisy[B,K]"])
def test_variational_is_unbiased_for_grad_F(model: Params, baseline: str) -> None:
    """E[VAR theta-gradient] = dF/dtheta (M2, M3) with and without a baseline."""
    traj = sample_trajectories(log_prior_table(model), VAR_B, VAR_K, seed=1)
    b = _var_baseline(baseline, VAR_B, VAR_K, float(expected_log_lik(model)))
    est = replica_estimates(model, traj, lambda lp: variational(lp.lik, lp.prior, baseline=b))
    grad_F = exact_grad(expected_log_lik, model, THETA)
    assert mismatch(est.theta, grad_F) < 1.0
    assert mismatch(est.theta, exact_grad(log_evidence, model, THETA)) > 5.0  # discriminates
    assert torch.all(est.eta == 0)


@pytest.mark.parametrize("shape", ["[B]", "[B,K]"])
def test_variational_baseline_fit_reaches_only_the_baseline(model: Params, shape: str) -> None:
    """The squared-error fit moves only b; theta gets exactly M3 with b detached."""
    batch, k = 6, 4
    traj = sample_trajectories(log_prior_table(model), batch, k, seed=2)
    g = torch.Generator().manual_seed(3)
    b_shape = (batch,) if shape == "[B]" else (batch, k)
    b0 = -1.0 + torch.randn(*b_shape, generator=g, dtype=DTYPE)

    def theta_and_b_grads(loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> list[Tensor]:
        p = leaves(model)
        ll, lp = log_lik_table(p)[traj], log_prior_table(p)[traj]
        b = b0.clone().requires_grad_()
        return flat_grads(loss_fn(ll, lp, b), [p[n] for n in THETA] + [b])

    got = theta_and_b_grads(lambda ll, lp, b: variational(ll, lp, baseline=b).loss)
    b_col = (lambda b: b[:, None]) if shape == "[B]" else (lambda b: b)
    want_theta = theta_and_b_grads(
        lambda ll, lp, b: -(ll.mean() + ((ll.detach() - b_col(b).detach()) * lp).mean())
    )
    want_b = theta_and_b_grads(lambda ll, lp, b: ((b_col(b) - ll.detach()) ** 2).mean())
    for gt, wt in zip(got[:-1], want_theta[:-1], strict=True):
        torch.testing.assert_close(gt, wt)
    torch.testing.assert_close(got[-1], want_b[-1])


@pytest.mark.parametrize("shape", ["[B]", "[B,K]"])
def test_variational_good_baseline_lowers_variance(model: Params, shape: str) -> None:
    """b = F (exact expected reward) lowers the variance of the theta gradient (M3 "+c")."""
    traj = sample_trajectories(log_prior_table(model), VAR_B, VAR_K, seed=4)
    F_ = float(expected_log_lik(model))
    b = torch.full((VAR_B,) if shape == "[B]" else (VAR_B, VAR_K), F_, dtype=DTYPE)
    plain = replica_estimates(model, traj, lambda lp: variational(lp.lik, lp.prior))
    based = replica_estimates(model, traj, lambda lp: variational(lp.lik, lp.prior, baseline=b))
    assert assert_variance_lower(based.theta, plain.theta) < 0.75


# ----------------------------------------------------------------------------- 2-3. WS-RAM

LARGE_B, LARGE_K = 300, 2000


def _ws_bias(model: Params, proposal: str, control_variate: bool) -> tuple[Tensor, Tensor]:
    """Leading O(1/K) bias of WS-RAM's (theta, eta) gradients at K = LARGE_K (M7, M9, M11)."""
    lp, ll, lq = log_prior_table(model), log_lik_table(model), log_q_table(model)
    log_r = lp if proposal == "prior" else lq
    h_theta = per_trajectory_grads(lambda p: log_lik_table(p) + log_prior_table(p), model, THETA)
    h_eta = per_trajectory_grads(log_q_table, model, ETA)
    bias_theta = first_order_bias(ll + lp - log_r, log_r, h_theta, LARGE_K)
    bias_eta = first_order_bias(ll + lp - log_r, log_r, h_eta, LARGE_K)
    if control_variate and proposal == "q":  # M11: minus sum_k v_k d log p(a^k), v ~ p/q
        s = per_trajectory_grads(log_prior_table, model, THETA)
        bias_theta = bias_theta - first_order_bias(lp - lq, lq, s, LARGE_K)
    return bias_theta, bias_eta


@pytest.mark.parametrize("control_variate", [False, True])
def test_wake_sleep_prior_converges_to_grad_log_evidence(
    model: Params, control_variate: bool
) -> None:
    """WS-RAM (r = prior), K = 2000: E[g_theta] -> d log p(y|x) (M4, M7, M11), not dF."""
    traj = sample_trajectories(log_prior_table(model), LARGE_B, LARGE_K, seed=5)
    est = replica_estimates(
        model, traj, lambda lp: wake_sleep(lp.lik, lp.prior, control_variate=control_variate)
    )
    bias, _ = _ws_bias(model, "prior", control_variate)
    allowance = 2.0 * bias.abs()
    assert allowance.max() < 2e-3  # the O(1/K) bias is small at this K ...
    assert mismatch(est.theta, exact_grad(log_evidence, model, THETA), allowance) < 1.0
    # ... and the check discriminates: grad F is far outside the tolerance
    assert mismatch(est.theta, exact_grad(expected_log_lik, model, THETA), allowance) > 20.0
    assert torch.all(est.eta == 0)


@pytest.mark.parametrize("control_variate", [False, True])
def test_wake_sleep_q_converges(model: Params, control_variate: bool) -> None:
    """WS-RAM+q, K = 2000: g_theta -> d log p(y|x) (M7/M11), g_eta -> -dKL(p(a|x,y)||q) (M9/M12)."""
    traj = sample_trajectories(log_q_table(model), LARGE_B, LARGE_K, seed=6)
    est = replica_estimates(
        model,
        traj,
        lambda lp: wake_sleep(lp.lik, lp.prior, lp.q, control_variate=control_variate),
    )
    bias_theta, bias_eta = _ws_bias(model, "q", control_variate)
    assert bias_theta.abs().max() < 1e-3 and bias_eta.abs().max() < 1e-3
    grad_log_p = exact_grad(log_evidence, model, THETA)
    grad_neg_kl = exact_grad(neg_kl_posterior_q, model, ETA)
    assert mismatch(est.theta, grad_log_p, 2.0 * bias_theta.abs()) < 1.0
    assert mismatch(est.eta, grad_neg_kl, 2.0 * bias_eta.abs()) < 1.0
    assert mismatch(est.theta, exact_grad(expected_log_lik, model, THETA)) > 20.0
    assert grad_neg_kl.abs().max() > 0.1  # q is not the posterior: the target is not trivial


# ----------------------------------------------------------------------------- 4. control variates

CV_B, CV_K = 60_000, 5


def test_control_variate_prior_has_zero_mean_and_lowers_variance(model: Params) -> None:
    """r = prior: M11's extra term -1/K sum_k d log p(a^k) has mean exactly 0 (M10)."""
    traj = sample_trajectories(log_prior_table(model), CV_B, CV_K, seed=8)
    runs = {
        cv: replica_estimates(model, traj, lambda lp, cv=cv: wake_sleep(lp.lik, lp.prior, None, cv))
        for cv in (False, True)
    }
    with_cv, without = runs[True].theta, runs[False].theta
    exact_theta, _ = exact_ws_expectation(model, CV_K, "prior")  # finite-K E[M7], 9^5 tuples
    assert mismatch(without, exact_theta) < 1.0
    assert mismatch(with_cv, exact_theta) < 1.0
    assert mismatch(with_cv - without, torch.zeros_like(exact_theta)) < 1.0
    assert assert_variance_lower(with_cv, without) < 0.9


def test_control_variate_q_eta_has_zero_mean_and_lowers_variance(model: Params) -> None:
    """r = q: M12's baseline 1/K sum_k d log q(a^k) has mean exactly 0 (M10); variance drops."""
    traj = sample_trajectories(log_q_table(model), CV_B, CV_K, seed=9)
    runs = {
        cv: replica_estimates(model, traj, lambda lp, cv=cv: wake_sleep(lp.lik, lp.prior, lp.q, cv))
        for cv in (False, True)
    }
    with_cv, without = runs[True].eta, runs[False].eta
    exact_theta, exact_eta = exact_ws_expectation(model, CV_K, "q")  # finite-K E[M7], E[M9]
    assert mismatch(without, exact_eta) < 1.0
    assert mismatch(with_cv, exact_eta) < 1.0
    assert mismatch(with_cv - without, torch.zeros_like(exact_eta)) < 1.0
    assert mismatch(runs[False].theta, exact_theta) < 1.0
    assert assert_variance_lower(with_cv, without) < 0.9


# ----------------------------------------------------------------------------- 5. VIMCO


@pytest.mark.parametrize("k", [2, 3])
def test_vimco_is_unbiased_for_grad_LK(model: Params, k: int) -> None:
    """E[VIMCO theta-gradient] = d L_K / d theta (M8, exact over 9^K tuples); E[.bound] = L_K."""
    batch = 60_000
    traj = sample_trajectories(log_prior_table(model), batch, k, seed=10 + k)
    est = replica_estimates(model, traj, lambda lp: vimco(lp.lik, lp.prior))
    grad_LK = exact_grad(lambda p: k_sample_bound_exact(p, k), model, THETA)
    assert mismatch(est.theta, grad_LK) < 1.0
    assert mismatch(est.theta, exact_grad(expected_log_lik, model, THETA)) > 5.0
    assert mismatch(est.theta, exact_grad(log_evidence, model, THETA)) > 5.0
    assert torch.all(est.eta == 0)
    assert est.output is not None
    assert mismatch(est.output.bound[:, None], k_sample_bound_exact(model, k).reshape(1)) < 1.0


def test_vimco_rejects_a_single_sample() -> None:
    x = torch.zeros(4, 1, dtype=DTYPE)
    with pytest.raises(ValueError):
        vimco(x, x)


# ----------------------------------------------------------------------------- the checks bite


def test_checks_detect_wrong_estimators(model: Params) -> None:
    """The same checks reject deliberately wrong variants of the estimators."""
    # WS-RAM with unnormalised weights 1/K sum_k w~_k (an estimate of d p(y|x), not d log p(y|x))
    traj = sample_trajectories(log_prior_table(model), LARGE_B, LARGE_K, seed=5)

    def ws_unnormalised(lp: SampleLogProbs) -> Tensor:
        w = lp.lik.detach().exp() / lp.lik.shape[1]
        return -(w * (lp.lik + lp.prior)).sum(-1).mean()

    bad = replica_estimates(model, traj, ws_unnormalised)
    bias, _ = _ws_bias(model, "prior", False)
    assert mismatch(bad.theta, exact_grad(log_evidence, model, THETA), 2.0 * bias.abs()) > 5.0

    # VAR without the score term: only 1/K sum_k d log p(y|a^k), misses dF/d(prior logits)
    traj = sample_trajectories(log_prior_table(model), VAR_B, VAR_K, seed=1)
    bad = replica_estimates(model, traj, lambda lp: -lp.lik.mean())
    assert mismatch(bad.theta, exact_grad(expected_log_lik, model, THETA)) > 5.0

    # VIMCO whose baseline keeps sample k's own weight (baseline = L_K, so no score term)
    traj = sample_trajectories(log_prior_table(model), 60_000, 2, seed=12)

    def vimco_no_score(lp: SampleLogProbs) -> Tensor:
        w = lp.lik.detach().softmax(-1)
        return -(w * lp.lik).sum(-1).mean()

    bad = replica_estimates(model, traj, vimco_no_score)
    grad_L2 = exact_grad(lambda p: k_sample_bound_exact(p, 2), model, THETA)
    assert mismatch(bad.theta, grad_L2) > 5.0


# ----------------------------------------------------------------------------- 6. basic properties


def _random_inputs(batch: int = 5, k: int = 4, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    ll = F.logsigmoid(torch.randn(batch, k, generator=g, dtype=DTYPE))
    lp = -1.0 - torch.rand(batch, k, generator=g, dtype=DTYPE)
    lq = -1.0 - torch.rand(batch, k, generator=g, dtype=DTYPE)
    return ll, lp, lq


ESTIMATOR_CALLS: dict[str, Callable[[Tensor, Tensor, Tensor], EstimatorOutput]] = {
    "ws_prior": lambda ll, lp, lq: wake_sleep(ll, lp),
    "ws_prior_nocv": lambda ll, lp, lq: wake_sleep(ll, lp, control_variate=False),
    "ws_q": lambda ll, lp, lq: wake_sleep(ll, lp, lq),
    "ws_q_nocv": lambda ll, lp, lq: wake_sleep(ll, lp, lq, control_variate=False),
    "var": lambda ll, lp, lq: variational(ll, lp),
    "var_baseline": lambda ll, lp, lq: variational(ll, lp, baseline=ll.detach().mean(-1)),
    "vimco": lambda ll, lp, lq: vimco(ll, lp),
}


@pytest.mark.parametrize("name", list(ESTIMATOR_CALLS))
def test_log_weights_ess_and_bound(name: str) -> None:
    """.log_weights is M5, .ess = 1/sum w^2 in [1, K], .bound = logmeanexp(log_weights) (M8)."""
    ll, lp, lq = _random_inputs()
    out = ESTIMATOR_CALLS[name](ll, lp, lq)
    expected_log_w = ll + lp - lq if name.startswith("ws_q") else ll
    torch.testing.assert_close(out.log_weights, expected_log_w)
    assert not out.log_weights.requires_grad and not out.bound.requires_grad
    assert out.loss.dim() == 0
    k = ll.shape[1]
    w = expected_log_w.softmax(-1)
    torch.testing.assert_close(out.ess, 1.0 / (w * w).sum(-1))
    assert out.ess.shape == (ll.shape[0],)
    assert torch.all(out.ess >= 1.0 - 1e-12) and torch.all(out.ess <= k + 1e-12)
    torch.testing.assert_close(out.bound, torch.logsumexp(expected_log_w, -1) - math.log(k))


def method_coefficients(name: str, ll: Tensor, lp: Tensor, lq: Tensor) -> list[Tensor]:
    """Per-sample coefficients of d log p(y|a^k), d log p(a^k), d log q(a^k) in METHOD.md."""
    k = ll.shape[1]
    zero = torch.zeros_like(ll)
    if name.startswith("var"):  # M3, b = 0 or the batch's mean reward
        b = ll.mean(-1, keepdim=True) if name == "var_baseline" else 0.0
        return [torch.full_like(ll, 1.0 / k), (ll - b) / k, zero]
    if name == "vimco":  # leave-one-out: L_K - L_K^(-k), written as a loop over k
        bound = torch.logsumexp(ll, -1) - math.log(k)
        reward = torch.empty_like(ll)
        for j in range(k):
            loo = ll.clone()
            loo[:, j] = (ll.sum(-1) - ll[:, j]) / (k - 1)
            reward[:, j] = bound - (torch.logsumexp(loo, -1) - math.log(k))
        return [ll.softmax(-1), reward, zero]
    with_q = name.startswith("ws_q")
    w = (ll + lp - lq).softmax(-1) if with_q else ll.softmax(-1)  # M5, M6
    if name.endswith("nocv"):  # M7, M9
        return [w, w, w if with_q else zero]
    if with_q:  # M11, M12
        return [w, w - (lp - lq).softmax(-1), w - 1.0 / k]
    return [w, w - 1.0 / k, zero]  # M11 with r = prior


@pytest.mark.parametrize("name", list(ESTIMATOR_CALLS))
def test_surrogate_coefficients_match_method(name: str) -> None:
    """d loss / d (log_lik, log_prior, log_proposal) is -1/B times the coefficients of M3-M12."""
    ll, lp, lq = _random_inputs()
    inputs = [t.clone().requires_grad_() for t in (ll, lp, lq)]
    grads = flat_grads(ESTIMATOR_CALLS[name](*inputs).loss, inputs)
    for got, want in zip(grads, method_coefficients(name, ll, lp, lq), strict=True):
        torch.testing.assert_close(-ll.shape[0] * got, want)


@pytest.mark.parametrize("k", [2, 5])
def test_ess_extremes(k: int) -> None:
    """ESS = K for equal weights and 1 when one weight dominates."""
    equal = torch.full((3, k), -0.7, dtype=DTYPE)
    full_ess = torch.full((3,), float(k), dtype=DTYPE)
    torch.testing.assert_close(wake_sleep(equal, equal).ess, full_ess)
    peaked = torch.full((3, k), -800.0, dtype=DTYPE)
    peaked[:, 1] = -0.1
    torch.testing.assert_close(wake_sleep(peaked, equal).ess, torch.ones(3, dtype=DTYPE))


def test_wake_sleep_gamma_scales_the_baselines() -> None:
    """gamma = 0 switches the control variates off; the loss is affine in gamma (M11, M12)."""
    ll, lp, lq = _random_inputs()
    for proposal in (None, lq):
        off = wake_sleep(ll, lp, proposal, control_variate=False).loss
        torch.testing.assert_close(wake_sleep(ll, lp, proposal, gamma=0.0).loss, off)
        one = wake_sleep(ll, lp, proposal, gamma=1.0).loss
        torch.testing.assert_close(wake_sleep(ll, lp, proposal, gamma=2.0).loss, 2 * one - off)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=-50.0, max_value=0.0, allow_nan=False), min_size=2, max_size=8))
def test_ess_and_bound_ranges(values: list[float]) -> None:
    """For any log-weights: 1 <= ESS <= K and max - log K <= bound <= max (M8)."""
    log_w = torch.tensor([values], dtype=DTYPE)
    out = wake_sleep(log_w, torch.zeros_like(log_w))
    k = len(values)
    assert 1.0 - 1e-9 <= float(out.ess) <= k + 1e-9
    top = max(values)
    assert top - math.log(k) - 1e-9 <= float(out.bound) <= top + 1e-9


def _bad_shapes() -> list[tuple[str, Callable[[], object]]]:
    good = torch.zeros(3, 4, dtype=DTYPE)
    flat = torch.zeros(4, dtype=DTYPE)
    other = torch.zeros(3, 5, dtype=DTYPE)
    return [
        ("ws 1-D", lambda: wake_sleep(flat, flat)),
        ("ws lik/prior", lambda: wake_sleep(good, other)),
        ("ws proposal", lambda: wake_sleep(good, good, other)),
        ("ws 3-D", lambda: wake_sleep(good[None], good[None])),
        ("var 1-D", lambda: variational(flat, flat)),
        ("var lik/prior", lambda: variational(good, other)),
        ("var baseline [B+1]", lambda: variational(good, good, baseline=torch.zeros(4))),
        ("var baseline [B,K+1]", lambda: variational(good, good, baseline=other)),
        ("var baseline 3-D", lambda: variational(good, good, baseline=good[None])),
        ("vimco 1-D", lambda: vimco(flat, flat)),
        ("vimco lik/prior", lambda: vimco(good, other)),
    ]


@pytest.mark.parametrize("case", _bad_shapes(), ids=lambda c: c[0])
def test_shape_errors(case: tuple[str, Callable[[], object]]) -> None:
    with pytest.raises(ValueError):
        case[1]()
