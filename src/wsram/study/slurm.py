"""A study's runs as Slurm jobs, through submitit (``wsram compare --slurm PARTITION``).

One job per run (:class:`TrainJob`, a pickled callable): it trains or resumes its run
folder on the shared file system, then evaluates it, as ``wsram train`` and
``wsram evaluate`` would. Slurm warns a job with SIGUSR2 90 s before its time limit (and on
pre-emption, where the cluster sets ``SlurmctldParameters=preempt_send_user_signal``): the
training saves its current update (``train.StopRequest``) and the job asks submitit to
requeue it (:meth:`TrainJob.checkpoint`); the requeued job resumes the run exactly as
``wsram train --resume`` does. A job that fails (a user error, a bug) is not requeued.

Each run's job id is recorded beside its folder (``<run>.slurm/job.json``, with submitit's
files and the job's logs), so that ``compare`` stopped and started again watches the jobs
still pending or running instead of submitting their runs twice.

submitit is an optional dependency (``pip install 'wsram[slurm]'``): it is imported only
when a study asks for Slurm.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsram.atomic import atomic_write_json
from wsram.classification.config import ClassificationConfig
from wsram.config import replace
from wsram.errors import WsramError
from wsram.study.executor import (
    StudyProgress,
    evaluate_if_stale,
    finished,
    last_logged_step,
    resumable,
)
from wsram.train import StopRequest, train

#: what Slurm sends a job before its time limit (``--signal=USR2@90``) or on pre-emption;
#: submitit's default (its ``SUBMITIT_PREEMPT_SIGNAL``), and one of ``train.STOP_SIGNALS``
WARNING_SIGNAL = signal.SIGUSR2
#: requeues after a time limit before a job gives up (pre-emptions do not count); a run
#: longer than this many ``--slurm-time`` needs a longer one
MAX_TIMEOUTS = 100
#: the record of a run's job, in its submitit folder beside the run folder
JOB_FILE = "job.json"
INSTALL = "pip install 'wsram[slurm]'"


@dataclass(frozen=True)
class SlurmOptions:
    """What each job asks Slurm for (``wsram compare --slurm-...``)."""

    partition: str  # sbatch --partition
    time: int = 60  # minutes per job, sbatch --time; a longer run is requeued at the limit
    gpus: int = 0  # sbatch --gpus-per-node (a run trains on one device)
    cpus: int | None = None  # sbatch --cpus-per-task, and the run's CPU threads
    mem: float | None = None  # GB, sbatch --mem
    cluster: str = "slurm"  # submitit's "local" executor stands in for Slurm in the tests
    poll_s: float = 10.0  # seconds between looks at the jobs

    def check(self) -> None:
        """Refuse, in one line each, values Slurm would refuse or a study cannot use."""
        if not self.partition.strip():
            raise WsramError("--slurm: give a partition name")
        if self.time < 5:
            raise WsramError(f"--slurm-time: at least 5 minutes (Slurm warns a job 90 s "
                             f"before its limit), got {self.time}")
        if self.gpus < 0:
            raise WsramError(f"--slurm-gpus: must be 0 or more, got {self.gpus}")
        if self.cpus is not None and self.cpus < 1:
            raise WsramError(f"--slurm-cpus: must be at least 1, got {self.cpus}")
        if self.mem is not None and not self.mem > 0:
            raise WsramError(f"--slurm-mem: gigabytes, must be > 0, got {self.mem:g}")


def require_submitit() -> Any:
    """The submitit module, or a one-line error saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise WsramError(f"--slurm needs submitit, which is not installed: {INSTALL}") from None
    return submitit


def job_folder(run_dir: Path) -> Path:
    """submitit's folder of a run's jobs (pickles, logs) and the job record, beside it."""
    return run_dir.parent / f"{run_dir.name}.slurm"


def job_name(name: str) -> str:
    """The Slurm job name of run ``<variant>/lr<lr>-seed<seed>``."""
    return "wsram-" + name.replace("/", "-")


def make_executor(opts: SlurmOptions, folder: Path, name: str) -> Any:
    """A submitit executor whose jobs ask for ``opts`` (see docs/cluster.md for the sbatch
    options each becomes); logs go to ``folder/<job id>_0_log.out|err``."""
    submitit = require_submitit()
    ex = submitit.AutoExecutor(folder=folder, cluster=opts.cluster,
                               slurm_max_num_timeout=MAX_TIMEOUTS,
                               local_max_num_timeout=MAX_TIMEOUTS)
    ex.update_parameters(name=job_name(name), timeout_min=opts.time, nodes=1,
                         tasks_per_node=1, gpus_per_node=opts.gpus, cpus_per_task=opts.cpus,
                         mem_gb=opts.mem, slurm_partition=opts.partition)  # None: unset
    return ex


