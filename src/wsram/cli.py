"""The ``wsram`` command: parses, then calls the library. Every user mistake is one line."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from .config import TrainConfig, field_help, load_yaml, make_config
from .errors import WsramError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, instead of usage + error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def _add_config_options(p: argparse.ArgumentParser, cls: type[TrainConfig]) -> None:
    g = p.add_argument_group("configuration (any key of the config file)")
    notes = field_help(cls)
    for f in fields(cls):
        note = notes.get(f.name, "").replace("%", "%%")
        g.add_argument(f"--{f.name.replace('_', '-')}", dest=f"cfg.{f.name}", metavar="V",
                       default=argparse.SUPPRESS, nargs="+" if f.name == "scales" else None,
                       help=f"{note} (default: {getattr(cls(), f.name)!r})".lstrip())


def _add_train_parser(sub: Any, help: str, cls: type[TrainConfig]) -> None:
    t = sub.add_parser("train", help=help)
    t.set_defaults(func=cmd_train, config_class=cls)
    t.add_argument("--run-dir", required=True, help="folder for config, metrics, checkpoints")
    t.add_argument("--config", help="YAML file of config keys (flags override it)")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in --run-dir")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_options(t, cls)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wsram", description=(
        "Train, evaluate and inspect stochastic hard-attention models (WS-RAM, VAR, VIMCO)."))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    from .classification.config import ClassificationConfig

    _add_train_parser(sub, "train a model into a run folder", ClassificationConfig)

    e = sub.add_parser("evaluate", help="test errors of a run (writes RUN/eval.json)")
    e.set_defaults(func=cmd_evaluate)
    e.add_argument("run_dir")
    e.add_argument("--checkpoint", choices=["last", "best"], default="last")
    e.add_argument("--samples", type=int, help="M, trajectories averaged (default: the run's)")
    e.add_argument("--test-size", type=int, help="test canvases (default: the run's test set)")

    s = sub.add_parser("show", help="PNG of test canvases with the glimpses drawn on them")
    s.set_defaults(func=cmd_show)
    s.add_argument("run_dir")
    s.add_argument("--out", help="PNG path (default RUN/glimpses.png)")
    s.add_argument("--num", type=int, default=12, help="canvases to draw")
    s.add_argument("--sampled", action="store_true",
                   help="draw one sampled trajectory instead of the deterministic policy")
    s.add_argument("--checkpoint", choices=["last", "best"], default="last")
    pr = sub.add_parser("predict", help="class of each image file, top-k probabilities, and "
                        "a PNG of the glimpses (RUN/predictions/ unless --out)")
    pr.set_defaults(func=cmd_predict)
    pr.add_argument("run_dir", metavar="RUN")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--top-k", type=int, default=3, help="classes listed per image (default 3)")
    pr.add_argument("--samples", type=int, help="M, trajectories averaged (default: the run's)")
    pr.add_argument("--out", help="folder for the PNGs (default RUN/predictions)")
    pr.add_argument("--checkpoint", choices=["last", "best"], default="last")
    pr.add_argument("--json", action="store_true", help="print JSON instead of text")
    k = sub.add_parser("cost", help="error, MACs, pixels read and images/s of runs, side by side")
    k.set_defaults(func=cmd_cost)
    k.add_argument("run_dirs", nargs="+", metavar="RUN")
    k.add_argument("--checkpoint", choices=["last", "best"], default="last")
    k.add_argument("--out", metavar="FILE.md", help="also write the table as markdown")
    k.add_argument("--json", action="store_true", help="print JSON instead of the table")
    k.add_argument("--device", default="cpu", help="device for the timing (default cpu)")
    k.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = default")
    k.add_argument("--seconds", type=float, default=2.0, help="timing per run (default 2)")
    c = sub.add_parser("compare", help="train the paper's variants alike; tables and figures")
    c.set_defaults(func=cmd_compare)
    c.add_argument("--out", help="folder for the runs, results.md/json and figures")
    c.add_argument("--config", help="YAML file of config keys shared by every variant")
    c.add_argument("--jobs", type=int, default=1, help="variants trained in parallel processes")
    c.add_argument("--no-explore", action="store_true",
                   help="skip the exploration-heuristics study (paper Figure 4)")
    c.add_argument("--plot-only", metavar="DIR",
                   help="redraw tables and figures of DIR from its files; train nothing")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_config_options(c, ClassificationConfig)

    _add_caption_parsers(sub)
    return parser


def _add_caption_parsers(sub: Any) -> None:
    """``wsram caption train|evaluate|show|plot``."""
    from .captioning.config import CaptionConfig

    cap = sub.add_parser("caption", help="image captioning with hard attention (train, "
                         "evaluate, show, plot)")
    csub = cap.add_subparsers(dest="caption_command", required=True, parser_class=_Parser)
    _add_train_parser(csub, "train a caption model into a run folder", CaptionConfig)
    ce = csub.add_parser("evaluate", help="BLEU-1..4 and CIDEr of greedy and beam-search "
                         "captions (writes RUN/eval.json and RUN/captions.json)")
    ce.set_defaults(func=cmd_caption_evaluate)
    ce.add_argument("run_dir")
    ce.add_argument("--checkpoint", choices=["last", "best"], default="last")
    ce.add_argument("--split", choices=["val", "test"], default="test")
    ce.add_argument("--beam-size", type=int, help="beam width (default: the run's beam_size)")
    ce.add_argument("--size", type=int, help="first N images of the split (default: all)")
    cs = csub.add_parser("show", help="a PNG per image: the caption and each word's glimpse")
    cs.set_defaults(func=cmd_caption_show)
    cs.add_argument("run_dir")
    cs.add_argument("--out", help="folder for the PNGs (default RUN/show)")
    cs.add_argument("--num", type=int, default=8, help="images to draw")
    cs.add_argument("--split", choices=["val", "test"], default="test")
    cs.add_argument("--beam-size", type=int, default=1, help="beam width (default 1: greedy)")
    cs.add_argument("--checkpoint", choices=["last", "best"], default="last")
    cp = csub.add_parser("plot", help="a metric of several runs against updates (e.g. the "
                         "training NLL of VAR and WS-RAM, paper Figure 6)")
    cp.set_defaults(func=cmd_caption_plot)
    cp.add_argument("run_dirs", nargs="+", metavar="RUN")
    cp.add_argument("--out", required=True, help="PNG path")
    cp.add_argument("--key", default="train/nll", help="metrics.jsonl key (default train/nll)")
    cp.add_argument("--max-step", type=int, help="plot updates up to this one")
    cp.add_argument("--title", help="figure title")
    cp.add_argument("--log-y", action="store_true", help="logarithmic y axis")


def config_from_args(args: argparse.Namespace, cls: type[TrainConfig]) -> Any:
    """The config a train (or compare) command describes: the resumed run's config.yaml,
    then --config, then the flags."""
    base = {}
    if getattr(args, "resume", False):
        from .tasks import read_run_config

        if not (Path(args.run_dir) / "config.yaml").is_file():
            raise WsramError(f"{args.run_dir}: nothing to resume (no config.yaml)")
        base.update(read_run_config(args.run_dir, cls.TASK, "resume it with {command} train")[1])
    if args.config:
        base.update(load_yaml(args.config))
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg.")}
    return make_config(base, cls, **overrides)


def positive(name: str, value: int | None) -> None:
    """Refuse a count below 1 given to option ``--name``."""
    if value is not None and value < 1:
        raise WsramError(f"--{name}: must be at least 1, got {value}")


def cmd_train(args: argparse.Namespace) -> None:
    """``wsram train`` and ``wsram caption train``: the last metrics line, printed by rank 0."""
    import os

    from .train import train

    cfg = config_from_args(args, args.config_class)
    row = train(cfg, args.run_dir, resume=args.resume, overwrite=args.overwrite,
                progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    if "step" in row:
        print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}))
    elif cfg.steps == 0 and not args.resume:
        print(f"{args.run_dir}: prepared; no updates asked for (--steps 0)")
    else:
        print(f"{args.run_dir}: already at {cfg.steps} updates; nothing to train "
              "(raise --steps to continue)")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .classification.evaluate import evaluate_run, format_result

    positive("samples", args.samples)
    positive("test-size", args.test_size)
    res = evaluate_run(args.run_dir, args.checkpoint, args.samples, args.test_size)
    print(format_result(args.run_dir, res))


def cmd_show(args: argparse.Namespace) -> None:
    from .classification.plots import show_glimpses

    positive("num", args.num)
    out = show_glimpses(args.run_dir, args.out, args.num, not args.sampled, args.checkpoint)
    print(f"wrote {out}")


def cmd_predict(args: argparse.Namespace) -> None:
    from .classification.predict import format_predictions, predict

    positive("top-k", args.top_k)
    positive("samples", args.samples)
    out = args.out if args.out is not None else Path(args.run_dir) / "predictions"
    preds = predict(args.run_dir, args.images, args.top_k, args.samples, out, args.checkpoint)
    print(json.dumps([p.to_dict() for p in preds], indent=2) if args.json
          else format_predictions(preds))


def cmd_cost(args: argparse.Namespace) -> None:
    from .classification.cost import cost_command

    cost_command(args.run_dirs, args.checkpoint, args.device, args.threads, args.seconds,
                 args.out, args.json)


def cmd_compare(args: argparse.Namespace) -> None:
    from .classification.compare import compare, default_variants, write_results
    from .classification.config import ClassificationConfig

    if args.plot_only:
        if not Path(args.plot_only).is_dir():
            raise WsramError(f"{args.plot_only}: no such comparison folder")
        write_results(args.plot_only)
        out = Path(args.plot_only)
    else:
        if not args.out:
            raise WsramError("compare: give --out DIR (or --plot-only DIR)")
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise WsramError(f"{args.out}: exists and is not a folder")
        positive("jobs", args.jobs)
        compare(config_from_args(args, ClassificationConfig), args.out,
                default_variants(explore=not args.no_explore), jobs=args.jobs,
                progress=not args.no_progress)
        out = Path(args.out)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.md'}, {out / 'results.json'} and figures in {out}")


def cmd_caption_evaluate(args: argparse.Namespace) -> None:
    from .captioning.evaluate import evaluate_caption_run, format_result

    positive("beam-size", args.beam_size)
    positive("size", args.size)
    res = evaluate_caption_run(args.run_dir, args.checkpoint, args.split, args.beam_size,
                               args.size)
    print(format_result(args.run_dir, res))


def cmd_caption_show(args: argparse.Namespace) -> None:
    from .captioning.plots import show_captions

    positive("num", args.num)
    positive("beam-size", args.beam_size)
    paths = show_captions(args.run_dir, args.out, args.num, args.split, args.checkpoint,
                          args.beam_size)
    print(f"wrote {len(paths)} PNGs to {paths[0].parent}" if paths else "nothing to draw")


def cmd_caption_plot(args: argparse.Namespace) -> None:
    from .captioning.plots import plot_curves

    if args.max_step is not None:
        positive("max-step", args.max_step)
    out = plot_curves(args.run_dirs, args.out, args.key, args.max_step, args.title, args.log_y)
    print(f"wrote {out}")


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand it names; 0 on success."""
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(argv)
    except WsramError as e:
        print(f"wsram: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("wsram: interrupted", file=sys.stderr)
        code = 130
    except OSError as e:  # the machine said no: disk full, permissions, a name too long
        where = f"{e.filename}: " if e.filename else ""
        print(f"wsram: error: {where}{e.strerror or e}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
