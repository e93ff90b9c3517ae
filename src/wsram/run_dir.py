"""Run folders: what they hold, creating one safely, locking it, and reading its files.

:class:`RunDir` alone knows the names of a run's files; every other module asks it
(``RunDir(path).last``, ``.read_config()``, ``.write_json(...)``).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from .atomic import atomic_write_json, atomic_write_text
from .config import TrainConfig, load_yaml, make_config
from .errors import WsramError

CONFIG, METRICS, LOCK, TB = "config.yaml", "metrics.jsonl", ".lock", "tb"
#: the marker of a folder wsram made (a run, or the parent folder of a study's runs): its
#: first line says which, so that no command trains into a folder of the user's own files
MARKER = ".wsram"
CHECKPOINTS = {"last": "last.pt", "best": "best.pt"}
EVALS = {"last": "eval.json", "best": "eval_best.json"}
#: what a run that stopped before its first checkpoint had as best.pt, kept on a restart
EARLIER_BEST = "best-before-restart.pt"
#: in the folder holding the runs of a stack (``stack_train.py``): marks it as a wsram
#: folder and names its runs
STACK_FILE = "stack.json"

#: every file or folder a run may write (and ``--overwrite`` may delete); a task adds its
#: own with :func:`register_run_files`
RUN_FILES = [CONFIG, METRICS, *CHECKPOINTS.values(), EARLIER_BEST, *EVALS.values(), TB]


def register_run_files(*names: str) -> None:
    """Files a task writes into its run folders (e.g. an encoder), so that ``--overwrite``
    replaces them too."""
    RUN_FILES.extend(n for n in names if n not in RUN_FILES)


class RunDir:
    """A run folder: the one place that names its files."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:  # a task's own file: RunDir(p) / "encoder.pt"
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def last(self) -> Path:
        return self.checkpoint("last")

    @property
    def best(self) -> Path:
        return self.checkpoint("best")

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    @property
    def tb(self) -> Path:
        return self.path / TB

    def checkpoint(self, which: str = "last") -> Path:
        """``last.pt`` (the latest update) or ``best.pt`` (the best evaluation)."""
        return self.path / CHECKPOINTS[which]

    def eval_file(self, which: str = "last") -> Path:
        """The test evaluation of a checkpoint: ``eval.json`` (last) or ``eval_best.json``."""
        return self.path / EVALS[which]

    def has_config(self) -> bool:
        return self.config.is_file()

    def read_config(self) -> dict[str, Any]:
        """The raw mapping of ``config.yaml`` (the task's name and every config value)."""
        return load_yaml(self.config)

    def write_config(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.config, yaml.safe_dump(data, sort_keys=False))

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def write_json(self, name: str, data: Any) -> Path:
        atomic_write_json(self.path / name, data)
        return self.path / name

    def files(self) -> list[str]:
        """The names of what the folder holds, hidden files (the lock) left out."""
        return sorted(p.name for p in self.path.iterdir() if not p.name.startswith(".")) \
            if self.path.is_dir() else []


def marker_kind(folder: Path) -> str | None:
    """What a folder's marker says it is (``run``, ``study``), None without one."""
    try:
        return (folder / MARKER).read_text().split()[0]
    except (OSError, IndexError):
        return None


def mark(folder: Path, kind: str) -> None:
    """Mark a folder wsram made as a ``run`` or a ``study`` (kept if already there)."""
    if marker_kind(folder) is None:
        atomic_write_text(folder / MARKER, f"{kind}\nmade by wsram; see its README\n")


