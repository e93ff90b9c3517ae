"""The recurrent attention model of METHOD.md, Architecture (DRAM-style, two ReLU layers).

Parameter groups, by who trains them:
- theta (prediction network): context, glimpse, core, emission, classifier;
- eta (inference network q(a|x,y)): ``inference``;
- the VAR baseline b(x): ``baseline``.
The inference network and the baseline read theta's features with gradient stopped, so
their losses never move theta. The model computes log-probabilities, never a loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..policy import ActionDist
from ..rollout import ActionTrace, ParameterGroups, Rollout, inference_network, per_example
from .glimpse import GlimpseSensor, area_resize


class AttentionModel(ParameterGroups, nn.Module):
    """The attention classifier (METHOD.md, Architecture): a context network reads a
    low-resolution copy of the canvas into the top layer; N times the top layer emits an
    action (location, scale) and a glimpse there feeds the bottom layer; the class is read
    from the bottom layer. Also holds the inference network q(a|x,y) (eta) and the VAR
    baseline b(x). ``rollout`` runs K trajectories per image and returns their
    log-probabilities (:class:`wsram.rollout.Rollout`); it never computes a loss.
    """

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
        self.inference = inference_network({"label": nn.Embedding(num_classes, hidden),
                                            "state": nn.Linear(hidden, hidden)}, hidden, 2 + S)
        # VAR "+c": input-dependent baseline b(x) regressed on the reward log p(y|a,x) (M3)
        self.baseline = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    # --- stages ---
    def forward_context(self, x: Tensor, low: Tensor | None = None) -> Tensor:
        """Top-layer initial state from a low-resolution copy of x: (B, C, H, W) -> (B, D).
        ``low``: that copy, when already made."""
        if low is None:
            low = area_resize(x, [self.context_size])[0]
        return self.context(low)

    def prior_step(self, h2: Tensor) -> tuple[ActionDist, Tensor]:
        """p(a_n | x, a_<n) from the top layer: (B, K, D) -> (dist over (B, K), raw outputs)."""
        out = self.emission(h2)
        return ActionDist.from_emission(out, self.loc_std), out

    def proposal_step(self, h2: Tensor, prior_out: Tensor, label_emb: Tensor) -> ActionDist:
        """q(a_n | x, y, a_<n): the prior's outputs plus a label-aware correction, all read
        with gradient stopped so that q's update never moves theta."""
        q = self.inference
        h = F.relu(q["state"](h2.detach()) + label_emb)
        return ActionDist.from_emission(prior_out.detach() + q["out"](h), self.loc_std)

    def glimpse_features(self, patches: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        """(B, K, C, G, G), (B, K, 2), (B, K) -> (B, K, D)."""
        what = F.relu(self.glimpse_what(patches.flatten(2)))
        where_in = torch.cat([loc, F.one_hot(scale, self.num_scales).to(loc.dtype)], -1)
        return what * F.relu(self.glimpse_where(where_in))

    def read_canvas(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """What the sensor reads (its atlas of the pyramid) and the context network's
        low-resolution copy, from x (B, C, H, W); no parameters."""
        *levels, low = self.sensor.pyramid(x, also=(self.context_size,))
        return self.sensor.atlas(levels), low

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
        inputs: tuple[Tensor, Tensor] | None = None,
    ) -> Rollout:
        """Run K = num_samples trajectories per image, all B*K as one batch.

        x: (B, C, H, W), y: (B,) or None. ``proposal`` is "prior" or "q" (needs y).
        ``deterministic`` follows the policy's mode (location mean, likeliest scale).
        ``inputs``: another rollout's ``inputs`` on the same x with the same weights (what
        the sensor reads and the context features), reused instead of recomputed.
        """
        if proposal == "q" and y is None:
            raise ValueError("the inference network needs the labels y")
        B, K = x.shape[0], num_samples
        trace = ActionTrace((B, K), x.device, proposal, temperature, deterministic)
        if inputs is None:
            image, low = per_example(self.read_canvas, x)
            context = self.forward_context(x, low)  # (B, D)
        else:
            image, context = inputs[0], inputs[1].detach()
        h2 = context.unsqueeze(1).expand(B, K, -1)  # (B, K, D)
        h1 = torch.zeros_like(h2)
        label_emb = self.inference["label"](y).unsqueeze(1) if proposal == "q" else None
        for _ in range(self.glimpses):
            prior, prior_out = self.prior_step(h2)
            q = self.proposal_step(h2, prior_out, label_emb) if proposal == "q" else None
            loc, scale = trace.step(prior, q)
            g = self.glimpse_features(self.sensor(image, loc, scale), loc, scale)
            h1 = F.relu(self.core1(torch.cat([g, h1], -1)))
            h2 = F.relu(self.core2(torch.cat([h1, h2], -1)))

        class_log_probs = torch.log_softmax(self.classifier(h1).float(), -1)  # (B, K, C)
        log_lik = baseline = None
        if y is not None:
            log_lik = class_log_probs.gather(-1, y.view(B, 1, 1).expand(B, K, 1)).squeeze(-1)
            baseline = self.predict_baseline(context)
        return trace.rollout(B, K, class_log_probs, log_lik, baseline, (image, context))
