"""Training a study's runs through an :class:`Executor`: here (:class:`LocalProcesses`) one
after another in this process (``jobs`` 1), or ``jobs`` at a time as ``wsram train``
subprocesses, with one progress bar over all of them; on a cluster, one Slurm job per run
(``study/slurm.py``). Then each run's test errors.

Every run resumes if a study is interrupted or extended (more seeds, rates or updates);
a run that already reached its budget is left as it is. A signal (Ctrl-C, ``kill``, a
hang-up) or a lost stderr stops the pool: no run is started after it, and each child this
process started (and only those, by their process ids) is asked to stop and waited for.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import yaml
from tqdm import tqdm

from wsram.atomic import atomic_write_text
from wsram.checkpoint import load
from wsram.classification.config import ClassificationConfig
from wsram.classification.data.splits import check_inputs
from wsram.classification.evaluate import evaluate_run
from wsram.classification.task import ClassificationTask
from wsram.config import replace
from wsram.distributed import Dist
from wsram.engine import Engine
from wsram.errors import WsramError
from wsram.run_dir import RunDir, check_resume
from wsram.stack_train import train_stack
from wsram.study.plan import Run
from wsram.train import StopRequest, train

Running = list[tuple[str, subprocess.Popen]]


class Executor(Protocol):
    """Where a study's runs train: :class:`LocalProcesses` (the default), or Slurm jobs
    (``study.slurm.SlurmJobs``)."""

    def train(self, cfgs: dict[str, ClassificationConfig], out_dir: Path, progress: bool,
              label: str = "runs", already: int = 0) -> None:
        """Train (or resume) each run ``out_dir/<name>`` of ``cfgs`` (none yet at its
        budget) and return when all have ended; raise WsramError naming those that failed,
        KeyboardInterrupt when asked to stop. ``label`` and ``already`` (runs of this phase
        finished before) are for the progress bar."""
        ...


@dataclass(frozen=True)
class LocalProcesses:
    """The runs on this machine: one after another in this process (``jobs`` 1), or
    ``jobs`` at a time as ``wsram train`` subprocesses."""

    jobs: int = 1

    def train(self, cfgs: dict[str, ClassificationConfig], out_dir: Path, progress: bool,
              label: str = "runs", already: int = 0) -> None:
        if self.jobs > 1:
            _run_parallel(cfgs, out_dir, self.jobs, progress, label, already)
            return
        for name, cfg in cfgs.items():
            print(f"== {name}", file=sys.stderr, flush=True)
            row = train(cfg, out_dir / name, resume=resumable(cfg, out_dir / name),
                        progress=progress)
            if row["stopped_by"] not in ("finished", "time limit"):  # a signal stops them all
                raise KeyboardInterrupt


def train_runs(base: ClassificationConfig, out_dir: Path, runs: list[Run], jobs: int = 1,
               progress: bool = True, label: str = "runs",
               executor: Executor | None = None) -> None:
    """Train (or resume) each run through ``executor`` (default: ``jobs`` local processes
    at a time); runs that already reached their budget are left as they are (their
    checkpoints need not exist: a study's committed files hold only config, metrics and
    test errors)."""
    cfgs = {r.folder: r.config(base) for r in runs}
    cfgs = {name: cfg for name, cfg in cfgs.items() if not finished(cfg, out_dir / name)}
    if cfgs:
        (executor or LocalProcesses(jobs)).train(cfgs, out_dir, progress, label,
                                                 already=len(runs) - len(cfgs))


@dataclass(frozen=True)
class LocalStacks:
    """The runs on this machine, each variant's (its folder's) in stacks of up to ``size``
    trained as one program, one stack after another in this process (``stack_train.py``);
    a signal stops them all, and runs stopped by non-finite updates are named at the end."""

    size: int

    def train(self, cfgs: dict[str, ClassificationConfig], out_dir: Path, progress: bool,
              label: str = "runs", already: int = 0) -> None:
        by_variant: dict[Path, list[str]] = {}
        for name in cfgs:
            by_variant.setdefault(Path(name).parent, []).append(name)
        failed = []
        for variant, names in by_variant.items():
            for i in range(0, len(names), self.size):
                part = names[i:i + self.size]
                print(f"== {variant}: a stack of {len(part)}", file=sys.stderr, flush=True)
                rows = train_stack([cfgs[n] for n in part], [out_dir / n for n in part],
                                   resume=[resumable(cfgs[n], out_dir / n) for n in part],
                                   progress=progress, parent=out_dir / variant)
                failed += [n for n, r in zip(part, rows, strict=True) if "error" in r]
                if any(r["stopped_by"] not in ("finished", "time limit", "non-finite")
                       for r in rows):
                    raise KeyboardInterrupt
        if failed:
            raise WsramError(f"runs stopped by non-finite updates: {', '.join(failed)}")


def threads_per_job(jobs: int) -> int:
    """Each of ``jobs`` parallel runs' share of the cores this process may use."""
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    return max(1, cores // jobs)


def seconds_per_update(base: ClassificationConfig, methods: list[str], threads: int,
                       updates: int = 3) -> dict[str, float]:
    """One training update's seconds for each method on this machine's CPU (``threads``
    threads, the base config's sizes), after one warm-up update: the plan's time
    estimate. The global random state is left as it was."""
    cfg0 = check_inputs(replace(base, device="cpu"))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = {}
    try:
        with torch.random.fork_rng(devices=[]):
            for m in methods:
                cfg = replace(cfg0, method=m)
                task = ClassificationTask(cfg, progress=False)
                engine = Engine(task.build_model(), task.method(), cfg, Dist(),
                                task.train_metrics)
                x, y = task.stream(torch.device("cpu"), cfg.seed).sample(cfg.batch_size)
                engine.update(x, y, False, 0)
                start = time.perf_counter()
                for i in range(updates):
                    engine.update(x, y, False, i + 1)
                out[m] = (time.perf_counter() - start) / updates
    finally:
        torch.set_num_threads(old)
    return out


def finished(cfg: ClassificationConfig, run_dir: Path) -> bool:
    """Whether run_dir holds a run of this config that reached ``cfg.steps`` updates."""
    run = RunDir(run_dir)
    if not run.has_config():
        return False
    check_resume(cfg, run_dir)
    steps = [r["step"] for r in run.read_metrics() if "train/error" in r]
    return bool(steps) and steps[-1] >= cfg.steps


def resumable(cfg: ClassificationConfig, run_dir: Path) -> bool:
    """Whether run_dir holds an earlier run of this variant to continue (refusing one made
    with another config; a longer budget or another machine may differ). One stopped
    before its first checkpoint, or kept without checkpoints (a study's committed files),
    is resumed too: ``train`` then starts it afresh."""
    run = RunDir(run_dir)
    if not run.has_config():
        return False
    if run.last.is_file():
        check_resume(cfg, run_dir)
    return True


def evaluate_if_stale(run_dir: Path) -> None:
    """Test errors of the run's last checkpoint, unless its evaluation file already holds
    them (or the checkpoint is gone and the evaluation is what remains of it)."""
    run = RunDir(run_dir)
    if not run.last.is_file() and run.eval_file("last").is_file():
        return
    try:
        ev = json.loads(run.eval_file("last").read_text())
        if ev.get("checkpoint") == run.last.name and ev.get("step") == int(
                load(run.last)["step"]):
            return
    except (OSError, ValueError, KeyError):
        pass
    evaluate_run(run_dir)


def _run_parallel(cfgs: dict[str, ClassificationConfig], out_dir: Path, jobs: int,
                  progress: bool = True, label: str = "runs", already: int = 0) -> None:
    """Run variants as separate processes, ``jobs`` at a time, sharing the CPU threads:
    each gets its share of the cores this process may use (OpenMP workers sleep when idle,
    see ``wsram/__init__.py``, so more jobs than cores slow down in proportion). One
    progress bar counts the updates of all of them, read from their metrics files.

    A signal (Ctrl-C, ``kill``, a hang-up) or a lost stderr only sets a flag: no run is
    started after it, and every running one is asked to stop (each saves its current
    update) and waited for, as on any error, so that none outlives ``compare``."""
    if not cfgs:
        return
    threads = threads_per_job(jobs)
    pending = list(cfgs.items())
    running: Running = []
    failed: list[str] = []
    with StopRequest() as stop:
        bar = StudyProgress(cfgs, out_dir, progress, label, already)
        try:
            _schedule(pending, running, failed, out_dir, jobs, threads, bar, stop)
        finally:
            bar.close()
            _stop_all(running, stop.reason or "an error", failed)
    if stop.requested:
        raise KeyboardInterrupt
    if failed:
        raise WsramError(f"runs failed: {', '.join(failed)} (see their .log files in "
                         f"{out_dir})")


def _schedule(pending: list[tuple[str, ClassificationConfig]], running: Running,
              failed: list[str], out_dir: Path, jobs: int, threads: int, bar: StudyProgress,
              stop: StopRequest) -> None:
    """Start pending runs as running ones end, ``jobs`` at a time, until all ended or a
    stop is requested; name the failed."""
    while (pending or running) and not stop.requested:
        while pending and len(running) < jobs and not stop.requested:
            name, cfg = pending.pop(0)
            if finished(cfg, out_dir / name):  # finished meanwhile, by another process
                bar.ended(name, True)
                continue
            running.append((name, _start(name, cfg, out_dir, threads, bar)))
        ended = _wait_any(running, bar.refresh, lambda: stop.requested)
        if ended is None:
            return
        name, proc = ended
        bar.ended(name, proc.returncode == 0)
        if proc.returncode != 0:
            failed.append(name)


def _start(name: str, cfg: ClassificationConfig, out_dir: Path, threads: int,
           bar: StudyProgress) -> subprocess.Popen:
    """``wsram train`` of run ``name`` in a child process (resuming it where it has a
    run), its output appended to ``<run>.log`` beside the run folder; ``threads``: its CPU
    threads unless the config sets them."""
    run_dir = out_dir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = run_dir.parent / f".{run_dir.name}.yaml"
    atomic_write_text(cfg_file, yaml.safe_dump(
        replace(cfg, threads=cfg.threads or threads).to_dict(), sort_keys=False))
    cmd = [sys.executable, "-m", "wsram", "train", "--run-dir", str(run_dir),
           "--config", str(cfg_file), "--no-progress"]
    if resumable(cfg, run_dir):
        cmd.append("--resume")
    log_path = run_dir.parent / f"{run_dir.name}.log"
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    bar.say(f"== {name} started (log: {log_path})")
    return proc


class StudyProgress:
    """A progress bar over the updates of a study's parallel runs: every few seconds, the
    last logged update of each (the tail of its metrics file)."""

    EVERY_S = 2.0

    def __init__(self, cfgs: dict[str, ClassificationConfig], out_dir: Path, enabled: bool,
                 label: str = "runs", already: int = 0):
        self.already = already  # runs of this phase that had finished before
        self.steps = {name: cfg.steps for name, cfg in cfgs.items()}
        self.dirs = {name: out_dir / name for name in cfgs}
        self.done: dict[str, bool] = {}
        self.last = 0.0
        self.bar = tqdm(total=sum(self.steps.values()), initial=self._updates(),
                        disable=not enabled, dynamic_ncols=True, desc=label, unit="upd",
                        file=sys.stderr)
        self.bar.set_postfix_str(self._runs())

    def _updates(self) -> int:
        return sum(min(last_logged_step(self.dirs[n]), s) for n, s in self.steps.items())

    def _runs(self) -> str:
        ok = sum(self.done.values())
        failed = len(self.done) - ok
        return (f"{ok}/{len(self.steps)} runs done" + (f", {failed} failed" if failed else "")
                + (f" ({self.already} finished before)" if self.already else ""))

    def refresh(self, force: bool = False) -> None:
        if self.bar.disable or (not force and time.monotonic() - self.last < self.EVERY_S):
            return
        self.last = time.monotonic()
        self.bar.n = self._updates()
        self.bar.set_postfix_str(self._runs())  # redraws

    def ended(self, name: str, ok: bool) -> None:
        self.done[name] = ok
        self.refresh(force=True)

    def say(self, line: str) -> None:
        if self.bar.disable:
            print(line, file=sys.stderr)
        else:
            self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def last_logged_step(run_dir: Path) -> int:
    """The update of the last line of a run's metrics file (read from its end); 0 if none."""
    try:
        with open(RunDir(run_dir).metrics, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            lines = f.read().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):  # a torn or cut line
            continue
    return 0


def _stop_all(running: Running, reason: str, failed: list[str], timeout: float = 300) -> None:
    """Ask every running training to stop (SIGTERM to its process id: it checkpoints its
    current update, as ``wsram train`` does on Ctrl-C) and wait for them, so that none
    outlives ``compare``; one still running after ``timeout`` seconds is killed. Only the
    children in ``running`` are signalled."""
    alive = [name for name, proc in running if proc.poll() is None]
    if alive:
        print(f"wsram: {reason}: stopping {len(alive)} running training(s) ({', '.join(alive)}); "
              "each saves its current update (compare again with the same options to "
              "continue)" + (f"; failed before: {', '.join(failed)}" if failed else ""),
              file=sys.stderr)
    for _, proc in running:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for _, proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_any(running: Running, tick: Callable[[], None],
              give_up: Callable[[], bool]) -> tuple[str, subprocess.Popen] | None:
    """Wait until one of the running processes ends (calling ``tick`` meanwhile); remove
    and return it; None as soon as ``give_up()`` says so."""
    while not give_up():
        for i, (_, proc) in enumerate(running):
            if proc.poll() is not None:
                return running.pop(i)
        tick()
        time.sleep(0.2)
    return None