def refuse_foreign(folder: Path, kind: str, option: str) -> None:
    """Refuse, in one line, a folder that is a file, or one holding files of the user's
    (no marker, none of a wsram ``kind``'s files), before anything is written into it."""
    if folder.exists() and not folder.is_dir():
        raise WsramError(f"{folder}: a file, not a folder; give {option} a new or empty folder")
    if not folder.is_dir():
        return
    names = sorted(n for n in os.listdir(folder) if n not in (MARKER, LOCK, ".write-test"))
    known = set(RUN_FILES) if kind == "run" else {"results.json", STACK_FILE}
    ours = marker_kind(folder) is not None or any(n in known for n in names)
    if kind == "study":  # a study or stack from before markers: its runs hold configs
        ours = ours or any(RunDir(p).has_config() for p in [*folder.glob("*"),
                                                             *folder.glob("*/*")])
    if names and not ours:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        what = "a wsram run" if kind == "run" else "wsram runs (a study's or a stack's)"
        raise WsramError(f"{folder}: holds files that are not {what} ({shown}); give "
                         f"{option} a new or empty folder")
    if kind == "run" and marker_kind(folder) == "study":
        raise WsramError(f"{folder}: the parent folder of a study's or a stack's runs, not a "
                         f"run; give {option} a folder of its own")
    if kind == "study" and (marker_kind(folder) == "run" or RunDir(folder).has_config()):
        raise WsramError(f"{folder}: holds a run, not a study's runs; give {option} a "
                         "folder of its own")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool,
                    inputs: list[str] | None = None) -> None:
    """Create the run folder, refusing to clobber a previous run (or, with ``overwrite``,
    to delete a file this run reads: ``inputs``) or to write among the user's own files;
    fail early if unwritable; mark it as a run."""
    refuse_foreign(run_dir, "run", "--run-dir")
    existing = [f for f in RUN_FILES if (run_dir / f).exists()] if run_dir.is_dir() else []
    if overwrite and not resume:
        doomed = [(run_dir / f).resolve() for f in existing]
        for p in inputs or []:
            src = Path(p).resolve()
            if any(src == d or d in src.parents for d in doomed):
                raise WsramError(f"{run_dir}: --overwrite would delete {p}, which this run "
                                 "reads; copy it elsewhere first")
    if resume:
        if not (run_dir / CHECKPOINTS["last"]).is_file():
            raise WsramError(f"{run_dir}: nothing to resume (no last.pt); train without "
                             "--resume to start it")
    elif existing and not overwrite:
        if not (run_dir / CHECKPOINTS["last"]).is_file():
            raise WsramError(f"{run_dir}: holds a run that stopped before its first checkpoint "
                             f"({', '.join(existing)}); --resume starts it afresh, "
                             "--overwrite replaces it")
        raise WsramError(f"{run_dir}: already holds a run ({', '.join(existing)}); "
                         "use --resume to continue it or --overwrite to replace it")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
        mark(run_dir, "run")
    except OSError as e:
        raise WsramError(f"{run_dir}: cannot write to the run folder ({e.strerror})") from None


#: what a run that stopped before its first checkpoint leaves that a fresh start replaces
#: (a best.pt it wrote is moved aside to EARLIER_BEST, never deleted)
PARTIAL_FILES = (METRICS, TB)


def clean_run_dir(run_dir: Path, overwrite: bool, partial: bool = False) -> None:
    """Holding the lock: sweep temporary files a killed process left (SIGKILL, power loss:
    the file it was replacing is intact); with ``overwrite`` delete the old run, with
    ``partial`` the logs of one that never reached a checkpoint (a pretrained encoder
    stays)."""
    for stale in run_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    if partial and not overwrite and (run_dir / CHECKPOINTS["best"]).is_file():
        os.replace(run_dir / CHECKPOINTS["best"], run_dir / EARLIER_BEST)
        print(f"wsram: {run_dir}: the earlier start's best.pt is kept as {EARLIER_BEST}",
              file=sys.stderr)
    if overwrite or partial:
        for f in RUN_FILES if overwrite else PARTIAL_FILES:
            if (run_dir / f).is_dir():
                shutil.rmtree(run_dir / f, ignore_errors=True)
            else:
                (run_dir / f).unlink(missing_ok=True)


def entries_before_start(run_dir: Path) -> set[str] | Path:
    """The names in ``run_dir``; if it does not exist, the outermost of it and its parents
    that does not (what creating it will create)."""
    if run_dir.is_dir():
        return set(os.listdir(run_dir))
    top = run_dir.absolute()
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    return top


#: what a start that failed before its first checkpoint may have written
START_FILES = {LOCK, ".write-test", MARKER, CONFIG, METRICS, TB}


