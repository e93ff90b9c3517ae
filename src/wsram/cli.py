"""The ``wsram`` command: parses, then calls the library. Every user mistake is one line.

The subcommands come from the registry (``wsram.registry``): each task adds its own
(``add_commands``: ``train`` through :func:`add_train_parser`, evaluate, show, ...), the
study adds ``compare``; ``migrate`` is the core's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from . import __version__, registry
from .config import TrainConfig, field_help, load_yaml, make_config
from .errors import WsramError
from .migrate import migrate_run
from .run_dir import CHECKPOINTS, RunDir
from .stack import stack_problem
from .stack_train import train_stack
from .summary import end_of_run, stop_line
from .terminal import guard_std_streams, unguard_std_streams
from .train import train


class Parser(argparse.ArgumentParser):
    """One line and exit 2 for a mistake, pointing to the help of the (sub)command that
    was typed: ``wsram train --nonsense`` says ``(see wsram train -h)``."""

    def error(self, message: str) -> None:  # one line, exit 2, instead of usage + error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        ns, extra = super().parse_known_args(args, namespace)
        if not hasattr(ns, "_parser"):  # the innermost subcommand parses first
            ns._parser = self
        return ns, extra

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            ns._parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return ns


def _metavar(name: str, hint: Any, words: dict[str, str]) -> str:
    """What a config key's value is, for ``--help``: N, X, true|false, PATH, the words
    (the config class's ``WORDS``)."""
    if name in words:
        return words[name]
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


def add_config_options(p: argparse.ArgumentParser, cls: type[TrainConfig],
                       skip: tuple[str, ...] = ()) -> None:
    """Each config key as a flag, but those the task does not take (``cls.HIDDEN_KEYS``)
    and those of ``skip`` (a command sets them itself)."""
    g = p.add_argument_group("configuration (any key of the config file)")
    notes = field_help(cls)
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in cls.HIDDEN_KEYS or f.name in skip:
            continue
        note = notes.get(f.name, "").replace("%", "%%")
        g.add_argument(f"--{f.name.replace('_', '-')}", dest=f"cfg.{f.name}",
                       metavar=_metavar(f.name, hints[f.name], cls.WORDS),
                       default=argparse.SUPPRESS,
                       nargs="+" if typing.get_origin(hints[f.name]) is list else None,
                       help=f"{note} (default: {_shown(getattr(cls(), f.name))})".lstrip())


def add_run_argument(p: argparse.ArgumentParser, many: bool = False) -> None:
    """The run folder(s) a command reads, named RUN in every command."""
    if many:
        p.add_argument("run_dirs", nargs="+", metavar="RUN", help="run folders")
    else:
        p.add_argument("run_dir", metavar="RUN",
                       help="a run folder (what `train --run-dir` made)")


def add_checkpoint_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", choices=["last", "best"], default="last",
                   help=f"which checkpoint: {CHECKPOINTS['last']} (the latest update) or "
                   f"{CHECKPOINTS['best']} (the best validation figure) (default: last)")


def add_samples_option(p: argparse.ArgumentParser) -> None:
    """M, the trajectories averaged per image: ``--eval-samples`` as the config key that
    sets it during training (``--samples``, K in ``train``, still accepted here)."""
    p.add_argument("--eval-samples", type=int, metavar="N", dest="samples",
                   help="trajectories averaged per image (default: the run's eval_samples)")
    p.add_argument("--samples", type=int, dest="samples", help=argparse.SUPPRESS)


