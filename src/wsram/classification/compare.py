"""`wsram compare`: train the paper's variants on equal terms, over seeds and learning
rates, choose each method's rate by a stated rule on training data, and tabulate and plot
the results with intervals (paper Figures 2, 3 and 4; ``results.py``).

A study is a set of runs, one folder each, ``OUT/<variant>/lr<lr>-seed<seed>``:
1. the grid: every grid method at every learning rate and seed;
2. at the chosen rates (``results.choose_rates``, the paper's rule): the methods of a family
   (``FAMILY``) and the exploration-heuristics variants, at every seed;
3. every run evaluated on the test set (``eval.json``); tables and figures from the files.
Every run resumes if a study is interrupted or extended (more seeds, rates or updates).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from ..checkpoint import atomic_write_bytes
from ..config import replace
from ..errors import WsramError
from ..methods import METHODS
from ..run_dir import check_resume
from ..train import StopRequest, train
from .config import ClassificationConfig
from .evaluate import evaluate_run

# The exploration heuristics of METHOD.md 4.5, all three on, for the Figure 4 study.
EXPLORE = {"temperature": 1.5, "coverage": 0.1, "entropy": 0.01}
# Methods trained only at the rate chosen for the head of their family: the variant without
# control variates takes its "+c" sibling's rate; VIMCO, a score-function estimator with
# (leave-one-out) baselines, takes VAR+c's.
FAMILY = {"var": "var+c", "wsram": "wsram+c", "wsram+q": "wsram+q+c", "vimco": "var+c"}
EXPLORED = ("var+c", "wsram+q+c")  # the Figure 4 study: these with the heuristics on
STUDY_FILE = "study.json"


@dataclass(frozen=True)
class Run:
    """One run of a study: a variant (a method, with "+explore" when the heuristics are
    on), its learning rate and seed."""

    variant: str
    lr: float
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def method(self) -> str:
        return self.variant.removesuffix("+explore")

    @property
    def folder(self) -> str:
        return f"{self.variant}/lr{self.lr:g}-seed{self.seed}"

    def config(self, base: ClassificationConfig) -> ClassificationConfig:
        return replace(base, method=self.method, lr=self.lr, seed=self.seed, **self.overrides)


@dataclass
class Plan:
    """What a study trains: ``grid`` methods at every rate in ``lrs``; ``chosen`` methods
    at their family's chosen rate; the explore variants (if ``explore``) at theirs."""

    grid: list[str]
    lrs: list[float]
    seeds: list[int]
    chosen: list[str] = field(default_factory=list)
    explore: bool = True

    def grid_runs(self) -> list[Run]:
        return [Run(m, lr, s) for m in self.grid for lr in self.lrs for s in self.seeds]

    def chosen_runs(self, rates: dict[str, float], default_lr: float) -> list[Run]:
        runs = [Run(m, rates.get(FAMILY.get(m, m), default_lr), s)
                for m in self.chosen for s in self.seeds]
        if self.explore:
            runs += [Run(f"{m}+explore", rates.get(m, default_lr), s, EXPLORE)
                     for m in EXPLORED for s in self.seeds]
        return runs


def default_plan(base: ClassificationConfig, seeds: list[int] | None = None,
                 lrs: list[float] | None = None, methods: list[str] | None = None,
                 chosen: list[str] | None = None, explore: bool = True) -> Plan:
    """Without seeds or rates: every attention method once, at the config's seed and rate,
    as the paper's figures compare them."""
    attending = [m for m in METHODS if METHODS[m].attends]
    grid = methods or attending
    return Plan(grid=grid, lrs=lrs or [base.lr], seeds=seeds if seeds is not None else [base.seed],
                chosen=[m for m in (chosen or []) if m not in grid], explore=explore)


