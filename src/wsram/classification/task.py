"""The classification task for the one training loop: digits (or the user's images) on a
canvas, from the bundled digits, MNIST IDX files, an image folder or a ``.npz`` file
(ClassificationConfig's fields); the attention model or, for method ``cnn``, the
whole-canvas CNN."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..diagnostics import diag_seed, diagnose
from ..engine import own_policy_rollout
from ..methods import METHODS, Method
from ..rollout import Rollout
from .cnn import CNN, ConvClassifier
from .config import ClassificationConfig
from .data import CanvasGenerator, DigitSet
from .data.splits import canvas_spec, describe_data, eval_split, load_split, test_set
from .evaluate import test_errors
from .model import AttentionModel


def method_of(name: str) -> Method:
    """The method ``--method`` names: an estimator of ``METHODS``, or the CNN baseline."""
    return CNN if name == CNN.name else METHODS[name]


def build_model(cfg: ClassificationConfig) -> AttentionModel | ConvClassifier:
    """The network ``cfg.method`` trains: the attention model, or the CNN for the one
    method that takes no glimpses."""
    if not method_of(cfg.method).attends:
        return ConvClassifier(num_classes=cfg.num_classes, channels=cfg.channels)
    return AttentionModel(
        canvas_size=cfg.canvas_size, glimpses=cfg.glimpses, patch=cfg.patch,
        scales=cfg.scales, hidden=cfg.hidden, context_size=cfg.context_size,
        loc_std=cfg.loc_std, num_classes=cfg.num_classes, channels=cfg.channels,
    )


def diag_batch(cfg: ClassificationConfig, digits: DigitSet, device: torch.device | str = "cpu",
               ) -> tuple[Tensor, Tensor]:
    """The diagnostics' fixed minibatch: training canvases from a stream of its own."""
    return CanvasGenerator(digits, canvas_spec(cfg), seed=cfg.seed + 2,
                           device=device).sample(cfg.diag_batch)


def classification_metrics(model: nn.Module, rollout: Rollout, x: Tensor, y: Tensor,
                           bf16: bool) -> dict[str, Tensor]:
    """Training error: one trajectory of the prediction network's own (untempered) policy
    per image, never one of the label-aware proposal's."""
    pred = own_policy_rollout(model, rollout, x, y, bf16).class_log_probs[:, 0].detach()
    return {"error": (pred.argmax(-1) != y).float().mean()}


@torch.no_grad()
def policy_usage(model: nn.Module, x: Tensor) -> dict[str, float]:
    """The prior policy on x: its mean entropy per glimpse and how often each scale is used."""
    if model.glimpses == 0:  # the CNN baseline: no policy to describe
        return {}
    r = model.rollout(x, num_samples=1)
    counts = torch.bincount(r.scales.reshape(-1), minlength=model.num_scales).float()
    freq = counts / counts.sum()
    stats = {"entropy": r.entropy.mean().item() / model.glimpses}
    stats.update({f"scale{s}": freq[s].item() for s in range(model.num_scales)})
    return stats


def policy_diagnostics(model: nn.Module, x: Tensor, y: Tensor, samples: int,
                       ) -> dict[str, float]:
    """Errors of the prediction network's own policy on the diagnostics' batch: one
    trajectory, and class probabilities averaged over K (what log p(y|x), M1, rewards);
    then its entropy and scale usage."""
    probs = model.rollout(x, num_samples=samples).class_log_probs.exp()  # (B, K, C)
    stats = {"error_sampled": (probs[:, 0].argmax(-1) != y).float().mean().item(),
             "error_mc": (probs.mean(1).argmax(-1) != y).float().mean().item()}
    stats.update(policy_usage(model, x))
    return stats


class ClassificationTask:
    """Digits on a canvas: training canvases drawn on the fly from a seeded stream, fixed
    validation canvases (every ``holdout_every``-th training digit) for the evaluations
    during training and best.pt, and the three errors (``evaluate.py``)."""

    select_higher = False

    def __init__(self, cfg: ClassificationConfig, progress: bool = True):
        self.cfg = cfg
        self.spec = canvas_spec(cfg)
        self._train_digits: DigitSet | None = None
        self.split = eval_split(cfg)
        self.select_key = f"{self.split}_error_mc"

    @property
    def train_digits(self) -> DigitSet:
        if self._train_digits is None:
            self._train_digits = load_split(self.cfg, "train")
        return self._train_digits

    def prepare(self, run_dir: Path, device: torch.device, main: bool, resume: bool) -> None:
        """Read the digits now (a bad --data-dir fails early) and say what was found."""
        self.train_digits  # noqa: B018
        if main:
            print("\n".join(describe_data(self.cfg, self.train_digits)), file=sys.stderr)

    def restore(self, run_dir: Path, path: Path, state: dict[str, Any]) -> None:
        """Nothing beyond the weights: the config alone builds the model."""

    def build_model(self) -> nn.Module:
        return build_model(self.cfg)

    def method(self) -> Method:
        return method_of(self.cfg.method)

    def stream(self, device: torch.device, seed: int) -> CanvasGenerator:
        return CanvasGenerator(self.train_digits, self.spec, device=device, seed=seed)

    def prepare_eval(self, device: torch.device) -> None:
        self.x_eval, self.y_eval = test_set(self.cfg, self.cfg.eval_size, self.split)
        self.x_diag, self.y_diag = diag_batch(self.cfg, self.train_digits, device)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        errs = test_errors(model, self.x_eval, self.y_eval, samples=self.cfg.eval_samples)
        return {k.replace("test_", f"{self.split}_", 1): v for k, v in errs.items()}

    def diagnose(self, model: nn.Module, method: Method, step: int) -> dict[str, float]:
        cfg = self.cfg
        return diagnose(model, method, self.x_diag, self.y_diag, cfg.samples, cfg.diag_repeats,
                        seed=diag_seed(cfg.seed, step), temperature=cfg.temperature,
                        gamma=cfg.cv_gamma, extra=policy_diagnostics)

    train_metrics = staticmethod(classification_metrics)

    def extra_state(self) -> dict[str, Any]:
        """The class names, where the data give them, for ``wsram predict``."""
        classes = self.train_digits.classes
        return {"classes": list(classes)} if classes else {}
