"""What a task gives the one training loop (train.py): data, model, evaluation, metrics.

The loop, the methods (methods.py) and the estimators know nothing of images, classes or
words; a task supplies them. Two tasks exist: :class:`ClassificationTask` (digits on a
canvas) and :class:`wsram.captioning.task.CaptionTask` (captions of digit scenes or
photographs). A model of any task has ``rollout(x, y, num_samples, proposal,
temperature)`` returning a :class:`wsram.models.Rollout`, and the parameter groups
``theta()``, ``eta()`` and ``baseline_params()``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .config import Config, TrainConfig
from .methods import Method
from .models import Rollout


class Stream(Protocol):
    """An endless, seeded source of training batches."""

    def sample(self, batch_size: int) -> tuple[Any, Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Task(Protocol):
    cfg: TrainConfig
    #: the key of :meth:`evaluate`'s result that picks ``best.pt``, and whether higher wins
    select_key: str
    select_higher: bool

    def build_model(self) -> nn.Module: ...
    def stream(self, device: torch.device, seed: int) -> Stream: ...
    def prepare_eval(self, device: torch.device) -> None: ...
    def evaluate(self, model: nn.Module) -> dict[str, float]: ...
    def diagnose(self, model: nn.Module, method: Method, step: int) -> dict[str, float]: ...
    def train_metrics(self, model: nn.Module, rollout: Rollout, x: Any, y: Tensor,
                      bf16: bool) -> dict[str, Tensor]: ...
    def extra_state(self) -> dict[str, Any]: ...


def device_of(x: Any) -> torch.device:
    """The device of a batch's inputs: a tensor, or a sequence of tensors."""
    return (x[0] if isinstance(x, (list, tuple)) else x).device


def classification_metrics(model: nn.Module, rollout: Rollout, x: Tensor, y: Tensor,
                           bf16: bool) -> dict[str, Tensor]:
    """Training error: one trajectory of the prediction network's own (untempered) policy
    per image, never one of the label-aware proposal's."""
    if rollout.sampled_from_prior:
        pred = rollout.class_log_probs[:, 0].detach().argmax(-1)
    else:
        with torch.no_grad(), torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
            pred = model.rollout(x, num_samples=1).class_log_probs[:, 0].argmax(-1)
    return {"error": (pred != y).float().mean()}


class ClassificationTask:
    """Digits on a canvas, from the bundled digits or MNIST IDX files (Config's fields)."""

    select_key = "test_error_mc"
    select_higher = False

    def __init__(self, cfg: Config):
        from .data import CanvasSpec, load_digits

        self.cfg = cfg
        self.spec = CanvasSpec(cfg.canvas_size, cfg.digit_min, cfg.digit_max)
        self.train_digits = load_digits("train", cfg.data_dir)

    def build_model(self) -> nn.Module:
        from .runs import build_model

        return build_model(self.cfg)

    def stream(self, device: torch.device, seed: int) -> Stream:
        from .data import CanvasGenerator

        return CanvasGenerator(self.train_digits, self.spec, device=device, seed=seed)

    def prepare_eval(self, device: torch.device) -> None:
        from .data import CanvasGenerator
        from .runs import test_set

        cfg = self.cfg
        self.x_eval, self.y_eval = test_set(cfg, cfg.eval_size)
        # The diagnostics' fixed minibatch: a stream of its own, so training's is untouched.
        self.x_diag, self.y_diag = CanvasGenerator(
            self.train_digits, self.spec, seed=cfg.seed + 2, device=device).sample(cfg.diag_batch)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from .evaluate import test_errors

        return test_errors(model, self.x_eval, self.y_eval, samples=self.cfg.eval_samples)

    def diagnose(self, model: nn.Module, method: Method, step: int) -> dict[str, float]:
        from .diagnostics import diagnose

        cfg = self.cfg
        return diagnose(model, method, self.x_diag, self.y_diag, cfg.samples, cfg.diag_repeats,
                        seed=cfg.seed * 1_000_003 + step, temperature=cfg.temperature,
                        gamma=cfg.cv_gamma)

    def train_metrics(self, model: nn.Module, rollout: Rollout, x: Tensor, y: Tensor,
                      bf16: bool) -> dict[str, Tensor]:
        return classification_metrics(model, rollout, x, y, bf16)

    def extra_state(self) -> dict[str, Any]:
        return {}


def task_for(cfg: TrainConfig, progress: bool = True) -> Task:
    """The task a config describes (``progress``: bars on long preparation work)."""
    if isinstance(cfg, Config):
        return ClassificationTask(cfg)
    from .captioning.config import CaptionConfig

    if isinstance(cfg, CaptionConfig):
        from .captioning.task import CaptionTask

        return CaptionTask(cfg, progress=progress)
    raise TypeError(f"no task for a {type(cfg).__name__}")


__all__ = ["ClassificationTask", "Stream", "Task", "classification_metrics", "device_of",
           "task_for"]
