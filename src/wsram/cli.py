"""The ``wsram`` command: parses, then calls the library. Every user mistake is one line."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from .config import Config, TrainConfig, field_help, load_yaml, make_config
from .errors import WsramError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, instead of usage + error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def _add_config_options(p: argparse.ArgumentParser, cls: type[TrainConfig] = Config) -> None:
    g = p.add_argument_group("configuration (any key of the config file)")
    notes = field_help(cls)
    for f in fields(cls):
        note = notes.get(f.name, "").replace("%", "%%")
        g.add_argument(f"--{f.name.replace('_', '-')}", dest=f"cfg.{f.name}", metavar="V",
                       default=argparse.SUPPRESS, nargs="+" if f.name == "scales" else None,
                       help=f"{note} (default: {getattr(cls(), f.name)!r})".lstrip())


def _add_train_parser(sub: Any, help: str, cls: type[TrainConfig]) -> None:
    t = sub.add_parser("train", help=help)
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

    _add_train_parser(sub, "train a model into a run folder", Config)

    e = sub.add_parser("evaluate", help="test errors of a run (writes RUN/eval.json)")
    e.add_argument("run_dir")
    e.add_argument("--checkpoint", choices=["last", "best"], default="last")
    e.add_argument("--samples", type=int, help="M, trajectories averaged (default: the run's)")
    e.add_argument("--test-size", type=int, help="test canvases (default: the run's test set)")

    s = sub.add_parser("show", help="PNG of test canvases with the glimpses drawn on them")
    s.add_argument("run_dir")
    s.add_argument("--out", help="PNG path (default RUN/glimpses.png)")
    s.add_argument("--num", type=int, default=12, help="canvases to draw")
    s.add_argument("--sampled", action="store_true",
                   help="draw one sampled trajectory instead of the deterministic policy")
    s.add_argument("--checkpoint", choices=["last", "best"], default="last")
    k = sub.add_parser("cost", help="error, MACs, pixels read and images/s of runs, side by side")
    k.add_argument("run_dirs", nargs="+", metavar="RUN")
    k.add_argument("--checkpoint", choices=["last", "best"], default="last")
    k.add_argument("--out", metavar="FILE.md", help="also write the table as markdown")
    k.add_argument("--json", action="store_true", help="print JSON instead of the table")
    k.add_argument("--device", default="cpu", help="device for the timing (default cpu)")
    k.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = default")
    k.add_argument("--seconds", type=float, default=2.0, help="timing per run (default 2)")
    c = sub.add_parser("compare", help="train the paper's variants alike; tables and figures")
    c.add_argument("--out", help="folder for the runs, results.md/json and figures")
    c.add_argument("--config", help="YAML file of config keys shared by every variant")
    c.add_argument("--jobs", type=int, default=1, help="variants trained in parallel processes")
    c.add_argument("--no-explore", action="store_true",
                   help="skip the exploration-heuristics study (paper Figure 4)")
    c.add_argument("--plot-only", metavar="DIR",
                   help="redraw tables and figures of DIR from its files; train nothing")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_config_options(c)

    from .captioning.config import CaptionConfig

    cap = sub.add_parser("caption", help="image captioning with hard attention (train, "
                         "evaluate, show, plot)")
    csub = cap.add_subparsers(dest="caption_command", required=True, parser_class=_Parser)
    _add_train_parser(csub, "train a caption model into a run folder", CaptionConfig)
    ce = csub.add_parser("evaluate", help="BLEU-1..4 and CIDEr of greedy and beam-search "
                         "captions (writes RUN/eval.json and RUN/captions.json)")
    ce.add_argument("run_dir")
    ce.add_argument("--checkpoint", choices=["last", "best"], default="last")
    ce.add_argument("--split", choices=["val", "test"], default="test")
    ce.add_argument("--beam-size", type=int, help="beam width (default: the run's beam_size)")
    ce.add_argument("--size", type=int, help="first N images of the split (default: all)")
    cs = csub.add_parser("show", help="a PNG per image: the caption and each word's glimpse")
    cs.add_argument("run_dir")
    cs.add_argument("--out", help="folder for the PNGs (default RUN/show)")
    cs.add_argument("--num", type=int, default=8, help="images to draw")
    cs.add_argument("--split", choices=["val", "test"], default="test")
    cs.add_argument("--beam-size", type=int, default=1, help="beam width (default 1: greedy)")
    cs.add_argument("--checkpoint", choices=["last", "best"], default="last")
    cp = csub.add_parser("plot", help="a metric of several runs against updates (e.g. the "
                         "training NLL of VAR and WS-RAM, paper Figure 6)")
    cp.add_argument("run_dirs", nargs="+", metavar="RUN")
    cp.add_argument("--out", required=True, help="PNG path")
    cp.add_argument("--key", default="train/nll", help="metrics.jsonl key (default train/nll)")
    cp.add_argument("--max-step", type=int, help="plot updates up to this one")
    cp.add_argument("--title", help="figure title")
    cp.add_argument("--log-y", action="store_true", help="logarithmic y axis")
    return parser


def _config_from_args(args: argparse.Namespace, cls: type[TrainConfig] = Config) -> Any:
    base = {}
    if getattr(args, "resume", False):
        cfg_path = Path(args.run_dir) / "config.yaml"
        if not cfg_path.is_file():
            raise WsramError(f"{args.run_dir}: nothing to resume (no config.yaml)")
        base.update(load_yaml(cfg_path))
        caption_run = "dataset" in base
        if caption_run != (cls is not Config):
            raise WsramError(f"{args.run_dir}: a caption run; resume it with wsram caption train"
                             if caption_run else
                             f"{args.run_dir}: not a caption run; resume it with wsram train")
    if args.config:
        base.update(load_yaml(args.config))
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg.")}
    return make_config(base, cls, **overrides)


def _other_rank() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) != 0


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise WsramError(f"--{name}: must be at least 1, got {value}")


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        _train_command(args, Config)
    elif args.command == "evaluate":
        from .evaluate import evaluate_run

        _positive("samples", args.samples)
        _positive("test-size", args.test_size)
        res = evaluate_run(args.run_dir, args.checkpoint, args.samples, args.test_size)
        print(f"{args.run_dir} ({res['checkpoint']}, update {res['step']}, "
              f"{res['test_images']} test images)")
        print(f"  test error, one sampled trajectory:        {res['test_error_sampled']:.2%}")
        print(f"  test error, mean of {res['samples']:>3} trajectories:      "
              f"{res['test_error_mc']:.2%}")
        print(f"  test error, deterministic policy:          "
              f"{res['test_error_deterministic']:.2%}")
        if "selected_on" in res:
            print(f"  note: best.pt was selected on {res['selected_on']}, so these errors "
                  "are optimistic")
        print(f"  written to {Path(args.run_dir) / 'eval.json'}")
    elif args.command == "compare":
        from .compare import compare, default_variants, write_results

        if args.plot_only:
            if not Path(args.plot_only).is_dir():
                raise WsramError(f"{args.plot_only}: no such comparison folder")
            res = write_results(args.plot_only)
            out = Path(args.plot_only)
        else:
            if not args.out:
                raise WsramError("compare: give --out DIR (or --plot-only DIR)")
            if Path(args.out).exists() and not Path(args.out).is_dir():
                raise WsramError(f"{args.out}: exists and is not a folder")
            _positive("jobs", args.jobs)
            res = compare(_config_from_args(args), args.out,
                          default_variants(explore=not args.no_explore), jobs=args.jobs,
                          progress=not args.no_progress)
            out = Path(args.out)
        print((out / "results.md").read_text())
        print(f"wrote {out / 'results.md'}, {out / 'results.json'} and figures in {out}")
        del res
    elif args.command == "cost":
        import torch

        from .cost import NOTES, check_device, check_out_path, markdown, run_cost, text_table

        if args.threads < 0 or not args.seconds > 0:
            raise WsramError("cost: --threads must be >= 0 and --seconds > 0")
        check_device(args.device)
        out = check_out_path(args.out) if args.out else None
        if args.threads:
            torch.set_num_threads(args.threads)
        costs = [run_cost(r, args.checkpoint, args.device, args.seconds) for r in args.run_dirs]
        if args.json:
            print(json.dumps(costs, indent=2))
        else:
            print(text_table(costs))
            print()
            print(NOTES)
        if out is not None:
            try:
                out.write_text(markdown(costs))
            except OSError as e:
                raise WsramError(f"{out}: cannot write ({e.strerror})") from None
            print(f"wrote {out}", file=sys.stderr if args.json else sys.stdout)
    elif args.command == "caption":
        _caption(args)
    elif args.command == "show":
        from .plots import show_glimpses

        _positive("num", args.num)
        out = show_glimpses(args.run_dir, args.out, args.num, not args.sampled, args.checkpoint)
        print(f"wrote {out}")
    return 0


def _train_command(args: argparse.Namespace, cls: type[TrainConfig]) -> None:
    """``wsram train`` and ``wsram caption train``: the last metrics line, printed by rank 0."""
    from .train import train

    cfg = _config_from_args(args, cls)
    row = train(cfg, args.run_dir, resume=args.resume, overwrite=args.overwrite,
                progress=not args.no_progress)
    if _other_rank():  # under torchrun only rank 0 reports
        return
    if "step" in row:
        print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}))
    elif cfg.steps == 0 and not args.resume:
        print(f"{args.run_dir}: prepared; no updates asked for (--steps 0)")
    else:
        print(f"{args.run_dir}: already at {cfg.steps} updates; nothing to train "
              "(raise --steps to continue)")


def _caption(args: argparse.Namespace) -> None:
    from .captioning.config import CaptionConfig

    if args.caption_command == "train":
        _train_command(args, CaptionConfig)
    elif args.caption_command == "evaluate":
        from .captioning.report import evaluate_caption_run

        _positive("beam-size", args.beam_size)
        _positive("size", args.size)
        res = evaluate_caption_run(args.run_dir, args.checkpoint, args.split, args.beam_size,
                                   args.size)
        print(f"{args.run_dir} ({res['checkpoint']}, update {res['step']}, {res['split']} "
              f"split, {res['images']} images, no teacher forcing)")
        print(f"  {'':<22}{'BLEU-1':>8}{'BLEU-2':>8}{'BLEU-3':>8}{'BLEU-4':>8}{'CIDEr':>8}")
        for name, key in (("greedy", "greedy"), (f"beam {res['beam_size']}", "beam")):
            sc = res[key]
            print(f"  {name:<22}" + "".join(f"{sc[k]:>8.3f}" for k in
                                              ("bleu1", "bleu2", "bleu3", "bleu4", "cider")))
        if "selected_on" in res:
            print(f"  note: best.pt was selected on {res['selected_on']}")
        print(f"  written to {Path(args.run_dir) / 'eval.json'} and "
              f"{Path(args.run_dir) / 'captions.json'}")
    elif args.caption_command == "show":
        from .captioning.report import show_captions

        _positive("num", args.num)
        _positive("beam-size", args.beam_size)
        paths = show_captions(args.run_dir, args.out, args.num, args.split, args.checkpoint,
                              args.beam_size)
        print(f"wrote {len(paths)} PNGs to {paths[0].parent}" if paths else "nothing to draw")
    elif args.caption_command == "plot":
        from .captioning.report import plot_curves

        if args.max_step is not None:
            _positive("max-step", args.max_step)
        out = plot_curves(args.run_dirs, args.out, args.key, args.max_step, args.title,
                          args.log_y)
        print(f"wrote {out}")


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
