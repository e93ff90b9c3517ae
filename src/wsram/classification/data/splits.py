"""The splits of the classification data: training, validation (every
``holdout_every``-th training image) and test images from the configured source, and the
fixed canvases of the held-out splits."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch import Tensor

from ...digits import DigitSet, holdout, load_digits
from ...errors import DataError
from .canvas import CanvasSpec, make_test_set
from .own import data_signature, load_folder, load_npz

if TYPE_CHECKING:  # the config imports this module to check its inputs
    from ..config import ClassificationConfig


_own_cache: dict[tuple, DigitSet] = {}  # the last own split read: read once per training run


def _load_own(cfg: ClassificationConfig, split: str) -> DigitSet:
    """One split of an image folder or a .npz. The last one read is kept, keyed by what
    shapes it and by each file's size and modification time, so that ``check_inputs``
    and the task read a large folder once."""
    side = math.ceil(cfg.digit_max)
    key = (cfg.source, data_signature(cfg.data_dir), split, cfg.channels, side, cfg.fit,
           cfg.num_classes)
    if key not in _own_cache:
        load = load_folder if cfg.source == "folder" else load_npz
        digits = load(cfg.data_dir, split, cfg.channels, side, cfg.fit, cfg.num_classes)
        _own_cache.clear()
        _own_cache[key] = digits
    return _own_cache[key]


def load_split(cfg: ClassificationConfig, split: str) -> DigitSet:
    """The images of ``split`` (train, val, test) from ``cfg.source``: every
    ``holdout_every``-th training image is the validation split, whatever the source."""
    if cfg.source == "mnist":
        return load_digits(split, cfg.data_dir, cfg.holdout_every)
    if split == "test" or not cfg.holdout_every:
        return _load_own(cfg, split)
    train, val = holdout(_load_own(cfg, "train"), cfg.holdout_every)
    if len(val) == 0 or len(train) == 0:
        raise DataError(f"{cfg.data_dir}: {len(train) + len(val)} training images leave no "
                        f"{'validation' if len(val) == 0 else 'training'} images at "
                        f"holdout_every {cfg.holdout_every}")
    return val if split == "val" else train


def test_set(cfg: ClassificationConfig, size: int | None = None, split: str = "test",
             ) -> tuple[Tensor, Tensor]:
    """The fixed canvases of a held-out split, ``test`` (read only by ``wsram evaluate``
    and ``compare``'s final table) or ``val`` (picks best.pt): (N, C, H, W), (N,)."""
    digits = load_split(cfg, split)
    n = size if size is not None else (cfg.test_size if split == "test" else None)
    if n is not None:
        n = min(n, len(digits))
    return make_test_set(digits, canvas_spec(cfg), n)


def eval_split(cfg: ClassificationConfig) -> str:
    """Where evaluations during training look: the validation set, or for runs saved
    before it existed (``holdout_every`` 0), the first test canvases."""
    return "val" if cfg.holdout_every else "test"


def check_inputs(cfg: ClassificationConfig) -> None:
    """Own data (an image folder, a .npz) are read, and kept for the task, before the run
    folder is touched; MNIST sources are checked when the task reads them."""
    if cfg.source != "mnist":
        load_split(cfg, "train")


def canvas_spec(cfg: ClassificationConfig) -> CanvasSpec:
    return CanvasSpec(cfg.canvas_size, cfg.digit_min, cfg.digit_max, cfg.distractors,
                      cfg.distractor_size)
