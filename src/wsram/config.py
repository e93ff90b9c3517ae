"""Typed run configuration: defaults here, a YAML file over them, then ``--key value`` flags.

Every field is also a command-line option (``batch_size`` -> ``--batch-size``). Unknown
keys and values of the wrong type or out of range are a :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .methods import METHODS
from .schedule import SCHEDULES


@dataclass
class TrainConfig:
    """What every task's training loop reads: method, optimisation, logging, machine."""

    # --- method ---
    method: str = "wsram+q+c"  # var, var+c, wsram, wsram+c, wsram+q, wsram+q+c, vimco
    samples: int = 5  # K, trajectories per image in each update (M in the paper)
    steps: int = 3000  # updates to train for (a resumed run trains up to this many)
    time_limit: float = 0.0  # minutes of training after which to checkpoint and stop; 0 = none
    # --- optimisation ---
    batch_size: int = 64  # B, images per update
    lr: float = 1e-3  # Adam learning rate of the prediction and inference networks
    baseline_lr: float = 1e-3  # Adam learning rate of the VAR baseline network
    grad_clip: float = 10.0  # max gradient norm of each network (theta, eta, baseline); 0 = none
    cv_gamma: float = 1.0  # scale of the WS-RAM control-variate baselines (M11, M12)
    lr_schedule: str = "constant"  # constant, or cosine (each rate down to lr_min x it)
    warmup: int = 0  # updates of linear warm-up of every rate; 0 = none
    lr_min: float = 0.0  # cosine's last rate, as a fraction of each network's starting rate
    schedule_steps: int = 0  # the schedule's horizon in updates; 0 = steps at the run's start
    # --- exploration heuristics (METHOD.md 4.5); all off by default ---
    temperature: float = 1.0  # sample from a tempered proposal (>1: wider, flatter)
    coverage: float = 0.0  # weight of the location-coverage regulariser
    entropy: float = 0.0  # weight of the entropy bonus on the policy
    # --- evaluation, logging, checkpoints ---
    eval_every: int = 1000  # updates between validation evaluations (0 = only at the end)
    eval_size: int = 500  # validation examples used by evaluations during training
    log_every: int = 50  # updates between lines of metrics.jsonl
    diag_every: int = 500  # updates between diagnostics (gradient variance, ...); 0 = never
    diag_batch: int = 64  # images in the fixed minibatch the diagnostics use
    diag_repeats: int = 10  # R, independent gradient estimates for the gradient variance
    checkpoint_every: int = 500  # updates between checkpoints (last.pt)
    max_nonfinite: int = 20  # consecutive non-finite losses before the run stops
    seed: int = 0  # seeds parameters, data and actions: the same seed, the same run
    device: str = "cpu"  # cpu, cuda or cuda:N (under torchrun: each rank's own GPU)
    precision: str = "fp32"  # fp32, or bf16 (autocast of the networks; estimators stay fp32)
    compile: bool = False  # torch.compile the training rollout; eager again if it fails
    cuda_graphs: bool = False  # the update as one CUDA graph, replayed (CUDA only)
    threads: int = 0  # torch CPU threads; 0 = torch's default

    #: the task's name in the registry (``wsram.registry``), written to every config.yaml
    TASK: typing.ClassVar[str] = ""
    #: keys the training data determine when left None (filled in by ``check_inputs``)
    DATA_KEYS: typing.ClassVar[tuple[str, ...]] = ()
    #: keys of this class a task does not take (not offered as flags; refused if set)
    HIDDEN_KEYS: typing.ClassVar[tuple[str, ...]] = ()
    #: methods of the task's own beside the estimators of ``METHODS`` (e.g. a baseline)
    OWN_METHODS: typing.ClassVar[tuple[str, ...]] = ()
    #: what the value of a key is, for ``--help``, where it takes one of a few words
    WORDS: typing.ClassVar[dict[str, str]] = {
        "method": "METHOD", "precision": "fp32|bf16", "device": "cpu|cuda|cuda:N",
        "lr_schedule": "constant|cosine"}
    # Fields a resumed run may change: how long and where it runs, and what it logs.
    RESUMABLE_KEYS: typing.ClassVar[tuple[str, ...]] = (
        "steps", "time_limit", "device", "cuda_graphs", "threads", "precision", "eval_every",
        "eval_size",
        "log_every", "checkpoint_every", "diag_every", "max_nonfinite",
    )
    # Fields that shape the model's parameters: a checkpoint must agree on all of them.
    MODEL_KEYS: typing.ClassVar[tuple[str, ...]] = ()

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the first value out of range; return self."""
        names = [*METHODS, *self.OWN_METHODS]
        need(self.method in names,
             f"method: unknown method {self.method!r}; choose from {', '.join(names)}")
        need(self.samples >= 1, f"samples: K must be at least 1, got {self.samples}")
        need(self.method != "vimco" or self.samples >= 2,
             f"samples: vimco needs K >= 2, got {self.samples}")
        need(self.steps >= 0, f"steps: must be >= 0, got {self.steps}")
        need(self.time_limit >= 0, f"time_limit: must be >= 0, got {self.time_limit}")
        need(self.batch_size >= 1, f"batch_size: must be >= 1, got {self.batch_size}")
        need(self.lr > 0 and self.baseline_lr > 0, "lr, baseline_lr: must be > 0")
        need(self.lr_schedule in SCHEDULES,
             f"lr_schedule: expected {' or '.join(SCHEDULES)}, got {self.lr_schedule!r}")
        need(self.warmup >= 0, f"warmup: must be >= 0, got {self.warmup}")
        need(0 <= self.lr_min <= 1, f"lr_min: a fraction in [0, 1], got {self.lr_min}")
        need(self.schedule_steps >= 0, f"schedule_steps: must be >= 0, got {self.schedule_steps}")
        need(self.grad_clip >= 0, f"grad_clip: must be >= 0, got {self.grad_clip}")
        need(self.temperature > 0, f"temperature: must be > 0, got {self.temperature}")
        need(self.coverage >= 0 and self.entropy >= 0, "coverage, entropy: must be >= 0")
        need(self.diag_batch >= 1, f"diag_batch: must be >= 1, got {self.diag_batch}")
        need(self.diag_repeats >= 2, f"diag_repeats: need R >= 2, got {self.diag_repeats}")
        for name in ("eval_every", "log_every", "checkpoint_every", "diag_every"):
            need(getattr(self, name) >= 0, f"{name}: must be >= 0")
        need(self.log_every >= 1, f"log_every: must be >= 1, got {self.log_every}")
        need(self.eval_size >= 1, f"eval_size: must be >= 1, got {self.eval_size}")
        need(self.max_nonfinite >= 1, f"max_nonfinite: must be >= 1, got {self.max_nonfinite}")
        need(self.threads >= 0, f"threads: must be >= 0, got {self.threads}")
        need(self.precision in ("fp32", "bf16"),
             f"precision: expected fp32 or bf16, got {self.precision!r}")
        need(re.fullmatch(r"cpu|cuda(:\d+)?", self.device) is not None,
             f"device: expected cpu, cuda or cuda:N, got {self.device!r}")
        need(not self.cuda_graphs or self.device.startswith("cuda"),
             "cuda_graphs: CUDA graphs need a CUDA device (--device cuda)")
        need(not (self.cuda_graphs and self.compile),
             "cuda_graphs, compile: choose one (a graphed update is not compiled)")
        need(self.method != "vimco" or self.temperature == 1.0,
             "temperature: vimco's bound needs samples from the prior itself; "
             "use temperature 1 with vimco")
        return self

    def horizon(self) -> int:
        """The schedule's horizon: ``schedule_steps``, fixed when the run starts."""
        return self.schedule_steps or self.steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def model_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.MODEL_KEYS}

    def input_paths(self) -> list[str]:
        """Files and folders the run reads (never to be deleted by ``--overwrite``); a task's
        config names its own."""
        return []


