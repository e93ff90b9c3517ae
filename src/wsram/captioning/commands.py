"""The captioning task's subcommands, under ``wsram caption``: train, evaluate, show and
plot."""

from __future__ import annotations

import argparse
from typing import Any

from ..cli import add_checkpoint_option, add_run_argument, add_train_parser, positive
from ..errors import WsramError
from ..run_dir import EVALS, METRICS, RunDir
from .config import CaptionConfig
from .evaluate import CAPTIONS, evaluate_caption_run, format_result, write_caption_result
from .plots import plot_curves, show_captions


def add_commands(csub: Any) -> None:
    """``wsram caption train|evaluate|show|plot`` (``csub``: the ``caption`` group's)."""
    add_train_parser(csub, "train a caption model into a run folder", CaptionConfig)
    ce = csub.add_parser("evaluate", help="BLEU-1..4 and CIDEr of greedy and beam-search "
                         f"captions (writes RUN/{EVALS['last']} and RUN/{CAPTIONS})")
    ce.set_defaults(func=cmd_caption_evaluate)
    add_run_argument(ce)
    add_checkpoint_option(ce)
    ce.add_argument("--split", choices=["val", "test"], default="test",
                    help="which images (default: test)")
    ce.add_argument("--beam-size", type=int, metavar="N",
                    help="beam width (default: the run's beam_size)")
    ce.add_argument("--size", type=int, metavar="N",
                    help="first N images of the split (default: all)")
    cs = csub.add_parser("show", help="a PNG per image: the caption and each word's glimpse")
    cs.set_defaults(func=cmd_caption_show)
    add_run_argument(cs)
    cs.add_argument("--out", metavar="DIR", help="folder for the PNGs (default RUN/show)")
    cs.add_argument("--num", type=int, default=8, metavar="N", help="images to draw (default 8)")
    cs.add_argument("--split", choices=["val", "test"], default="test",
                    help="which images (default: test)")
    cs.add_argument("--beam-size", type=int, default=1, metavar="N",
                    help="beam width (default 1: greedy)")
    add_checkpoint_option(cs)
    cp = csub.add_parser("plot", help="a metric of several runs against updates (e.g. the "
                         "training NLL of VAR and WS-RAM, paper Figure 6)")
    cp.set_defaults(func=cmd_caption_plot)
    add_run_argument(cp, many=True)
    cp.add_argument("--out", required=True, metavar="FILE.png", help="PNG path")
    cp.add_argument("--key", default="train/nll", metavar="KEY",
                    help=f"{METRICS} key (default train/nll)")
    cp.add_argument("--max-step", type=int, metavar="N", help="plot updates up to this one")
    cp.add_argument("--title", metavar="TEXT", help="figure title")
    cp.add_argument("--log-y", action="store_true", help="logarithmic y axis")


def cmd_caption_evaluate(args: argparse.Namespace) -> None:
    positive("beam-size", args.beam_size)
    positive("size", args.size)
    res = evaluate_caption_run(args.run_dir, args.checkpoint, args.split, args.beam_size,
                               args.size, write=False)
    captions = res.pop("captions")
    print(format_result(args.run_dir, res), flush=True)  # the results first, whatever follows
    run = RunDir(args.run_dir)
    try:
        write_caption_result(res, captions, run.path)
    except OSError as e:
        raise WsramError(f"{run}: cannot write {run.eval_file().name} and {CAPTIONS} for the "
                         f"results above ({e.strerror or e})") from None
    print(f"  written to {run.eval_file()} and {run / CAPTIONS}")


def cmd_caption_show(args: argparse.Namespace) -> None:
    positive("num", args.num)
    positive("beam-size", args.beam_size)
    paths = show_captions(args.run_dir, args.out, args.num, args.split, args.checkpoint,
                          args.beam_size)
    print(f"wrote {len(paths)} PNGs to {paths[0].parent}" if paths else "nothing to draw")


def cmd_caption_plot(args: argparse.Namespace) -> None:
    if args.max_step is not None:
        positive("max-step", args.max_step)
    out = plot_curves(args.run_dirs, args.out, args.key, args.max_step, args.title, args.log_y)
    print(f"wrote {out}")
