"""Training diagnostics (METHOD.md, Metrics): gradient variance, ESS and the bound, on a
fixed minibatch, for every task; each task adds its own (``extra``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .methods import Method


def variance_stats(grads: Tensor) -> dict[str, float]:
    """From R gradient estimates ``(R, P)``: trace of their covariance (the sum over
    parameters of the per-parameter variance, unbiased) and that trace over ||mean||^2."""
    if grads.shape[0] < 2:
        raise ValueError("need at least 2 gradient estimates")
    trace = grads.var(0, unbiased=True).sum().item()
    norm2 = grads.mean(0).pow(2).sum().item()
    return {"grad_var": trace, "grad_var_rel": trace / norm2 if norm2 > 0 else float("inf")}


def gradient_estimates(model: nn.Module, method: Method, x: Any, y: Tensor,
                       samples: int, repeats: int, temperature: float = 1.0,
                       gamma: float = 1.0) -> Tensor:
    """R independent estimates of the prediction network's (theta's) gradient on one fixed
    minibatch, flattened: ``(R, P)``."""
    theta = model.theta()
    out = []
    for _ in range(repeats):
        r = model.rollout(x, y, samples, proposal=method.proposal, temperature=temperature)
        loss = method.objective(r, gamma).loss
        grads = torch.autograd.grad(loss, theta, allow_unused=True)
        out.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                              for g, p in zip(grads, theta, strict=True)]))
    return torch.stack(out)


def diag_seed(seed: int, step: int) -> int:
    """Seed of the diagnostics at an update: their own stream, apart from training's."""
    return seed * 1_000_003 + step


#: extra diagnostics of a task: (model, x, y, samples) -> {name: value}, under no_grad
Extra = Callable[[nn.Module, Any, Tensor, int], dict[str, float]]


def diagnose(model: nn.Module, method: Method, x: Any, y: Tensor, samples: int,
             repeats: int, seed: int, temperature: float = 1.0, gamma: float = 1.0,
             extra: Extra | None = None) -> dict[str, float]:
    """All diagnostics on a fixed minibatch, drawing from their own random stream (``seed``,
    see :func:`diag_seed`) so that training's stream is untouched: gradient variance, ESS
    and the bound L_K (M8) of the method's estimator, then the task's ``extra``. Keys are
    logged under ``diag/``."""
    device = y.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        stats = variance_stats(gradient_estimates(model, method, x, y, samples, repeats,
                                                  temperature, gamma))
        with torch.no_grad():
            r = model.rollout(x, y, samples, proposal=method.proposal, temperature=temperature)
            est = method.objective(r, gamma)
            stats["ess"] = est.ess.mean().item()
            stats["bound"] = est.bound.mean().item()
            if extra is not None:
                stats.update(extra(model, x, y, samples))
    return stats
