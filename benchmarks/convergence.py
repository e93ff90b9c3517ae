"""The convergence study (docs/convergence.md): long runs, two at a time, resumable.

    python benchmarks/convergence.py run --phase pilot --minutes 80 [--jobs 2]
    python benchmarks/convergence.py run --phase long --minutes 150
    python benchmarks/convergence.py status
    python benchmarks/convergence.py collect        # small files -> docs/convergence/runs
    python benchmarks/convergence.py report         # docs/convergence/tables.md, figures
    python benchmarks/convergence.py ship           # weights/<setup>/: the best run's best.pt

``run`` trains every run of the phase that has not reached its updates, ``--jobs`` at a
time with one thread each, each under a ``--time-limit`` that ends it with a checkpoint
before ``--minutes`` have passed; run it again (this session or the next) and every run
resumes from its ``last.pt`` (bit for bit: README, "How a run ends"). A run that reaches
its updates is evaluated on the test set twice: ``last.pt`` (``eval.json``) and the
validation-best ``best.pt`` (``eval_best.json``). The runs live in ``--root``
(``runs/long``, ignored by git) and train with ``--wsram`` (default: the pinned copy of
the code in ``runs/pinned``, a ``git worktree`` with its own virtual environment, so that
edits to the working tree never change the code a run resumes with).

The pilot's constant-rate runs are the first 20,000 updates of the long runs of the same
method and seed: ``--phase long`` resumes them to their full length.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from wsram.run_dir import RunDir
from wsram.study.convergence import write_report

ROOT = Path(__file__).resolve().parent.parent
PINNED = ROOT / "runs" / "pinned"
DOCS_RUNS = ROOT / "docs" / "convergence" / "runs"
_R = RunDir(".")
SMALL_FILES = (_R.config.name, _R.metrics.name, _R.eval_file("last").name,
               _R.eval_file("best").name)


@dataclass(frozen=True)
class Spec:
    """One run: its folder under the root (``setup/name``), its updates and its flags."""

    name: str
    steps: int
    flags: tuple[str, ...] = field(default=())

    def args(self) -> list[str]:
        return list(self.flags)


def _attention(setup: str, method: str, seed: int, steps: int, suffix: str = "",
               extra: tuple[str, ...] = ()) -> Spec:
    """A run of ``method`` at lr 0.001 on a preset (``configs/SETUP.yaml``) or the default."""
    preset = () if setup == "default" else ("--config", f"configs/{setup}.yaml")
    return Spec(f"{setup}/{method}-seed{seed}{suffix}", steps,
                (*preset, "--method", method, "--seed", str(seed), "--lr", "0.001", *extra))


COSINE = ("--lr-schedule", "cosine", "--schedule-steps", "20000")  # lr_min 0, no warm-up

#: the pilot (rule in docs/convergence.md): constant against cosine, 20,000 updates
PILOT = [
    *[_attention("default", m, s, 20000) for m in ("wsram+q+c", "var+c") for s in (0, 1)],
    *[_attention("default", m, s, 20000, "-cosine20k", COSINE) for m in ("wsram+q+c", "var+c")
      for s in (0, 1)],
]

#: the long runs at the constant rate (issue 19, item 3)
LONG = [
    # seed by seed, so that the two runs trained side by side are a pair (same seed's data)
    *[_attention("default", m, s, 100000) for s in (0, 1) for m in ("wsram+q+c", "var+c")],
    _attention("default", "wsram+c", 0, 100000),
    _attention("default", "vimco", 0, 100000),
    *[_attention("default", m, 0, 50000) for m in ("var", "wsram", "wsram+q")],
    *[_attention(p, m, 0, 50000) for p in ("mnist28", "cluttered60")
      for m in ("wsram+q+c", "var+c")],
    *[_attention(p, "cnn", 0, 30000) for p in ("default", "mnist28", "cluttered60")],
]

#: everything in order: the pilot runs that are not the start of a long run, then the long
#: runs (a run is queued once: two processes never train one folder)
ALL = [s for s in PILOT if s.name not in {x.name for x in LONG}] + LONG
PHASES = {"pilot": PILOT, "long": LONG, "all": ALL}
MARGIN_MIN = 3.0  # minutes kept free at the end for the last evaluation and checkpoint


def last_step(run: Path) -> int:
    """The last update a run logged (0 if none)."""
    return max((int(r.get("step", 0)) for r in RunDir(run).read_metrics()), default=0)


def saved_step(run: Path) -> int:
    """The update ``last.pt`` holds, read from the run's log of checkpoints: the last
    ``train/`` row is written at or before it; 0 without a checkpoint."""
    return last_step(run) if RunDir(run).last.is_file() else 0


def is_done(run: Path, spec: Spec) -> bool:
    return RunDir(run).eval_file("last").is_file() and RunDir(run).eval_file("best").is_file() and \
        last_step(run) >= spec.steps


def is_recorded(spec: Spec, docs: Path | None = None) -> bool:
    """Whether the run's committed record (``collect``) is finished: a fresh machine
    without ``runs/long`` does not train it again."""
    return is_done((docs or DOCS_RUNS) / spec.name, spec)


class Pool:
    """Trains specs ``jobs`` at a time until each is done or the deadline comes."""

    def __init__(self, specs: list[Spec], root: Path, wsram: str, jobs: int, deadline: float,
                 extra: tuple[str, ...] = ()):
        self.queue = [s for s in specs if not is_done(root / s.name, s) and not is_recorded(s)]
        self.root, self.wsram, self.jobs, self.deadline = root, wsram, jobs, deadline
        self.extra = list(extra)  # flags for every new run (e.g. --data-dir)
        self.running: dict[str, tuple[Spec, subprocess.Popen]] = {}
        self.stopping = False

    def minutes_left(self) -> float:
        return (self.deadline - time.time()) / 60

    def start(self, spec: Spec) -> None:
        run = self.root / spec.name
        limit = self.minutes_left() - MARGIN_MIN
        common = ["--steps", str(spec.steps), "--time-limit", f"{limit:.2f}", "--no-progress"]
        if RunDir(run).has_config():
            cmd = [self.wsram, "train", "--run-dir", str(run), "--resume", *common]
        else:
            run.parent.mkdir(parents=True, exist_ok=True)
            cmd = [self.wsram, "train", "--run-dir", str(run), *spec.args(), "--threads", "1",
                   *self.extra, *common]
        log = open(self.root / f"{spec.name}.log", "a")
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log,
                                start_new_session=True)  # our signals reach it only from us
        self.running[spec.name] = (spec, proc)
        say(f"start {spec.name} at update {saved_step(run)} of {spec.steps} "
            f"(pid {proc.pid}, up to {limit:.0f} min)")

    def finish(self, name: str, code: int) -> None:
        spec, _ = self.running.pop(name)
        run = self.root / name
        step = last_step(run)
        if code == 0 and step >= spec.steps:
            for which in ("last", "best"):
                subprocess.run([self.wsram, "evaluate", str(run), "--checkpoint", which,
                                "--out", str(RunDir(run).eval_file(which))], cwd=ROOT,
                               stdout=subprocess.DEVNULL, check=False)
            say(f"done  {name}: {spec.steps} updates, evaluated ({_errors(run)})")
        else:
            say(f"stop  {name} at update {step} of {spec.steps} (exit {code}; "
                f"log {self.root / name}.log)")

    def loop(self) -> None:
        while (self.queue or self.running) and not (self.stopping and not self.running):
            while (self.queue and len(self.running) < self.jobs and not self.stopping
                   and self.minutes_left() > MARGIN_MIN + 2):
                self.start(self.queue.pop(0))
            if not self.running:
                break
            for name, (_, proc) in list(self.running.items()):
                if proc.poll() is not None:
                    self.finish(name, proc.returncode)
            time.sleep(2)

    def stop(self, *_: object) -> None:
        """A signal to the driver: every run checkpoints and stops; no new run starts."""
        self.stopping = True
        for _, proc in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)


def _errors(run: Path) -> str:
    out = []
    for which in ("last", "best"):
        if RunDir(run).eval_file(which).is_file():
            e = json.loads(RunDir(run).eval_file(which).read_text())
            out.append(f"{e['checkpoint']} test error mean of {e['samples']}: "
                       f"{e['test_error_mc']:.2%}")
    return "; ".join(out)


def say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def cmd_run(args: argparse.Namespace) -> None:
    wsram = args.wsram or str(PINNED / ".venv" / "bin" / "wsram")
    if not shutil.which(wsram):
        sys.exit(f"convergence: {wsram}: no wsram executable (make the pinned copy: "
                 "see docs/convergence.md, or pass --wsram)")
    extra = ("--data-dir", args.data_dir) if args.data_dir else ()
    specs = PHASES[args.phase]
    if args.runs:
        known = {s.name: s for s in specs}
        unknown = [n for n in args.runs if n not in known]
        if unknown:
            sys.exit(f"convergence: not a run of the {args.phase} phase: {', '.join(unknown)} "
                     "(see: python benchmarks/convergence.py status)")
        specs = [known[n] for n in args.runs]
    pool = Pool(specs, Path(args.root), wsram, args.jobs,
                time.time() + args.minutes * 60, extra)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, pool.stop)
    say(f"{args.phase}: {len(pool.queue)} runs to train or finish, {args.jobs} at a time, "
        f"for up to {args.minutes:g} minutes")
    pool.loop()
    left = [s.name for s in PHASES[args.phase]
            if not is_done(Path(args.root) / s.name, s) and not is_recorded(s)]
    say(f"{args.phase}: {len(left)} runs not finished" + (f": {', '.join(left)}" if left else ""))


def cmd_status(args: argparse.Namespace) -> None:
    for phase, specs in (("pilot", PILOT), ("long", LONG)):
        for s in specs:
            run = Path(args.root) / s.name
            state = ("done" if is_done(run, s) else "done (recorded)" if is_recorded(s)
                     else f"{last_step(run):>6} of {s.steps}")
            print(f"{phase:5} {s.name:45} {state}  {_errors(run)}")


def cmd_collect(args: argparse.Namespace) -> None:
    """Copy each run's small files (config, metrics, evaluations) into the docs; a run
    restarted on a fresh machine that has not yet reached its committed record (or whose
    record is finished) leaves the record as it is, and the overlap is compared."""
    n = 0
    for spec in {s.name: s for specs in PHASES.values() for s in specs}.values():
        run = Path(args.root) / spec.name
        if not RunDir(run).metrics.is_file():
            continue
        dest = Path(args.out) / spec.name
        if RunDir(dest).metrics.is_file() and not is_done(run, spec) and (
                is_done(dest, spec) or last_step(dest) > last_step(run)):
            print(f"{spec.name}: kept the committed record (update {last_step(dest)}; this "
                  f"copy is at {last_step(run)}); {_overlap(run, dest)}")
            continue
        dest.mkdir(parents=True, exist_ok=True)
        for f in SMALL_FILES:
            if (run / f).is_file():
                shutil.copy2(run / f, dest / f)
        n += 1
    print(f"copied the small files of {n} runs to {args.out}")


def _overlap(run: Path, record: Path) -> str:
    """Whether a restarted run logged the same numbers as its record up to where it is."""
    def rows(p: Path) -> dict[tuple[int, str], float]:
        return {(int(r["step"]), k): v for r in RunDir(p).read_metrics() for k, v in r.items()
                if k not in ("step", "time", "wall") and isinstance(v, (int, float))
                and not k.startswith(("time/", "perf/"))}
    a, b = rows(run), rows(record)
    common = [k for k in a if k in b]
    if not common:
        return "no logged value in common yet"
    differ = [k for k in common if a[k] != b[k]]
    last = max(s for s, _ in common)
    return (f"{len(common)} logged values up to update {last} in common, "
            + ("all identical" if not differ else
               f"{len(differ)} differ (first at update {min(s for s, _ in differ)})"))


#: what a shipped checkpoint keeps: enough to predict, show and evaluate, not to resume
SHIPPED_KEYS = ("format", "step", "best", "best_step", "config", "method", "model", "classes")


def _val_level(run: Path, n: int = 3) -> float | None:
    """The mean validation error (mean of 10) of a run's last ``n`` evaluations."""
    rows = [r for r in RunDir(run).read_metrics() if "eval/val_error_mc" in r]
    return sum(r["eval/val_error_mc"] for r in rows[-n:]) / n if len(rows) >= n else None