class TrainJob:
    """One run of a study as a submitit job: trains or resumes ``run_dir``, then evaluates
    it. ``checkpoint`` is submitit's protocol for a job warned of its end."""

    def __init__(self, cfg: ClassificationConfig, run_dir: str | Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)

    def __call__(self) -> dict[str, Any]:
        if not finished(self.cfg, self.run_dir):
            row = self._train()
            stopped, step = row["stopped_by"], row["last_step"]
            if stopped == WARNING_SIGNAL.name:  # it saved its current update
                _say(f"{self.run_dir}: stopped by {stopped} at update {step}; requeued")
                _requeue(self.run_dir)
            if stopped not in ("finished", "time limit"):
                raise WsramError(f"{self.run_dir}: stopped by {stopped} at update {step} of "
                                 f"{self.cfg.steps}")
        evaluate_if_stale(self.run_dir)
        return {"run_dir": str(self.run_dir), "step": last_logged_step(self.run_dir)}

    def _train(self) -> dict[str, Any]:
        resume = resumable(self.cfg, self.run_dir)
        _say(f"{self.run_dir}: {'resuming' if resume else 'starting'}")
        with _ignored(signal.SIGTERM):  # as submitit's jobs do: SIGUSR2 is the warning
            return train(self.cfg, self.run_dir, resume=resume, progress=False)

    def checkpoint(self) -> Any:
        """What submitit requeues: this run again, which resumes from its folder."""
        return require_submitit().helpers.DelayedSubmission(TrainJob(self.cfg, self.run_dir))


@contextlib.contextmanager
def _ignored(sig: signal.Signals) -> Iterator[None]:
    """``sig`` ignored (the training then leaves it alone, as under nohup)."""
    old = signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(sig, old)


def _say(line: str) -> None:
    print(f"wsram: {line}", file=sys.stderr, flush=True)


def _requeue(run_dir: Path) -> None:
    """Hand the warning on to submitit's handler, which calls :meth:`TrainJob.checkpoint`,
    requeues the job and exits (or raises, after too many time limits)."""
    handler = signal.getsignal(WARNING_SIGNAL)
    if not callable(handler):  # not a submitit job: nobody to requeue it
        raise WsramError(f"{run_dir}: stopped by {WARNING_SIGNAL.name}; resume it with "
                         f"wsram train --run-dir {run_dir} --resume")
    handler(WARNING_SIGNAL, None)


def submit(opts: SlurmOptions, name: str, cfg: ClassificationConfig, run_dir: Path) -> Any:
    """Submit run ``name`` as a job, and record its id beside the run folder."""
    run_dir = run_dir.absolute()  # wherever the job starts
    folder = job_folder(run_dir)
    if opts.cpus and not cfg.threads:
        cfg = replace(cfg, threads=opts.cpus)
    errors = require_submitit().core.utils
    try:
        job = make_executor(opts, folder, name).submit(TrainJob(cfg, run_dir))
    except (errors.FailedJobError, errors.FailedSubmissionError) as e:  # sbatch said no
        raise WsramError(f"{name}: the job was not submitted: {_last_line(str(e))}") from None
    atomic_write_json(folder / JOB_FILE, {"job_id": str(job.job_id), "cluster": opts.cluster})
    return job


