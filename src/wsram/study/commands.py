"""``wsram compare``: its options (:func:`add_commands`), the command, and :func:`compare`,
which trains a study's runs, evaluates them and writes the results.

A study: 1. the grid; 2. at the chosen rates (``results.choose_rates``, the paper's rule)
the methods of a family and the exploration-heuristics variants; 3. every run evaluated
on the test set; tables and figures from the files (``report.write_results``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from wsram.atomic import atomic_write_json
from wsram.classification.config import ClassificationConfig
from wsram.classification.data.splits import check_inputs
from wsram.cli import add_config_options, config_from_args, positive
from wsram.config import load_yaml
from wsram.errors import WsramError
from wsram.methods import METHODS
from wsram.run_dir import mark, refuse_foreign
from wsram.stack import default_stack_size
from wsram.study.executor import (
    Executor,
    LocalProcesses,
    LocalStacks,
    evaluate_if_stale,
    last_logged_step,
    seconds_per_update,
    threads_per_job,
    train_runs,
)
from wsram.study.plan import EXPLORE, EXPLORED, Plan, check_study, default_plan
from wsram.study.report import write_results
from wsram.study.results import (
    SHARED_FILE,
    choose_rates,
    discover_runs,
    variance_at_shared_parameters,
)
from wsram.study.slurm import add_slurm_options, slurm_from_args


def compare(base: ClassificationConfig, out_dir: str | Path, plan: Plan, jobs: int = 1,
            progress: bool = True, executor: Executor | None = None) -> dict[str, Any]:
    """Train the study's runs into ``out_dir`` (resumable) through ``executor`` (default:
    ``jobs`` local processes at a time), evaluate them, write results."""
    out_dir = Path(out_dir)
    refuse_foreign(out_dir, "study", "--out")
    out_dir.mkdir(parents=True, exist_ok=True)
    mark(out_dir, "study")
    check_study(base, out_dir)
    train_runs(base, out_dir, plan.grid_runs(), jobs, progress, "grid", executor)
    rates = {m: c["lr"] for m, c in choose_rates(discover_runs(out_dir)).items()}
    train_runs(base, out_dir, plan.chosen_runs(rates, base.lr), jobs, progress,
               "at chosen rates", executor)
    for run_dir in sorted(r.dir for r in discover_runs(out_dir)):
        evaluate_if_stale(run_dir)
    shared = variance_at_shared_parameters(out_dir, rates)
    if shared:  # else the checkpoints are gone: keep what was measured with them
        atomic_write_json(out_dir / SHARED_FILE, shared)
    return write_results(out_dir)


def add_commands(sub: Any) -> None:
    """``wsram compare``."""
    c = sub.add_parser("compare", help="train the paper's variants alike over seeds and "
                       "learning rates; tables and figures with intervals")
    c.set_defaults(func=cmd_compare)
    where = c.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", metavar="DIR",
                       help="folder for the runs, results.md/json and figures")
    where.add_argument("--plot-only", metavar="DIR",
                       help="redraw tables and figures of DIR from its files; train nothing")
    c.add_argument("--config", metavar="PATH",
                   help="YAML file of config keys shared by every run")
    c.add_argument("--seeds", type=int, nargs="+", metavar="S",
                   help="seeds of every run (default: the config's seed)")
    c.add_argument("--lrs", type=float, nargs="+", metavar="LR",
                   help="learning rates of the grid methods (default: the config's lr)")
    c.add_argument("--methods", nargs="+", metavar="M",
                   help="grid methods, trained at every rate (default: every attention method)")
    c.add_argument("--at-chosen-rate", nargs="+", metavar="M", default=[],
                   help="methods trained only at the rate chosen for their family: var at "
                   "var+c's, wsram at wsram+c's, wsram+q at wsram+q+c's, vimco at var+c's")
    c.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="runs trained in parallel processes")
    c.add_argument("--explore", action="store_true",
                   help="also train var+c and wsram+q+c with the exploration heuristics on, "
                   "at their chosen rates (paper Figure 4)")
    c.add_argument("--no-explore", action="store_true", help=argparse.SUPPRESS)  # the default
    c.add_argument("--stack-size", type=int, metavar="N",
                   help="train each variant's runs in stacks of up to N, as one program in "
                   "this process (default: per device, as measured: 1 on a CPU)")
    c.add_argument("--no-stack", action="store_true",
                   help="one process per run (as --stack-size 1)")
    c.add_argument("--max-step", type=int, metavar="N",
                   help="with --plot-only: compare training curves up to update N only")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_slurm_options(c)
    add_config_options(c, ClassificationConfig, skip=("method",))  # --methods chooses
    c.add_argument("--method", dest="cfg.method", default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # refused with a pointer to --methods


def cmd_compare(args: argparse.Namespace) -> None:
    if args.plot_only:
        if not Path(args.plot_only).is_dir():
            raise WsramError(f"{args.plot_only}: no such comparison folder")
        positive("max-step", args.max_step)
        write_results(args.plot_only, args.max_step)
        out = Path(args.plot_only)
    else:
        _check_compare_args(args)
        base = check_inputs(config_from_args(args, ClassificationConfig))  # own data: filled
        plan = default_plan(base, args.seeds, args.lrs, args.methods, args.at_chosen_rate,
                            explore=args.explore)
        executor = slurm_from_args(args, base) or local_executor(args, base)
        refuse_foreign(Path(args.out), "study", "--out")  # before the timing, not after
        announce(plan, base, Path(args.out), args.jobs, executor)
        compare(base, args.out, plan, jobs=args.jobs, progress=not args.no_progress,
                executor=executor)
        out = Path(args.out)
    print("\n".join(headline(out)))


def local_executor(args: argparse.Namespace, base: ClassificationConfig) -> Executor:
    """Stacks of ``--stack-size`` runs (default: the device's measured best), or
    ``--jobs`` processes of one run each."""
    size = 1 if args.no_stack else args.stack_size or default_stack_size(base.device)
    if size > 1 and args.jobs > 1:
        raise WsramError("--jobs: stacks train one after another in this process; give "
                         "--jobs or --stack-size, not both")
    return LocalStacks(size) if size > 1 else LocalProcesses(args.jobs)


def announce(plan: Plan, base: ClassificationConfig, out: Path, jobs: int,
             executor: Executor) -> None:
    """The plan, before anything trains: the runs of each phase, how many finished before,
    the diagnostics, and (local runs on the CPU) a time estimate from timed updates."""
    runs = plan.grid_runs()
    total = sum(plan.counts().values())
    done = {r.folder: last_logged_step(out / r.folder) for r in runs}
    print(f"compare: {total} runs of {base.steps} updates each into {out}"
          + (f" ({sum(s >= base.steps for s in done.values())} finished before)"
             if any(done.values()) else ""), file=sys.stderr)
    print("\n".join(plan.lines(base)), file=sys.stderr)
    if not isinstance(executor, LocalProcesses) or base.device != "cpu":
        how = ("Slurm jobs" if not isinstance(executor, LocalStacks | LocalProcesses) else
               "stacks of runs" if isinstance(executor, LocalStacks) else base.device)
        print(f"  time: not estimated ({how}; the estimate times one CPU run's updates)",
              file=sys.stderr)
        return
    methods = sorted({r.method for r in runs} | set(plan.chosen)
                     | ({"var+c", "wsram+q+c"} if plan.explore else set()))
    cost = seconds_per_update(base, methods, base.threads or threads_per_job(jobs))
    left = sum(max(0, base.steps - done[r.folder]) * cost[r.method] for r in runs) + sum(
        base.steps * cost[m] for m in [*plan.chosen, *(EXPLORED if plan.explore else ())]
        for _ in plan.seeds)
    minutes = left / min(jobs, max(1, total)) / 60
    print(f"  time: about {minutes:.0f} min of training on this machine, {jobs} at a time "
          "(evaluations extra; one update: " + ", ".join(
              f"{m} {t:.3f} s" for m, t in cost.items()) + ")", file=sys.stderr)


def headline(out: Path) -> list[str]:
    """What compare ends with: where the results are and the test errors, lowest first."""
    res = json.loads((out / "results.json").read_text())
    errs = sorted((g["test_error_mc"]["mean"], v) for v, g in res["table"].items()
                  if g.get("test_error_mc"))
    lines = [f"wrote {out / 'results.md'} (tables), {out / 'results.json'} and its figures"]
    if errs:
        lines.append("test error (mean of M trajectories, mean over seeds), lowest first: "
                     + ", ".join(f"{v} {e:.1%}" for e, v in errs))
    return lines


def _check_compare_args(args: argparse.Namespace) -> None:
    """Refuse, in one line each, the options of a training study that cannot work."""
    if args.max_step is not None:
        raise WsramError("--max-step goes with --plot-only DIR (it redraws, trains nothing)")
    positive("jobs", args.jobs)
    positive("stack-size", args.stack_size)
    for m in [*(args.methods or []), *args.at_chosen_rate]:
        if m not in METHODS or not METHODS[m].attends:
            raise WsramError(f"compare: unknown attention method {m!r}; choose from "
                             + ", ".join(n for n in METHODS if METHODS[n].attends))
    if args.lrs and min(args.lrs) <= 0:
        raise WsramError("--lrs: learning rates must be > 0")
    refuse_variant_keys(args)


def refuse_variant_keys(args: argparse.Namespace) -> None:
    """``wsram compare`` sets the method (and, for the exploration study, the heuristics)
    of each variant itself: a value given for them would be silently ignored, so refuse."""
    own = {"method"} | (set(EXPLORE) if args.explore else set())
    given = {k[4:] for k in vars(args) if k.startswith("cfg.")}
    if args.config:
        given |= {str(k).replace("-", "_") for k in load_yaml(args.config)}
    clash = sorted(own & given)
    if clash:
        extra = " (or leave out --explore)" if set(clash) - {"method"} else ""
        if "method" in clash:
            extra += "; choose the methods with --methods and --at-chosen-rate"
        raise WsramError(f"compare: sets {', '.join(clash)} itself for each variant; remove "
                         f"{', '.join('--' + k.replace('_', '-') for k in clash)} from the "
                         f"flags and the config file{extra}")