def cmd_ship(args: argparse.Namespace) -> None:
    """Per setup, the run with the lowest validation error at its end (constant-rate runs
    that reached their updates, or the given ``--runs``): its config and its best.pt
    without optimiser state into ``--out/<setup>/``, with where they came from."""
    root = Path(args.root)
    for setup in sorted({s.name.split("/")[0] for s in LONG + PILOT}):
        cands = [root / s.name for s in LONG + PILOT if s.name.startswith(setup + "/")
                 and "cosine" not in s.name and is_done(root / s.name, s)]
        cands = [c for c in cands if _val_level(c) is not None]
        if not cands:
            print(f"{setup}: no finished run to ship")
            continue
        best = min(cands, key=_val_level)
        state = torch.load(RunDir(best).best, map_location="cpu", weights_only=True)
        out = Path(args.out) / setup
        out.mkdir(parents=True, exist_ok=True)
        torch.save({k: state[k] for k in SHIPPED_KEYS if k in state}, out / "best.pt")
        shutil.copy2(RunDir(best).config, out / RunDir(best).config.name)
        ev = RunDir(best).read_json(RunDir(best).eval_file("best").name)
        ev.pop("wrong", None)
        (out / "source.json").write_text(json.dumps({
            "run": best.relative_to(root).as_posix(), "step": state["step"],
            "val_error_mc_last3": _val_level(best), "test": ev}, indent=2) + "\n")
        print(f"{setup}: shipped {best.relative_to(root)} (best.pt at update {state['step']}, "
              f"test error mean of 10 {ev['test_error_mc']:.2%}) to {out}")


