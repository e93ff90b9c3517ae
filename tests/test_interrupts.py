"""How runs end badly and what the user is told: signals and closed pipes (fault
injection), failed starts, out of memory, unwritable folders, summaries, and help."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY as TINY_BASE
from conftest import flags

import wsram
from wsram.classification import make_config
from wsram.classification import plots as cls_plots
from wsram.classification.config import ClassificationConfig
from wsram.engine import Engine
from wsram.run_dir import RunLock, read_metrics
from wsram.train import out_of_memory_message, train

TINY = dict(TINY_BASE, log_every=1, eval_every=15, checkpoint_every=10, diag_every=0,
            method="wsram+q+c")
FLAGS = flags(TINY)


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def _cmd(run: Path, steps: int, resume: bool, progress: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "wsram", "train", "--run-dir", str(run), "--steps", str(steps)]
    cmd += ["--resume"] if resume else FLAGS
    return cmd if progress else cmd + ["--no-progress"]


def _step(run: Path) -> int:
    return max((r["step"] for r in read_metrics(run)), default=0)


def inject(run: Path, steps: int, fault: str, target: int, resume: bool) -> tuple[int, str]:
    """Start (or resume) a run, and at update ``target`` or later end it by ``fault``: a
    signal's name, or "pipe" (the reader of its stderr goes away). Returns the exit code
    and what it wrote to stderr (nothing can be read after a closed pipe)."""
    pipe = fault == "pipe"
    err = run.parent / f"{run.name}.err"
    with open(err, "w") as err_file:
        proc = subprocess.Popen(_cmd(run, steps, resume, progress=pipe),
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE if pipe else err_file)
        deadline = time.time() + 120
        while _step(run) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, f"the run ended before update {target}"
        if pipe:
            proc.stderr.close()
        else:
            proc.send_signal(getattr(signal, fault))
        code = proc.wait(timeout=120)
    return code, err.read_text()


@pytest.mark.slow
def test_fault_injection_resumes_bit_exact(cli, tmp_path: Path) -> None:
    """SIGINT, SIGTERM, SIGHUP, a closed pipe and SIGKILL at random updates, each
    followed by a resume: the same weights and metrics.jsonl as a run never stopped."""
    steps = 70
    ref = tmp_path / "ref"
    train(make_config({**TINY, "steps": steps}), ref, progress=False)

    run, rng = tmp_path / "run", random.Random(14)
    faults = ["SIGINT", "SIGTERM", "pipe", "SIGHUP", "SIGKILL"]
    targets = sorted(rng.sample(range(3, steps - 10), len(faults)))
    for i, (fault, target) in enumerate(zip(faults, targets, strict=True)):
        code, err = inject(run, steps, fault, max(target, _step(run) + 1), resume=i > 0)
        saved = torch.load(run / "last.pt", weights_only=True)["step"]
        if fault == "SIGKILL":
            assert code == -signal.SIGKILL  # work since the last checkpoint is redone
        else:
            # 130, and the checkpoint holds every update the run had logged
            assert code == 130, err
            assert saved >= _step(run) >= target
        if fault.startswith("SIG") and fault != "SIGKILL":
            assert f"stopped by {fault} at update {saved} of {steps}" in err
            assert f"resume with: wsram train --run-dir {run} --resume" in err
            assert "Traceback" not in err
    code, _, err = cli("train", "--run-dir", str(run), "--resume", "--no-progress")
    assert code == 0, err

    a = torch.load(ref / "last.pt", weights_only=True)["model"]
    b = torch.load(run / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert without_time(read_metrics(ref)) == without_time(read_metrics(run))
    assert not list(run.glob(".*.tmp")), "a temporary checkpoint file was left behind"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, str, str]:
    """A tiny run trained by the command, with what it printed."""
    from wsram.cli import main

    run = tmp_path_factory.mktemp("done") / "run"
    out, err = tmp_path_factory.mktemp("out") / "o", tmp_path_factory.mktemp("err") / "e"
    with open(out, "w") as o, open(err, "w") as e, pytest.raises(SystemExit) as ex:
        sys.stdout, sys.stderr = o, e
        try:
            main(["train", "--run-dir", str(run), "--steps", "20", *FLAGS, "--no-progress",
                  "--json"])
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    assert ex.value.code == 0
    return run, out.read_text(), err.read_text()


def test_a_finished_run_ends_with_a_summary(finished) -> None:
    import json

    run, out, err = finished
    row = json.loads(out.strip().splitlines()[-1])  # --json: one line on stdout, for scripts
    assert row["stopped_by"] == "finished" and row["step"] == 20 and "last_step" not in row
    assert f"finished 20 updates; {run / 'last.pt'} holds update 20" in err
    best = row["best_step"]
    assert best in (15, 20) and f"best.pt holds update {best}" in err
    assert "the lowest eval/val_error_mc so far" in err
    assert "evaluation at update 20, on 20 validation canvases" in err
    assert f"val_error_mc               {row['eval/val_error_mc']:7.2%}" in err
    assert "names them test_error_*" in err  # not one name for two figures
    assert f"next: wsram evaluate {run}" in err and "files:" in err


def test_a_time_limited_run_evaluates_at_its_end(cli, tmp_path: Path) -> None:
    code, out, err = cli("train", "--run-dir", str(tmp_path / "r"), "--steps", "1000",
                         "--time-limit", "0.00001", *FLAGS, "--no-progress")
    assert code == 0, err
    saved = torch.load(tmp_path / "r" / "last.pt", weights_only=True)["step"]
    assert 0 < saved < 1000 and "stopped by the time limit" in err
    last = read_metrics(tmp_path / "r")[-1]
    assert last["step"] == saved and "eval/val_error_mc" in last
    assert (tmp_path / "r" / "best.pt").is_file()


def test_failed_starts_leave_no_folder(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = cli("train", "--run-dir", str(tmp_path / "a" / "b"), "--device", "cuda",
                       "--steps", "2", *FLAGS)
    assert code == 2 and "CUDA is not available" in err
    assert not (tmp_path / "a").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, err = cli("train", "--run-dir", str(tmp_path / "mine"), "--device", "cuda", *FLAGS)
    assert code == 2 and os.listdir(tmp_path / "mine") == ["notes.txt"]
    # SIGTERM or SIGHUP while it sets up ends it as Ctrl-C does, and cleans up as well.
    from wsram import train as train_module

    def hang_up(*a):
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(1)  # the handler runs here
        raise AssertionError("SIGHUP did not stop the start")

    monkeypatch.setattr(train_module, "setup_device", hang_up)
    handler = signal.getsignal(signal.SIGHUP)
    code, _, err = cli("train", "--run-dir", str(tmp_path / "c" / "d"), *FLAGS)
    assert code == 130 and "interrupted" in err and not (tmp_path / "c").exists()
    assert signal.getsignal(signal.SIGHUP) == handler  # as it was before the run


@pytest.mark.slow
def test_a_folder_without_checkpoint_resumes_afresh(cli, tmp_path: Path) -> None:
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert cli("train", "--run-dir", str(ref), "--steps", "5", *FLAGS)[0] == 0
    assert cli("train", "--run-dir", str(run), "--steps", "5", *FLAGS)[0] == 0
    (run / "last.pt").unlink()  # as if killed before its first checkpoint
    (run / "best.pt").unlink()
    code, _, err = cli("train", "--run-dir", str(run), "--steps", "5", *FLAGS)
    assert code == 2 and "--resume starts it afresh, --overwrite replaces it" in err
    code, _, err = cli("train", "--run-dir", str(run), "--resume", "--no-progress")
    assert code == 0 and "no checkpoint yet (no last.pt); starting afresh" in err
    assert without_time(read_metrics(run)) == without_time(read_metrics(ref))


def test_a_restart_keeps_the_earlier_best_and_a_refused_start_touches_nothing(
        cli, tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    assert cli("train", "--run-dir", str(run), "--steps", "5", *FLAGS)[0] == 0
    (run / "last.pt").unlink()  # killed after an evaluation, before its first checkpoint
    best = (run / "best.pt").read_bytes()
    code, _, err = cli("train", "--run-dir", str(run), "--resume", "--no-progress")
    assert code == 0 and "kept as best-before-restart.pt" in err
    assert (run / "best-before-restart.pt").read_bytes() == best
    # Another start that finds the folder taken (here: the snapshot of what was there is
    # from before the first process made it) leaves every file of the first in place.
    from wsram import train as train_module

    monkeypatch.setattr(train_module, "entries_before_start", lambda d: tmp_path / "x")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("task: classification\n")
    (other / "metrics.jsonl").write_text("")
    code, _, err = cli("train", "--run-dir", str(other), "--steps", "5", *FLAGS)
    assert code == 2 and "holds a run" in err
    assert sorted(os.listdir(other)) == ["config.yaml", "metrics.jsonl"]


DATA_LINES = ("wsram: data:", "wsram: warning: only")  # what a run says it found
OOM = ("DefaultCPUAllocator: can't allocate memory: you tried to allocate 42949672960 bytes. "
       "Error code 12 (Cannot allocate memory)")


def test_out_of_memory_is_one_line_and_loses_nothing(cli, tmp_path: Path, monkeypatch) -> None:
    real, calls = Engine.update, {"n": 0}

    def update(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > limit:
            raise RuntimeError(OOM)
        return real(self, *a, **k)

    monkeypatch.setattr(Engine, "update", update)
    limit = 0
    code, _, err = cli("train", "--run-dir", str(tmp_path / "new"), "--steps", "5", *FLAGS,
                       "--no-progress")
    said = [x for x in err.strip().splitlines() if not x.startswith(DATA_LINES)]
    assert code == 2 and len(said) == 1, err  # after the lines on the data found, one line
    assert "out of memory: asked for 40.0 GiB at batch size 8 x 3 samples" in err
    assert "lower --batch-size or --samples" in err and "nothing was saved" in err
    assert not (tmp_path / "new").exists()
    # Later in a run: the checkpoint it had is kept as it was.
    limit, calls["n"] = 12, 0
    code, _, err = cli("train", "--run-dir", str(tmp_path / "old"), "--steps", "30", *FLAGS,
                       "--no-progress")
    assert code == 2 and f"{tmp_path / 'old' / 'last.pt'} is as it was" in err
    assert torch.load(tmp_path / "old" / "last.pt", weights_only=True)["step"] == 10
    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 ...")
    msg = out_of_memory_message(cuda, ClassificationConfig(), tmp_path / "none")
    assert msg.startswith("out of GPU: asked for 2.00 GiB at batch size 64 x 5 samples")


def test_evaluate_prints_first_and_writes_anywhere(cli, finished, tmp_path: Path,
                                                   monkeypatch) -> None:
    from wsram.classification import commands as evaluate  # where the command writes

    run = finished[0]
    code, out, err = cli("evaluate", str(run), "--out", str(tmp_path / "e.json"))
    assert code == 0 and f"written to {tmp_path / 'e.json'}" in out
    assert (tmp_path / "e.json").is_file()
    assert "test_error_mc" in out and "(mean of 2 trajectories)" in out

    def refuse(result, path):
        raise PermissionError(13, "Permission denied", str(path))

    if os.geteuid() != 0:  # root writes into a read-only folder: then pretend
        run.chmod(0o555)
    else:
        monkeypatch.setattr(evaluate, "write_result", refuse)
    try:
        code, out, err = cli("evaluate", str(run))
    finally:
        run.chmod(0o755)
    assert code == 2 and "test_error_sampled" in out and "test_error_deterministic" in out
    assert "cannot write the results above (Permission denied); --out FILE" in err


def test_checkpoint_errors_say_what_is_wrong(cli, finished, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.yaml").write_bytes((finished[0] / "config.yaml").read_bytes())
    (bad / "last.pt").write_bytes(random.Random(0).randbytes(3000))
    code, _, err = cli("evaluate", str(bad))
    assert code == 2 and "not a checkpoint" in err and "weights_only" not in err
    (bad / "last.pt").write_bytes(b"")
    code, _, err = cli("evaluate", str(bad))
    assert code == 2 and "empty file (0 bytes), not a checkpoint" in err and "()" not in err


def test_compare_refuses_what_it_sets_itself(cli, tmp_path: Path) -> None:
    code, _, err = cli("compare", "--out", str(tmp_path / "c"), "--method", "vimco")
    assert code == 2 and "compare: sets method itself for each variant" in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("coverage: 0.5\n")
    code, _, err = cli("compare", "--out", str(tmp_path / "c"), "--config", str(cfg),
                       "--explore")
    assert code == 2 and "sets coverage itself" in err and "leave out --explore" in err
    assert not (tmp_path / "c").exists()


def test_help_names_values_and_version(cli) -> None:
    code, out, _ = cli("train", "-h")
    assert code == 0 and " V " not in out and "V]" not in out
    for shown in ("--compile true|false", "--seed N", "--lr X", "--device cpu|cuda|cuda:N",
                  "--data-dir PATH", "--precision fp32|bf16"):
        assert shown in out, shown
    text = " ".join(out.split())
    assert "--seed N seeds parameters" in text and "--num-classes N classes" in text
    assert "(default: false)" in text
    code, out, _ = cli("evaluate", "-h")
    assert "which checkpoint: last.pt" in " ".join(out.split()) and "--out FILE.json" in out
    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"wsram {wsram.__version__}"


def test_glimpse_labels_on_one_spot_do_not_overprint() -> None:
    spots = cls_plots.label_spots([(10, 10), (10, 10), (10.5, 10), (60, 10)], 100)
    assert spots[3] == (60, 10)
    for i in range(3):
        for j in range(i):
            assert abs(spots[i][1] - spots[j][1]) >= 7 - 1e-9
    bottom = cls_plots.label_spots([(10, 99), (10, 99)], 100)
    assert all(y <= 93 for _, y in bottom) and bottom[0] != bottom[1]



@pytest.mark.slow
def test_stopping_a_parallel_compare_stops_its_trainings(tmp_path: Path) -> None:
    """kill of compare --jobs 2: each training saves its update and ends with it."""
    out = tmp_path / "c"
    flags = [f for f in FLAGS if not f.startswith(("--method=", "--threads="))]
    proc = subprocess.Popen([sys.executable, "-m", "wsram", "compare", "--out", str(out),
                             "--methods", "var+c", "wsram+c", "--no-explore", "--jobs", "2",
                             "--steps", "100000", *flags], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its group: compare and its trainings
    runs = [out / m / "lr0.001-seed0" for m in ("var+c", "wsram+c")]
    deadline = time.time() + 120
    while (not all((r / "metrics.jsonl").is_file() and _step(r) >= 3 for r in runs)
           and proc.poll() is None and time.time() < deadline):
        time.sleep(0.05)
    try:
        assert proc.poll() is None, "compare ended before its trainings began"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        time.sleep(0.5)
        try:  # is any process of the group (a training) still alive?
            os.killpg(proc.pid, 0)
            outlived = True
        except ProcessLookupError:
            outlived = False
    finally:  # whatever happened, nothing this test started keeps running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # only the group this test started
        proc.wait()
    assert proc.returncode == 130, err
    assert not outlived, "a training outlived compare"
    assert "SIGTERM: stopping 2 running training(s)" in err and "wsram: interrupted" in err
    for r in runs:
        assert "SIGTERM" in (r.parent / f"{r.name}.log").read_text()
        assert torch.load(r / "last.pt", weights_only=True)["step"] == _step(r)
        with RunLock(r):  # free: no training outlived compare
            pass


def test_six_glimpse_labels_on_one_spot_of_a_small_canvas_stay_apart() -> None:
    """mnist28: one scale, six glimpses close together near the bottom: every label gets
    a spot of its own inside the canvas."""
    spots = cls_plots.label_spots([(5 + i * 0.3, 24) for i in range(6)], 28, chars=1)
    line, width = 0.07 * 28, 0.025 * 28 * 1.6
    for i in range(6):
        assert 0 <= spots[i][1] <= 28 - line
        for j in range(i):
            assert abs(spots[i][0] - spots[j][0]) >= width - 1e-9 or \
                abs(spots[i][1] - spots[j][1]) >= line - 1e-9
