"""Diagnostics on cases with known answers (METHOD.md, Metrics)."""

from __future__ import annotations

import pytest
import torch

from wsram.classification.model import AttentionModel
from wsram.classification.task import policy_diagnostics
from wsram.diagnostics import diagnose, gradient_estimates, variance_stats
from wsram.estimators.common import finish
from wsram.methods import METHODS, Method


def test_variance_stats_known_values() -> None:
    assert variance_stats(torch.ones(6, 4) * 3) == {"grad_var": 0.0, "grad_var_rel": 0.0}
    # Two estimates (0, 0) and (2, 4): variances 2 and 8, mean (1, 2) of squared norm 5.
    stats = variance_stats(torch.tensor([[0.0, 0.0], [2.0, 4.0]]))
    assert stats["grad_var"] == pytest.approx(10.0)
    assert stats["grad_var_rel"] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        variance_stats(torch.ones(1, 3))


def one_glimpse_model() -> AttentionModel:
    torch.manual_seed(0)
    return AttentionModel(canvas_size=32, glimpses=1, patch=4, scales=[0.25, 0.5], hidden=16,
                          context_size=8, loc_std=0.2, num_classes=3)


def test_gradient_variance_is_zero_for_a_deterministic_estimator() -> None:
    model = one_glimpse_model()
    x, y = torch.rand(5, 1, 32, 32), torch.randint(0, 3, (5,))
    # With one glimpse the prior's entropy depends on x alone, not on the sampled actions.
    entropy_only = Method("entropy", "prior", False,
                          lambda r, cv, g: finish(-r.entropy.mean(), r.log_lik, {}), "H")
    g = gradient_estimates(model, entropy_only, x, y, samples=3, repeats=4)
    assert g.abs().sum() > 0
    assert variance_stats(g)["grad_var"] == pytest.approx(0.0, abs=1e-12)
    # The score-function estimator on the same model is random.
    g = gradient_estimates(model, METHODS["var"], x, y, samples=3, repeats=4)
    assert variance_stats(g)["grad_var"] > 1e-8


@pytest.mark.parametrize("name", ["var+c", "wsram+q+c", "vimco"])
def test_diagnose_ranges_and_leaves_the_training_stream_alone(name: str) -> None:
    model = one_glimpse_model()
    x, y = torch.rand(6, 1, 32, 32), torch.randint(0, 3, (6,))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    d1 = diagnose(model, METHODS[name], x, y, samples=4, repeats=3, seed=7,
                       extra=policy_diagnostics)
    assert torch.equal(torch.get_rng_state(), before)
    assert d1 == diagnose(model, METHODS[name], x, y, samples=4, repeats=3, seed=7,
                       extra=policy_diagnostics)
    assert 1 - 1e-6 <= d1["ess"] <= 4 + 1e-6
    assert d1["grad_var"] >= 0 and d1["bound"] <= 0
    assert d1["scale0"] + d1["scale1"] == pytest.approx(1.0)
