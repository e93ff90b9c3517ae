"""The user's own images: an image folder or arrays in a ``.npz`` file, as a :class:`DigitSet`
of (N, C, S, S) uint8 images that then play the digit's part on the canvas.

Image folder: ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``, or ``ROOT/<class>/*``
split deterministically (a fixed fifth of each class is the test split). Class names are
the folder names, in sorted order. Files are read by Pillow, converted to grey (C = 1) or
RGB (C = 3). Arrays: ``x`` (N, H, W) or (N, C, H, W), uint8 or float (in [0, 1], or whole
numbers 0..255 when any value exceeds 1), ``y`` (N,) integers, optionally
``x_test``/``y_test`` (else the same deterministic split) and ``classes`` (names). Every
image is brought to S x S (S: the largest digit side, ``digit_max``): ``pad`` shrinks it
to fit if needed, keeping its aspect, and pads it with black, centred; ``resize``
stretches it. Every problem is one :class:`~wsram.errors.DataError` naming the file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from wsram.digits import DigitSet
from wsram.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_SPLIT_SEED = 20140624  # the deterministic train/test split of one folder or one array
_TEST_FRACTION = 0.2


def fit_image(img: Tensor, side: int, fit: str) -> Tensor:
    """One image (C, h, w) uint8 to (C, side, side) uint8: ``resize`` (stretch) or ``pad``
    (shrink to fit keeping the aspect if larger, then centre on black)."""
    C, h, w = img.shape
    if fit == "resize":
        size = (side, side)
    else:
        k = min(1.0, side / max(h, w))
        size = (max(1, round(h * k)), max(1, round(w * k)))
    if size != (h, w):
        img = F.interpolate(img[None].float(), size=size, mode="bilinear", antialias=True,
                            align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
    if fit == "resize":
        return img
    out = torch.zeros(C, side, side, dtype=torch.uint8)
    top, left = (side - size[0]) // 2, (side - size[1]) // 2
    out[:, top:top + size[0], left:left + size[1]] = img
    return out


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """A fixed stratified split of one labelled set: per class a seeded fifth (at least one
    of two or more) is test, the rest train; independent of any global random state."""
    rng = np.random.RandomState(_SPLIT_SEED)
    out: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = max(1, round(_TEST_FRACTION * len(idx))) if len(idx) >= 2 else 0
        out["test"].append(idx[:n_test])
        out["train"].append(idx[n_test:])
    return {k: np.sort(np.concatenate(v)) for k, v in out.items()}


def data_signature(path: str | Path) -> tuple:
    """What changes when the data change: the path, and each file's name, size and
    modification time (a stat per file, no reading)."""
    path = Path(path).resolve()
    if not path.is_dir():
        st = path.stat() if path.exists() else None
        return (str(path), st and (st.st_size, st.st_mtime_ns))
    files = []
    for p in sorted(path.rglob("*")):
        if p.is_file():
            st = p.stat()
            files.append((str(p.relative_to(path)), st.st_size, st.st_mtime_ns))
    return (str(path), tuple(files))


# --------------------------------------------------------------------------------------
# Image folders


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: Path, channels: int) -> Tensor:
    """One image file as (C, h, w) uint8, C = 1 (grey) or 3 (RGB)."""
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot be read as an image ({err})") from err
    arr = np.array(im, dtype=np.uint8)  # a copy: writable, owned by the tensor
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _read_class_folders(root: Path, classes: list[str], channels: int, side: int, fit: str,
                        ) -> tuple[list[Path], Tensor, Tensor]:
    files: list[Path] = []
    labels: list[int] = []
    for c, name in enumerate(classes):
        found = _image_files(root / name)
        if not found:
            raise DataError(f"{root / name}: class {name!r} has no images "
                            f"({', '.join(IMAGE_SUFFIXES)})")
        files += found
        labels += [c] * len(found)
    images = torch.stack([fit_image(read_image(f, channels), side, fit) for f in files])
    return files, images, torch.tensor(labels, dtype=torch.int64)


def folder_classes(root: str | Path) -> list[str]:
    """The class names of an image folder (its training class folders), sorted."""
    root = Path(root)
    if root.is_file():
        hint = "; for arrays give --source npz" if root.suffix == ".npz" else ""
        raise DataError(f"{root}: a file, not an image folder (expected <class>/*.png "
                        f"folders inside it){hint}")
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    base = root / "train" if (root / "train").is_dir() else root
    classes = [p.name for p in _class_folders(base)]
    if not classes:
        raise DataError(f"{base}: empty: expected one folder of images per class "
                        f"({root}/train/<class>/*.png and {root}/test/<class>/*.png, "
                        f"or {root}/<class>/*.png)")
    return classes


def _has_colour(path: Path) -> bool:
    """Whether an image file holds colour: a colour mode with channels that differ."""
    try:
        with Image.open(path) as im:
            if im.mode in ("1", "L", "LA", "I", "I;16", "F"):
                return False
            arr = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot be read as an image ({err})") from err
    return bool((arr[..., 0] != arr[..., 1]).any() or (arr[..., 1] != arr[..., 2]).any())


def folder_shape(root: str | Path) -> dict[str, int]:
    """What an image folder says of itself: its classes (the training class folders) and
    its channels (3 if any image, of either split, has colour; else 1)."""
    root = Path(root)
    classes = folder_classes(root)
    files = [f for d in root.rglob("*") if d.is_dir() for f in _image_files(d)]
    return {"num_classes": len(classes),
            "channels": 3 if any(_has_colour(f) for f in files) else 1}


def npz_shape(path: str | Path) -> dict[str, int]:
    """What arrays in a ``.npz`` say of themselves: channels (x's second axis, 1 for
    N x H x W) and classes (the names given, else the largest label + 1, which a
    ``num_classes`` given may exceed: ``min_classes``)."""
    data = _read_npz(Path(path))
    if "x" not in data or "y" not in data:
        raise DataError(f"{Path(path).name}: needs arrays 'x' and 'y'; found "
                        f"{', '.join(sorted(data)) or 'none'}")
    x = data["x"]
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] > 4:
        raise DataError(f"{Path(path).name}: x looks channels-last {x.shape}; give N x C x H x "
                        "W (e.g. x.transpose(0, 3, 1, 2))")
    labels = [data[k] for k in ("y", "y_test") if k in data and data[k].size]
    if not labels:
        raise DataError(f"{Path(path).name}: y holds no labels")
    top = max(int(y.max()) for y in labels if np.issubdtype(y.dtype, np.integer)) \
        if all(np.issubdtype(y.dtype, np.integer) for y in labels) else 1
    out = {"channels": int(x.shape[1]) if x.ndim == 4 else 1}
    if "classes" in data:
        out["num_classes"] = len(data["classes"])
    else:
        out["min_classes"] = max(top + 1, 2)
    return out


def load_folder(root: str | Path, split: str, channels: int, side: int, fit: str,
                num_classes: int) -> DigitSet:
    """The ``train`` or ``test`` split of an image folder (module docstring)."""
    root = Path(root)
    classes = folder_classes(root)
    if len(classes) != num_classes:
        raise DataError(f"{root}: {len(classes)} classes ({', '.join(classes)}) but "
                        f"num_classes is {num_classes}; set --num-classes {len(classes)}")
    if (root / "train").is_dir():
        base = root / split
        if not base.is_dir():
            raise DataError(f"{base}: missing (the folder has train/, so it needs test/ too)")
        here = [p.name for p in _class_folders(base)]
        extra = sorted(set(here) - set(classes))
        if extra:
            raise DataError(f"{base / extra[0]}: class {extra[0]!r} is not among the "
                            f"training classes ({', '.join(classes)})")
        if not here:
            raise DataError(f"{base}: empty: expected one folder of images per class")
        names = [c for c in classes if c in here]
        files, images, local = _read_class_folders(base, names, channels, side, fit)
        labels = torch.tensor([classes.index(names[i]) for i in local.tolist()])
        return DigitSet(images, labels, classes)
    files, images, labels = _read_class_folders(root, classes, channels, side, fit)
    idx = torch.from_numpy(split_indices(labels.numpy())[split])
    return DigitSet(images[idx], labels[idx], classes)


# --------------------------------------------------------------------------------------
# Arrays


def _to_uint8(x: np.ndarray, name: str, key: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{name}: {key} must be uint8 or float, got {x.dtype}")
    bad = ~np.isfinite(x)
    if bad.any():
        i = int(np.argwhere(bad)[0][0])
        raise DataError(f"{name}: {key} has NaN or infinite pixels (first in image {i})")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 255:
        raise DataError(f"{name}: {key} pixels must be in [0, 1] or 0..255, found "
                        f"{lo:g}..{hi:g}")
    if 1 < hi and not np.array_equal(x, np.rint(x)):
        # neither [0, 1] nor whole numbers 0..255: a scale the user did not say
        raise DataError(f"{name}: {key} float pixels must be in [0, 1] or whole numbers "
                        f"0..255, found {lo:g}..{hi:g}")
    scale = 255.0 if hi <= 1 else 1.0
    return np.rint(x.astype(np.float64) * scale).astype(np.uint8)


def _arrays(data: dict[str, np.ndarray], xk: str, yk: str, name: str, channels: int,
            num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if xk not in data or yk not in data:
        raise DataError(f"{name}: needs arrays {xk!r} and {yk!r}; found "
                        f"{', '.join(sorted(data)) or 'none'}")
    x, y = data[xk], data[yk]
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or 0 in x.shape:
        raise DataError(f"{name}: {xk} must be N x H x W or N x C x H x W, got shape "
                        f"{data[xk].shape}")
    if x.shape[1] != channels:
        raise DataError(f"{name}: {xk} has {x.shape[1]} channels but channels is {channels}; "
                        f"set --channels {x.shape[1]}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name}: {yk} must be N integers, got {y.dtype} of shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{name}: {xk} has {len(x)} images but {yk} has {len(y)} labels")
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        raise DataError(f"{name}: {yk} labels must be 0..{num_classes - 1} (num_classes), "
                        f"found {int(y[bad[0]])} at index {int(bad[0])}")
    return _to_uint8(x, name, xk), y.astype(np.int64)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a .npz file; for an image folder give "
                        "--source folder")
    if not path.is_file():
        raise DataError(f"{path}: no such .npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: cannot be read as a .npz file ({err})") from err


def load_npz(path: str | Path, split: str, channels: int, side: int, fit: str,
             num_classes: int) -> DigitSet:
    """The ``train`` or ``test`` split of arrays in a ``.npz`` file (module docstring)."""
    path = Path(path)
    data = _read_npz(path)
    classes = None
    if "classes" in data:
        names = data["classes"]
        if names.ndim != 1 or len(names) != num_classes:
            raise DataError(f"{path}: classes must name the {num_classes} classes, got "
                            f"shape {names.shape}")
        classes = [str(n) for n in names]
    if "x_test" in data or "y_test" in data:
        x, y = _arrays(data, *(("x", "y") if split == "train" else ("x_test", "y_test")),
                       path.name, channels, num_classes)
    else:
        x, y = _arrays(data, "x", "y", path.name, channels, num_classes)
        idx = split_indices(y)[split]
        x, y = x[idx], y[idx]
    if len(x) == 0:
        raise DataError(f"{path}: no {split} images")
    images = torch.stack([fit_image(torch.from_numpy(np.ascontiguousarray(im)), side, fit)
                          for im in x])
    return DigitSet(images, torch.from_numpy(y), classes)