def compare(base: ClassificationConfig, out_dir: str | Path, plan: Plan, jobs: int = 1,
            progress: bool = True) -> dict[str, Any]:
    """Train the study's runs into ``out_dir`` (resumable), evaluate them, write results."""
    from .results import choose_rates, discover_runs, write_results

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_study(base, out_dir)
    train_runs(base, out_dir, plan.grid_runs(), jobs, progress, "grid")
    rates = {m: c["lr"] for m, c in choose_rates(discover_runs(out_dir)).items()}
    train_runs(base, out_dir, plan.chosen_runs(rates, base.lr), jobs, progress,
               "at chosen rates")
    for run_dir in sorted(r.dir for r in discover_runs(out_dir)):
        _evaluate_if_stale(run_dir)
    shared = variance_at_shared_parameters(out_dir, rates)
    if shared:  # else the checkpoints are gone: keep what was measured with them
        atomic_write_bytes(out_dir / "variance_at_shared.json",
                           lambda f: f.write((json.dumps(shared, indent=2) + "\n").encode()))
    return write_results(out_dir)


def check_study(base: ClassificationConfig, out_dir: Path) -> None:
    """Record the study's shared config in ``study.json``, or refuse one that differs from
    the recorded one (learning rate and seed are the study's axes and may differ; so may
    how long and where it runs)."""
    mine = {k: v for k, v in base.to_dict().items()
            if k not in ("method", "lr", "seed", *base.RESUMABLE_KEYS)}
    path = out_dir / STUDY_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text())["config"]
        except (ValueError, KeyError, TypeError):
            raise WsramError(f"{path}: not a study file written by wsram compare") from None
        diff = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in mine.items() if saved.get(k) != v]
        if diff:
            raise WsramError(f"{out_dir}: cannot resume with a different config "
                             f"({'; '.join(diff)}); compare into a new folder instead")
    atomic_write_bytes(path, lambda f: f.write(
        (json.dumps({"config": mine}, indent=2) + "\n").encode()))


def train_runs(base: ClassificationConfig, out_dir: Path, runs: list[Run], jobs: int,
               progress: bool, label: str = "runs") -> None:
    """Train (or resume) each run, ``jobs`` at a time in separate processes; runs that
    already reached their budget are left as they are (their checkpoints need not exist:
    a study's committed files hold only config, metrics and eval)."""
    cfgs = {r.folder: r.config(base) for r in runs}
    cfgs = {name: cfg for name, cfg in cfgs.items() if not _finished(cfg, out_dir / name)}
    if jobs <= 1:
        for name, cfg in cfgs.items():
            print(f"== {name}", file=sys.stderr, flush=True)
            row = train(cfg, out_dir / name, resume=_resumable(cfg, out_dir / name),
                        progress=progress)
            if row["stopped_by"] not in ("finished", "time limit"):  # a signal stops them all
                raise KeyboardInterrupt
    else:
        _run_parallel(cfgs, out_dir, jobs, progress, label, already=len(runs) - len(cfgs))


def _finished(cfg: ClassificationConfig, run_dir: Path) -> bool:
    """Whether run_dir holds a run of this config that reached ``cfg.steps`` updates."""
    from ..run_dir import read_metrics

    if not (run_dir / "config.yaml").is_file():
        return False
    check_resume(cfg, run_dir)
    steps = [r["step"] for r in read_metrics(run_dir) if "train/error" in r]
    return bool(steps) and steps[-1] >= cfg.steps


def _resumable(cfg: ClassificationConfig, run_dir: Path) -> bool:
    """Whether run_dir holds an earlier run of this variant to continue (refusing one made
    with another config; a longer budget or another machine may differ). One stopped
    before its first checkpoint, or kept without checkpoints (a study's committed files),
    is resumed too: ``train`` then starts it afresh."""
    if not (run_dir / "config.yaml").is_file():
        return False
    if (run_dir / "last.pt").is_file():
        check_resume(cfg, run_dir)
    return True


def _evaluate_if_stale(run_dir: Path) -> None:
    """Test errors of the run's last.pt, unless eval.json already holds them (or the
    checkpoint is gone and eval.json is what remains of it)."""
    from ..checkpoint import load

    if not (run_dir / "last.pt").is_file() and (run_dir / "eval.json").is_file():
        return
    try:
        ev = json.loads((run_dir / "eval.json").read_text())
        if ev.get("checkpoint") == "last.pt" and ev.get("step") == int(
                load(run_dir / "last.pt")["step"]):
            return
    except (OSError, ValueError, KeyError):
        pass
    evaluate_run(run_dir)


