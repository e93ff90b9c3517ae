"""The few lines a training run ends with: how far it got and why it stopped, which
checkpoints hold which update, the last validation figures named as the evaluate command
names its own, where the files are, and the command to run next."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from .config import TrainConfig

#: what each classification figure is (``val_error_mc`` during training is the same
#: measurement as ``wsram evaluate``'s ``test_error_mc``, on other canvases)
_KINDS = {"sampled": "one sampled trajectory", "mc": "mean of {m} trajectories",
          "deterministic": "deterministic policy"}


def stop_line(row: dict[str, Any], cfg: TrainConfig, run_dir: str | Path, command: str) -> str:
    """The first line: finished, or stopped (by what, at which update, how to resume)."""
    step, reason = row["last_step"], row["stopped_by"]
    last = Path(run_dir) / "last.pt"
    resume = f"{command} train --run-dir {shlex.quote(str(run_dir))} --resume"
    if reason == "finished":
        return f"wsram: finished {step} updates; {last} holds update {step}"
    why = {"time limit": f"the time limit (--time-limit {cfg.time_limit:g} min)",
           "another process": "another process of the run"}.get(reason, reason)
    return (f"wsram: stopped by {why} at update {step} of {cfg.steps}; {last} holds update "
            f"{step}; resume with: {resume}")


def _figures(row: dict[str, Any], cfg: TrainConfig, command: str) -> list[str]:
    evals = {k[5:]: v for k, v in row.items() if k.startswith("eval/")}
    if not evals:
        return []
    at = row.get("eval_step", row["last_step"])
    if hasattr(cfg, "holdout_every"):  # classification
        where = (f"up to {cfg.eval_size} validation canvases (every {cfg.holdout_every}th "
                 "training digit, held out)" if cfg.holdout_every else
                 f"the first {cfg.eval_size} test canvases")
        lines = [f"  evaluation at update {at}, on {where}:"]
        for k, v in evals.items():
            kind = k.rsplit("_", 1)[-1]
            what = _KINDS.get(kind, "").format(m=getattr(cfg, "eval_samples", "M"))
            lines.append(f"    {k:<26} {v:7.2%}  ({what})" if what else f"    {k:<26} {v:.4g}")
        lines.append(f"    ({command} evaluate measures the same three on the whole test set "
                     "and names them test_error_*)")
        return lines
    scores = "  ".join(f"{k} {v:.3f}" for k, v in evals.items())
    return [f"  evaluation at update {at}, greedy captions of the first {cfg.eval_size} val "
            f"images: {scores}",
            f"    ({command} evaluate scores the test split, greedy and beam search)"]


def end_of_run(row: dict[str, Any], cfg: TrainConfig, run_dir: str | Path,
               command: str = "wsram") -> str:
    """The summary ``wsram train`` prints when a run ends (``row``: what
    :func:`wsram.train.train` returned)."""
    run_dir = Path(run_dir)
    lines = [stop_line(row, cfg, run_dir, command)]
    best = row.get("best_step")
    if best is not None or (run_dir / "best.pt").is_file():
        at = f"update {best}" if best is not None else "an earlier update"
        better = "highest" if row.get("best_on", "").endswith(("bleu4", "cider")) else "lowest"
        lag = (f", {row['last_step'] - best} updates before last.pt"
               if best is not None and best < row["last_step"] else "")
        lines.append(f"  {run_dir / 'best.pt'} holds {at}{lag}: the {better} "
                     f"{row.get('best_on', 'evaluation')} so far")
    lines += _figures(row, cfg, command)
    files = [p.name for p in sorted(run_dir.iterdir())
             if not p.name.startswith(".")] if run_dir.is_dir() else []
    lines.append(f"  files: {run_dir}/ ({', '.join(files)})")
    q = shlex.quote(str(run_dir))
    if row["stopped_by"] == "finished":
        lines.append(f"  next: {command} evaluate {q} [--checkpoint best]; "
                     f"{command} show {q}; more updates: {command} train --run-dir {q} "
                     "--resume --steps N")
    return "\n".join(lines)
