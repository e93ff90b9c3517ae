"""What every model hands the estimators: a :class:`Rollout` of K trajectories per example,
and the theta / eta / baseline split of its parameters (:class:`ParameterGroups`).

A model of any task has ``rollout(x, y, num_samples, proposal, temperature,
deterministic)`` returning a :class:`Rollout`; the methods (``methods.py``) turn its
log-probabilities into a loss, and never see glimpses, images or words. The per-step
bookkeeping of sampling an action (from the prior or from q, tempered or not) and
summing its log-densities is the same in every model: :class:`ActionTrace`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .policy import ActionDist

__all__ = ["ActionTrace", "ParameterGroups", "Rollout", "device_of", "inference_network",
           "per_example"]


@dataclass
class Rollout:
    """K trajectories for each of B images. Shapes use N glimpses and C classes.

    class_log_probs: (B, K, C)   log p(. | a^k, x)
    log_lik:         (B, K)      log p(y | a^k, x), when y was given
    log_prior:       (B, K)      log p(a^k | x) under the untempered prior (grad to theta)
    log_sampler:     (B, K)      log-density of the distribution the actions were drawn from
                                 (tempered prior or tempered q; grad to its own parameters)
    from_prior:      whether that distribution was the (possibly tempered) prior
    temperature:     the sampling temperature; log_sampler is log_prior itself when the
                     samples came from the untempered prior
    entropy:         (B, K)      sum over glimpses of the prior's entropy
    locs:            (B, K, N, 2)
    scales:          (B, K, N)
    prior_dists:     per-glimpse prior distributions (for the coverage regulariser)
    baseline:        (B,)        predicted reward b(x), when y was given
    inputs:          the model's work that depends only on x (and its weights), which a
                     second rollout on the same x may reuse (``rollout(..., inputs=)``);
                     None when the model keeps none
    """

    class_log_probs: Tensor
    log_lik: Tensor | None
    log_prior: Tensor
    log_sampler: Tensor
    from_prior: bool
    temperature: float
    entropy: Tensor
    locs: Tensor
    scales: Tensor
    prior_dists: list[ActionDist]
    baseline: Tensor | None
    inputs: Any = None

    @property
    def sampled_from_prior(self) -> bool:
        """True when the actions are exact samples of the untempered prior p(a|x)."""
        return self.from_prior and self.temperature == 1.0


class ParameterGroups:
    """theta / eta / baseline split of a model with ``inference`` (q) and ``baseline``
    submodules: theta is everything else, the prediction network."""

    inference: nn.Module
    baseline: nn.Module
    parameters: Any

    def theta(self) -> list[nn.Parameter]:
        skip = {id(p) for p in self.eta()} | {id(p) for p in self.baseline_params()}
        return [p for p in self.parameters() if id(p) not in skip]

    def eta(self) -> list[nn.Parameter]:
        return list(self.inference.parameters())

    def baseline_params(self) -> list[nn.Parameter]:
        return list(self.baseline.parameters())


class ActionTrace:
    """Samples one action per step and sums, over the steps, the log-densities a
    :class:`Rollout` carries (METHOD.md M4: log p(a|x) is a sum over glimpses).

    ``proposal`` is "prior" or "q"; with ``temperature`` != 1 the sampler is the tempered
    proposal (METHOD.md 4.5), and ``log_sampler`` its own log-density; otherwise, for the
    prior, ``log_sampler`` is ``log_prior`` itself. Per-step tensors have a leading shape
    ``rows`` (e.g. (B, K) or (B*K,)); a ``mask`` (same shape, 0 or 1) leaves a step out of
    the sums (padding in captions).
    """

    def __init__(self, rows: tuple[int, ...], device: torch.device, proposal: str = "prior",
                 temperature: float = 1.0, deterministic: bool = False):
        if proposal not in ("prior", "q"):
            raise ValueError(f"proposal must be 'prior' or 'q', got {proposal!r}")
        self.proposal = proposal
        self.temperature = temperature
        self.deterministic = deterministic
        self.prior_is_sampler = proposal == "prior" and temperature == 1.0
        zeros = torch.zeros(rows, device=device)
        self.log_prior = zeros
        self.log_sampler = zeros  # stays unused when the sampler is the prior itself
        self.entropy = zeros
        self.locs: list[Tensor] = []
        self.scales: list[Tensor] = []
        self.prior_dists: list[ActionDist] = []

    def step(self, prior: ActionDist, q: ActionDist | None = None,
             mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Draw this step's action from the prior (or ``q`` when the proposal is q),
        tempered, or take its mode; add its log-densities; return (loc, scale)."""
        sampler = (prior if self.proposal == "prior" else q).tempered(self.temperature)
        loc, scale = sampler.mode() if self.deterministic else sampler.sample()
        lp, h = prior.log_prob(loc, scale), prior.entropy()
        ls = None if self.prior_is_sampler else sampler.log_prob(loc, scale)
        if mask is not None:
            lp, h = mask * lp, mask * h
            ls = None if ls is None else mask * ls
        self.log_prior = self.log_prior + lp
        if ls is not None:
            self.log_sampler = self.log_sampler + ls
        self.entropy = self.entropy + h
        self.prior_dists.append(prior)
        self.locs.append(loc)
        self.scales.append(scale)
        return loc, scale

    def rollout(self, B: int, K: int, class_log_probs: Tensor, log_lik: Tensor | None,
                baseline: Tensor | None, inputs: Any = None) -> Rollout:
        """The finished :class:`Rollout`, every per-trajectory tensor viewed as (B, K, ...)
        and actions stacked along the step axis: locs (B, K, N, 2), scales (B, K, N)."""
        locs = torch.stack(self.locs, self.locs[0].dim() - 1)
        scales = torch.stack(self.scales, self.scales[0].dim())
        log_prior = self.log_prior.view(B, K)
        return Rollout(
            class_log_probs=class_log_probs,
            log_lik=log_lik,
            log_prior=log_prior,
            log_sampler=log_prior if self.prior_is_sampler else self.log_sampler.view(B, K),
            from_prior=self.proposal == "prior",
            temperature=self.temperature,
            entropy=self.entropy.view(B, K),
            locs=locs.view(B, K, -1, 2),
            scales=scales.view(B, K, -1),
            prior_dists=self.prior_dists,
            baseline=baseline,
            inputs=inputs,
        )