def variance_at_shared_parameters(out_dir: Path, rates: dict[str, float],
                                  repeats: int = 20) -> list[dict[str, Any]]:
    """Gradient variance of every method's estimator at the same parameters and minibatch.

    Curves against updates compare models in different states (a policy that has
    collapsed has little variance left); this compares the estimators themselves, at the
    final parameters of the first seed's run of each of var+c and wsram+q+c at their
    chosen rates, on the diagnostics' fixed minibatch.
    """
    import torch

    from ..diagnostics import gradient_estimates, variance_stats
    from ..tasks import load_run
    from .results import discover_runs
    from .task import diag_batch

    runs = discover_runs(out_dir)
    out = []
    for source in EXPLORED:
        found = sorted((r for r in runs if r.variant == source and r.lr == rates.get(source)
                        and (r.dir / "last.pt").is_file()), key=lambda r: r.seed)
        if not found:
            continue
        cfg, task, model, state = load_run(found[0].dir, task="classification")
        x, y = diag_batch(cfg, task.train_digits)
        table = {}
        for name, method in METHODS.items():
            if not method.attends or (name == "vimco" and cfg.samples < 2):
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                g = gradient_estimates(model, method, x, y, cfg.samples, repeats)
            table[name] = variance_stats(g)
        out.append({"parameters_of": source, "run": found[0].folder, "step": int(state["step"]),
                    "repeats": repeats, "batch": cfg.diag_batch, "samples": cfg.samples,
                    "variance": table})
    return out


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
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    threads = max(1, cores // jobs)
    pending = list(cfgs.items())
    running: list[tuple[str, subprocess.Popen]] = []
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


def _schedule(pending: list[tuple[str, ClassificationConfig]],
              running: list[tuple[str, subprocess.Popen]], failed: list[str], out_dir: Path,
              jobs: int, threads: int, bar: StudyProgress, stop: StopRequest) -> None:
    """Start pending runs as running ones end, ``jobs`` at a time, until all ended or a
    stop is requested; name the failed."""
    while (pending or running) and not stop.requested:
        while pending and len(running) < jobs and not stop.requested:
            name, cfg = pending.pop(0)
            run_dir = out_dir / name
            if _finished(cfg, run_dir):  # finished meanwhile, by another process
                bar.ended(name, True)
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            cfg_file = run_dir.parent / f".{run_dir.name}.yaml"
            cfg_file.write_text(yaml.safe_dump(
                replace(cfg, threads=cfg.threads or threads).to_dict(), sort_keys=False))
            cmd = [sys.executable, "-m", "wsram", "train", "--run-dir", str(run_dir),
                   "--config", str(cfg_file), "--no-progress"]
            if _resumable(cfg, run_dir):
                cmd.append("--resume")
            log_path = run_dir.parent / f"{run_dir.name}.log"
            with open(log_path, "a") as log:
                running.append((name, subprocess.Popen(cmd, stdout=log, stderr=log)))
            bar.say(f"== {name} started (log: {log_path})")
        ended = _wait_any(running, bar.refresh, lambda: stop.requested)
        if ended is None:
            return
        name, proc = ended
        bar.ended(name, proc.returncode == 0)
        if proc.returncode != 0:
            failed.append(name)


class StudyProgress:
    """A progress bar over the updates of a study's parallel runs: every few seconds, the
    last logged update of each (the tail of its metrics.jsonl)."""

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
    """The update of the last line of a run's metrics.jsonl (read from its end); 0 if none."""
    try:
        with open(run_dir / "metrics.jsonl", "rb") as f:
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


def _stop_all(running: list[tuple[str, subprocess.Popen]], reason: str, failed: list[str],
              timeout: float = 300) -> None:
    """Ask every running training to stop (SIGTERM: it checkpoints its current update, as
    ``wsram train`` does on Ctrl-C) and wait for them, so that none outlives ``compare``."""
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


def _wait_any(running: list[tuple[str, subprocess.Popen]], tick: Callable[[], None],
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
