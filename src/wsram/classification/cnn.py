"""A convolutional baseline that reads the whole canvas (method ``cnn``).

It answers the question the attention model is built around: what does reading every
pixel cost, and what error does it buy? To go through the one training loop and the one
evaluation unchanged it speaks the attention model's probabilistic interface: a
:class:`Rollout` with no glimpses, whose K "trajectories" are the same prediction repeated,
whose action log-densities are zero, and which is trained by plain maximum likelihood
(:data:`CNN`, below: a model of this task, not an estimator of ``METHODS``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..estimators import EstimatorOutput
from ..estimators.common import finish
from ..methods import Method
from ..rollout import Rollout


def max_likelihood(r: Rollout, cv: bool, gamma: float) -> EstimatorOutput:
    """The CNN's training objective: no actions, so the gradient is that of log p(y|x)."""
    nll = -r.log_lik.mean()
    return finish(nll, r.log_lik, {"nll": nll})


#: how the CNN baseline trains (``--method cnn``): a model of this task, not an estimator
CNN = Method("cnn", "prior", False, max_likelihood, "CNN", attends=False)


class ConvClassifier(nn.Module):
    """Five ReLU conv layers (four of stride 2), global max pooling, a linear head.

    On a 100 x 100 canvas the feature maps are 50, 25, 13, 7, 7 pixels wide and the last
    layer's receptive field is 65 pixels, wider than the largest digit (56). Max pooling
    rather than averaging, because a small digit covers only a few cells of the last map
    and the black background would dilute an average.
    """

    glimpses = 0  # the attention model's N: this model takes no glimpses
    num_scales = 0

    def __init__(self, num_classes: int = 10, channels: int = 1,
                 widths: tuple[int, ...] = (16, 32, 64, 64, 128)):
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        c_in = channels
        for i, c_out in enumerate(widths):
            k, stride = (5, 2) if i == 0 else (3, 2 if i < len(widths) - 1 else 1)
            layers += [nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2), nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c_in, num_classes)

    # --- parameter groups (the attention model's names; there is no eta and no baseline) ---
    def theta(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def eta(self) -> list[nn.Parameter]:
        return []

    def baseline_params(self) -> list[nn.Parameter]:
        return []

    def forward(self, x: Tensor) -> Tensor:
        """Class logits: (B, C_in, H, W) -> (B, num_classes)."""
        return self.head(self.pool(self.features(x)).flatten(1))

    def rollout(
        self,
        x: Tensor,
        y: Tensor | None = None,
        num_samples: int = 1,
        proposal: str = "prior",
        temperature: float = 1.0,
        deterministic: bool = False,
    ) -> Rollout:
        """The prediction, computed once and repeated K = num_samples times.

        x: (B, C, H, W), y: (B,) or None. ``proposal``, ``temperature`` and
        ``deterministic`` are accepted for the attention model's sake; with no actions to
        sample they change nothing.
        """
        if proposal not in ("prior", "q"):
            raise ValueError(f"proposal must be 'prior' or 'q', got {proposal!r}")
        B, K = x.shape[0], num_samples
        log_probs = torch.log_softmax(self(x).float(), -1)  # (B, C), fp32 even under autocast
        class_log_probs = log_probs.unsqueeze(1).expand(B, K, -1)  # (B, K, C)
        log_lik = None
        if y is not None:
            log_lik = log_probs.gather(-1, y.view(B, 1)).expand(B, K)  # (B, K)
        # Zero action densities that still belong to the graph, so that a loss built from
        # them (an estimator's score-function term) backpropagates to zero, not to an error.
        zero = x.new_zeros(B, K) + 0.0 * self.head.bias.sum()  # (B, K)
        return Rollout(
            class_log_probs=class_log_probs,
            log_lik=log_lik,
            log_prior=zero,
            log_sampler=zero,
            from_prior=True,
            temperature=temperature,
            entropy=x.new_zeros(B, K),
            locs=x.new_zeros(B, K, 0, 2),
            scales=torch.zeros(B, K, 0, dtype=torch.long, device=x.device),
            prior_dists=[],
            baseline=None,
        )
