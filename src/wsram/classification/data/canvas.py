"""Translated, scaled digits on a black canvas (paper Section 5.1), optionally cluttered.

Each canvas holds one digit, resized to a random side length in pixels and placed at a
random location so that the whole scaled digit box lies inside the canvas. Rendering is
one batched ``affine_grid`` + ``grid_sample`` call (bilinear, zero padding). Clutter (RAM,
Mnih et al. 2014): ``distractors`` square crops of ``distractor_size`` source pixels, each
cut at a random place from a random digit of the same set, pasted (pixel-wise maximum) at
a random place on the canvas. Images may have C channels: (N, C, h, w).

Pixel coordinates: pixel ``(row i, column j)`` covers ``[j, j+1) x [i, i+1)``, so a canvas
of side H spans ``[0, H]``. ``centres[:, 0]`` is horizontal (x, columns) and
``centres[:, 1]`` vertical (y, rows), the same order as the glimpse locations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from wsram.checkpoint import restore_generator
from wsram.digits import DigitSet, render
from wsram.errors import ConfigError, DataError

_TEST_CHUNK = 1024  # canvases rendered at once by make_test_set: bounds the grid memory


@dataclass
class CanvasSpec:
    """Canvas geometry; the digit side is drawn uniformly (real-valued) in
    ``[digit_min, digit_max]`` pixels."""

    canvas_size: int = 100  # canvas side H = W in pixels (paper: 100)
    digit_min: int = 24  # smallest digit side in pixels (MNIST digits are 28)
    digit_max: int = 56  # largest digit side in pixels; at most canvas_size
    distractors: int = 0  # clutter crops per canvas
    distractor_size: int = 8  # side of each clutter crop, in source (and canvas) pixels

    def __post_init__(self) -> None:
        for name in ("canvas_size", "digit_min", "digit_max", "distractors", "distractor_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"canvas: {name} must be a number, got {value!r}")
        if self.canvas_size < 1 or int(self.canvas_size) != self.canvas_size:
            raise ConfigError(f"canvas: canvas_size must be a positive integer, "
                              f"got {self.canvas_size}")
        if not 1 <= self.digit_min <= self.digit_max:
            raise ConfigError(f"canvas: need 1 <= digit_min <= digit_max, got digit_min="
                              f"{self.digit_min}, digit_max={self.digit_max}")
        if self.digit_max > self.canvas_size:
            raise ConfigError(f"canvas: digit_max={self.digit_max} does not fit on a canvas of "
                              f"side canvas_size={self.canvas_size}")
        if self.distractors < 0 or not 1 <= self.distractor_size <= self.canvas_size:
            raise ConfigError(f"canvas: need distractors >= 0 and 1 <= distractor_size <= "
                              f"canvas_size, got {self.distractors}, {self.distractor_size}")
        self.canvas_size = int(self.canvas_size)
        self.distractors = int(self.distractors)
        self.distractor_size = int(self.distractor_size)


def draw_placement(num: int, spec: CanvasSpec, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random digit sides and centres such that every digit box fits on the canvas.

    One row of three uniforms per canvas (side, x, y), so the first n placements drawn for
    num >= n canvases are the same as those drawn for n. Returns sizes (num,) and
    centres (num, 2) as float32 pixels on the generator's device.
    """
    H = spec.canvas_size
    u = torch.rand(num, 3, generator=generator, device=generator.device)  # (num, 3)
    sizes = spec.digit_min + (spec.digit_max - spec.digit_min) * u[:, 0]  # (num,)
    centres = sizes[:, None] / 2 + u[:, 1:] * (H - sizes)[:, None]  # (num, 2) in [s/2, H-s/2]
    return sizes, centres


def draw_clutter(num: int, spec: CanvasSpec, num_digits: int, side: int,
                 generator: torch.Generator) -> Tensor:
    """Where each canvas's distractors come from and go: (num, D, 5) int64 rows of (source
    digit, crop row, crop column, canvas row, canvas column), D = spec.distractors, for
    source images of side ``side``. One row of draws per canvas, like :func:`draw_placement`.
    """
    D, d, H = spec.distractors, spec.distractor_size, spec.canvas_size
    if d > side:
        raise ConfigError(f"canvas: distractor_size {d} is larger than the {side} px images "
                          f"it is cut from")
    u = torch.rand(num, D, 5, generator=generator, device=generator.device)  # (num, D, 5)
    high = torch.tensor([num_digits, side - d + 1, side - d + 1, H - d + 1, H - d + 1],
                        dtype=torch.float32, device=u.device)
    return (u * high).long().minimum((high - 1).long())  # floor of uniform: integers


