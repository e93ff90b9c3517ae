"""Training diagnostics (METHOD.md, Metrics): gradient variance, ESS, bound, policy usage."""

from __future__ import annotations

import torch
from torch import Tensor

from .methods import Method
from .models import AttentionModel


def variance_stats(grads: Tensor) -> dict[str, float]:
    """From R gradient estimates ``(R, P)``: trace of their covariance (the sum over
    parameters of the per-parameter variance, unbiased) and that trace over ||mean||^2."""
    if grads.shape[0] < 2:
        raise ValueError("need at least 2 gradient estimates")
    trace = grads.var(0, unbiased=True).sum().item()
    norm2 = grads.mean(0).pow(2).sum().item()
    return {"grad_var": trace, "grad_var_rel": trace / norm2 if norm2 > 0 else float("inf")}


def gradient_estimates(model: AttentionModel, method: Method, x: Tensor, y: Tensor,
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


@torch.no_grad()
def policy_usage(model: AttentionModel, x: Tensor) -> dict[str, float]:
    """The prior policy on x: its mean entropy per glimpse and how often each scale is used."""
    if model.glimpses == 0:  # the CNN baseline: no policy to describe
        return {}
    r = model.rollout(x, num_samples=1)
    counts = torch.bincount(r.scales.reshape(-1), minlength=model.num_scales).float()
    freq = counts / counts.sum()
    stats = {"entropy": r.entropy.mean().item() / model.glimpses}
    stats.update({f"scale{s}": freq[s].item() for s in range(model.num_scales)})
    return stats


def diagnose(model: AttentionModel, method: Method, x: Tensor, y: Tensor, samples: int,
             repeats: int, seed: int, temperature: float = 1.0,
             gamma: float = 1.0) -> dict[str, float]:
    """All diagnostics on a fixed minibatch, drawing from their own random stream so that
    training's stream is untouched. Keys are logged under ``diag/``."""
    device = x.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        stats = variance_stats(gradient_estimates(model, method, x, y, samples, repeats,
                                                  temperature, gamma))
        with torch.no_grad():
            r = model.rollout(x, y, samples, proposal=method.proposal, temperature=temperature)
            est = method.objective(r, gamma)
            stats["ess"] = est.ess.mean().item()
            stats["bound"] = est.bound.mean().item()
            # Errors of the prediction network's own policy on this batch: one trajectory,
            # and the class probabilities averaged over K (what log p(y|x), M1, rewards).
            probs = model.rollout(x, num_samples=samples).class_log_probs.exp()  # (B, K, C)
            stats["error_sampled"] = (probs[:, 0].argmax(-1) != y).float().mean().item()
            stats["error_mc"] = (probs.mean(1).argmax(-1) != y).float().mean().item()
        stats.update(policy_usage(model, x))
    return stats
