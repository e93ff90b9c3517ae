"""Action distributions: Gaussian location x categorical scale, with a temperature.

An action is (l, s): l in R^2 (mean in [-1, 1]^2 through tanh upstream), s in {0..S-1}.
Log-densities are of the values actually used by the sensor (no clipping, see glimpse.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

_LOG_2PI = math.log(2 * math.pi)


@dataclass
class ActionDist:
    """p(a_n | ...) for a batch: loc_mean (..., 2), loc_std scalar, scale_logits (..., S)."""

    loc_mean: Tensor
    loc_std: float
    scale_logits: Tensor
    _scale_log_probs: Tensor | None = field(default=None, init=False, repr=False)

    def scale_log_probs(self) -> Tensor:
        """log_softmax of the scale logits, (..., S); computed once (log_prob and entropy
        of the same step both need it)."""
        if self._scale_log_probs is None:
            self._scale_log_probs = torch.log_softmax(self.scale_logits, -1)
        return self._scale_log_probs

    @classmethod
    def from_emission(cls, out: Tensor, loc_std: float) -> ActionDist:
        """From an emission layer's (..., 2 + S) outputs: location mean through tanh, then
        S scale logits; in fp32 even under bf16 autocast (densities stay exact)."""
        out = out.float()
        return cls(torch.tanh(out[..., :2]), loc_std, out[..., 2:])

    def tempered(self, temperature: float) -> ActionDist:
        """The exploration proposal: std x T, logits / T (METHOD.md heuristic 1)."""
        if temperature == 1.0:
            return self
        return ActionDist(self.loc_mean, self.loc_std * temperature,
                          self.scale_logits / temperature)

    def sample(self) -> tuple[Tensor, Tensor]:
        """Draw (loc (..., 2), scale (...)), detached from the parameters."""
        loc = self.loc_mean.detach() + self.loc_std * torch.randn_like(self.loc_mean)
        probs = torch.softmax(self.scale_logits.detach(), -1)
        scale = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1])
        return loc, scale

    def mode(self) -> tuple[Tensor, Tensor]:
        """The deterministic policy: location mean, most likely scale."""
        return self.loc_mean.detach(), self.scale_logits.detach().argmax(-1)

    def log_prob(self, loc: Tensor, scale: Tensor) -> Tensor:
        """log N(loc; mean, std^2 I) + log Cat(scale; softmax(logits)), shape (...)."""
        z = (loc - self.loc_mean) / self.loc_std
        log_loc = -0.5 * (z * z).sum(-1) - 2 * math.log(self.loc_std) - _LOG_2PI
        log_scale = self.scale_log_probs().gather(
            -1, scale.unsqueeze(-1)).squeeze(-1)
        return log_loc + log_scale

    def entropy(self) -> Tensor:
        """Entropy of the joint action distribution, shape (...)."""
        log_p = self.scale_log_probs()
        h_scale = -(log_p.exp() * log_p).sum(-1)
        h_loc = 2 * (0.5 * (1 + _LOG_2PI) + math.log(self.loc_std))
        return h_scale + h_loc

    def coverage_penalty(self, cells: int = 4) -> Tensor:
        """KL(batch-marginal of locations || uniform) over a cells x cells grid of [-1, 1]^2.

        Each Gaussian's mass in a cell comes from its CDF, so the penalty is differentiable
        in the means (METHOD.md heuristic 2).
        """
        edges = torch.linspace(-1, 1, cells + 1, device=self.loc_mean.device)
        mean = self.loc_mean.reshape(-1, 2, 1)  # (M, 2, 1)
        cdf = 0.5 * (1 + torch.erf((edges - mean) / (self.loc_std * math.sqrt(2))))
        mass = cdf[..., 1:] - cdf[..., :-1]  # (M, 2, cells)
        cell_mass = (mass[:, 0, None, :] * mass[:, 1, :, None]).mean(0)  # (cells, cells)
        m = cell_mass / cell_mass.sum().clamp_min(1e-12)
        return (m * (m.clamp_min(1e-12) * cells * cells).log()).sum()
