"""The task registry: the one place where the core reaches the task packages.

A task package registers its :class:`~wsram.task.TaskSpec` when it is imported;
:func:`tasks` imports the built-in task packages (``TASK_PACKAGES``, by name: the core
holds no import of them) the first time it is asked, and :func:`commands` the packages
that only add subcommands (``COMMAND_PACKAGES``: the study's ``compare``), which only the
command line asks for. Everything else (the training loop, ``load_run``) looks tasks up
here. These by-name imports are the only way the core reaches a higher layer.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from . import checkpoint
from .config import TrainConfig, make_config
from .errors import ConfigError, WsramError
from .run_dir import RunDir, register_run_files
from .task import Task, TaskSpec

#: the task packages, loaded in this order: each registers itself when imported
TASK_PACKAGES = ("wsram.classification", "wsram.captioning")
#: packages that add subcommands but no task (loaded by the command line alone)
COMMAND_PACKAGES = ("wsram.study",)

_TASKS: dict[str, TaskSpec] = {}
_COMMANDS: list[Any] = []  # add_commands(subparsers) of packages that are not tasks
_loaded: set[str] = set()


def _load(packages: tuple[str, ...]) -> None:
    for name in packages:
        if name not in _loaded:
            importlib.import_module(name)  # registers itself
            _loaded.add(name)


def register(spec: TaskSpec) -> TaskSpec:
    """Add a task (what its package does when imported); a name is registered once."""
    if spec.name in _TASKS and _TASKS[spec.name] != spec:
        raise ValueError(f"task {spec.name!r} is registered already")
    _TASKS[spec.name] = spec
    register_run_files(*spec.run_files)
    return spec


def register_commands(add_commands: Any) -> None:
    """Add subcommands that belong to no task (e.g. the study's ``compare``)."""
    if add_commands not in _COMMANDS:
        _COMMANDS.append(add_commands)


def tasks() -> dict[str, TaskSpec]:
    """Every registered task by name (the built-in task packages imported on first use)."""
    _load(TASK_PACKAGES)
    return _TASKS


def commands() -> list[Any]:
    """The registered ``add_commands`` of packages that are not tasks (imported on first
    use)."""
    _load(COMMAND_PACKAGES)
    return list(_COMMANDS)


def spec_for(cfg: TrainConfig) -> TaskSpec:
    return tasks()[cfg.TASK]


def task_for(cfg: TrainConfig, progress: bool = True) -> Task:
    """The task a config describes (``progress``: bars on long preparation work)."""
    return spec_for(cfg).make_task(cfg, progress)


def _spec_named(raw: dict[str, Any], run_dir: Path) -> TaskSpec:
    name = raw.get("task")
    if name is None:  # written before config.yaml recorded the task
        raise WsramError(f"{run_dir}: a run folder of an older format; convert it with: "
                         f"wsram migrate {run_dir}")
    if name not in tasks():
        raise ConfigError(f"task: unknown task {name!r}; choose from {', '.join(tasks())}")
    return tasks()[name]


def read_run_config(run_dir: str | Path, task: str | None = None,
                    advice: str = "use {command} evaluate/show",
                    ) -> tuple[TaskSpec, dict[str, Any]]:
    """A run folder's task and raw config; with ``task``, refuse a run of another task
    with one line ending in ``advice`` (``{command}``: the command for the run's task)."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise WsramError(f"{run}: no such run folder")
    if not run.has_config():
        raise WsramError(f"{run}: not a run folder (no {run.config.name})")
    raw = run.read_config()
    spec = _spec_named(raw, run.path)
    if task is not None and spec.name != task:
        raise WsramError(f"{run}: a {spec.noun} run, not a {tasks()[task].noun} run; "
                         + advice.format(command=spec.command))
    return spec, raw


class LoadedRun(NamedTuple):
    cfg: Any
    task: Any
    model: nn.Module
    state: dict[str, Any]


def load_run(run_dir: str | Path, which: str = "last", task: str | None = None,
             progress: bool = False) -> LoadedRun:
    """Config, task, model (weights loaded, eval mode) and checkpoint of a run folder
    (``which``: last or best); with ``task``, refuse a run of another task."""
    run = RunDir(run_dir)
    spec, raw = read_run_config(run.path, task)
    cfg = make_config(raw, spec.config_class)
    path = run.checkpoint(which)
    if which == "last" and not path.is_file() and run.best.is_file():  # e.g. shipped weights
        raise WsramError(f"{run}: holds {run.best.name} but no {path.name}; add "
                         "--checkpoint best")
    state = checkpoint.load(path)
    checkpoint.check_model_config(path, state.get("config", {}), cfg.model_dict())
    t = spec.make_task(cfg, progress)
    t.restore(run.path, path, state)
    model = t.build_model()
    checkpoint.load_into(model, state["model"], path)
    model.eval()
    return LoadedRun(cfg, t, model, state)


__all__ = ["LoadedRun", "commands", "load_run", "read_run_config", "register",
           "register_commands", "spec_for", "task_for", "tasks"]
