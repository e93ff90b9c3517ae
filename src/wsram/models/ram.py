"""The recurrent attention model of METHOD.md, Architecture (DRAM-style, two ReLU layers).

Parameter groups, by who trains them:
- theta (prediction network): context, glimpse, core, emission, classifier;
- eta (inference network q(a|x,y)): ``inference``;
- the VAR baseline b(x): ``baseline``.
The inference network and the baseline read theta's features with gradient stopped, so
their losses never move theta. The model computes log-probabilities, never a loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..glimpse import GlimpseSensor
from ..policy import ActionDist


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


class AttentionModel(ParameterGroups, nn.Module):
    def __init__(
        self,
        canvas_size: int = 100,
        glimpses: int = 4,
        patch: int = 12,
        scales: list[float] = (0.2, 0.4, 0.8),
        hidden: int = 256,
        context_size: int = 12,
        loc_std: float = 0.1,
        num_classes: int = 10,
        channels: int = 1,
    ):
        super().__init__()
        self.glimpses = glimpses
        self.loc_std = loc_std
        self.num_classes = num_classes
        self.context_size = context_size
        S = len(scales)
        self.num_scales = S
        self.sensor = GlimpseSensor(canvas_size, patch, list(scales))
        # theta: context network into the top layer (h2_0)
        self.context = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * context_size ** 2, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
        )
        # theta: glimpse network, "what" x "where" (RAM/DRAM)
        self.glimpse_what = nn.Linear(channels * patch * patch, hidden)
        self.glimpse_where = nn.Linear(2 + S, hidden)
        # theta: two-layer ReLU recurrent core; one matmul per layer on [input, state]
        self.core1 = nn.Linear(2 * hidden, hidden)
        self.core2 = nn.Linear(2 * hidden, hidden)
        # theta: emission of the next action from the top layer, classifier from layer 1
        self.emission = nn.Linear(hidden, 2 + S)
        self.classifier = nn.Linear(hidden, num_classes)
        # eta: inference network q(a_n | x, y, a_<n) from (stopped) top layer + label. It
        # outputs a correction to the prior's (stopped) emission, zero at initialisation, so
        # that q starts as the prior and learns where the label says the prior is wrong.
        self.inference = nn.ModuleDict({
            "label": nn.Embedding(num_classes, hidden),
            "state": nn.Linear(hidden, hidden),
            "out": nn.Linear(hidden, 2 + S),
        })
        nn.init.zeros_(self.inference["out"].weight)
        nn.init.zeros_(self.inference["out"].bias)
        # VAR "+c": input-dependent baseline b(x) regressed on the reward log p(y|a,x) (M3)
        self.baseline = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    # --- stages ---
    def forward_context(self, x: Tensor) -> Tensor:
        """Top-layer initial state from a low-resolution copy of x: (B, C, H, W) -> (B, D)."""
        low = F.interpolate(x, size=(self.context_size,) * 2, mode="area")
        return self.context(low)

    def _split(self, out: Tensor) -> ActionDist:
        out = out.float()  # densities in fp32 even under bf16 autocast
        return ActionDist(torch.tanh(out[..., :2]), self.loc_std, out[..., 2:])

    def prior_step(self, h2: Tensor) -> tuple[ActionDist, Tensor]:
        """p(a_n | x, a_<n) from the top layer: (B, K, D) -> (dist over (B, K), raw outputs)."""
        out = self.emission(h2)
        return self._split(out), out

    def proposal_step(self, h2: Tensor, prior_out: Tensor, label_emb: Tensor) -> ActionDist:
        """q(a_n | x, y, a_<n): the prior's outputs plus a label-aware correction, all read
        with gradient stopped so that q's update never moves theta."""
        q = self.inference
        h = F.relu(q["state"](h2.detach()) + label_emb)
        return self._split(prior_out.detach() + q["out"](h))

    def glimpse_features(self, patches: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        """(B, K, C, G, G), (B, K, 2), (B, K) -> (B, K, D)."""
        what = F.relu(self.glimpse_what(patches.flatten(2)))
        where_in = torch.cat([loc, F.one_hot(scale, self.num_scales).to(loc.dtype)], -1)
        return what * F.relu(self.glimpse_where(where_in))

    def predict_baseline(self, context: Tensor) -> Tensor:
        """b(x), (B,), from the context features with gradient stopped."""
        return self.baseline(context.detach()).squeeze(-1)

    def rollout(
        self,
        x: Tensor,
        y: Tensor | None = None,
        num_samples: int = 1,
        proposal: str = "prior",
        temperature: float = 1.0,
        deterministic: bool = False,
    ) -> Rollout:
        """Run K = num_samples trajectories per image, all B*K as one batch.

        x: (B, C, H, W), y: (B,) or None. ``proposal`` is "prior" or "q" (needs y).
        ``deterministic`` follows the policy's mode (location mean, likeliest scale).
        """
        if proposal not in ("prior", "q"):
            raise ValueError(f"proposal must be 'prior' or 'q', got {proposal!r}")
        if proposal == "q" and y is None:
            raise ValueError("the inference network needs the labels y")
        B, K = x.shape[0], num_samples
        levels = self.sensor.pyramid(x)
        context = self.forward_context(x)  # (B, D)
        h2 = context.unsqueeze(1).expand(B, K, -1)  # (B, K, D)
        h1 = torch.zeros_like(h2)
        label_emb = self.inference["label"](y).unsqueeze(1) if proposal == "q" else None

        log_prior = x.new_zeros(B, K)
        log_sampler = x.new_zeros(B, K)  # stays unused when the sampler is the prior itself
        entropy = x.new_zeros(B, K)
        locs, scales, prior_dists = [], [], []
        prior_is_sampler = proposal == "prior" and temperature == 1.0
        for _ in range(self.glimpses):
            prior, prior_out = self.prior_step(h2)
            sampler = prior if proposal == "prior" else self.proposal_step(h2, prior_out,
                                                                          label_emb)
            sampler = sampler.tempered(temperature)
            loc, scale = sampler.mode() if deterministic else sampler.sample()
            lp = prior.log_prob(loc, scale)
            log_prior = log_prior + lp
            if not prior_is_sampler:
                log_sampler = log_sampler + sampler.log_prob(loc, scale)
            entropy = entropy + prior.entropy()
            prior_dists.append(prior)
            locs.append(loc)
            scales.append(scale)

            g = self.glimpse_features(self.sensor(levels, loc, scale), loc, scale)
            h1 = F.relu(self.core1(torch.cat([g, h1], -1)))
            h2 = F.relu(self.core2(torch.cat([h1, h2], -1)))

        class_log_probs = torch.log_softmax(self.classifier(h1).float(), -1)  # (B, K, C)
        log_lik = baseline = None
        if y is not None:
            log_lik = class_log_probs.gather(-1, y.view(B, 1, 1).expand(B, K, 1)).squeeze(-1)
            baseline = self.predict_baseline(context)
        return Rollout(
            class_log_probs=class_log_probs,
            log_lik=log_lik,
            log_prior=log_prior,
            log_sampler=log_prior if prior_is_sampler else log_sampler,
            from_prior=proposal == "prior",
            temperature=temperature,
            entropy=entropy,
            locs=torch.stack(locs, 2),
            scales=torch.stack(scales, 2),
            prior_dists=prior_dists,
            baseline=baseline,
        )
