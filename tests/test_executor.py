"""The study's process pool (wsram.study.executor): which runs it starts, how many at a
time, and how it stops the children it started (and no other process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY

from wsram.classification import make_config
from wsram.run_dir import RunDir, save_config
from wsram.study import executor
from wsram.study.executor import _run_parallel, _stop_all, _wait_any, train_runs
from wsram.study.plan import Run

FAST = dict(TINY, log_every=2, eval_every=0, checkpoint_every=2, diag_every=0)


class FakeProc:
    """A child that ends by itself with exit status ``code`` after ``polls`` polls (unless
    ``forever``), or when it is signalled; records what it was started with and sent, and
    how many children were alive at each poll."""

    started: list[FakeProc] = []
    alive_at_polls: list[int] = []

    def __init__(self, cmd: list[str], stdout: Any = None, stderr: Any = None,
                 polls: int = 2, forever: bool = False, code: int = 0):
        self.cmd, self.polls, self.forever, self.code = cmd, polls, forever, code
        self.returncode: int | None = None
        self.signals: list[int] = []
        FakeProc.started.append(self)

    @property
    def run_dir(self) -> str:
        return self.cmd[self.cmd.index("--run-dir") + 1]

    def poll(self) -> int | None:
        FakeProc.alive_at_polls.append(sum(p.returncode is None for p in FakeProc.started))
        if self.returncode is None and not self.forever:
            self.polls -= 1
            if self.polls <= 0:
                self.returncode = self.code
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        self.returncode = -sig

    def wait(self, timeout: float | None = None) -> int:
        assert self.returncode is not None, "waited for a child nobody asked to stop"
        return self.returncode

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@pytest.fixture
def fake_popen(monkeypatch) -> type[FakeProc]:
    FakeProc.started, FakeProc.alive_at_polls = [], []
    monkeypatch.setattr(executor.subprocess, "Popen", FakeProc)
    monkeypatch.setattr(executor.time, "sleep", lambda s: None)
    return FakeProc


def finished_run(run_dir: Path, cfg: Any) -> None:
    """A run folder as a finished run leaves it (no checkpoints, as a study commits it)."""
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir)
    rows = [{"step": s, "train/error": 0.5} for s in range(2, cfg.steps + 1, 2)]
    RunDir(run_dir).metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_jobs_at_a_time_each_run_once_and_a_finished_one_never(
        fake_popen: type[FakeProc], tmp_path: Path) -> None:
    base = make_config(FAST, steps=4)
    runs = [Run(m, 1e-3, s) for m in ("var+c", "wsram+q+c") for s in (0, 1, 2)]
    cfgs = {r.folder: r.config(base) for r in runs}
    # finished meanwhile (after the caller chose what to train), by another process
    finished_run(tmp_path / "var+c/lr0.001-seed1", cfgs["var+c/lr0.001-seed1"])
    _run_parallel(cfgs, tmp_path, jobs=2, progress=False)
    started = [Path(p.run_dir).relative_to(tmp_path).as_posix() for p in fake_popen.started]
    assert sorted(started) == sorted(set(cfgs) - {"var+c/lr0.001-seed1"})  # each once
    assert max(FakeProc.alive_at_polls) == 2  # two at a time, never more
    assert all("--resume" not in p.cmd for p in fake_popen.started)  # nothing to resume
    assert all(p.signals == [] for p in fake_popen.started)  # all ended by themselves
    assert (tmp_path / "var+c" / "lr0.001-seed0.log").is_file()  # each child's output


def test_a_child_that_fails_is_named(fake_popen: type[FakeProc], tmp_path: Path,
                                     monkeypatch) -> None:
    monkeypatch.setattr(executor.subprocess, "Popen",
                        lambda cmd, **kw: FakeProc(cmd, polls=1, code=1))
    cfgs = {"var+c/lr0.001-seed0": make_config(FAST, method="var+c", steps=4)}
    with pytest.raises(executor.WsramError, match=r"runs failed: var\+c/lr0.001-seed0"):
        _run_parallel(cfgs, tmp_path, jobs=2, progress=False)


def test_a_signal_starts_nothing_more_and_stops_the_children_started(
        fake_popen: type[FakeProc], tmp_path: Path, monkeypatch) -> None:
    def start_then_signal(cmd: list[str], **kw: Any) -> FakeProc:
        p = FakeProc(cmd, forever=True)
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill` of compare would
        return p

    monkeypatch.setattr(executor.subprocess, "Popen", start_then_signal)
    base = make_config(FAST, steps=4)
    cfgs = {r.folder: r.config(base) for r in (Run("var+c", 1e-3, s) for s in range(4))}
    with pytest.raises(KeyboardInterrupt):
        _run_parallel(cfgs, tmp_path, jobs=3, progress=False)
    assert len(FakeProc.started) == 1  # none started after the signal
    assert FakeProc.started[0].signals == [signal.SIGTERM]  # asked to checkpoint and stop


def test_wait_any_gives_up_when_told() -> None:
    p = FakeProc(["x"], forever=True)
    running = [("a", p)]
    assert _wait_any(running, lambda: None, lambda: True) is None and running == [("a", p)]
    p.returncode = 0
    assert _wait_any(running, lambda: None, lambda: False) == ("a", p) and running == []


def sleeper(ignore_term: bool = False) -> subprocess.Popen:
    code = ("import signal, sys, time\n"
            + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
            + "print('ready', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


@pytest.mark.slow
def test_stopping_ends_only_the_children_it_was_given(capsys) -> None:
    mine, stubborn, other = sleeper(), sleeper(ignore_term=True), sleeper()
    try:
        _stop_all([("mine", mine), ("stubborn", stubborn)], "SIGINT", ["earlier"],
                  timeout=1.0)
        assert mine.returncode == -signal.SIGTERM  # asked by its process id
        assert stubborn.returncode == -signal.SIGKILL  # killed once the timeout ran out
        assert other.poll() is None  # a process it did not start lives on
        err = capsys.readouterr().err
        assert "SIGINT: stopping 2 running training(s) (mine, stubborn)" in err
        assert "failed before: earlier" in err
    finally:
        for p in (mine, stubborn, other):
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()


@pytest.mark.slow
def test_a_tiny_grid_with_two_jobs_trains_every_run_once(tmp_path: Path, monkeypatch) -> None:
    base = make_config(FAST, steps=4)
    runs = [Run("var+c", 1e-3, 0), Run("wsram+q+c", 1e-3, 0), Run("var+c", 1e-3, 1)]
    finished_run(tmp_path / runs[2].folder, runs[2].config(base))  # finished before
    train_runs(base, tmp_path, runs, jobs=2, progress=False)
    for r in runs[:2]:
        steps = [row["step"] for row in RunDir(tmp_path / r.folder).read_metrics()
                 if "train/error" in row]
        assert steps == [2, 4]  # trained once, from update 0 to the budget
        assert RunDir(tmp_path / r.folder).last.is_file()
        log = (tmp_path / r.variant / f"lr0.001-seed{r.seed}.log").read_text()
        assert "Traceback" not in log
    assert not (tmp_path / "var+c" / "lr0.001-seed1.log").exists()  # never started

    def no_child(*a: Any, **kw: Any) -> None:
        raise AssertionError("started a run that had finished")

    monkeypatch.setattr(executor.subprocess, "Popen", no_child)
    train_runs(base, tmp_path, runs, jobs=2, progress=False)  # all at their budget


@pytest.mark.slow
def test_one_job_trains_in_this_process_and_resumes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(executor.subprocess, "Popen", None)  # no child process
    run = Run("wsram+q+c", 1e-3, 0)
    train_runs(make_config(FAST, steps=2), tmp_path, [run], jobs=1, progress=False)
    train_runs(make_config(FAST, steps=4), tmp_path, [run], jobs=1, progress=False)
    steps = [r["step"] for r in RunDir(tmp_path / run.folder).read_metrics()
             if "train/error" in r]
    assert steps == [2, 4]  # the second call continued the first
