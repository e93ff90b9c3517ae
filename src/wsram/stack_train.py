"""The training loop of a stack of runs (``stack.py``): each run keeps its own folder,
config.yaml, metrics.jsonl, evaluations and checkpoints, in the format of a single run, so
that ``wsram evaluate | show | predict | train --resume`` take any of them alone.

Read top to bottom: :func:`train_stack` checks and locks every run folder, then
:func:`run_stack` sets up each run as :func:`wsram.train.build_state` does for one (fresh,
or restored from its last.pt), stacks them (:class:`~wsram.stack.StackEngine`) and loops:
each run draws its batch, one update of all, then each run's own bookkeeping (the log
window, diagnostics, evaluation, checkpoint, its non-finite guard). A run that finishes or
stops leaves the stack; the others go on. A signal (SIGINT, SIGTERM, SIGHUP) or a lost
stdout/stderr checkpoints every run after the update in progress; resumed, the stack
continues to the same numbers as one never stopped.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import distributed, terminal
from .config import TrainConfig, replace
from .distributed import Dist
from .errors import WsramError
from .graphs import GraphedStep
from .registry import spec_for
from .run_dir import (
    RunDir,
    RunLock,
    check_resume,
    clean_run_dir,
    entries_before_start,
    in_use_message,
    lock_holder,
    mark_stack,
    prepare_run_dir,
    refuse_foreign,
    remove_failed_start,
    save_config,
    saved_horizon,
)
from .stack import StackEngine, stack_problem
from .train import (
    RunLog,
    StopRequest,
    TrainState,
    _interrupt_on,
    _restore,
    after_update,
    build_state,
    finish,
)


def train_stack(cfgs: list[TrainConfig], run_dirs: list[str | Path],
                resume: bool | list[bool] = False, overwrite: bool = False,
                progress: bool = True, parent: str | Path | None = None,
                ) -> list[dict[str, Any]]:
    """Train the runs ``cfgs`` (one method, differing only in ``stack.STACK_KEYS``) as one
    stack into ``run_dirs``; return each run's last logged metrics (``stopped_by``,
    ``error`` for a run stopped by non-finite updates). ``resume``: for all runs or each
    (a run without a checkpoint starts afresh). ``parent``: the folder holding the runs,
    marked as a stack's (``RunDir``'s stack file)."""
    for cfg in cfgs:
        cfg.validate()
    check = spec_for(cfgs[0]).check_inputs
    if check is not None:  # before any folder is touched: what the data fill in
        cfgs = [check(cfg) or cfg for cfg in cfgs]
    if parent is not None:
        refuse_foreign(Path(parent), "study", "--run-dir")
    problem = stack_problem(cfgs)
    if problem:
        raise WsramError(f"cannot stack these runs: {problem}")
    if distributed.from_env(cfgs[0].device).world > 1:
        raise WsramError("a stack of runs trains in one process; not under torchrun")
    dirs = [Path(d) for d in run_dirs]
    if len(set(dirs)) != len(dirs):
        raise WsramError("a stack's runs need a folder each")
    before = [entries_before_start(d) for d in dirs]
    locked: list[Path] = []  # the folders this process holds: their new files are its own
    try:
        with contextlib.ExitStack() as held:
            old = _interrupt_on(*_START_SIGNALS)
            try:
                flags = resume if isinstance(resume, list) else [resume] * len(cfgs)
                resumes = [_claim(c, d, r, overwrite, held, locked)
                           for c, d, r in zip(cfgs, dirs, flags, strict=True)]
            finally:
                _restore(old)
            if parent is not None:
                mark_stack(Path(parent), dirs)
            return run_stack(cfgs, dirs, resumes, progress)
    except BaseException:  # as a single run: a start that failed leaves no half folder
        for d, b in zip(dirs, before, strict=True):
            remove_failed_start(d, b, d in locked)
        raise


#: signals that end a start as Ctrl-C does, until the loop's own handler takes over
_START_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _claim(cfg: TrainConfig, run_dir: Path, resume: bool, overwrite: bool,
           held: contextlib.ExitStack, locked: list[Path]) -> bool:
    """Check and lock one run's folder as :func:`wsram.train.train` does; return whether
    it resumes (a folder without a checkpoint starts afresh)."""
    if lock_holder(run_dir) is not None:
        raise WsramError(in_use_message(run_dir))
    run = RunDir(run_dir)
    afresh = resume and not run.last.is_file()
    resume = resume and not afresh
    prepare_run_dir(run_dir, resume, overwrite or afresh, cfg.input_paths())
    if resume:
        check_resume(cfg, run_dir)
    held.enter_context(RunLock(run_dir))
    locked.append(run_dir)
    clean_run_dir(run_dir, overwrite and not resume and not afresh, partial=afresh)
    return resume


@dataclass
class _Run:
    """One run of the stack: its state (as a single run's), folder and log."""

    state: TrainState
    run_dir: Path
    log: RunLog
    start_step: int
    last_row: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    error: str = ""

    def deadline(self, started: float) -> float:
        limit = self.state.cfg.time_limit
        return started + limit * 60 if limit else math.inf


def _setup(cfgs: list[TrainConfig], dirs: list[Path], resumes: list[bool]) -> list[_Run]:
    runs = []
    for cfg, run_dir, resume in zip(cfgs, dirs, resumes, strict=True):
        if not cfg.schedule_steps:  # the horizon is fixed at the start, then kept
            cfg = replace(cfg, schedule_steps=saved_horizon(run_dir) if resume else cfg.steps)
        state = build_state(cfg, run_dir, resume, False, Dist())
        if state.step <= cfg.steps:
            save_config(cfg, run_dir)
        runs.append(_Run(state, run_dir, RunLog(run_dir, state.step), state.step))
    return runs


def run_stack(cfgs: list[TrainConfig], dirs: list[Path], resumes: list[bool],
              progress: bool) -> list[dict[str, Any]]:
    """Set up (or restore) every run, loop until each has finished or stopped (or a stop
    request), then end each as a single run ends."""
    runs = _setup(cfgs, dirs, resumes)
    active = [i for i, r in enumerate(runs) if r.state.step < r.state.cfg.steps]
    engine = StackEngine([runs[i].state.model for i in active],
                         [runs[i].state.engine for i in active]) if active else None
    started = time.perf_counter()
    for r in runs:
        r.state.started = started
    stream = sys.stderr if isinstance(sys.stderr, terminal.GuardedStream) else \
        terminal.GuardedStream(sys.stderr, "stderr")
    bar = tqdm(total=sum(r.state.cfg.steps for r in runs), disable=not progress,
               initial=sum(min(r.state.step, r.state.cfg.steps) for r in runs),
               desc=f"{cfgs[0].method} x{len(runs)}", unit="upd", file=stream,
               dynamic_ncols=True)
    try:
        with StopRequest() as stop:
            while active and not stop.requested:
                active = _one_update(runs, active, engine, bar, started)
            for j, i in enumerate(active):  # stopped by a signal: every run saves
                runs[i].reason = stop.reason
                engine.write_back(j)
            bar.close()
            if engine is not None:
                _say_graphs(engine)
            for r in runs:  # still under StopRequest: a second Ctrl-C cannot cut a save
                _end(r)
    finally:
        bar.close()
    return [_result(r) for r in runs]


def _say_graphs(engine: StackEngine) -> None:
    """One line on how the update ran, where CUDA graphs were asked for."""
    step = engine.step_fn
    if isinstance(step, GraphedStep) and step.failed is None:
        n = step.replays
        print(f"wsram: CUDA graphs: {n} update{'' if n == 1 else 's'} replayed from "
              f"{step.captures} capture{'' if step.captures == 1 else 's'}", file=sys.stderr)


def _one_update(runs: list[_Run], active: list[int], engine: StackEngine, bar: Any,
                started: float) -> list[int]:
    """One update of the active runs, then each one's bookkeeping; returns the runs that
    go on (the engine keeps only them)."""
    batches = [runs[i].state.stream.sample(runs[i].state.cfg.batch_size) for i in active]
    applied, values = engine.update([b[0] for b in batches], [b[1] for b in batches],
                                    [runs[i].state.step for i in active])
    going = []
    for j, i in enumerate(active):
        run = runs[i]
        if _after(run, engine, j, applied[j], values[j], bar, started):
            going.append(j)
    if len(going) < len(active):
        engine.keep(going)
    return [active[j] for j in going]


def _after(run: _Run, engine: StackEngine, j: int, applied: bool, values: dict[str, Any],
           bar: Any, started: float) -> bool:
    """A run's bookkeeping after an update (as the single run's loop); False when the
    run has finished or stopped (its parameters then written back for its last save)."""
    state, cfg = run.state, run.state.cfg
    if not applied:
        state.nonfinite_run += 1
        state.nonfinite_total += 1
        if state.nonfinite_run < cfg.max_nonfinite:
            return True
        engine.write_back(j)
        run.reason = "non-finite"
        run.error = (f"{run.run_dir}: stopped at update {state.step}: {state.nonfinite_run} "
                     f"non-finite losses or gradients in a row; "
                     f"{RunDir(run.run_dir).last} holds the last good state")
        return False
    state.nonfinite_run = 0
    state.step += 1
    state.add_to_window(values)
    bar.update(1)
    if _needs_model(state):
        engine.write_back(j)
    run.last_row = after_update(state, run.run_dir, run.log, bar) or run.last_row
    engine.release(j)  # its checkpoint holds it; the stack's own is the one that moves on
    if state.step >= cfg.steps:
        run.reason = "finished"
    elif time.perf_counter() >= run.deadline(started):
        run.reason = "time limit"
    else:
        return True
    engine.write_back(j)
    return False


def _needs_model(state: TrainState) -> bool:
    """Whether :func:`wsram.train.after_update` evaluates, diagnoses or checkpoints now."""
    c, step = state.cfg, state.step
    return bool((c.diag_every and step % c.diag_every == 0)
                or (c.eval_every and step % c.eval_every == 0 and step < c.steps)
                or (c.checkpoint_every and step % c.checkpoint_every == 0))


def _end(run: _Run) -> None:
    """A run's end, as a single run's (its parameters already written back)."""
    state = run.state
    if not run.reason:  # it had reached its budget before this process started
        run.reason = "finished"
    if run.reason == "non-finite":
        state.save(RunDir(run.run_dir).last)
        run.log.close()
        print(f"wsram: {run.error}", file=sys.stderr)
        return
    finish(state, run.run_dir, run.log, run.reason, run.start_step, run.last_row)


def _result(run: _Run) -> dict[str, Any]:
    state, row = run.state, run.last_row
    row["stopped_early"] = state.step < state.cfg.steps
    row.update({"stopped_by": run.reason, "last_step": state.step,
                "best_step": state.best_step, "best_on": f"eval/{state.task.select_key}",
                "run_dir": str(run.run_dir)})
    if run.error:
        row["error"] = run.error
    return row
