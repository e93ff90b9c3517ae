"""The few lines a training run ends with: how far it got and why it stopped, which
checkpoints hold which update, the last validation figures named as the evaluate command
names its own, where the files are, and the command to run next."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .run_dir import RunDir
from .task import TaskSpec


def stop_line(row: dict[str, Any], cfg: TrainConfig, run_dir: str | Path, command: str) -> str:
    """The first line: finished, or stopped (by what, at which update, how to resume)."""
    step, reason = row["last_step"], row["stopped_by"]
    last = RunDir(run_dir).last
    resume = f"{command} train --run-dir {shlex.quote(str(run_dir))} --resume"
    if reason == "finished":
        return f"wsram: finished {step} updates; {last} holds update {step}"
    why = {"time limit": f"the time limit (--time-limit {cfg.time_limit:g} min)",
           "another process": "another process of the run"}.get(reason, reason)
    return (f"wsram: stopped by {why} at update {step} of {cfg.steps}; {last} holds update "
            f"{step}; resume with: {resume}")


def end_of_run(row: dict[str, Any], cfg: TrainConfig, run_dir: str | Path,
               spec: TaskSpec) -> str:
    """The summary ``wsram train`` prints when a run ends (``row``: what
    :func:`wsram.train.train` returned); the task's ``summary_lines`` describe its last
    evaluation."""
    run = RunDir(run_dir)
    run_dir, command = run.path, spec.command
    lines = [stop_line(row, cfg, run_dir, command)]
    best = row.get("best_step")
    if best is not None or run.best.is_file():
        at = f"update {best}" if best is not None else "an earlier update"
        better = "highest" if getattr(spec.task_class, "select_higher", False) else "lowest"
        lag = (f", {row['last_step'] - best} updates before {run.last.name}"
               if best is not None and best < row["last_step"] else "")
        lines.append(f"  {run.best} holds {at}{lag}: the {better} "
                     f"{row.get('best_on', 'evaluation')} so far")
    if any(k.startswith("eval/") for k in row):
        lines += spec.summary_lines(row, cfg, command)
    lines.append(f"  files: {run_dir}/ ({', '.join(run.files())})")
    q = shlex.quote(str(run_dir))
    if row["stopped_by"] == "finished":
        lines.append(f"  next: {command} evaluate {q} [--checkpoint best]; "
                     f"{command} show {q}; more updates: {command} train --run-dir {q} "
                     "--resume --steps N")
    return "\n".join(lines)