def need(ok: bool, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` unless ``ok``: the validators' one check."""
    if not ok:
        raise ConfigError(msg)


ConfigClass = type[TrainConfig]


def field_names(cls: ConfigClass) -> list[str]:
    return [f.name for f in fields(cls)]


def field_help(cls: ConfigClass) -> dict[str, str]:
    """Each field's comment in the config class (and its bases) above, for ``--help``."""
    out = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        for line in inspect.getsource(klass).splitlines():
            m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.*)$", line)
            if m:
                out[m.group(1)] = m.group(2)
    return out


def coerce(name: str, value: Any, cls: ConfigClass) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to the type of field ``name``
    of the config class ``cls``."""
    names = field_names(cls)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown config key {name!r}{hint}")
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if typing.get_origin(hint) is list:
        base = hint
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{name}: a value is required")
    try:
        if typing.get_origin(base) is list:
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return [float(v) for v in value]
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no"):
                return False
            raise TypeError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value) if not isinstance(value, str) else int(value, 10)
        if base is float:
            if isinstance(value, bool):
                raise TypeError
            out = float(value)
            if out != out or out in (float("inf"), float("-inf")):
                raise TypeError
            return out
        if base is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TypeError
            return str(value)
    except (TypeError, ValueError):
        tname = getattr(base, "__name__", str(base))
        raise ConfigError(f"{name}: expected {tname}, got {value!r}") from None
    raise ConfigError(f"{name}: unsupported type {hint}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of config keys; errors name the file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8)") from None
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def make_config(base: dict[str, Any] | None, config_class: ConfigClass,
                **overrides: Any) -> Any:
    """Build a validated ``config_class`` from a mapping and keyword overrides (later wins).
    Each task offers it with its own class: ``wsram.classification.make_config``."""
    cls = config_class
    values: dict[str, Any] = {}
    for src in (base or {}, overrides):
        for k, v in src.items():
            if k == "task":  # the task a config.yaml was written for: this class's own
                if v != cls.TASK:
                    raise ConfigError(f"task: this config is for the {v!r} task, not "
                                      f"{cls.TASK!r}")
                continue
            values[str(k).replace("-", "_")] = coerce(str(k).replace("-", "_"), v, cls)
    return cls(**values).validate()


def replace(cfg: TrainConfig, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes).validate()
