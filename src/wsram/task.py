"""What a task gives the one training loop, and what it tells the command line.

The loop (``train.py``), the update (``engine.py``), the methods and the estimators know
nothing of images, classes or words; a task supplies them. A task package (e.g.
``wsram.classification``) defines a :class:`Task` class and registers one
:class:`TaskSpec` with :func:`wsram.registry.register`; the core reaches it only through
the registry. ``docs/architecture.md`` shows a complete toy task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .config import TrainConfig
from .methods import Method
from .rollout import Rollout


class Stream(Protocol):
    """An endless, seeded source of training batches."""

    def sample(self, batch_size: int) -> tuple[Any, Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Task(Protocol):
    """Data, model, evaluation and metrics of one task, for the training loop.

    Its data splits: ``stream`` draws the training batches, ``prepare_eval`` /
    ``evaluate`` use the validation split (which picks ``best.pt``); the test split is
    read only by the task's own evaluate command (``TaskSpec.add_commands``), as are its
    figures.

    A model of any task has ``rollout(x, y, num_samples, proposal, temperature,
    deterministic)`` returning a :class:`~wsram.rollout.Rollout`, and the parameter groups
    ``theta()``, ``eta()`` and ``baseline_params()`` (:class:`~wsram.rollout.ParameterGroups`).
    """

    cfg: TrainConfig
    #: the key of :meth:`evaluate`'s result that picks ``best.pt``, and whether higher wins
    select_key: str
    select_higher: bool

    def prepare(self, run_dir: Path, device: torch.device, main: bool, resume: bool) -> None:
        """Work before training (e.g. pretrain an encoder); rank 0 first, then the others."""
    def method(self) -> Method:
        """How the model is trained: ``METHODS[cfg.method]``, or a task's own (a baseline)."""
    def build_model(self) -> nn.Module: ...
    def stream(self, device: torch.device, seed: int) -> Stream: ...
    def prepare_eval(self, device: torch.device) -> None: ...
    def evaluate(self, model: nn.Module) -> dict[str, float]: ...
    def diagnose(self, model: nn.Module, method: Method, step: int) -> dict[str, float]: ...
    def train_metrics(self, model: nn.Module, rollout: Rollout, x: Any, y: Tensor,
                      bf16: bool) -> dict[str, Tensor]: ...
    def extra_state(self) -> dict[str, Any]: ...
    def restore(self, run_dir: Path, path: Path, state: dict[str, Any]) -> None:
        """Before building a model for a checkpoint ``state``: take what the task keeps in
        it (a vocabulary, an encoder) from there and from the run folder."""


#: ``add_commands(subparsers)``: a task's subcommands (``train`` through
#: :func:`wsram.cli.add_train_parser`, evaluate, show, ...)
AddCommands = Callable[[Any], None]
#: ``summary_lines(row, cfg, command)``: the end-of-run lines on the last evaluation
SummaryLines = Callable[[dict[str, Any], Any, str], list[str]]


@dataclass(frozen=True)
class TaskSpec:
    """A task as the registry knows it."""

    name: str  # written to every config.yaml as ``task``
    noun: str  # "a <noun> run", in messages
    command: str  # the command that trains, evaluates and shows its runs ("wsram caption")
    config_class: type[TrainConfig]
    task_class: Callable[..., Task]  # (cfg, progress=...) -> Task
    add_commands: AddCommands
    summary_lines: SummaryLines
    help: str = ""  # the help line of its command group, for a task under a prefix
    #: ``check_inputs(cfg) -> cfg``: read the training data far enough to refuse bad input
    #: before the run folder is touched (``--overwrite`` must not delete a run for a new one
    #: that cannot start), and return the config with what the data determine filled in
    #: (e.g. an image folder's classes); None: nothing to check early
    check_inputs: Callable[[Any], Any] | None = None
    #: files its runs hold beyond the core's (``--overwrite`` replaces them too)
    run_files: tuple[str, ...] = ()
    #: whether several runs of it may train as one stack (``stack.py``): its batches have
    #: the same shapes every update and its model's rollout runs under ``torch.func.vmap``
    #: (no control flow on tensor values)
    stackable: bool = False
    #: ``wsram migrate``: a raw config written before config files named their task ->
    #: today's raw config, or None when it is not this task's (None: no old runs exist)
    migrate: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None

    @property
    def prefix(self) -> list[str]:
        """The words before ``train`` on the command line: [] or ["caption"]."""
        return self.command.split()[1:]

    def make_task(self, cfg: TrainConfig, progress: bool = False) -> Task:
        return self.task_class(cfg, progress=progress)


__all__ = ["AddCommands", "Stream", "SummaryLines", "Task", "TaskSpec"]