def add_clutter(x: Tensor, digits: Tensor, clutter: Tensor, size: int) -> Tensor:
    """Paste the distractor crops :func:`draw_clutter` describes onto canvases x in place.

    x: (B, C, H, W) float in [0, 1]; digits: the source set (N, h, w) or (N, C, h, w),
    uint8 or float in [0, 1]; clutter: (B, D, 5). Pixel-wise maximum, so the order of the
    crops and of the digit does not matter. Returns x.
    """
    src = digits.unsqueeze(1) if digits.dim() == 3 else digits  # (N, C, h, w)
    B = x.shape[0]
    ar = torch.arange(size, device=x.device)
    b = torch.arange(B, device=x.device)[:, None, None]  # (B, 1, 1)
    xp = x.permute(0, 2, 3, 1)  # (B, H, W, C), a view: writes reach x
    src_hwc = src.permute(0, 2, 3, 1)  # (N, h, w, C)
    clutter = clutter.to(x.device)
    for k in range(clutter.shape[1]):
        i, r0, c0, pr, pc = clutter[:, k].unbind(-1)  # each (B,)
        rows, cols = (r0[:, None] + ar)[:, :, None], (c0[:, None] + ar)[:, None, :]
        dev = src.device
        crop = src_hwc[i.to(dev)[:, None, None], rows.to(dev), cols.to(dev)]  # (B, d, d, C)
        crop = crop.to(x.device)
        crop = crop.float() / 255.0 if crop.dtype == torch.uint8 else crop.float()
        prow, pcol = (pr[:, None] + ar)[:, :, None], (pc[:, None] + ar)[:, None, :]
        xp[b, prow, pcol] = torch.maximum(xp[b, prow, pcol], crop)
    return x


class CanvasGenerator:
    """An endless, seeded stream of translated-scaled digit canvases.

    All randomness (digit index, size, position) comes from a private CPU
    ``torch.Generator``: the same seed gives the same stream whatever the global RNG does,
    and ``state_dict`` / ``load_state_dict`` let a resumed run continue the same stream.
    The digits are held on ``device`` as float once, so sampling is an index + one render.
    """

    def __init__(self, digits: DigitSet, spec: CanvasSpec, seed: int,
                 device: str | torch.device = "cpu"):
        if len(digits) == 0:
            raise DataError("canvas generator: the digit set is empty")
        self.spec = spec
        self.device = torch.device(device)
        self.seed = int(seed)
        self._digits = digits.images.to(self.device, torch.float32) / 255.0  # (N[, C], h, w)
        self._labels = digits.labels.to(self.device)  # (N,)
        self._generator = torch.Generator().manual_seed(self.seed)

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    def sample(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """Draw a batch: x (B, C, H, W) float32 in [0, 1] and y (B,) int64, on ``device``."""
        if batch_size < 1:
            raise ConfigError(f"canvas generator: batch_size must be >= 1, got {batch_size}")
        g = self._generator
        idx = torch.randint(len(self), (batch_size,), generator=g)  # (B,)
        sizes, centres = draw_placement(batch_size, self.spec, g)  # (B,), (B, 2)
        idx = idx.to(self.device)
        x = render(self._digits[idx], sizes, centres, self.spec.canvas_size)  # (B, C, H, W)
        if self.spec.distractors:
            clutter = draw_clutter(batch_size, self.spec, len(self), self._digits.shape[-1], g)
            add_clutter(x, self._digits, clutter, self.spec.distractor_size)
        return x, self._labels[idx]

    def state_dict(self) -> dict[str, Tensor]:
        """The generator state (a uint8 tensor) under ``"rng_state"``."""
        return {"rng_state": self._generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Tensor] | Tensor) -> None:
        """Restore a state from :meth:`state_dict` (or the bare uint8 tensor)."""
        rng = state.get("rng_state") if isinstance(state, Mapping) else state
        restore_generator(self._generator, rng, "canvas generator state 'rng_state'")


def make_test_set(digits: DigitSet, spec: CanvasSpec, num: int | None = None,
                  seed: int = 1234) -> tuple[Tensor, Tensor]:
    """A fixed test set: one canvas per digit, in order (the first ``num`` digits if given).

    Sizes and positions come from a generator seeded with ``seed``, drawn for all canvases
    before rendering, so the result does not depend on the chunking, and the set for
    ``num=n`` is the first n canvases of any larger one. Returns
    x (N, C, H, W) float32 and y (N,) int64 on the CPU. Distractors come from ``digits``
    only, so a test set's clutter is cut from test digits.
    """
    n = len(digits) if num is None else int(num)
    if not 1 <= n <= len(digits):
        raise ConfigError(f"test set: num must be between 1 and the {len(digits)} digits "
                          f"available, got {num}")
    g = torch.Generator().manual_seed(int(seed))
    sizes, centres = draw_placement(n, spec, g)  # (N,), (N, 2)
    clutter = (draw_clutter(n, spec, len(digits), digits.images.shape[-1], g)
               if spec.distractors else None)  # (N, D, 5)
    H = spec.canvas_size
    C = digits.channels
    x = torch.empty(n, C, H, H)  # (N, C, H, W)
    for start in range(0, n, _TEST_CHUNK):
        stop = min(n, start + _TEST_CHUNK)
        x[start:stop] = render(digits.images[start:stop], sizes[start:stop],
                               centres[start:stop], H)
        if clutter is not None:
            add_clutter(x[start:stop], digits.images, clutter[start:stop],
                        spec.distractor_size)
    return x, digits.labels[:n].clone()
