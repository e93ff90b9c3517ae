"""``wsram compare``: its options (:func:`add_commands`), the command, and :func:`compare`,
which trains a study's runs, evaluates them and writes the results.

A study: 1. the grid; 2. at the chosen rates (``results.choose_rates``, the paper's rule)
the methods of a family and the exploration-heuristics variants; 3. every run evaluated
on the test set; tables and figures from the files (``report.write_results``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from wsram.atomic import atomic_write_json
from wsram.classification.config import ClassificationConfig
from wsram.cli import add_config_options, config_from_args, positive
from wsram.config import load_yaml
from wsram.errors import WsramError
from wsram.methods import METHODS
from wsram.stack import default_stack_size
from wsram.study.executor import evaluate_if_stale, train_runs
from wsram.study.plan import EXPLORE, Plan, check_study, default_plan
from wsram.study.report import write_results
from wsram.study.results import (
    SHARED_FILE,
    choose_rates,
    discover_runs,
    variance_at_shared_parameters,
)


def compare(base: ClassificationConfig, out_dir: str | Path, plan: Plan, jobs: int = 1,
            progress: bool = True, stack_size: int = 1) -> dict[str, Any]:
    """Train the study's runs into ``out_dir`` (resumable; each variant's runs in stacks of
    up to ``stack_size``), evaluate them, write results."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_study(base, out_dir)
    train_runs(base, out_dir, plan.grid_runs(), jobs, progress, "grid", stack_size)
    rates = {m: c["lr"] for m, c in choose_rates(discover_runs(out_dir)).items()}
    train_runs(base, out_dir, plan.chosen_runs(rates, base.lr), jobs, progress,
               "at chosen rates", stack_size)
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
    c.add_argument("--out", metavar="DIR", help="folder for the runs, results.md/json and figures")
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
    c.add_argument("--stack-size", type=int, metavar="N",
                   help="train each variant's runs in stacks of up to N, as one program in "
                   "this process (default: per device, as measured: 1 on a CPU)")
    c.add_argument("--no-stack", action="store_true",
                   help="one process per run (as --stack-size 1)")
    c.add_argument("--no-explore", action="store_true",
                   help="skip the exploration-heuristics study (paper Figure 4)")
    c.add_argument("--plot-only", metavar="DIR",
                   help="redraw tables and figures of DIR from its files; train nothing")
    c.add_argument("--max-step", type=int, metavar="N",
                   help="with --plot-only: compare training curves up to update N only")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_options(c, ClassificationConfig)


def cmd_compare(args: argparse.Namespace) -> None:
    if args.plot_only:
        if not Path(args.plot_only).is_dir():
            raise WsramError(f"{args.plot_only}: no such comparison folder")
        positive("max-step", args.max_step)
        write_results(args.plot_only, args.max_step)
        out = Path(args.plot_only)
    else:
        _check_compare_args(args)
        base = config_from_args(args, ClassificationConfig)
        plan = default_plan(base, args.seeds, args.lrs, args.methods, args.at_chosen_rate,
                            explore=not args.no_explore)
        stack = 1 if args.no_stack else args.stack_size or default_stack_size(base.device)
        compare(base, args.out, plan, jobs=args.jobs, progress=not args.no_progress,
                stack_size=stack)
        out = Path(args.out)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.md'}, {out / 'results.json'} and figures in {out}")


def _check_compare_args(args: argparse.Namespace) -> None:
    """Refuse, in one line each, the options of a training study that cannot work."""
    if not args.out:
        raise WsramError("compare: give --out DIR (or --plot-only DIR)")
    if args.max_step is not None:
        raise WsramError("--max-step goes with --plot-only DIR (it redraws, trains nothing)")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise WsramError(f"{args.out}: exists and is not a folder")
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
    own = {"method"} | (set() if args.no_explore else set(EXPLORE))
    given = {k[4:] for k in vars(args) if k.startswith("cfg.")}
    if args.config:
        given |= {str(k).replace("-", "_") for k in load_yaml(args.config)}
    clash = sorted(own & given)
    if clash:
        extra = " (or add --no-explore)" if set(clash) - {"method"} else ""
        if "method" in clash:
            extra += "; choose the methods with --methods and --at-chosen-rate"
        raise WsramError(f"compare: sets {', '.join(clash)} itself for each variant; remove "
                         f"{', '.join('--' + k.replace('_', '-') for k in clash)} from the "
                         f"flags and the config file{extra}")
