"""The ``wsram`` command: parses, then calls the library. Every user mistake is one line."""

from __future__ import annotations

import argparse
import json
import sys
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from .config import TrainConfig, field_help, load_yaml, make_config
from .errors import WsramError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, instead of usage + error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


#: the values of config keys that take one of a few words
_WORDS = {"method": "METHOD", "precision": "fp32|bf16", "device": "cpu|cuda|cuda:N",
          "dataset": "scenes|karpathy", "q_word": "current|preceding",
          "encoder": "digits|resnet18|resnet34|resnet50"}


def _metavar(name: str, hint: Any) -> str:
    """What a config key's value is, for ``--help``: N, X, true|false, PATH, the words."""
    if name in _WORDS:
        return _WORDS[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args and typing.get_origin(hint) is not list else hint
    if typing.get_origin(base) is list:
        return "X"
    return {bool: "true|false", int: "N", float: "X"}.get(base, "PATH")


def _shown(value: Any) -> str:
    """A default as it would be typed: true/false, none, 0.001, wsram+q+c."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def _add_config_options(p: argparse.ArgumentParser, cls: type[TrainConfig]) -> None:
    g = p.add_argument_group("configuration (any key of the config file)")
    notes = field_help(cls)
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        note = notes.get(f.name, "").replace("%", "%%")
        g.add_argument(f"--{f.name.replace('_', '-')}", dest=f"cfg.{f.name}",
                       metavar=_metavar(f.name, hints[f.name]),
                       default=argparse.SUPPRESS, nargs="+" if f.name == "scales" else None,
                       help=f"{note} (default: {_shown(getattr(cls(), f.name))})".lstrip())


def _add_train_parser(sub: Any, help: str, cls: type[TrainConfig]) -> None:
    t = sub.add_parser("train", help=help)
    t.set_defaults(func=cmd_train, config_class=cls)
    t.add_argument("--run-dir", required=True, metavar="DIR",
                   help="folder for config, metrics, checkpoints")
    t.add_argument("--config", metavar="FILE.yaml",
                   help="YAML file of config keys (flags override it)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir (one with no checkpoint yet starts "
                   "afresh)")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in --run-dir")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_options(t, cls)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wsram", description=(
        "Train, evaluate and inspect stochastic hard-attention models (WS-RAM, VAR, VIMCO)."))
    from . import __version__

    parser.add_argument("--version", action="version", version=f"wsram {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    from .classification.config import ClassificationConfig

    _add_train_parser(sub, "train a model into a run folder", ClassificationConfig)

    e = sub.add_parser("evaluate", help="test errors of a run (writes RUN/eval.json)")
    e.set_defaults(func=cmd_evaluate)
    e.add_argument("run_dir")
    e.add_argument("--checkpoint", choices=["last", "best"], default="last",
                   help="which checkpoint: last.pt (the latest update) or best.pt (the best "
                   "validation error) (default: last)")
    e.add_argument("--samples", type=int, metavar="M",
                   help="M, trajectories averaged (default: the run's)")
    e.add_argument("--test-size", type=int, metavar="N",
                   help="test canvases (default: the run's test set)")
    e.add_argument("--out", metavar="FILE.json",
                   help="write the results here instead of RUN/eval.json")

    s = sub.add_parser("show", help="PNG of test canvases with the glimpses drawn on them")
    s.set_defaults(func=cmd_show)
    s.add_argument("run_dir")
    s.add_argument("--out", metavar="FILE.png", help="PNG path (default RUN/glimpses.png)")
    s.add_argument("--num", type=int, default=12, metavar="N", help="canvases to draw")
    s.add_argument("--sampled", action="store_true",
                   help="draw one sampled trajectory instead of the deterministic policy")
    s.add_argument("--checkpoint", choices=["last", "best"], default="last")
    _add_predict_cost_compare_parsers(sub, ClassificationConfig)
    _add_caption_parsers(sub)
    return parser


def _add_predict_cost_compare_parsers(sub: Any, cls: type[TrainConfig]) -> None:
    """``wsram predict``, ``wsram cost`` and ``wsram compare``."""
    pr = sub.add_parser("predict", help="class of each image file, top-k probabilities, and "
                        "a PNG of the glimpses (RUN/predictions/ unless --out)")
    pr.set_defaults(func=cmd_predict)
    pr.add_argument("run_dir", metavar="RUN")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--top-k", type=int, default=3, metavar="K",
                    help="classes listed per image (default 3)")
    pr.add_argument("--samples", type=int, metavar="M",
                    help="M, trajectories averaged (default: the run's)")
    pr.add_argument("--out", metavar="DIR", help="folder for the PNGs (default RUN/predictions)")
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
    c.add_argument("--no-explore", action="store_true",
                   help="skip the exploration-heuristics study (paper Figure 4)")
    c.add_argument("--plot-only", metavar="DIR",
                   help="redraw tables and figures of DIR from its files; train nothing")
    c.add_argument("--max-step", type=int, metavar="N",
                   help="with --plot-only: compare training curves up to update N only")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_config_options(c, cls)


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


#: exit status of a run stopped before its end by SIGINT, SIGTERM, SIGHUP or a closed
#: stdout/stderr, after checkpointing the current update (README, "Exit status")
EXIT_STOPPED = 130


def cmd_train(args: argparse.Namespace) -> int:
    """``wsram train`` and ``wsram caption train``: rank 0 prints the last metrics line
    (JSON, stdout) and a summary for people (stderr)."""
    import os

    from .summary import end_of_run
    from .tasks import TASKS
    from .train import train

    cfg = config_from_args(args, args.config_class)
    row = train(cfg, args.run_dir, resume=args.resume, overwrite=args.overwrite,
                progress=not args.no_progress)
    code = 0 if row["stopped_by"] in ("finished", "time limit") else EXIT_STOPPED
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return code
    if "step" in row:
        print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}))
    elif code == 0 and cfg.steps == 0 and not args.resume:
        print(f"{args.run_dir}: prepared; no updates asked for (--steps 0)")
        return code
    elif code == 0 and row["last_step"] >= cfg.steps:
        print(f"{args.run_dir}: already at {cfg.steps} updates; nothing to train "
              "(raise --steps to continue)")
        return code
    sys.stdout.flush()
    print(end_of_run(row, cfg, args.run_dir, TASKS[cfg.TASK].command), file=sys.stderr)
    return code


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .checkpoint import writable_output
    from .classification.evaluate import evaluate_run, format_result, write_result

    positive("samples", args.samples)
    positive("test-size", args.test_size)
    out = writable_output(args.out, (".json",)) if args.out else Path(args.run_dir) / "eval.json"
    res = evaluate_run(args.run_dir, args.checkpoint, args.samples, args.test_size, write=False)
    print(format_result(args.run_dir, res), flush=True)  # the results first, whatever follows
    try:
        write_result(res, out)
    except OSError as e:
        raise WsramError(f"{out}: cannot write the results above ({e.strerror or e}); "
                         "--out FILE writes them elsewhere") from None
    print(f"  written to {out}")


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
    from .classification.compare import compare, default_plan
    from .classification.config import ClassificationConfig
    from .classification.results import write_results
    from .methods import METHODS

    if args.plot_only:
        if not Path(args.plot_only).is_dir():
            raise WsramError(f"{args.plot_only}: no such comparison folder")
        positive("max-step", args.max_step)
        write_results(args.plot_only, args.max_step)
        out = Path(args.plot_only)
    else:
        if not args.out:
            raise WsramError("compare: give --out DIR (or --plot-only DIR)")
        if args.max_step is not None:
            raise WsramError("--max-step goes with --plot-only DIR (it redraws, trains nothing)")
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise WsramError(f"{args.out}: exists and is not a folder")
        positive("jobs", args.jobs)
        for m in [*(args.methods or []), *args.at_chosen_rate]:
            if m not in METHODS or not METHODS[m].attends:
                raise WsramError(f"compare: unknown attention method {m!r}; choose from "
                                 + ", ".join(n for n in METHODS if METHODS[n].attends))
        if args.lrs and min(args.lrs) <= 0:
            raise WsramError("--lrs: learning rates must be > 0")
        refuse_variant_keys(args)
        base = config_from_args(args, ClassificationConfig)
        plan = default_plan(base, args.seeds, args.lrs, args.methods, args.at_chosen_rate,
                            explore=not args.no_explore)
        compare(base, args.out, plan, jobs=args.jobs, progress=not args.no_progress)
        out = Path(args.out)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.md'}, {out / 'results.json'} and figures in {out}")


def refuse_variant_keys(args: argparse.Namespace) -> None:
    """``wsram compare`` sets the method (and, for the exploration study, the heuristics)
    of each variant itself: a value given for them would be silently ignored, so refuse."""
    from .classification.compare import EXPLORE

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


def cmd_caption_evaluate(args: argparse.Namespace) -> None:
    from .captioning.evaluate import evaluate_caption_run, format_result, write_caption_result

    positive("beam-size", args.beam_size)
    positive("size", args.size)
    res = evaluate_caption_run(args.run_dir, args.checkpoint, args.split, args.beam_size,
                               args.size, write=False)
    captions = res.pop("captions")
    print(format_result(args.run_dir, res), flush=True)  # the results first, whatever follows
    run = Path(args.run_dir)
    try:
        write_caption_result(res, captions, run)
    except OSError as e:
        raise WsramError(f"{run}: cannot write eval.json and captions.json for the results "
                         f"above ({e.strerror or e})") from None
    print(f"  written to {run / 'eval.json'} and {run / 'captions.json'}")


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
    return args.func(args) or 0


def main(argv: list[str] | None = None) -> None:
    from .output import guard_std_streams, unguard_std_streams

    guard_std_streams()  # a closed pipe or terminal must not turn into a traceback
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
    finally:
        sys.stdout.flush()  # still guarded: a reader gone by now costs nothing
        sys.stderr.flush()
        unguard_std_streams()
    sys.exit(code)


if __name__ == "__main__":
    main()