def add_train_parser(sub: Any, help: str, cls: type[TrainConfig]) -> None:
    """``train``: the same options for every task (its config keys, as flags)."""
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
    t.add_argument("--json", action="store_true",
                   help="also print the run's last metrics as one JSON line on stdout (for "
                   "scripts; the summary for people goes to stderr either way)")
    stackable = registry.tasks()[cls.TASK].stackable
    t.set_defaults(seeds=None, lrs=None)
    if stackable:  # only tasks whose runs can train as one stack offer it
        t.add_argument("--seeds", type=int, nargs="+", metavar="N",
                       help="several seeds at once (with --lrs, every pair): one stack of "
                       "runs trained as one program, each in its own folder "
                       "DIR/lr<lr>-seed<seed>")
        t.add_argument("--lrs", type=float, nargs="+", metavar="X",
                       help="several learning rates at once, as --seeds")
    add_config_options(t, cls)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="wsram", description=(
        "Train, evaluate and inspect stochastic hard-attention models (WS-RAM, VAR, VIMCO)."))
    parser.add_argument("--version", action="version", version=f"wsram {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    specs = list(registry.tasks().values())
    for spec in specs:  # a task's commands at the top level: train, evaluate, ...
        if not spec.prefix:
            spec.add_commands(sub)
    for add_commands in registry.commands():  # compare
        add_commands(sub)
    for spec in specs:  # a task's commands under its word: ``wsram caption train``, ...
        if spec.prefix:
            group = sub.add_parser(spec.prefix[0], help=spec.help)
            spec.add_commands(group.add_subparsers(dest=f"{spec.name}_command", required=True,
                                                   parser_class=Parser))
    m = sub.add_parser("migrate", help="convert a run folder of an older format in place")
    m.set_defaults(func=cmd_migrate)
    m.add_argument("run_dir", metavar="RUN")
    return parser


def config_from_args(args: argparse.Namespace, cls: type[TrainConfig]) -> Any:
    """The config a train (or compare) command describes: the resumed run's config.yaml,
    then --config, then the flags."""
    base = {}
    if getattr(args, "resume", False):
        if not RunDir(args.run_dir).has_config():
            raise WsramError(f"{args.run_dir}: nothing to resume (no "
                             f"{RunDir(args.run_dir).config.name})")
        base.update(registry.read_run_config(args.run_dir, cls.TASK,
                                             "resume it with {command} train")[1])
    if args.config:
        base.update(read_config_file(args.config, cls))
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg.")}
    return make_config(base, cls, **overrides)


def read_config_file(path: str, cls: type[TrainConfig]) -> dict[str, Any]:
    """A ``--config`` file's keys, refusing one written for another task: by its ``task:``
    key or, without one, by keys that only the other task's config has."""
    raw = load_yaml(path)
    task = raw.get("task")
    unknown = set(raw) - {f.name for f in fields(cls)} - {"task"}
    if task is None and unknown:
        task = next((name for name, spec in registry.tasks().items() if unknown <= {
            f.name for f in fields(spec.config_class)}), None)
    if task is not None and task != cls.TASK:
        other, this = registry.tasks().get(task), registry.tasks()[cls.TASK]
        use = f"; use it with {other.command} train" if other else ""
        raise WsramError(f"{path}: a {other.noun if other else task} config, not a "
                         f"{this.noun} one{use}")
    return raw


def positive(name: str, value: int | None) -> None:
    """Refuse a count below 1 given to option ``--name``."""
    if value is not None and value < 1:
        raise WsramError(f"--{name}: must be at least 1, got {value}")


#: exit status of a run stopped before its end by SIGINT, SIGTERM, SIGHUP, SIGUSR2 or a closed
#: stdout/stderr, after checkpointing the current update (README, "Exit status")
EXIT_STOPPED = 130


def stack_configs(args: argparse.Namespace, cls: type[TrainConfig]) -> tuple[list[Any],
                                                                              list[Path]]:
    """The runs ``--seeds`` / ``--lrs`` describe: every (rate, seed), each in its folder
    under --run-dir; with --resume, each from its own config.yaml where it has one."""
    parent = Path(args.run_dir)
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg.")}
    base = read_config_file(args.config, cls) if args.config else {}
    first = make_config(base, cls, **overrides)
    cfgs, dirs = [], []
    for lr in args.lrs or [first.lr]:
        for seed in args.seeds if args.seeds is not None else [first.seed]:
            run_dir = parent / f"lr{lr:g}-seed{seed}"
            saved = {}
            if args.resume and RunDir(run_dir).has_config():
                saved = registry.read_run_config(run_dir, cls.TASK,
                                                 "resume it with {command} train")[1]
            cfgs.append(make_config({**base, **saved}, cls, **{**overrides, "lr": lr,
                                                                 "seed": seed}))
            dirs.append(run_dir)
    return cfgs, dirs


def cmd_train_stack(args: argparse.Namespace) -> int:
    """``wsram train --seeds ... --lrs ...``: one stack of runs; a line per run on stderr
    and, with ``--json``, a JSON line per run on stdout."""
    cfgs, dirs = stack_configs(args, args.config_class)
    rows = train_stack(cfgs, dirs, resume=args.resume, overwrite=args.overwrite,
                       progress=not args.no_progress, parent=args.run_dir)
    for row in rows if args.json else ():  # as a single run's line, with its folder
        print(json.dumps(json_row(row) if "step" in row else row, default=str))
    sys.stdout.flush()
    for cfg, row in zip(cfgs, rows, strict=True):
        if "error" not in row:
            print(stop_line(row, cfg, row["run_dir"], registry.spec_for(cfg).command),
                  file=sys.stderr)
    if any("error" in row for row in rows):
        return 2
    done = all(row["stopped_by"] in ("finished", "time limit") for row in rows)
    return 0 if done else EXIT_STOPPED


def cmd_train(args: argparse.Namespace) -> int:
    """``wsram train`` and ``wsram caption train``: rank 0 prints a summary for people
    (stderr) and, with ``--json``, the last metrics as one line (stdout)."""
    if args.seeds or args.lrs:
        return cmd_train_stack(args)
    cfg = config_from_args(args, args.config_class)
    if cfg.cuda_graphs:  # a graphed update is a stack's: a stack of this one run
        problem = stack_problem([cfg])
        if problem:
            raise WsramError(f"cuda_graphs: the update is graphed as a stack's, and {problem}")
        row = train_stack([cfg], [args.run_dir], resume=args.resume,
                          overwrite=args.overwrite, progress=not args.no_progress)[0]
        if "error" in row:  # stopped by non-finite updates: said on stderr already
            return 2
    else:
        row = train(cfg, args.run_dir, resume=args.resume, overwrite=args.overwrite,
                    progress=not args.no_progress)
    code = 0 if row["stopped_by"] in ("finished", "time limit") else EXIT_STOPPED
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return code
    if "step" in row:  # at least one update was logged
        if args.json:
            print(json.dumps(json_row(row)))
    elif code == 0 and cfg.steps == 0 and not args.resume:
        print(f"{args.run_dir}: prepared; no updates asked for (--steps 0)")
        return code
    elif code == 0 and row["last_step"] >= cfg.steps:
        at = row["last_step"]
        where = (f"already at {at} updates" if at == cfg.steps else
                 f"at update {at}, past the {cfg.steps} asked")
        print(f"{args.run_dir}: {where}; nothing to train (raise --steps to continue)")
        return code
    sys.stdout.flush()
    if RunDir(args.run_dir).has_config():  # as saved: with what the data filled in
        spec, raw = registry.read_run_config(args.run_dir)
        cfg = make_config(raw, spec.config_class)
    print(end_of_run(row, cfg, args.run_dir, registry.spec_for(cfg)), file=sys.stderr)
    return code


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    """``--json``'s line: ``step`` is the update the run stopped at (what last.pt holds);
    the training figures are those of the last logged window, ``train_logged_at``."""
    out = {"step": row["last_step"], "train_logged_at": row["step"]}
    out.update((k, round(v, 5) if isinstance(v, float) else v) for k, v in row.items()
               if k not in ("step", "last_step"))
    return out


def cmd_migrate(args: argparse.Namespace) -> None:
    print(migrate_run(args.run_dir))


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand it names; 0 on success."""
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


def main(argv: list[str] | None = None) -> None:
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
