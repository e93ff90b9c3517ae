"""The user's own data (image folders, .npz arrays, RGB), cluttered canvases and
``wsram predict``: end to end through the CLI, and every bad input as one line, exit 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from wsram.classification.data import CanvasGenerator, CanvasSpec, DigitSet, make_test_set
from wsram.classification.data.own import fit_image, load_npz, split_indices

PIL = pytest.importorskip("PIL.Image")

COLOURS = {"cat": (220, 40, 40), "dog": (40, 60, 220)}
# A tiny model and budget: what is tested is the path through every command, not accuracy.
TINY = ["--canvas-size", "16", "--digit-min", "16", "--digit-max", "16", "--glimpses", "2",
        "--patch", "4", "--scales", "0.5", "--hidden", "16", "--context-size", "4",
        "--steps", "3", "--batch-size", "8", "--samples", "2", "--eval-every", "0",
        "--diag-every", "0", "--eval-size", "4", "--eval-samples", "2", "--holdout-every", "4",
        "--threads", "1", "--no-progress"]


def write_png(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    """A small RGB picture: a coloured square on black, of ``size`` (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = PIL.new("RGB", size)
    w, h = size
    im.paste(colour, (w // 4, h // 4, w - w // 4, h - h // 4))
    im.save(path)
    return path


def rgb_folder(root: Path, train: int = 6, test: int = 2) -> Path:
    """ROOT/train/<class>/*.png and ROOT/test/<class>/*.png, RGB, of varied sizes."""
    for split, n in (("train", train), ("test", test)):
        for name, colour in COLOURS.items():
            for i in range(n):
                write_png(root / split / name / f"{i}.png", (10 + i, 14 - i % 3), colour)
    return root


def arrays(path: Path, n: int = 24, **over) -> Path:
    """A .npz of n RGB float images (n, 3, 12, 12) in [0, 1] of three classes."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = rng.random((n, 3, 12, 12)).astype(np.float32) * 0.2
    x[np.arange(n), y] += 0.7  # the class is the brightest channel
    data = {"x": x, "y": y, **over}
    np.savez(path, **data)
    return path


@pytest.mark.slow
def test_rgb_folder_trains_evaluates_shows_and_predicts(tmp_path: Path, cli) -> None:
    root = rgb_folder(tmp_path / "pets")
    run = tmp_path / "run"
    code, out, err = cli("train", "--run-dir", str(run), "--source", "folder", "--data-dir",
                         str(root), "--channels", "3", "--num-classes", "2", "--fit", "resize",
                         "--json", *TINY)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["step"] == 3
    code, out, err = cli("evaluate", str(run))
    assert code == 0, err
    res = json.loads((run / "eval.json").read_text())
    assert res["test_images"] == 4 and 0 <= res["test_error_mc"] <= 1
    code, out, err = cli("show", str(run), "--num", "4")
    assert code == 0 and (run / "glimpses.png").stat().st_size > 0
    cat = root / "test" / "cat" / "0.png"
    code, out, err = cli("predict", str(run), str(cat), "--json", "--top-k", "2")
    assert code == 0, err
    (p,) = json.loads(out)
    assert p["predicted"] in COLOURS and {n for n, _ in p["top_mc"]} == set(COLOURS)
    assert sum(v for _, v in p["top_mc"]) == pytest.approx(1, abs=1e-5)
    assert sum(v for _, v in p["top_deterministic"]) == pytest.approx(1, abs=1e-5)
    assert len(p["locations"]) == 2 and Path(p["png"]).parent == run / "predictions"
    with PIL.open(p["png"]) as im:
        assert im.size[0] > 100  # a drawn figure, not the 16-pixel canvas


@pytest.mark.slow
def test_predict_from_python_on_tensors_and_files(tmp_path: Path, cli) -> None:
    from wsram.classification.predict import predict
    from wsram.registry import load_run

    root = rgb_folder(tmp_path / "pets")
    run = tmp_path / "run"
    assert cli("train", "--run-dir", str(run), "--source", "folder", "--data-dir", str(root),
               "--channels", "3", "--num-classes", "2", *TINY)[0] == 0
    loaded = load_run(run)
    files = [root / "test" / "dog" / "1.png", root / "test" / "cat" / "1.png"]
    by_file = predict(loaded, files, top_k=1)
    assert [p.source for p in by_file] == [str(f) for f in files]
    assert all(p.png is None and p.predicted in COLOURS for p in by_file)
    # The same pictures as canvases (pad: a 11 x 13 picture centred on a black 16 x 16)
    canvases = torch.stack([fit_image(torch.from_numpy(np.asarray(PIL.open(f)).copy())
                                      .permute(2, 0, 1), 16, "pad") for f in files])
    by_tensor = predict(run, canvases, top_k=1, out_dir=tmp_path / "png")
    for a, b in zip(by_file, by_tensor, strict=True):
        assert a.top_mc[0][0] == b.top_mc[0][0]
        assert a.top_mc[0][1] == pytest.approx(b.top_mc[0][1], abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["tensor0.png", "tensor1.png"]
    with pytest.raises(Exception, match="expected canvases of shape"):
        predict(loaded, torch.zeros(2, 1, 16, 16))
    # A run trained on a GPU (its config says so) predicts here, on the CPU.
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("device: cpu", "device: cuda"))
    on_cpu = predict(run, files, top_k=1)
    assert [p.top_mc for p in on_cpu] == [p.top_mc for p in by_file]


@pytest.mark.slow
def test_npz_trains_evaluates_shows_and_predicts(tmp_path: Path, cli) -> None:
    data = arrays(tmp_path / "colours.npz", classes=np.array(["red", "green", "blue"]))
    run = tmp_path / "run"
    code, out, err = cli("train", "--run-dir", str(run), "--source", "npz", "--data-dir",
                         str(data), "--channels", "3", "--num-classes", "3", *TINY)
    assert code == 0, err
    assert cli("evaluate", str(run))[0] == 0
    assert json.loads((run / "eval.json").read_text())["test_images"] == 6  # a fifth per class
    assert cli("show", str(run), "--num", "3")[0] == 0
    code, out, err = cli("cost", str(run), "--seconds", "0.05", "--json", "--threads", "1")
    assert code == 0, err
    assert json.loads(out)[0]["input_values"] == 3 * (2 * 4 * 4 + 4 * 4)  # C x (N G^2 + ctx^2)
    picture = write_png(tmp_path / "blue.png", (16, 16), (0, 0, 255))
    code, out, err = cli("predict", str(run), str(picture), "--out", str(tmp_path / "p"))
    assert code == 0, err
    assert out.splitlines()[0].split(": ")[1] in ("red", "green", "blue")
    assert "deterministic policy:" in out and (tmp_path / "p" / "blue.png").is_file()


def test_npz_grey_uint8_with_its_own_test_split(tmp_path: Path) -> None:
    x = np.zeros((5, 20, 10), np.uint8)
    x[:, 5:15, 2:8] = 200
    path = tmp_path / "a.npz"
    np.savez(path, x=x, y=np.array([0, 1, 0, 1, 1]), x_test=x[:2], y_test=np.array([1, 0]))
    train = load_npz(path, "train", channels=1, side=10, fit="pad", num_classes=2)
    test = load_npz(path, "test", channels=1, side=10, fit="pad", num_classes=2)
    assert train.images.shape == (5, 1, 10, 10) and test.labels.tolist() == [1, 0]
    # pad keeps the aspect: a 20 x 10 picture becomes 10 x 5, centred on black
    assert train.images[0, 0, :, :2].sum() == 0 and train.images[0, 0, :, 3:7].sum() > 0


def test_deterministic_split_is_stratified_and_fixed() -> None:
    y = np.repeat(np.arange(3), 10)
    a, b = split_indices(y), split_indices(y)
    assert np.array_equal(a["test"], b["test"])
    assert np.bincount(y[a["test"]]).tolist() == [2, 2, 2]
    assert sorted(np.concatenate([a["train"], a["test"]]).tolist()) == list(range(30))


def _truncated(path: Path) -> Path:
    write_png(path, (40, 40), (200, 100, 50))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_FOLDERS = {
    "empty folder": (lambda r: r.mkdir(parents=True), "empty"),
    "class without images": (lambda r: (rgb_folder(r), [f.unlink() for f in
                                                        (r / "train" / "cat").iterdir()]),
                             "class 'cat' has no images"),
    "unreadable image": (lambda r: (rgb_folder(r), (r / "train" / "cat" / "9.png")
                                    .write_bytes(b"not a picture")),
                         "9.png: cannot be read as an image"),
    "truncated image": (lambda r: (rgb_folder(r), _truncated(r / "train" / "dog" / "9.png")),
                        "9.png: cannot be read as an image"),
}


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_bad_image_folder_is_one_line_naming_the_file(tmp_path: Path, cli, case: str) -> None:
    make, message = BAD_FOLDERS[case]
    root = tmp_path / "pets"
    make(root)
    run = tmp_path / "run"
    code, out, err = cli("train", "--run-dir", str(run), "--source", "folder", "--data-dir",
                         str(root), "--channels", "3", "--num-classes", "2", *TINY)
    assert code == 2 and err.count("\n") == 1 and err.startswith("wsram: error: ")
    assert message in err and str(root) in err
    assert not (run / "config.yaml").exists()  # nothing half-made that needs --overwrite


BAD_ARRAYS = {
    "mismatched lengths": (dict(y=np.zeros(23, np.int64)), "x has 24 images but y has 23"),
    "labels out of range": (dict(y=np.arange(24) % 4), "labels go up to 3 but --num-classes is 3"),
    "NaN pixels": (dict(x=np.full((24, 3, 12, 12), np.nan, np.float32)), "NaN"),
    "floats of no stated scale": (dict(x=np.full((24, 3, 12, 12), 1.5, np.float32)),
                                  "in [0, 1] or whole numbers 0..255"),
}


@pytest.mark.parametrize("case", list(BAD_ARRAYS))
def test_bad_arrays_are_one_line_naming_the_file(tmp_path: Path, cli, case: str) -> None:
    over, message = BAD_ARRAYS[case]
    data = arrays(tmp_path / "bad.npz", **over)
    code, out, err = cli("train", "--run-dir", str(tmp_path / "run"), "--source", "npz",
                         "--data-dir", str(data), "--channels", "3", "--num-classes", "3",
                         *TINY)
    assert code == 2 and err.count("\n") == 1 and "bad.npz" in err and message in err


def test_bad_picture_for_predict_leaves_the_run_as_it_was(tmp_path: Path, cli) -> None:
    root = rgb_folder(tmp_path / "pets")
    run = tmp_path / "run"
    assert cli("train", "--run-dir", str(run), "--source", "folder", "--data-dir", str(root),
               "--channels", "3", "--num-classes", "2", *TINY)[0] == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    code, out, err = cli("predict", str(run), str(bad))
    assert code == 2 and err.count("\n") == 1 and "broken.jpg" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


# --------------------------------------------------------------------------------------
# Clutter


def _constant_digits(values: list[int], side: int = 28) -> DigitSet:
    images = torch.tensor(values, dtype=torch.uint8)[:, None, None].expand(-1, side, side)
    return DigitSet(images.contiguous(), torch.arange(len(values)) % 10)


def test_clutter_is_cut_from_the_given_digits_only() -> None:
    spec = CanvasSpec(60, 20, 20, distractors=4, distractor_size=8)
    digits = _constant_digits([51, 102])  # two "digits", two grey levels
    x, _ = make_test_set(digits, spec)
    plain, _ = make_test_set(digits, CanvasSpec(60, 20, 20))
    added = x > plain + 1e-6
    assert added.any()  # distractors lie outside the digit
    levels = {round(v * 255) for v in x[added].tolist()}
    assert levels <= {51, 102}  # every pasted pixel is a pixel of these digits
    assert (x >= plain - 1e-6).all()  # pasted by maximum: the digit is never darkened
    # the training stream: the same, and resumable from its state
    g = CanvasGenerator(_constant_digits([255]), spec, seed=3)
    state = g.state_dict()
    a, _ = g.sample(5)
    g.load_state_dict(state)
    b, _ = g.sample(5)
    assert torch.equal(a, b)


def test_no_distractors_leaves_the_stream_as_before() -> None:
    digits = _constant_digits([200] * 10)
    a, _ = CanvasGenerator(digits, CanvasSpec(40, 10, 20), seed=1).sample(4)
    b, _ = CanvasGenerator(digits, CanvasSpec(40, 10, 20, 0, 8), seed=1).sample(4)
    c, _ = CanvasGenerator(digits, CanvasSpec(40, 10, 20, 2, 8), seed=1).sample(4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, torch.minimum(a, c))  # clutter only adds


def test_rgb_canvases_keep_their_channels() -> None:
    images = torch.zeros(3, 3, 10, 10, dtype=torch.uint8)
    images[:, 0] = 255  # red
    digits = DigitSet(images, torch.arange(3))
    x, _ = make_test_set(digits, CanvasSpec(20, 10, 10, distractors=2, distractor_size=4))
    assert x.shape == (3, 3, 20, 20) and x[:, 0].sum() > 0 and x[:, 1:].sum() == 0


def test_overwrite_with_bad_data_keeps_the_old_run(tmp_path: Path, cli) -> None:
    root = rgb_folder(tmp_path / "pets")
    run = tmp_path / "run"
    args = ["--source", "folder", "--data-dir", str(root), "--channels", "3",
            "--num-classes", "2", *TINY]
    assert cli("train", "--run-dir", str(run), *args)[0] == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    (root / "train" / "dog" / "0.png").write_bytes(b"broken")
    code, out, err = cli("train", "--run-dir", str(run), "--overwrite", *args)
    assert code == 2 and "0.png: cannot be read as an image" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_one_folder_is_split_a_fifth_per_class_for_test(tmp_path: Path) -> None:
    from wsram.classification.data.own import load_folder

    for name, colour in COLOURS.items():
        for i in range(5):
            write_png(tmp_path / name / f"{i}.jpg", (8, 8), colour)
    (tmp_path / "notes.txt").write_text("not a class")  # files beside the classes: ignored
    train = load_folder(tmp_path, "train", channels=1, side=8, fit="pad", num_classes=2)
    test = load_folder(tmp_path, "test", channels=1, side=8, fit="pad", num_classes=2)
    assert train.classes == test.classes == ["cat", "dog"]
    assert sorted(test.labels.tolist()) == [0, 1]
    assert sorted(train.labels.tolist()) == [0] * 4 + [1] * 4
    assert train.images.shape == (8, 1, 8, 8)  # grey: RGB files converted
    again = load_folder(tmp_path, "test", channels=1, side=8, fit="pad", num_classes=2)
    assert torch.equal(again.images, test.images)


def test_classes_and_channels_come_from_the_data(tmp_path: Path, cli) -> None:
    """An RGB folder trains as RGB with its two classes without being told; a grey folder
    as grey; a value given that disagrees, a folder without --source folder and a file
    given as the folder are one line each saying what was found and what to give."""
    import yaml

    rgb = rgb_folder(tmp_path / "pets")
    code, _, err = cli("train", "--run-dir", str(tmp_path / "r"), "--source", "folder",
                       "--data-dir", str(rgb), *TINY)
    assert code == 0, err
    assert "2 classes (cat, dog), 3 channels; " in err
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert (saved["channels"], saved["num_classes"]) == (3, 2)
    grey = tmp_path / "grey"
    for name in ("a", "b", "c"):
        for i in range(4):
            write_png(grey / name / f"{i}.png", (12, 12), (90 + 40 * i,) * 3)
    code, _, err = cli("train", "--run-dir", str(tmp_path / "g"), "--source", "folder",
                       "--data-dir", str(grey), *TINY)
    assert code == 0 and "3 classes (a, b, c), 1 channel; " in err, err
    code, _, err = cli("train", "--run-dir", str(tmp_path / "grey-of-rgb"), "--source",
                       "folder", "--data-dir", str(rgb), "--channels", "1", *TINY)
    assert code == 0 and "2 classes (cat, dog), 1 channel; " in err, err  # converted, as asked
    for args, message in (
            (["--source", "npz", "--data-dir", str(arrays(tmp_path / "c.npz")), "--channels",
              "1"], "holds 3 channels (x's channel axis) but --channels is 1"),
            (["--source", "folder", "--data-dir", str(grey), "--num-classes", "2"],
             "holds 3 classes but --num-classes is 2"),
            (["--data-dir", str(rgb)], "(for an image folder of your own, give --source folder)"),
            (["--source", "folder", "--data-dir", str(arrays(tmp_path / "a.npz"))],
             "a file, not an image folder"),
            (["--source", "npz", "--data-dir", str(rgb)], "a folder, not a .npz file")):
        code, _, err = cli("train", "--run-dir", str(tmp_path / "x"), *args, *TINY)
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)
        assert not (tmp_path / "x").exists()


def test_a_stack_of_runs_on_own_arrays_takes_its_shape_from_the_data(tmp_path: Path,
                                                                     cli) -> None:
    """``--seeds`` on a .npz: every run of the stack gets the data's channels and classes;
    a parent folder of the user's own files is refused before anything is written."""
    import yaml

    data = arrays(tmp_path / "a.npz")
    code, _, err = cli("train", "--run-dir", str(tmp_path / "s"), "--source", "npz",
                       "--data-dir", str(data), "--seeds", "0", "1", *TINY)
    assert code == 0, err
    for seed in (0, 1):
        saved = yaml.safe_load((tmp_path / "s" / f"lr0.001-seed{seed}" / "config.yaml")
                               .read_text())
        assert (saved["channels"], saved["num_classes"]) == (3, 3)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, _, err = cli("train", "--run-dir", str(mine), "--source", "npz", "--data-dir",
                       str(data), "--seeds", "0", "1", *TINY)
    assert code == 2 and "holds files that are not wsram runs" in err, err
    assert os.listdir(mine) == ["notes.txt"]
