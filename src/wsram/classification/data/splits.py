"""The splits of the classification data: training, validation (every
``holdout_every``-th training image) and test images from the configured source, and the
fixed canvases of the held-out splits."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch import Tensor

from ...digits import DigitSet, holdout, load_digits
from ...errors import DataError
from ...run_dir import CHECKPOINTS
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


#: below this many validation images, choosing best.pt on them is mostly noise
FEW_VALIDATION = 100


def noun(cfg: ClassificationConfig) -> str:
    """What one example is called: a digit of MNIST, an image of the user's own data."""
    return "digit" if cfg.source == "mnist" else "image"


def split_sizes(cfg: ClassificationConfig) -> dict[str, int]:
    """How many examples each split holds (``val`` 0 without a held-out split)."""
    sizes = {"train": len(load_split(cfg, "train")), "test": len(load_split(cfg, "test"))}
    sizes["val"] = len(load_split(cfg, "val")) if cfg.holdout_every else 0
    return sizes


def describe_data(cfg: ClassificationConfig) -> list[str]:
    """The line a run starts with: what was found (where, classes, the size of each
    split), and a warning when the validation split is too small to choose best.pt on."""
    n, classes = split_sizes(cfg), load_split(cfg, "train").classes
    where = {"mnist": f"MNIST IDX files in {cfg.data_dir}" if cfg.data_dir else
             "the bundled digits", "folder": f"image folder {cfg.data_dir}",
             "npz": f"{cfg.data_dir}"}[cfg.source]
    named = f" ({', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''})" if classes \
        else ""
    lines = [f"wsram: data: {where}: {cfg.num_classes} classes{named}, {cfg.channels} "
             f"channel{'s' if cfg.channels > 1 else ''}; {n['train']} training, {n['val']} "
             f"validation, {n['test']} test {noun(cfg)}s"]
    if cfg.holdout_every and min(n["val"], cfg.eval_size) < FEW_VALIDATION:
        lines.append(f"wsram: warning: only {min(n['val'], cfg.eval_size)} validation "
                     f"{noun(cfg)}s: {CHECKPOINTS['best']} chosen on so few is mostly noise (more data, a "
                     "smaller --holdout-every or a larger --eval-size)")
    return lines


def canvas_spec(cfg: ClassificationConfig) -> CanvasSpec:
    return CanvasSpec(cfg.canvas_size, cfg.digit_min, cfg.digit_max, cfg.distractors,
                      cfg.distractor_size)