def cmd_report(args: argparse.Namespace) -> None:
    """Tables and figures from the committed files (``collect`` copies them there)."""
    print(f"wrote {write_report(args.runs, args.out)}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train (or resume) a phase's runs")
    r.add_argument("--phase", choices=PHASES, required=True)
    r.add_argument("--minutes", type=float, required=True,
                   help="wall-clock budget; every run stops with a checkpoint before it ends")
    r.add_argument("--jobs", type=int, default=2)
    r.add_argument("--runs", nargs="+", metavar="SETUP/RUN",
                   help="only these runs, in this order (default: the phase's, in its order)")
    r.add_argument("--wsram", help="the wsram executable (default: the pinned copy's)")
    r.add_argument("--data-dir", help="MNIST IDX files for every new run (full MNIST); use "
                   "another --root for them")
    for q in (r, sub.add_parser("status", help="where each run stands"),
              c := sub.add_parser("collect", help="copy small files into the docs")):
        q.add_argument("--root", default=str(ROOT / "runs" / "long"))
    c.add_argument("--out", default=str(DOCS_RUNS))
    sp = sub.add_parser("ship", help="the best run's best.pt per setup, stripped")
    sp.add_argument("--root", default=str(ROOT / "runs" / "long"))
    sp.add_argument("--out", default=str(ROOT / "weights"))
    rp = sub.add_parser("report", help="docs/convergence/tables.md and figures, from files")
    rp.add_argument("--runs", default=str(DOCS_RUNS), help="the runs' small files")
    rp.add_argument("--out", default=str(DOCS_RUNS.parent))
    args = p.parse_args(argv)
    os.chdir(ROOT)
    {"run": cmd_run, "status": cmd_status, "collect": cmd_collect,
     "report": cmd_report, "ship": cmd_ship}[args.cmd](args)


if __name__ == "__main__":
    main()