def recorded_job(opts: SlurmOptions, run_dir: Path) -> Any | None:
    """The job last submitted for ``run_dir`` (by this or an earlier ``compare``), if any."""
    path = job_folder(run_dir) / JOB_FILE
    try:
        record = json.loads(path.read_text())
        job_id, cluster = str(record["job_id"]), record["cluster"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if cluster != opts.cluster:
        return None
    submitit = require_submitit()
    job_class = submitit.SlurmJob if cluster == "slurm" else submitit.LocalJob
    return job_class(folder=job_folder(run_dir), job_id=job_id)


def job_error(job: Any) -> str | None:
    """None if the job returned; else the last line of its error, or its Slurm state if it
    ended without a result (cancelled, killed, out of memory)."""
    errors = require_submitit().core.utils
    try:
        job.result()
    except errors.FailedJobError as e:  # its traceback, between two lines of dashes
        parts = str(e).split("-" * 22)
        return _last_line(parts[1] if len(parts) >= 3 else str(e)) or type(e).__name__
    except errors.UncompletedJobError:
        return f"ended without a result (state {job.state})"
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@dataclass(frozen=True)
class SlurmJobs:
    """The study's runs as Slurm jobs (an ``executor.Executor``): each submitted once (or
    watched, if an earlier ``compare`` submitted it and it is still pending or running),
    then watched until all ended. Stopping ``compare`` leaves the jobs running."""

    options: SlurmOptions

    def train(self, cfgs: dict[str, ClassificationConfig], out_dir: Path, progress: bool,
              label: str = "runs", already: int = 0) -> None:
        jobs: dict[str, Any] = {}
        failed: list[str] = []
        with StopRequest() as stop:
            bar = StudyProgress(cfgs, out_dir, progress, label, already)
            try:
                for name, cfg in cfgs.items():
                    if stop.requested:
                        break
                    jobs[name] = self._start(name, cfg, out_dir / name, bar)
                self._watch(jobs, cfgs, out_dir, bar, stop, failed)
            finally:
                bar.close()
        if stop.requested:
            _say_left(jobs, stop.reason)
            raise KeyboardInterrupt
        if failed:
            raise WsramError(f"runs failed: {', '.join(failed)} (their logs are named above)")

    def _start(self, name: str, cfg: ClassificationConfig, run_dir: Path,
               bar: StudyProgress) -> Any:
        """The run's recorded job if it is still pending or running, else a new one."""
        job = recorded_job(self.options, run_dir)
        if job is not None and not job.done():
            bar.say(f"== {name}: job {job.job_id} submitted before ({job.state}); watching it")
            return job
        job = submit(self.options, name, cfg, run_dir)
        bar.say(f"== {name} submitted: job {job.job_id} (log: {job.paths.stderr})")
        return job

    def _watch(self, jobs: dict[str, Any], cfgs: dict[str, ClassificationConfig],
               out_dir: Path, bar: StudyProgress, stop: StopRequest,
               failed: list[str]) -> None:
        """Until every job ended (or a stop is asked for): one line for each that ends."""
        waiting = dict(jobs)
        while waiting and not stop.requested:
            for name, job in list(waiting.items()):
                if job.done():
                    del waiting[name], jobs[name]
                    if not _report(name, job, cfgs[name], out_dir / name, bar):
                        failed.append(name)
            bar.refresh()
            deadline = time.monotonic() + self.options.poll_s
            while waiting and not stop.requested and time.monotonic() < deadline:
                time.sleep(0.1)


def _report(name: str, job: Any, cfg: ClassificationConfig, run_dir: Path,
            bar: StudyProgress) -> bool:
    """One line for a job that ended: finished, ended short of its budget (the config's
    time limit, or a job an earlier ``compare`` submitted with fewer updates), or failed and
    why; True unless it failed."""
    error = job_error(job)
    where = f"job {job.job_id}, log: {job.paths.stderr}"
    step = last_logged_step(run_dir)
    if error is not None:
        bar.say(f"== {name} failed at update {step}: {error} ({where})")
    elif finished(cfg, run_dir):
        bar.say(f"== {name} finished: {step} updates ({where})")
    else:
        bar.say(f"== {name} ended at update {step} of {cfg.steps} ({where})")
    bar.ended(name, error is None)
    return error is None


def _say_left(jobs: dict[str, Any], reason: str) -> None:
    if jobs:
        ids = ", ".join(f"{name} (job {job.job_id})" for name, job in jobs.items())
        print(f"wsram: {reason}: stopped watching; {len(jobs)} job(s) go on in Slurm: {ids}; "
              "compare again with the same options to pick them up", file=sys.stderr)


def add_slurm_options(parser: argparse.ArgumentParser) -> None:
    """``wsram compare``'s Slurm flags (docs/cluster.md)."""
    g = parser.add_argument_group("on a Slurm cluster (needs " + INSTALL + ")")
    g.add_argument("--slurm", metavar="PARTITION",
                   help="train each run as a Slurm job of its own in this partition, through "
                   "submitit; a job warned of its time limit or pre-emption saves its update "
                   "and is requeued")
    g.add_argument("--slurm-time", type=int, metavar="MIN",
                   help="wall time of each job in minutes (sbatch --time; default 60); a run "
                   "that needs longer is requeued and resumes")
    g.add_argument("--slurm-gpus", type=int, metavar="N",
                   help="GPUs per job (sbatch --gpus-per-node; default 0); use with --device cuda")
    g.add_argument("--slurm-cpus", type=int, metavar="N",
                   help="CPUs per job (sbatch --cpus-per-task), also each run's CPU threads")
    g.add_argument("--slurm-mem", type=float, metavar="GB",
                   help="memory per job in gigabytes (sbatch --mem; default: the partition's)")


def slurm_from_args(args: argparse.Namespace, base: ClassificationConfig) -> SlurmJobs | None:
    """The Slurm executor the flags ask for (None without ``--slurm``), refusing in one line
    each what cannot work."""
    given = [f for f in ("time", "gpus", "cpus", "mem") if getattr(args, f"slurm_{f}") is not None]
    if args.slurm is None:
        if given:
            raise WsramError(f"--slurm-{given[0]} goes with --slurm PARTITION")
        return None
    if getattr(args, "stack_size", None) is not None or getattr(args, "no_stack", False):
        raise WsramError("--stack-size/--no-stack choose local stacks; with --slurm each run "
                         "is a job of its own")
    if args.jobs != 1:
        raise WsramError("--jobs counts local processes; with --slurm each run is a job of its own")
    opts = SlurmOptions(args.slurm, **{f: getattr(args, f"slurm_{f}") for f in given})
    opts.check()
    cuda = base.device.startswith("cuda")
    if cuda != (opts.gpus > 0):
        raise WsramError(f"--device {base.device} with --slurm-gpus {opts.gpus}: give both "
                         "--device cuda and --slurm-gpus 1, or neither")
    require_submitit()
    if shutil.which("srun") is None:
        raise WsramError("--slurm: no Slurm here (srun is not on the PATH); run compare on "
                         "the cluster's login node")
    return SlurmJobs(opts)
