"""The classification task's configuration: TrainConfig's training fields plus data and
model. Every field is a ``wsram train`` option."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

from ..config import TrainConfig, need
from ..config import make_config as _make_config
from ..run_dir import CHECKPOINTS


@dataclass
class ClassificationConfig(TrainConfig):
    """The classification task: digits (or the user's images) on a canvas (METHOD.md,
    Experiments)."""

    # the estimators of METHODS, or this task's CNN baseline (cnn.py)
    method: str = "wsram+q+c"  # var, var+c, wsram, wsram+c, wsram+q, wsram+q+c, vimco, cnn
    # --- data ---
    source: str = "mnist"  # mnist (bundled or IDX files), folder (image folder), npz (arrays)
    data_dir: str | None = None  # IDX folder (None: 5,000 bundled digits), image folder, or .npz
    channels: int | None = None  # 1 grey, 3 RGB; None: from the data (3 if any image has colour)
    fit: str = "pad"  # own images to a digit_max square: pad (keep aspect) or resize (stretch)
    canvas_size: int = 100  # side of the square canvas, pixels
    digit_min: float = 24.0  # smallest digit side on the canvas, pixels
    digit_max: float = 56.0  # largest digit side on the canvas, pixels
    distractors: int = 0  # clutter: crops of random other digits pasted on each canvas
    distractor_size: int = 8  # side of each clutter crop, pixels
    test_size: int | None = None  # test canvases (one per test digit, in order); None = all
    holdout_every: int = 10  # every Nth training digit is the validation set (picks best.pt)
    # --- model (METHOD.md, Architecture) ---
    glimpses: int = 4  # N, glimpses per image
    patch: int = 12  # G, side of a glimpse in pixels after resampling
    scales: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.8])  # patch side / canvas side
    hidden: int = 256  # width of every hidden layer
    context_size: int = 12  # side of the low-resolution copy read by the context network
    loc_std: float = 0.2  # standard deviation of the location Gaussian, in [-1, 1] units
    num_classes: int | None = None  # classes the model predicts; None: from the data
    eval_samples: int = 10  # trajectories averaged per image by the Monte-Carlo error

    TASK: typing.ClassVar[str] = "classification"
    OWN_METHODS: typing.ClassVar[tuple[str, ...]] = ("cnn",)  # the whole-canvas CNN baseline
    #: what runs saved before a key existed did: ``wsram migrate`` writes these into them
    #: (before the validation split, best.pt was chosen on test canvases)
    MIGRATE_VALUES: typing.ClassVar[dict[str, Any]] = {"holdout_every": 0}
    MODEL_KEYS: typing.ClassVar[tuple[str, ...]] = (
        "glimpses", "patch", "scales", "hidden", "context_size", "num_classes", "canvas_size",
    )

    SOURCES: typing.ClassVar[tuple[str, ...]] = ("mnist", "folder", "npz")
    DATA_KEYS: typing.ClassVar[tuple[str, ...]] = ("channels", "num_classes")
    WORDS: typing.ClassVar[dict[str, str]] = {
        **TrainConfig.WORDS, "source": "|".join(SOURCES), "fit": "pad|resize"}

    def validate(self) -> ClassificationConfig:
        super().validate()
        if self.source == "mnist":  # what MNIST implies; own data fill them from the files
            self.channels = 1 if self.channels is None else self.channels
            self.num_classes = 10 if self.num_classes is None else self.num_classes
        need(self.source in self.SOURCES,
             f"source: expected one of {', '.join(self.SOURCES)}, got {self.source!r}")
        need(self.source == "mnist" or self.data_dir is not None,
             f"data_dir: source {self.source} reads data_dir; give --data-dir PATH")
        need(self.channels is None or self.channels >= 1,
             f"channels: must be >= 1, got {self.channels}")
        need(self.source != "mnist" or self.channels == 1,
             f"channels: MNIST digits have 1 channel, got {self.channels}")
        need(self.source != "folder" or self.channels in (None, 1, 3),
             f"channels: image files are read as grey (1) or RGB (3), got {self.channels}")
        need(self.fit in ("pad", "resize"), f"fit: expected pad or resize, got {self.fit!r}")
        need(self.distractors >= 0, f"distractors: must be >= 0, got {self.distractors}")
        need(1 <= self.distractor_size <= min(self.canvas_size, self.digit_max),
             f"distractor_size: must be in 1..min(canvas_size, digit_max), "
             f"got {self.distractor_size}")
        need(self.method != "cnn" or self.coverage == 0,
             "coverage: the cnn method takes no glimpses; coverage must be 0")
        need(self.canvas_size >= 8, f"canvas_size: must be >= 8, got {self.canvas_size}")
        need(1 <= self.digit_min <= self.digit_max,
             f"digit_min/digit_max: need 1 <= digit_min <= digit_max, "
             f"got {self.digit_min}, {self.digit_max}")
        need(self.digit_max <= self.canvas_size,
             f"digit_max: a digit of {self.digit_max} px does not fit a "
             f"{self.canvas_size} px canvas")
        need(self.holdout_every == 0 or self.holdout_every >= 2,
             f"holdout_every: must be >= 2 (or 0: no validation set, {CHECKPOINTS['best']} "
             f"chosen on test canvases), got {self.holdout_every}")
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
        need(self.num_classes is None or self.num_classes >= 2,
             f"num_classes: must be >= 2, got {self.num_classes}")
        need(self.eval_samples >= 1, f"eval_samples: must be >= 1, got {self.eval_samples}")
        return self

    @property
    def attends(self) -> bool:
        """Whether the method trains the attention model (the CNN takes no glimpses)."""
        return self.method not in self.OWN_METHODS

    def input_paths(self) -> list[str]:
        return [self.data_dir] if self.data_dir else []

    def model_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.MODEL_KEYS}
        if self.method == "cnn":  # another network; attention checkpoints have no such key
            out["model"] = "cnn"
        if self.channels != 1:  # grey checkpoints, older ones included, have no such key
            out["channels"] = self.channels
        return out


def make_config(base: dict[str, Any] | None = None, **overrides: Any) -> ClassificationConfig:
    """A validated :class:`ClassificationConfig` from a mapping and keyword overrides."""
    return _make_config(base, ClassificationConfig, **overrides)