def remove_failed_start(run_dir: Path, before: set[str] | Path, locked: bool = True) -> None:
    """After a start that failed before any checkpoint: remove what it created (the
    folder itself, if it made it), so that the same command can simply be run again.
    Anything else (a pretrained encoder.pt, a best.pt) is kept, and ``--resume`` starts
    such a folder afresh. A start that never held the folder's lock (``locked`` False:
    another process may be writing there) removes only empty folders it made."""
    if not run_dir.is_dir() or (run_dir / CHECKPOINTS["last"]).exists():
        return
    if not locked:  # of what it wrote, only the marker is surely its own
        ours: set[str] = {MARKER} & (set(os.listdir(run_dir)) - (
            before if isinstance(before, set) else set()))
    else:
        ours = set(os.listdir(run_dir)) - (before if isinstance(before, set) else set())
    if not ours <= START_FILES | {p.name for p in run_dir.glob(".*.tmp")}:
        return
    for name in ours:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if isinstance(before, Path):  # the folders this start created, innermost first
        folder = run_dir.absolute()
        try:
            while True:
                folder.rmdir()
                if folder == before:
                    break
                folder = folder.parent
        except OSError:  # something else is in it by now: leave it
            pass


def check_resume(cfg: TrainConfig, run_dir: Path) -> None:
    """Refuse to continue a run with a config that would make it another run: only how
    long, where and how verbosely it runs may change (TrainConfig.RESUMABLE_KEYS)."""
    saved_path = run_dir / CONFIG
    if not saved_path.is_file():
        raise WsramError(f"{run_dir}: nothing to resume (no config.yaml)")
    raw = load_yaml(saved_path)
    if "task" not in raw:  # written before config files named their task
        raise WsramError(f"{run_dir}: a run folder of an older format; convert it with: "
                         f"wsram migrate {run_dir}")
    try:
        saved = make_config(raw, type(cfg)).to_dict()
    except WsramError as e:
        raise WsramError(f"{run_dir}: cannot resume: its config.yaml is not a "
                         f"{type(cfg).__name__} ({e})") from None
    diff = [f"{k} {saved[k]!r} -> {v!r}" for k, v in cfg.to_dict().items()
            if saved.get(k) != v and k not in cfg.RESUMABLE_KEYS
            and not (k == "schedule_steps" and v == 0)  # 0 asks for the saved horizon
            and not (k in cfg.DATA_KEYS and v is None)]  # None: what the data said
    if diff:
        raise WsramError(f"{run_dir}: cannot resume with a different config ({'; '.join(diff)}"
                         "); train into a new folder instead")


def saved_horizon(run_dir: Path) -> int:
    """The schedule horizon a run fixed at its start (its config.yaml's ``schedule_steps``;
    0 for a run from before schedules, whose rates were constant)."""
    return int(RunDir(run_dir).read_config().get("schedule_steps") or 0)


def save_config(cfg: TrainConfig, run_dir: Path) -> None:
    """``config.yaml``: the task's name, then every resolved config value."""
    RunDir(run_dir).write_config({"task": cfg.TASK, **cfg.to_dict()})


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the process holding ``run_dir``'s lock (0 if it did not say), or None
    when nobody holds it. Only looks: creates nothing."""
    path = RunDir(run_dir).lock
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        text = os.read(fd, 32).decode(errors="replace").strip()
        return int(text) if text.isdigit() else 0
    finally:
        os.close(fd)


def in_use_message(run_dir: Path) -> str:
    pid = lock_holder(run_dir)
    return f"{run_dir}: in use by another wsram process" + (f" (pid {pid})" if pid else "")


class RunLock:
    """An exclusive lock on a run folder, so two processes never train into one."""

    def __init__(self, run_dir: Path):
        self.path = RunDir(run_dir).lock
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise WsramError(in_use_message(self.path.parent)) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())  # who holds it, for the others' message
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All lines of ``metrics.jsonl``; a torn last line (a crash mid-write) is skipped."""
    path = RunDir(run_dir).metrics
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint being resumed, so no step appears twice."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            pass
    atomic_write_text(path, "".join(k + "\n" for k in keep))


def mark_stack(parent: Path, run_dirs: list[Path]) -> None:
    """Mark ``parent`` as a folder of stacked runs: its stack file lists the runs (those
    of earlier stacks into it kept)."""
    path = parent / STACK_FILE
    try:
        runs = json.loads(path.read_text()).get("runs", []) if path.is_file() else []
    except (OSError, json.JSONDecodeError, AttributeError):
        runs = []
    for d in run_dirs:
        try:
            name = str(d.resolve().relative_to(parent.resolve()))
        except ValueError:
            name = str(d.resolve())
        if name not in runs:
            runs.append(name)
    parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"kind": "wsram stack", "runs": runs})
    mark(parent, "study")  # a parent of runs: no single run trains into it