def inference_network(readers: dict[str, nn.Module], hidden: int, actions: int,
                      ) -> nn.ModuleDict:
    """q's network (eta): the modules that read its inputs (``readers``, created by the
    caller in this order), then ``out``, a linear map to a correction of the prior's
    ``actions`` emission outputs, zero at initialisation so that q starts as the prior and
    learns where what it knows (the label, the word) says the prior is wrong."""
    net = nn.ModuleDict({**readers, "out": nn.Linear(hidden, actions)})
    nn.init.zeros_(net["out"].weight)
    nn.init.zeros_(net["out"].bias)
    return net


def device_of(x: Any) -> torch.device:
    """The device of a batch's inputs: a tensor, or a sequence of tensors."""
    return (x[0] if isinstance(x, (list, tuple)) else x).device


class _PerExample(torch.autograd.Function):
    """``fn(*xs)`` whose vmap rule folds the mapped dimension into the batch dimension."""

    @staticmethod
    def forward(fn: Any, *xs: Tensor) -> tuple[Tensor, ...]:
        return tuple(fn(*xs))

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], fn: Any, *xs: Tensor) -> Any:
        n = info.batch_size
        flat = [(x.movedim(d, 0) if d is not None else x.expand(n, *x.shape)).flatten(0, 1)
                for x, d in zip(xs, in_dims[1:], strict=True)]
        outs = tuple(o.unflatten(0, (n, -1)) for o in fn(*flat))
        return outs, tuple(0 for _ in outs)


def per_example(fn: Any, *xs: Tensor) -> tuple[Tensor, ...]:
    """``fn(*xs)`` for work on a batch of inputs that needs no gradient and treats each
    example on its own (e.g. a glimpse sensor's pyramid): batch-first tensors in, a tuple
    of batch-first tensors out. Under ``torch.func.vmap`` (a stack of runs, ``stack.py``)
    the runs' batches go through ``fn`` as one batch, so that layouts vmap cannot express
    (channels-last) and in-place writes into new tensors still work, at one call's cost."""
    return _PerExample.apply(fn, *xs)
