"""The training loop, the same for every task and method.

Read top to bottom: :func:`train` checks and locks the run folder (rank 0), then
:func:`run_training` sets up (device, task, model, :class:`~wsram.engine.Engine`), restores
a :class:`TrainState` on resume, and loops: one update (``engine.py``), the log window,
diagnostics, evaluation and checkpoints; at the end (all updates done, or the time limit)
a final evaluation, and in every case a checkpoint. SIGINT, SIGTERM, SIGHUP, SIGUSR2 and a
closed stdout/stderr (:class:`StopRequest`) end the loop after the update in progress.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import checkpoint, distributed, terminal
from .config import TrainConfig, replace
from .distributed import Dist
from .engine import Engine, action_seed
from .errors import CheckpointError, WsramError
from .registry import spec_for, task_for
from .run_dir import (
    RunDir,
    RunLock,
    check_resume,
    clean_run_dir,
    entries_before_start,
    in_use_message,
    lock_holder,
    prepare_run_dir,
    remove_failed_start,
    save_config,
    saved_horizon,
    truncate_metrics,
)
from .task import Stream, Task


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train ``cfg.method`` on the task ``cfg`` describes into ``run_dir``; return the last
    logged metrics (with ``stopped_early``).

    Under ``torchrun`` every rank calls this; rank 0 alone checks, locks and writes the
    run folder, and ``batch_size`` is per rank.
    """
    cfg.validate()
    run_dir = Path(run_dir)
    ddp = distributed.from_env(cfg.device)
    try:
        check = spec_for(cfg).check_inputs
        if check is not None:  # on every rank, before the folder is touched: the data
            cfg = check(cfg) or cfg  # fill in what they determine (a folder's classes)
        if not ddp.is_main:
            with out_of_memory_is_one_line(cfg, run_dir):
                row = run_training(cfg, run_dir, resume, False, ddp)
            ddp.finish()
            return row
        before = entries_before_start(run_dir)
        locked = False  # until this process holds the folder's lock, its files are not ours
        try:
            old = _interrupt_on(signal.SIGTERM, signal.SIGHUP)
            if lock_holder(run_dir) is not None:  # the first and only thing to say
                raise WsramError(in_use_message(run_dir))
            run = RunDir(run_dir)
            afresh = resume and not run.last.is_file() and run.has_config()
            if afresh:  # it stopped before its first checkpoint: nothing to continue
                print(f"wsram: {run_dir}: no checkpoint yet (no {run.last.name}); starting "
                      "afresh from update 0", file=sys.stderr)
                resume = False
            prepare_run_dir(run_dir, resume, overwrite or afresh, cfg.input_paths())
            if resume:
                check_resume(cfg, run_dir)
            with RunLock(run_dir):
                locked = True
                clean_run_dir(run_dir, overwrite and not resume and not afresh,
                              partial=afresh)
                with out_of_memory_is_one_line(cfg, run_dir):
                    row = run_training(cfg, run_dir, resume, progress, ddp)
            ddp.finish()
            return row
        except BaseException:
            ddp.announce(False)  # if rank 0 failed before training began, the others stop too
            remove_failed_start(run_dir, before, locked)
            raise
        finally:
            _restore(old)
    finally:
        ddp.close()


