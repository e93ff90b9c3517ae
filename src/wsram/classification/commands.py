"""The classification task's subcommands, at the top level of ``wsram``: train, evaluate,
show, predict and cost."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..checkpoint import writable_output
from ..cli import (
    add_checkpoint_option,
    add_run_argument,
    add_samples_option,
    add_train_parser,
    positive,
)
from ..errors import WsramError
from ..run_dir import EVALS, RunDir
from .config import ClassificationConfig
from .cost import cost_command
from .evaluate import evaluate_run, format_result, write_result
from .plots import show_glimpses
from .predict import format_predictions, predict


def add_commands(sub: Any) -> None:
    add_train_parser(sub, "train a model into a run folder", ClassificationConfig)
    e = sub.add_parser("evaluate", help=f"test errors of a run (writes RUN/{EVALS['last']})")
    e.set_defaults(func=cmd_evaluate)
    add_run_argument(e)
    add_checkpoint_option(e)
    add_samples_option(e)
    e.add_argument("--test-size", type=int, metavar="N",
                   help="test canvases (default: the run's test set)")
    e.add_argument("--out", metavar="FILE.json",
                   help=f"write the results here instead of RUN/{EVALS['last']}")
    s = sub.add_parser("show", help="PNG of test canvases with the glimpses drawn on them")
    s.set_defaults(func=cmd_show)
    add_run_argument(s)
    s.add_argument("--out", metavar="FILE.png", help="PNG path (default RUN/glimpses.png)")
    s.add_argument("--num", type=int, default=12, metavar="N",
                   help="test canvases to draw (default 12)")
    s.add_argument("--sampled", action="store_true",
                   help="draw one sampled trajectory instead of the deterministic policy")
    add_checkpoint_option(s)
    _add_predict_parser(sub)
    _add_cost_parser(sub)


def _add_predict_parser(sub: Any) -> None:
    pr = sub.add_parser("predict", help="class of each image file, top-k probabilities, and "
                        "a PNG of the glimpses (RUN/predictions/ unless --out)")
    pr.set_defaults(func=cmd_predict)
    add_run_argument(pr)
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    pr.add_argument("--top-k", type=int, default=3, metavar="K",
                    help="classes listed per image (default 3)")
    add_samples_option(pr)
    pr.add_argument("--out", metavar="DIR", help="folder for the PNGs (default RUN/predictions)")
    add_checkpoint_option(pr)
    pr.add_argument("--json", action="store_true", help="print JSON instead of text")


def _add_cost_parser(sub: Any) -> None:
    k = sub.add_parser("cost", help="error, MACs, pixels read and images/s of runs, side by side")
    k.set_defaults(func=cmd_cost)
    add_run_argument(k, many=True)
    add_checkpoint_option(k)
    k.add_argument("--out", metavar="FILE.md", help="also write the table as markdown")
    k.add_argument("--json", action="store_true", help="print JSON instead of the table")
    k.add_argument("--device", default="cpu", help="device for the timing (default cpu)")
    k.add_argument("--threads", type=int, default=0, metavar="N",
                   help="torch CPU threads; 0 = default")
    k.add_argument("--seconds", type=float, default=2.0, metavar="S",
                   help="timing per run (default 2)")


def cmd_evaluate(args: argparse.Namespace) -> None:
    positive("samples", args.samples)
    positive("test-size", args.test_size)
    out = writable_output(args.out, (".json",)) if args.out else RunDir(args.run_dir).eval_file()
    res = evaluate_run(args.run_dir, args.checkpoint, args.samples, args.test_size, write=False)
    print(format_result(args.run_dir, res), flush=True)  # the results first, whatever follows
    try:
        write_result(res, out)
    except OSError as e:
        raise WsramError(f"{out}: cannot write the results above ({e.strerror or e}); "
                         "--out FILE writes them elsewhere") from None
    print(f"  written to {out}")


def cmd_show(args: argparse.Namespace) -> None:
    positive("num", args.num)
    out = show_glimpses(args.run_dir, args.out, args.num, not args.sampled, args.checkpoint)
    print(f"wrote {out}")


def cmd_predict(args: argparse.Namespace) -> None:
    positive("top-k", args.top_k)
    positive("samples", args.samples)
    out = args.out if args.out is not None else Path(args.run_dir) / "predictions"
    preds = predict(args.run_dir, args.images, args.top_k, args.samples, out, args.checkpoint)
    print(json.dumps([p.to_dict() for p in preds], indent=2) if args.json
          else format_predictions(preds))


def cmd_cost(args: argparse.Namespace) -> None:
    cost_command(args.run_dirs, args.checkpoint, args.device, args.threads, args.seconds,
                 args.out, args.json)
