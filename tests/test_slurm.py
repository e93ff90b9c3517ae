"""``wsram compare --slurm``: its flags, the sbatch options they become, and jobs run by
submitit's local executor (no Slurm needed): a tiny study through the Slurm code path, a
job warned of its end (SIGUSR2) requeued and its run ending as if never stopped, and a
compare started again that watches the jobs still running instead of submitting twice."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY, flags

from wsram.classification import make_config
from wsram.run_dir import RunDir, lock_holder, read_metrics
from wsram.study import slurm
from wsram.study.commands import compare
from wsram.study.executor import last_logged_step, train_runs
from wsram.study.plan import Plan, Run
from wsram.study.slurm import JOB_FILE, SlurmJobs, SlurmOptions, job_folder
from wsram.train import train

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(TINY, log_every=2, eval_every=0, checkpoint_every=2, diag_every=0)
LOCAL = SlurmOptions("test", cluster="local", poll_s=0.2)
TINY_FLAGS = [*flags(TINY), "--no-progress"]


def test_help_shows_the_slurm_flags(cli) -> None:
    code, out, _ = cli("compare", "-h")
    text = " ".join(out.split())
    assert code == 0
    for shown in ("--slurm PARTITION", "--slurm-time MIN", "--slurm-gpus N", "--slurm-cpus N",
                  "--slurm-mem GB", "sbatch --time", "sbatch --gpus-per-node",
                  "sbatch --cpus-per-task", "sbatch --mem", "pip install 'wsram[slurm]'"):
        assert shown in text, shown


@pytest.mark.parametrize("given, message", [
    (["--slurm-time", "30"], "--slurm-time goes with --slurm PARTITION"),
    (["--slurm", "gpu", "--slurm-time", "-5"], "--slurm-time: at least 5 minutes"),
    (["--slurm", "gpu", "--slurm-gpus", "-1"], "--slurm-gpus: must be 0 or more"),
    (["--slurm", "gpu", "--slurm-cpus", "0"], "--slurm-cpus: must be at least 1"),
    (["--slurm", "gpu", "--slurm-mem", "0"], "--slurm-mem: gigabytes, must be > 0"),
    (["--slurm", " "], "--slurm: give a partition name"),
    (["--slurm", "gpu", "--jobs", "2"], "--jobs counts local processes"),
    (["--slurm", "gpu", "--slurm-gpus", "1"], "--device cpu with --slurm-gpus 1"),
    (["--slurm", "gpu", "--device", "cuda"], "--device cuda with --slurm-gpus 0"),
])
def test_bad_slurm_flags_are_one_line_errors(cli, tmp_path: Path, given: list[str],
                                             message: str) -> None:
    out = tmp_path / "cmp"
    code, _, err = cli("compare", "--out", str(out), *TINY_FLAGS, *given)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # refused before anything was created


def test_without_submitit_slurm_says_how_to_install_it(cli, tmp_path: Path,
                                                       monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` fails
    code, _, err = cli("compare", "--out", str(tmp_path / "cmp"), *TINY_FLAGS, "--slurm", "gpu")
    assert code == 2 and err.strip() == ("wsram: error: --slurm needs submitit, which is not "
                                         "installed: pip install 'wsram[slurm]'")


def test_submitit_is_an_extra_that_make_test_installs() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any("submitit" in d for d in project["dependencies"])
    assert any(d.startswith("submitit") for d in project["optional-dependencies"]["slurm"])
    install = [line for line in (ROOT / "Makefile").read_text().splitlines()
               if "pip install" in line and "-e" in line]
    assert install and all("slurm" in line for line in install)


def fake_srun(tmp_path: Path, monkeypatch) -> None:
    """An ``srun`` on the PATH, for submitit's Slurm executor to exist (nothing runs it),
    and an ``sbatch`` that refuses every job as Slurm refuses an unknown partition."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission "
                                    "failed: Invalid partition name specified' >&2\nexit 1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_the_flags_become_sbatch_options(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("submitit")
    fake_srun(tmp_path, monkeypatch)
    run_dir = tmp_path / "cmp" / "var+c" / "lr0.001-seed0"
    opts = SlurmOptions("gpu", time=90, gpus=1, cpus=4, mem=16)
    ex = slurm.make_executor(opts, job_folder(run_dir), "var+c/lr0.001-seed0")
    assert ex._executor.parameters == {
        "job_name": "wsram-var+c-lr0.001-seed0", "time": 90, "gpus_per_node": 1,
        "cpus_per_task": 4, "mem": "16GB", "nodes": 1, "ntasks_per_node": 1,
        "partition": "gpu"}
    assert ex._executor.max_num_timeout == slurm.MAX_TIMEOUTS
    logs = run_dir.parent / "lr0.001-seed0.slurm"
    sbatch = ex._executor._make_submission_file_text("python -m x", "uid").splitlines()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16GB",
                 "#SBATCH --job-name=wsram-var+c-lr0.001-seed0", "#SBATCH --signal=USR2@90",
                 f"#SBATCH --output={logs}/%j_0_log.out", f"#SBATCH --error={logs}/%j_0_log.err"):
        assert line in sbatch, line
    # Unset: Slurm's (the partition's) defaults.
    ex = slurm.make_executor(SlurmOptions("cpu"), job_folder(run_dir), "var+c/lr0.001-seed0")
    sbatch = ex._executor._make_submission_file_text("python -m x", "uid")
    assert "--time=60" in sbatch and "--mem" not in sbatch and "--cpus-per-task" not in sbatch