def _interrupt_on(*signals: signal.Signals) -> dict[int, Any]:
    """Until the loop's own handler takes over, these signals end a start as Ctrl-C does
    (KeyboardInterrupt), so that it removes what it created; returns the old handlers."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = {}
    for sig in signals:
        if signal.getsignal(sig) is signal.SIG_IGN:  # nohup: the user wants it ignored
            continue
        try:
            old[sig] = signal.signal(sig, interrupt)
        except ValueError:  # not the main thread
            pass
    return old


def _restore(handlers: dict[int, Any]) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


#: CUDA's allocation error (``torch.OutOfMemoryError`` from torch 2.5 on)
_CUDA_OOM = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def _is_out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, _CUDA_OOM) or (isinstance(e, RuntimeError) and any(
        s in text for s in ("out of memory", "can't allocate memory", "not enough memory")))


def out_of_memory_message(e: BaseException, cfg: TrainConfig, run_dir: Path) -> str:
    """One line for an allocation that failed: what was asked, and what to lower."""
    text = str(e)
    asked = re.search(r"allocate (\d+) bytes", text)
    if asked:
        size = f"{int(asked.group(1)) / 2**30:.1f} GiB"
    else:
        found = re.search(r"[Tt]ried to allocate ([\d.]+ ?[KMGT]?i?B)", text)
        size = found.group(1) if found else "more than is free"
    where = "GPU" if isinstance(e, _CUDA_OOM) or "CUDA" in text else "memory"
    last = RunDir(run_dir).last
    kept = f"{last} is as it was" if last.is_file() else "nothing was saved"
    return (f"out of {where}: asked for {size} at batch size {cfg.batch_size} x "
            f"{cfg.samples} samples = {cfg.batch_size * cfg.samples} trajectories per update "
            f"(evaluations: {cfg.eval_size} images); lower --batch-size or --samples "
            f"(or --eval-size); {kept}")


@contextlib.contextmanager
def out_of_memory_is_one_line(cfg: TrainConfig, run_dir: Path) -> Iterator[None]:
    """Turn a failed allocation (CPU or CUDA) into a WsramError of one line."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        if not (_is_out_of_memory(e) or isinstance(e, MemoryError)):
            raise
        raise WsramError(out_of_memory_message(e, cfg, run_dir)) from None


