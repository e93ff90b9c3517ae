"""Action distributions: Gaussian location x categorical scale, with a temperature.

An action is (l, s): l in R^2 (mean in [-1, 1]^2 through tanh upstream), s in {0..S-1}.
Log-densities are of the values actually used by the sensor (no clipping, see glimpse.py).

A training update draws its actions from the run's own generator (:class:`ActionNoise`,
set by the engine with :func:`drawing_from`): uniforms, turned into a Gaussian location
by the inverse normal CDF and into a scale by the inverse of the categorical CDF, so that
a run's actions never depend on the global generator and a stack of runs (``stack.py``)
draws each run's own. Outside an update (evaluation, figures, diagnostics) actions come
from the global generator, as before.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor

_LOG_2PI = math.log(2 * math.pi)
#: half of the spacing of ``torch.rand``'s float32 values (multiples of 2**-24 in [0, 1)):
#: added to them, uniforms symmetric about 1/2 and never 0 or 1 (the normal's tails stop
#: at 5.5 standard deviations)
_HALF_STEP = 2.0 ** -25


class ActionNoise:
    """Where a training update's action draws come from: uniforms in [0, 1) from a CPU
    generator of the run's own (seeded from its config, saved in its checkpoints), moved
    to the device. Drawing n then m numbers gives the same numbers as drawing n + m at
    once, so how a draw is split does not change a run."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def uniform(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        return torch.rand(shape, generator=self.generator).to(device)


_NOISE: ContextVar[ActionNoise | None] = ContextVar("wsram_action_noise", default=None)


@contextlib.contextmanager
def drawing_from(noise: ActionNoise | None) -> Iterator[None]:
    """Within the block, :meth:`ActionDist.sample` draws from ``noise`` (None: the global
    generator)."""
    token = _NOISE.set(noise)
    try:
        yield
    finally:
        _NOISE.reset(token)


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
        """Draw (loc (..., 2), scale (...)), detached from the parameters: from the noise
        :func:`drawing_from` set (three uniforms per action), else the global generator."""
        noise = _NOISE.get()
        if noise is None:
            loc = self.loc_mean.detach() + self.loc_std * torch.randn_like(self.loc_mean)
            probs = torch.softmax(self.scale_logits.detach(), -1)
            scale = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1)
            return loc, scale.reshape(probs.shape[:-1])
        u = noise.uniform((*self.scale_logits.shape[:-1], 3), self.loc_mean.device)  # (..., 3)
        z = torch.special.ndtri(u[..., :2].double() + _HALF_STEP).to(self.loc_mean.dtype)
        loc = self.loc_mean.detach() + self.loc_std * z
        # the scale s is the first whose cumulative probability exceeds u (never one of
        # probability 0); scaling u by the last sum keeps s < S under rounding
        cdf = torch.softmax(self.scale_logits.detach(), -1).cumsum(-1)  # (..., S)
        scale = (cdf <= u[..., 2:] * cdf[..., -1:]).sum(-1)
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
