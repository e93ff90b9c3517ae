"""The splits of the classification data: training, validation (every
``holdout_every``-th training image) and test images from the configured source, and the
fixed canvases of the held-out splits."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from ...config import replace
from ...digits import DigitSet, holdout, load_digits
from ...errors import DataError
from ...run_dir import CHECKPOINTS
from .canvas import CanvasSpec, make_test_set
from .own import data_signature, folder_shape, load_folder, load_npz, npz_shape

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
        try:
            return load_digits(split, cfg.data_dir, cfg.holdout_every)
        except DataError as e:
            raise DataError(f"{e}{_source_hint(cfg.data_dir)}") from None
    if split == "test" or not cfg.holdout_every:
        return _load_own(cfg, split)
    train, val = holdout(_load_own(cfg, "train"), cfg.holdout_every)
    if len(val) == 0 or len(train) == 0:
        raise DataError(f"{cfg.data_dir}: {len(train) + len(val)} training images leave no "
                        f"{'validation' if len(val) == 0 else 'training'} images at "
                        f"holdout_every {cfg.holdout_every}")
    return val if split == "val" else train


def _source_hint(data_dir: str | None) -> str:
    """A hint when MNIST files were expected where own data are (the default source)."""
    path = Path(data_dir) if data_dir else None
    if path is not None and path.is_file() and path.suffix == ".npz":
        return " (for a .npz of your own, give --source npz)"
    if path is not None and path.is_dir() and any(p.is_dir() for p in path.iterdir()):
        return " (for an image folder of your own, give --source folder)"
    return ""


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


def check_inputs(cfg: ClassificationConfig) -> ClassificationConfig:
    """The config with what own data say of themselves filled in (channels, classes; a
    value given that disagrees is refused), its data read and kept for the task, all
    before the run folder is touched; MNIST sources are checked when the task reads them."""
    if cfg.source == "mnist":
        return cfg
    found = (folder_shape if cfg.source == "folder" else npz_shape)(cfg.data_dir)
    least = found.pop("min_classes", None)  # labels that need not use every class
    if least is not None:
        if cfg.num_classes is not None and cfg.num_classes < least:
            raise DataError(f"{cfg.data_dir}: labels go up to {least - 1} but --num-classes "
                            f"is {cfg.num_classes}; give at least {least}, or leave it out")
        found["num_classes"] = cfg.num_classes or least
    if cfg.source == "folder" and cfg.channels is not None:
        found.pop("channels")  # image files convert to grey or RGB as asked
    for key, value in found.items():
        given = getattr(cfg, key)
        if given is not None and given != value:
            what = {"channels": f"{value} channel{'s' if value > 1 else ''} (x's channel "
                    "axis)", "num_classes": f"{value} classes"}.get(key, str(value))
            raise DataError(f"{cfg.data_dir}: holds {what} but --{key.replace('_', '-')} "
                            f"is {given}; leave it out to take it from the data")
    cfg = replace(cfg, **found)
    load_split(cfg, "train")
    return cfg


#: below this many validation images, choosing best.pt on them is mostly noise
FEW_VALIDATION = 100


def noun(cfg: ClassificationConfig) -> str:
    """What one example is called: a digit of MNIST, an image of the user's own data."""
    return "digit" if cfg.source == "mnist" else "image"


def eval_count(cfg: ClassificationConfig) -> int:
    """How many canvases the evaluations during training look at: ``eval_size``, or all
    of their split where it holds fewer."""
    return min(cfg.eval_size, len(load_split(cfg, eval_split(cfg))))


def split_sizes(cfg: ClassificationConfig, train: DigitSet) -> dict[str, int | str]:
    """How many examples each split holds (``train``: the training split, already read;
    ``val`` 0 without a held-out split; the test split, which only ``evaluate`` reads, "no"
    where it is missing: training goes on)."""
    try:
        test: int | str = len(load_split(cfg, "test"))
    except DataError:
        test = "no"
    return {"train": len(train), "test": test,
            "val": len(load_split(cfg, "val")) if cfg.holdout_every else 0}


def describe_data(cfg: ClassificationConfig, train: DigitSet) -> list[str]:
    """The line a run starts with: what was found (where, classes, the size of each
    split), and a warning when the validation split is too small to choose best.pt on
    (``train``: the training split, already read)."""
    n, classes = split_sizes(cfg, train), train.classes
    where = {"mnist": f"MNIST IDX files in {cfg.data_dir}" if cfg.data_dir else
             "the bundled digits", "folder": f"image folder {cfg.data_dir}",
             "npz": f"{cfg.data_dir}"}[cfg.source]
    named = f" ({', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''})" if classes \
        else ""
    lines = [f"wsram: data: {where}: {cfg.num_classes} classes{named}, {cfg.channels} "
             f"channel{'s' if cfg.channels > 1 else ''}; {n['train']} training, {n['val']} "
             f"validation, {n['test']} test {noun(cfg)}s"]
    seen = min(n["val"], cfg.eval_size)
    if cfg.holdout_every and seen < FEW_VALIDATION:
        lines.append(f"wsram: warning: only {seen} validation "
                     f"{noun(cfg)}s: {CHECKPOINTS['best']} chosen on so few is mostly "
                     "noise (more data, a smaller --holdout-every or a larger --eval-size)")
    return lines


def canvas_spec(cfg: ClassificationConfig) -> CanvasSpec:
    return CanvasSpec(cfg.canvas_size, cfg.digit_min, cfg.digit_max, cfg.distractors,
                      cfg.distractor_size)