class TrainState:
    """Everything a restart must restore to continue bit for bit: the model, the engine's
    optimisers, the data stream, the update count, the best evaluation so far, the open
    log window and the global random streams. Plain-dict checkpoints of it are
    ``last.pt`` and ``best.pt``."""

    def __init__(self, cfg: TrainConfig, task: Task, model: torch.nn.Module, engine: Engine,
                 stream: Stream, device: torch.device, ddp: Dist):
        self.cfg, self.task, self.model, self.engine = cfg, task, model, engine
        self.stream, self.device, self.ddp = stream, device, ddp
        self.step = 0
        self.best = math.inf  # lower is better, whichever way the task's key points
        self.elapsed = 0.0  # training seconds before this process started
        self.started = time.perf_counter()
        self.nonfinite_total = 0
        self.nonfinite_run = 0  # consecutive skipped updates; not saved (a resume resets it)
        self.best_step: int | None = None  # the update best.pt holds
        self.evaluated_at = -1  # the update last evaluated by this process, and the result
        self.last_eval: dict[str, float] = {}
        self.sums: dict[str, torch.Tensor] = {}  # running sums of the open log window
        self.count = 0

    def seconds(self) -> float:
        """Training seconds over every process that worked on this run."""
        return self.elapsed + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        state = {
            "step": self.step, "best": self.best, "best_step": self.best_step,
            "config": self.cfg.model_dict(),
            "method": self.cfg.method, "model": self.model.state_dict(),
            **self.engine.state_dict(), "data_rng": self.stream.state_dict(),
            "torch_rng": torch.get_rng_state(), "nonfinite_total": self.nonfinite_total,
            "elapsed": self.seconds(), "world": self.ddp.world,
            "log_sums": {k: v.item() for k, v in self.sums.items()}, "log_count": self.count,
            "schedule_steps": self.cfg.horizon(),
            **self.task.extra_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        checkpoint.check_model_config(path, state["config"], self.cfg.model_dict())
        horizon = state.get("schedule_steps", self.cfg.horizon())
        if horizon != self.cfg.horizon():
            raise CheckpointError(f"{path}: its schedule's horizon is {horizon} updates, the "
                                  f"config's {self.cfg.horizon()}; resume with the run's config")
        checkpoint.load_into(self.model, state["model"], path)
        self.engine.load_state_dict(state)
        self.step, self.best = int(state["step"]), float(state["best"])
        self.best_step = state.get("best_step")
        self.elapsed = float(state.get("elapsed", 0.0))
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        # The log window open at the checkpoint, so that the next line averages the same
        # updates as it would have without the interruption.
        self.sums = {k: torch.tensor(v, device=self.device)
                     for k, v in state.get("log_sums", {}).items()}
        self.count = int(state.get("log_count", 0))
        cfg, ddp = self.cfg, self.ddp
        if ddp.is_main:  # rank 0 continues its streams exactly; others start fresh ones
            if "data_rng" not in state:
                raise CheckpointError(f"{path}: written by an older wsram; convert its run "
                                      f"folder with: wsram migrate {path.parent}")
            self.stream.load_state_dict(state["data_rng"])
            torch.set_rng_state(state["torch_rng"].cpu())  # RNG states are CPU byte tensors
            if self.device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
            if "action_rng" in state:
                self.engine.restore_noise(state["action_rng"], f"{path}: 'action_rng'")
            else:
                restart_old_actions(self.engine, cfg, self.step, path)
        else:
            torch.manual_seed(distributed.rank_seed(cfg.seed, ddp.rank, 3) + self.step)
            self.engine.restart_noise(action_seed(cfg.seed, ddp.rank) + self.step)
            self.stream = self.task.stream(
                self.device, distributed.rank_seed(cfg.seed, ddp.rank, 1) + self.step)

    def save(self, path: Path) -> None:
        checkpoint.save(path, self.state_dict())

    def add_to_window(self, values: dict[str, torch.Tensor]) -> None:
        """Add one update's figures to the log window (on the device: no per-update sync)."""
        for k, v in values.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1

    def close_window(self) -> dict[str, Any]:
        """The window's means as a ``train/`` log row; a new window opens."""
        row = {"step": self.step,
               **{f"train/{k}": v.item() / self.count for k, v in self.sums.items()},
               "train/nonfinite_total": self.nonfinite_total, "time": self.seconds(),
               "device": self.device.type}  # where these seconds were spent
        self.sums, self.count = {}, 0
        return row


def restart_old_actions(engine: Engine, cfg: TrainConfig, step: int, path: Path) -> None:
    """A checkpoint from before runs drew their actions from a generator of their own (it
    holds no ``action_rng``): continue from a stream seeded by the seed and the update,
    and say once that the continuation is not the one the older code would have made."""
    engine.restart_noise(action_seed(cfg.seed) + step)
    print(f"wsram: {path}: saved before runs drew their actions from their own generator; "
          "resuming, but its continuation differs from the older wsram's", file=sys.stderr)


class RunLog:
    """``metrics.jsonl`` (one JSON line per log step) and TensorBoard, when installed. On
    resume, lines and events after the checkpoint's step are dropped first."""

    def __init__(self, run_dir: Path, step: int):
        run = RunDir(run_dir)
        if step:
            truncate_metrics(run.metrics, step)
        self.file = open(run.metrics, "a")
        self.tb = _tensorboard(run.tb, step)

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


#: signals that end a run with a checkpoint of the current update: Ctrl-C, ``kill``, a
#: terminal or ssh session going away, and Slurm's warning of a time limit or pre-emption
#: (``sbatch --signal=USR2@90``, as submitit asks; ``wsram compare --slurm`` then requeues)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2)


class StopRequest:
    """Turns SIGINT, SIGTERM, SIGHUP and SIGUSR2, and the loss of stdout or stderr (a
    closed pipe, a hung-up terminal), into a request to checkpoint and stop after the
    current update; ``reason`` names the first (``SIGINT``, ``stderr closed``, ...)."""

    def __init__(self) -> None:
        self.requested = False
        self.reason = ""
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is signal.SIG_IGN:  # nohup: the user wants it ignored
                continue
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        terminal.listeners.append(self._output_lost)
        return self

    def request(self, reason: str) -> None:
        if not self.requested:
            self.requested, self.reason = True, reason

    def _handle(self, signum: int, frame: Any) -> None:
        self.request(signal.Signals(signum).name)

    def _output_lost(self, name: str) -> None:
        self.request(f"{name} closed")

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self._output_lost in terminal.listeners:
            terminal.listeners.remove(self._output_lost)


def setup_device(cfg: TrainConfig, ddp: Dist) -> torch.device:
    """The device to train on (this rank's GPU under torchrun), and the CPU threads."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise WsramError(f"device {cfg.device}: CUDA is not available on this machine")
        if ddp.world > 1:
            device = torch.device("cuda", ddp.local_rank)
        elif device.index is None:  # "cuda": the current GPU, named (set_device needs one)
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def prepare_task(task: Task, run_dir: Path, device: torch.device, resume: bool,
                 ddp: Dist) -> None:
    """Rank 0 prepares first (e.g. pretrains an encoder, computes features) and writes what
    the other ranks then read (encoder.pt); they wait for its word, and stop if it failed."""
    if ddp.is_main:
        task.prepare(run_dir, device, True, resume)
        ddp.announce(True)
        return
    if not ddp.await_setup():
        raise WsramError(f"rank {ddp.rank}: stopping, rank 0 stopped before training "
                         "began (its error says why)")
    task.prepare(run_dir, device, False, True)


def build_state(cfg: TrainConfig, run_dir: Path, resume: bool, progress: bool,
                ddp: Dist) -> TrainState:
    """Seeds, task, data stream, model and engine; on resume, restored from last.pt."""
    device = setup_device(cfg, ddp)
    torch.manual_seed(cfg.seed)  # the same initial parameters on every rank
    task = task_for(cfg, progress)
    prepare_task(task, run_dir, device, resume, ddp)
    stream = task.stream(device, distributed.rank_seed(cfg.seed, ddp.rank, 1))
    if ddp.is_main:
        task.prepare_eval(device)
    torch.manual_seed(cfg.seed)  # whatever the preparation drew, the same initial parameters
    model = task.build_model().to(device)
    engine = Engine(model, task.method(), cfg, ddp, task.train_metrics)
    if not ddp.is_main:  # other ranks sample other actions
        torch.manual_seed(distributed.rank_seed(cfg.seed, ddp.rank, 3))
    state = TrainState(cfg, task, model, engine, stream, device, ddp)
    if resume:
        path = RunDir(run_dir).last
        state.load_state_dict(checkpoint.load(path, map_location=device), path)
    return state


def evaluate_and_keep_best(state: TrainState, run_dir: Path, log: RunLog) -> dict[str, float]:
    """Evaluate (the task's periodic evaluation), log it, and write best.pt on a new best."""
    task = state.task
    errs = task.evaluate(state.model)
    state.evaluated_at, state.last_eval = state.step, errs
    log.write({"step": state.step, **{f"eval/{k}": v for k, v in errs.items()}})
    score = -errs[task.select_key] if task.select_higher else errs[task.select_key]
    if score < state.best:
        state.best, state.best_step = score, state.step
        state.save(RunDir(run_dir).best)
    return errs


def progress_bar(cfg: TrainConfig, step: int, progress: bool, stream: Any) -> Any:
    """A bar on a terminal; on anything else (a log file) a plain line now and then."""
    if progress and not stream.isatty():
        return terminal.LineProgress(cfg.steps, step, cfg.method, stream)
    return tqdm(total=cfg.steps, initial=step, disable=not progress, dynamic_ncols=True,
                desc=cfg.method, unit="upd", file=stream)


def progress_figures(row: dict[str, Any], method: Any) -> dict[str, str]:
    """What the progress bar shows: the training error, and the effective sample size
    where the method samples glimpses (a CNN's K copies of one pass would show ESS = K)."""
    out = {"err": f"{row['train/error']:.3f}"}
    if getattr(method, "attends", True):
        out["ess"] = f"{row['train/ess']:.2f}"
    return out


def after_update(state: TrainState, run_dir: Path, log: RunLog, bar: Any) -> dict[str, Any]:
    """Rank 0's periodic work after an update: the log line, diagnostics, evaluation and
    the checkpoint, each at its interval. Returns the log row, if one was written."""
    cfg, step, row = state.cfg, state.step, {}
    if step % cfg.log_every == 0 or step == cfg.steps:
        row = state.close_window()
        log.write(row)
        bar.set_postfix(**progress_figures(row, state.engine.method))
    if cfg.diag_every and step % cfg.diag_every == 0:
        diag = state.task.diagnose(state.model, state.engine.method, step)
        if diag:
            log.write({"step": step, **{f"diag/{k}": v for k, v in diag.items()}})
    if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
        evaluate_and_keep_best(state, run_dir, log)
    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
        state.save(RunDir(run_dir).last)
    return row


def skip_nonfinite(state: TrainState, run_dir: Path) -> None:
    """Count a skipped update; after ``max_nonfinite`` in a row, checkpoint the last good
    state (skipped updates left the parameters as they were) and stop with one line."""
    state.nonfinite_run += 1
    state.nonfinite_total += 1
    if state.nonfinite_run >= state.cfg.max_nonfinite:
        if state.ddp.is_main:
            state.save(RunDir(run_dir).last)
        raise WsramError(
            f"stopped at update {state.step}: {state.nonfinite_run} non-finite losses or "
            f"gradients in a row; {RunDir(run_dir).last} holds the last good state")


def run_training(cfg: TrainConfig, run_dir: Path, resume: bool, progress: bool,
                 ddp: Dist) -> dict[str, Any]:
    """Set up (or restore), loop over updates until ``cfg.steps``, a stop request or the
    time limit, then evaluate (when the budget was reached) and checkpoint."""
    if not cfg.schedule_steps:  # the horizon is fixed at the start, then kept
        cfg = replace(cfg, schedule_steps=saved_horizon(run_dir) if resume else cfg.steps)
    state = build_state(cfg, run_dir, resume, progress, ddp)
    main = ddp.is_main
    if main and state.step <= cfg.steps:  # a resume asking for fewer keeps its config
        save_config(cfg, run_dir)
    log = RunLog(run_dir, state.step) if main else None
    start_step, last_row = state.step, {}
    state.started = time.perf_counter()  # the clock runs from the first update
    deadline = state.started + cfg.time_limit * 60 if cfg.time_limit else math.inf
    stream = sys.stderr if isinstance(sys.stderr, terminal.GuardedStream) else \
        terminal.GuardedStream(sys.stderr, "stderr")  # a closed pipe stops the run, never kills it
    bar = progress_bar(cfg, state.step, progress, stream)
    try:
        with StopRequest() as stop:
            while state.step < cfg.steps:
                # --- one update: batch, K trajectories per example, estimator, step ---
                x, y = state.stream.sample(cfg.batch_size)
                want_stop = stop.requested or time.perf_counter() >= deadline
                upd = state.engine.update(x, y, want_stop, state.step)
                if not upd.applied:
                    skip_nonfinite(state, run_dir)
                else:
                    state.nonfinite_run = 0
                    state.step += 1
                    state.add_to_window(upd.values)
                    bar.update(1)
                    # --- log, diagnostics, eval and checkpoint (rank 0) ---
                    if main:
                        last_row = after_update(state, run_dir, log, bar) or last_row
                if upd.stop_votes:
                    break
            if state.step >= cfg.steps:
                reason = "finished"
            elif stop.requested:
                reason = stop.reason
            else:
                reason = "time limit" if time.perf_counter() >= deadline else "another process"
            bar.close()
            if main:  # still under StopRequest: a second Ctrl-C cannot cut the last save
                finish(state, run_dir, log, reason, start_step, last_row)
    finally:
        bar.close()
    last_row["stopped_early"] = state.step < cfg.steps
    last_row.update({"stopped_by": reason, "last_step": state.step,
                     "best_step": state.best_step, "best_on": f"eval/{state.task.select_key}"})
    return last_row


def finish(state: TrainState, run_dir: Path, log: RunLog, reason: str, start_step: int,
           last_row: dict[str, Any]) -> None:
    """Rank 0's end of a run: a finished or time-limited run ends evaluated (not again on
    a no-op resume, nor twice at one update), one stopped by a signal only saves, and
    quickly; then last.pt, and the latest evaluation into ``last_row`` for the summary."""
    if reason in ("finished", "time limit") and start_step < state.step \
            and state.evaluated_at != state.step:
        evaluate_and_keep_best(state, run_dir, log)
    if state.last_eval:
        last_row.update({f"eval/{k}": v for k, v in state.last_eval.items()},
                        eval_step=state.evaluated_at)
    state.save(RunDir(run_dir).last)
    log.close()


def _tensorboard(path: Path, step: int):
    """A TensorBoard writer, or None without TensorBoard; on resume, events logged after
    the checkpoint's step are purged, as metrics.jsonl's lines are."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: the tensorboard extra
    except ImportError:
        return None
    return SummaryWriter(str(path), purge_step=step + 1 if step else None)
