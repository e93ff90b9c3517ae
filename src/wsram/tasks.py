"""Tasks: what each gives the one training loop, and the registry that names them.

The loop (``train.py``), the update (``engine.py``), the methods and the estimators know
nothing of images, classes or words; a task supplies them. A run's ``config.yaml`` records
its task's name, and every place that needs the task reads it through :data:`TASKS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn

from . import checkpoint
from .captioning.config import CaptionConfig
from .captioning.task import CaptionTask
from .classification.config import ClassificationConfig
from .classification.task import ClassificationTask
from .config import TrainConfig, load_yaml, make_config
from .errors import ConfigError, WsramError
from .methods import Method
from .rollout import Rollout


class Stream(Protocol):
    """An endless, seeded source of training batches."""

    def sample(self, batch_size: int) -> tuple[Any, Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Task(Protocol):
    """Data, model, evaluation and metrics of one task, for the training loop.

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


@dataclass(frozen=True)
class TaskSpec:
    name: str
    noun: str  # "a <noun> run", in messages
    command: str  # the command that trains, evaluates and shows its runs
    config_class: type[TrainConfig]
    task_class: type

    def make_task(self, cfg: TrainConfig, progress: bool = False) -> Task:
        return self.task_class(cfg, progress=progress)


#: task name -> :class:`TaskSpec` (config class, task class, its command)
TASKS: dict[str, TaskSpec] = {s.name: s for s in (
    TaskSpec("classification", "classification", "wsram", ClassificationConfig,
             ClassificationTask),
    TaskSpec("captioning", "caption", "wsram caption", CaptionConfig, CaptionTask),
)}


def task_name_of(raw: dict[str, Any]) -> str:
    """The task a config mapping (a run's config.yaml) was written for."""
    name = raw.get("task")
    if name is None:  # run folders written before config.yaml recorded the task
        return "captioning" if "dataset" in raw else "classification"
    if name not in TASKS:
        raise ConfigError(f"task: unknown task {name!r}; choose from {', '.join(TASKS)}")
    return str(name)


def task_for(cfg: TrainConfig, progress: bool = True) -> Task:
    """The task a config describes (``progress``: bars on long preparation work)."""
    return TASKS[cfg.TASK].make_task(cfg, progress)


def read_run_config(run_dir: str | Path, task: str | None = None,
                    advice: str = "use {command} evaluate/show",
                    ) -> tuple[TaskSpec, dict[str, Any]]:
    """A run folder's task and raw config; with ``task``, refuse a run of another task
    with one line ending in ``advice`` (``{command}``: the command for the run's task)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise WsramError(f"{run_dir}: no such run folder")
    if not (run_dir / "config.yaml").is_file():
        raise WsramError(f"{run_dir}: not a run folder (no config.yaml)")
    raw = load_yaml(run_dir / "config.yaml")
    spec = TASKS[task_name_of(raw)]
    if task is not None and spec.name != task:
        raise WsramError(f"{run_dir}: a {spec.noun} run, not a {TASKS[task].noun} run; "
                         + advice.format(command=spec.command))
    legacy = {k: v for k, v in spec.config_class.LEGACY_VALUES.items() if k not in raw}
    return spec, {**raw, **legacy}


class LoadedRun(NamedTuple):
    cfg: Any
    task: Any
    model: nn.Module
    state: dict[str, Any]


def load_run(run_dir: str | Path, which: str = "last", task: str | None = None,
             progress: bool = False) -> LoadedRun:
    """Config, task, model (weights loaded, eval mode) and checkpoint of a run folder
    (``which``: last or best); with ``task``, refuse a run of another task."""
    run_dir = Path(run_dir)
    spec, raw = read_run_config(run_dir, task)
    cfg = make_config(raw, spec.config_class)  # raw holds the legacy values already
    path = run_dir / f"{which}.pt"
    state = checkpoint.load(path)
    checkpoint.check_model_config(path, state.get("config", {}), cfg.model_dict())
    t = spec.make_task(cfg, progress)
    t.restore(run_dir, path, state)
    model = t.build_model()
    checkpoint.load_into(model, state["model"], path)
    model.eval()
    return LoadedRun(cfg, t, model, state)


__all__ = ["TASKS", "LoadedRun", "Stream", "Task", "TaskSpec", "load_run", "read_run_config",
           "task_for", "task_name_of"]