def test_a_refused_submission_is_one_line(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("submitit")
    fake_srun(tmp_path, monkeypatch)
    run_dir = tmp_path / "cmp" / "var+c" / "lr0.001-seed0"
    with pytest.raises(slurm.WsramError) as e:
        slurm.submit(SlurmOptions("nope"), "var+c/lr0.001-seed0", make_config(FAST), run_dir)
    assert str(e.value) == ("var+c/lr0.001-seed0: the job was not submitted: sbatch: error: "
                            "Batch job submission failed: Invalid partition name specified")
    assert not (job_folder(run_dir) / JOB_FILE).exists()


def test_a_failed_job_is_named_by_its_error_and_a_killed_one_by_its_state() -> None:
    submitit = pytest.importorskip("submitit")
    errors = submitit.core.utils

    class Ended:
        state = "CANCELLED"

        def __init__(self, error: Exception | None):
            self.error = error

        def result(self) -> dict:
            if self.error is not None:
                raise self.error
            return {}

    trace = ("Traceback (most recent call last):\n  File ...\nwsram.errors.WsramError: "
             "runs/x: in use by another wsram process\n")
    failed = errors.FailedJobError(f"Job (task=0) failed during processing with trace:\n"
                                   f"{'-' * 22}\n{trace}\n{'-' * 22}\nYou can check full logs "
                                   "with 'job.stderr(0)' or at paths:\n  - a.err\n  - a.out")
    assert slurm.job_error(Ended(failed)) == ("wsram.errors.WsramError: runs/x: in use by "
                                              "another wsram process")
    killed = errors.UncompletedJobError("Job 7 has not produced any output")
    assert slurm.job_error(Ended(killed)) == "ended without a result (state CANCELLED)"
    assert slurm.job_error(Ended(None)) is None


class FakeJob:
    """A job as submitit shows one: ``ends_after`` more looks before it is done."""

    def __init__(self, job_id: str, ends_after: int = 0, error: str | None = None):
        self.job_id, self.ends_after, self.error = job_id, ends_after, error
        self.paths = type("Paths", (), {"stderr": Path(f"/logs/{job_id}_0_log.err")})()

    @property
    def state(self) -> str:
        return "RUNNING" if self.ends_after > 0 else "COMPLETED"

    def done(self) -> bool:
        self.ends_after -= 1
        return self.ends_after < 0


def test_a_compare_started_again_watches_running_jobs_and_resubmits_ended_ones(
        tmp_path: Path, monkeypatch, capsys) -> None:
    base = make_config(FAST, steps=4)
    runs = {r.folder: r for r in (Run("var+c", 1e-3, s) for s in (0, 1, 2))}
    earlier = {"var+c/lr0.001-seed0": FakeJob("11", ends_after=3),  # still running
               "var+c/lr0.001-seed1": FakeJob("12")}  # ended before its run did
    submitted: list[str] = []

    def recorded(opts: SlurmOptions, run_dir: Path) -> FakeJob | None:
        return earlier.get(run_dir.relative_to(tmp_path).as_posix())

    def submit(opts: SlurmOptions, name: str, cfg: Any, run_dir: Path) -> FakeJob:
        submitted.append(name)
        return FakeJob(str(20 + len(submitted)), ends_after=1)

    monkeypatch.setattr(slurm, "recorded_job", recorded)
    monkeypatch.setattr(slurm, "submit", submit)
    monkeypatch.setattr(slurm, "job_error", lambda job: None)
    train_runs(base, tmp_path, list(runs.values()), progress=False,
               executor=SlurmJobs(LOCAL))
    assert submitted == ["var+c/lr0.001-seed1", "var+c/lr0.001-seed2"]  # not seed 0's
    err = capsys.readouterr().err
    assert "== var+c/lr0.001-seed0: job 11 submitted before (RUNNING); watching it" in err
    assert "== var+c/lr0.001-seed2 submitted: job 22 (log: /logs/22_0_log.err)" in err
    for name, job_id in (("seed0", 11), ("seed1", 21), ("seed2", 22)):  # one line each
        assert err.count(f"== var+c/lr0.001-{name} ended at update 0 of 4") == 1
        assert f"(job {job_id}, log: /logs/{job_id}_0_log.err)" in err

    # A failed job is named with the last line of its error, and compare fails.
    monkeypatch.setattr(slurm, "recorded_job", lambda opts, run_dir: None)
    monkeypatch.setattr(slurm, "job_error", lambda job: "WsramError: out of memory")
    with pytest.raises(slurm.WsramError, match=r"runs failed: var\+c/lr0.001-seed0"):
        train_runs(base, tmp_path, [runs["var+c/lr0.001-seed0"]], progress=False,
                   executor=SlurmJobs(LOCAL))
    assert "== var+c/lr0.001-seed0 failed at update 0: WsramError: out of memory (job 23, " \
        "log: /logs/23_0_log.err)" in capsys.readouterr().err


def test_the_job_record_names_the_job_of_its_cluster(tmp_path: Path) -> None:
    submitit = pytest.importorskip("submitit")
    run_dir = tmp_path / "var+c" / "lr0.001-seed0"
    assert slurm.recorded_job(LOCAL, run_dir) is None
    job_folder(run_dir).mkdir(parents=True)
    (job_folder(run_dir) / JOB_FILE).write_text(json.dumps({"job_id": "42",
                                                            "cluster": "slurm"}))
    job = slurm.recorded_job(SlurmOptions("gpu"), run_dir)
    assert isinstance(job, submitit.SlurmJob) and job.job_id == "42"
    assert slurm.recorded_job(LOCAL, run_dir) is None  # another cluster's job


@pytest.mark.slow
def test_a_tiny_study_runs_through_the_slurm_code_path(tmp_path: Path, monkeypatch,
                                                       capsys) -> None:
    pytest.importorskip("submitit")
    out = tmp_path / "cmp"
    base = make_config(FAST, steps=4)
    plan = Plan(grid=["var+c", "wsram+q+c"], lrs=[1e-3], seeds=[0], explore=False)
    res = compare(base, out, plan, progress=False, executor=SlurmJobs(LOCAL))
    assert set(res["runs"]) == {"var+c/lr0.001-seed0", "wsram+q+c/lr0.001-seed0"}
    err = capsys.readouterr().err
    for name in res["runs"]:
        run = RunDir(out / name)
        assert res["runs"][name]["updates"] == 4
        record = json.loads((job_folder(run.path) / JOB_FILE).read_text())
        log = job_folder(run.path) / f"{record['job_id']}_0_log.err"
        assert f"== {name} finished: 4 updates (job {record['job_id']}, log: {log})" in err
        assert run.eval_file().is_file()  # evaluated by the job
        assert "Traceback" not in log.read_text()
    assert (out / "results.md").is_file()

    def no_job(*a: Any) -> None:
        raise AssertionError("submitted a run that had finished")

    monkeypatch.setattr(slurm, "submit", no_job)
    compare(base, out, plan, progress=False, executor=SlurmJobs(LOCAL))


def preempt_at(run_dir: Path, step: int, sent: list[int]) -> threading.Thread:
    """A thread that sends SIGUSR2, as Slurm does, to the job training ``run_dir`` (the
    process holding its lock) once it has logged ``step`` updates."""

    def watch() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            pid = lock_holder(run_dir)
            if pid and last_logged_step(run_dir) >= step:
                os.kill(pid, signal.SIGUSR2)
                sent.append(last_logged_step(run_dir))
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


@pytest.mark.slow
def test_a_job_warned_of_its_end_is_requeued_and_its_run_ends_as_if_never_stopped(
        tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    cfg = make_config(dict(TINY, log_every=1, eval_every=15, checkpoint_every=10,
                           diag_every=0), method="wsram+q+c", steps=40)
    ref = tmp_path / "ref"
    train(cfg, ref, progress=False)
    run = Run("wsram+q+c", cfg.lr, cfg.seed)
    out = tmp_path / "cmp"
    sent: list[int] = []
    thread = preempt_at(out / run.folder, 3, sent)
    train_runs(cfg, out, [run], progress=False, executor=SlurmJobs(LOCAL))
    thread.join(timeout=1)
    assert sent and sent[0] < 40, "the job was not signalled mid-run"
    record = json.loads((job_folder(out / run.folder) / JOB_FILE).read_text())
    log = (job_folder(out / run.folder) / f"{record['job_id']}_0_log.err").read_text()
    assert "stopped by SIGUSR2 at update" in log and "; requeued" in log
    assert log.count(": resuming") == 1 and "Traceback" not in log
    a = torch.load(ref / "last.pt", weights_only=True)["model"]
    b = torch.load(out / run.folder / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert without_time(read_metrics(ref)) == without_time(read_metrics(out / run.folder))
