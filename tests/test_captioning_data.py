"""Tests of the captioning data and metrics: digit scenes and their captions, Karpathy
split files, the tokeniser and vocabulary, and BLEU/CIDEr through pycocoevalcap."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsram.captioning import (
    DIGIT_WORDS,
    REGIONS,
    SPECIALS,
    SceneSpec,
    Vocabulary,
    corpus_bleu,
    load_image,
    load_karpathy,
    make_scene_splits,
    make_scenes,
    tokenize,
)
from wsram.digits import load_digits, render
from wsram.errors import CheckpointError, ConfigError, DataError

HAVE_COCO = importlib.util.find_spec("pycocoevalcap") is not None
needs_coco = pytest.mark.skipif(
    not HAVE_COCO, reason="pycocoevalcap is not installed: pip install 'wsram[captioning]'")
HAVE_PIL = importlib.util.find_spec("PIL") is not None

SMALL = SceneSpec(num_train=240, num_val=80, num_test=80)


@pytest.fixture(scope="module")
def splits():
    return make_scene_splits(SMALL, seed=0)


# --------------------------------------------------------------------------------------
# Scenes


def parse_caption(caption: str) -> list[tuple[int, str, str]]:
    """What a caption says, read back from its words alone: every clause that holds a
    digit word gives (digit, size word, region); the region comes from the words
    top/bottom (row) and left/right (column), the middle when neither is present."""
    if ":" in caption:
        caption = caption.split(":", 1)[1]  # drop the "two digits:" count
    found = []
    for clause in re.split(r",| and | with ", caption):
        words = clause.split()
        digits = [w for w in words if w in DIGIT_WORDS]
        if not digits:
            continue
        assert len(digits) == 1, caption
        sizes = [w for w in words if w in ("small", "large")]
        assert len(sizes) == 1 and words[words.index(digits[0]) - 1] == sizes[0], caption
        row = "top" if "top" in words else "bottom" if "bottom" in words else ""
        col = "left" if "left" in words else "right" if "right" in words else ""
        region = f"{row} {col}".strip() or "centre"
        found.append((DIGIT_WORDS.index(digits[0]), sizes[0], region))
    return found


def test_same_seed_same_scenes_whatever_the_global_rng():
    torch.manual_seed(1)
    np.random.seed(1)
    a = make_scenes("val", SMALL, seed=3)
    torch.manual_seed(2)
    np.random.seed(2)
    torch.rand(10)
    b = make_scenes("val", SMALL, seed=3)
    assert torch.equal(a.images, b.images)
    assert a.captions == b.captions and a.objects == b.objects and a.sources == b.sources
    c = make_scenes("val", SMALL, seed=4)
    assert not torch.equal(a.images, c.images)
    assert a.captions != c.captions


def test_eval_splits_do_not_depend_on_train_size():
    bigger = SceneSpec(num_train=500, num_val=SMALL.num_val, num_test=SMALL.num_test)
    for split in ("val", "test"):
        a, b = make_scenes(split, SMALL, seed=0), make_scenes(split, bigger, seed=0)
        assert torch.equal(a.images, b.images) and a.captions == b.captions


def test_default_split_sizes():
    spec = SceneSpec()
    assert (spec.num_train, spec.num_val, spec.num_test) == (4000, 500, 500)
    sets = make_scene_splits(SceneSpec(num_train=40, num_val=30, num_test=20), seed=0)
    for split, n in (("train", 40), ("val", 30), ("test", 20)):
        s = sets[split]
        assert s.split == split and len(s) == n
        assert s.images.shape == (n, 1, 64, 64) and s.images.dtype == torch.float32
        assert len(s.captions) == len(s.objects) == len(s.boxes) == len(s.sources) == n
        assert 0.0 <= float(s.images.min()) and float(s.images.max()) <= 1.0


def test_splits_use_disjoint_digit_images(splits):
    def used(split: str) -> set[bytes]:
        pool = load_digits("train" if split == "train" else "test")
        return {pool.images[i].numpy().tobytes() for srcs in splits[split].sources
                for i in srcs}

    train, val, test = used("train"), used("val"), used("test")
    assert not train & val and not train & test and not val & test
    assert all(i % 2 == 0 for srcs in splits["val"].sources for i in srcs)
    assert all(i % 2 == 1 for srcs in splits["test"].sources for i in srcs)


@pytest.mark.parametrize("split", ["train", "test"])
def test_objects_match_the_layout(splits, split):
    s = splits[split]
    labels = load_digits("train" if split == "train" else "test").labels
    H, cell = SMALL.canvas_size, SMALL.canvas_size / 3
    counts = Counter()
    for objs, boxes, srcs in zip(s.objects, s.boxes, s.sources, strict=True):
        assert SMALL.min_digits <= len(objs) <= SMALL.max_digits
        counts[len(objs)] += 1
        assert len({r for _, _, r in objs}) == len(objs), "two digits share a region"
        for (digit, size, region), (side, x, y), i in zip(objs, boxes, srcs, strict=True):
            assert digit == int(labels[i])
            lo, hi = ((SMALL.large_min, SMALL.large_max) if size == "large"
                      else (SMALL.small_min, SMALL.small_max))
            assert lo - 1e-4 <= side <= hi + 1e-4
            assert side / 2 - 1e-4 <= x <= H - side / 2 + 1e-4
            assert side / 2 - 1e-4 <= y <= H - side / 2 + 1e-4
            assert REGIONS[int(y // cell) * 3 + int(x // cell)] == region
    assert set(counts) == {2, 3}
    sizes = Counter(size for objs in s.objects for _, size, _ in objs)
    assert sizes["small"] > 0.3 * sum(sizes.values()) and sizes["large"] > 0.3 * sum(
        sizes.values())


def test_digits_never_share_a_pixel(splits):
    s = splits["val"]
    pool = load_digits("test")
    for n in range(40):
        sides = torch.tensor([b[0] for b in s.boxes[n]])
        centres = torch.tensor([[b[1], b[2]] for b in s.boxes[n]])
        alone = render(pool.images[s.sources[n]], sides, centres, SMALL.canvas_size)  # (k,1,H,W)
        inked = (alone > 0).sum(0)  # (1, H, W)
        assert int(inked.max()) <= 1, f"scene {n}: digits overlap"
        torch.testing.assert_close(alone.sum(0), s.images[n])


def test_captions_name_every_digit_with_its_size_and_region(splits):
    for s in splits.values():
        for caps, objs in zip(s.captions, s.objects, strict=True):
            assert len(caps) == SMALL.num_captions
            assert len(set(caps)) == len(caps), "references are not all different"
            for cap in caps:
                assert Counter(parse_caption(cap)) == Counter(objs), cap


def test_caption_wording():
    s = make_scenes("test", SceneSpec(min_digits=1, max_digits=1, num_captions=7,
                                      num_test=30), seed=0)
    words = {w for refs in s.tokens() for ref in refs for w in ref}
    assert words <= {"a", "an", "the", "is", "are", "there", "at", "in", "on", "of", "with",
                     "black", "image", "shown", "digit", "digits", "side", "corner", "top",
                     "bottom", "left", "right", "middle", "centre", "small", "large",
                     *DIGIT_WORDS}
    assert all(parse_caption(c) == o for caps, o in zip(s.captions, s.objects, strict=True)
               for c in caps)
    assert any(c.startswith("one digit:") for caps in s.captions for c in caps)


def test_four_digit_scenes():
    s = make_scenes("val", SceneSpec(min_digits=4, max_digits=4, num_val=30), seed=1)
    assert all(len(o) == 4 and len({r for *_, r in o}) == 4 for o in s.objects)
    assert all(Counter(parse_caption(c)) == Counter(o)
               for caps, o in zip(s.captions, s.objects, strict=True) for c in caps)


@pytest.mark.parametrize("kw", [
    dict(small_max=24.0), dict(large_max=40.0), dict(max_digits=5), dict(min_digits=0),
    dict(num_captions=8), dict(num_train=-1), dict(canvas_size=64.0), dict(region_margin=0.5),
])
def test_bad_scene_spec(kw):
    with pytest.raises(ConfigError):
        SceneSpec(**kw)


def test_bad_split_or_seed():
    with pytest.raises(ConfigError, match="split"):
        make_scenes("dev", SMALL)
    with pytest.raises(ConfigError, match="seed"):
        make_scenes("val", SMALL, seed=-1)


# --------------------------------------------------------------------------------------
# Karpathy split files


def tiny_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if HAVE_PIL:
        from PIL import Image

        Image.new("RGB", (6, 4), (255, 0, 0)).save(path)
    else:
        path.write_bytes(b"")  # the loader only checks that the file exists


def entry(name: str, split: str, *caps: str, **extra) -> dict:
    sents = [{"tokens": tokenize(c), "raw": c} for c in caps]
    return {"filename": name, "split": split, "sentences": sents, **extra}


def fixture_data() -> dict:
    return {"dataset": "flickr8k", "images": [
        entry("a.jpg", "train", "A dog runs.", "A brown dog is running"),
        entry("b.jpg", "val", "Two children play."),
        entry("c.jpg", "test", "A man rides a bike.", "Someone cycling"),
        entry("d.jpg", "restval", "A cat sleeps."),
    ]}


def write_fixture(root: Path, data: dict | None = None, images: bool = True) -> tuple[Path,
                                                                                       Path]:
    data = fixture_data() if data is None else data
    path = root / "dataset_flickr8k.json"
    path.write_text(json.dumps(data))
    image_dir = root / "Images"
    image_dir.mkdir(exist_ok=True)
    if images:
        for e in data["images"]:
            tiny_image(image_dir / e.get("filepath", "") / e["filename"])
    return path, image_dir


@pytest.mark.parametrize("split, names", [("train", ["a.jpg", "d.jpg"]), ("val", ["b.jpg"]),
                                          ("test", ["c.jpg"]), ("restval", ["d.jpg"])])
def test_karpathy_splits(tmp_path, split, names):
    path, image_dir = write_fixture(tmp_path)
    items = load_karpathy(path, image_dir, split)
    assert [it.image_path for it in items] == [image_dir / n for n in names]
    assert all(it.image_path.is_file() for it in items)
    by_name = {it.image_path.name: it for it in items}
    if "a.jpg" in by_name:
        assert by_name["a.jpg"].captions == [["a", "dog", "runs"], ["a", "brown", "dog", "is",
                                                                     "running"]]
        assert by_name["a.jpg"].split == "train"
    if "d.jpg" in by_name:
        assert by_name["d.jpg"].split == "restval"


def test_karpathy_restval_can_stay_out_of_train(tmp_path):
    path, image_dir = write_fixture(tmp_path)
    items = load_karpathy(path, image_dir, "train", restval_as_train=False)
    assert [it.image_path.name for it in items] == ["a.jpg"]


def test_karpathy_coco_filepath_and_raw_fallback(tmp_path):
    data = {"images": [
        entry("COCO_val2014_1.jpg", "test", "x", filepath="val2014"),
        {"filename": "2.jpg", "split": "test", "sentences": [{"raw": "A Dog's ball, red."}]},
    ]}
    data["images"][0]["sentences"] = [{"tokens": ["a", "bus"]}]
    path, image_dir = write_fixture(tmp_path, data)
    items = load_karpathy(path, image_dir, "test")
    assert items[0].image_path == image_dir / "val2014" / "COCO_val2014_1.jpg"
    assert items[0].captions == [["a", "bus"]]
    assert items[1].captions == [["a", "dogs", "ball", "red"]]


def test_raw_tokenises_like_karpathy_tokens():
    raw = "A child in a pink dress is climbing up a set of stairs in an entry way ."
    assert tokenize(raw) == ["a", "child", "in", "a", "pink", "dress", "is", "climbing", "up",
                             "a", "set", "of", "stairs", "in", "an", "entry", "way"]


def _set(i: int, key: str, value):
    def edit(d):
        d["images"][i][key] = value
    return edit


def _drop(i: int, key: str):
    def edit(d):
        del d["images"][i][key]
    return edit


def _sentence(i: int, j: int, value):
    def edit(d):
        d["images"][i]["sentences"][j] = value
    return edit


MALFORMED = {
    "no filename": (_drop(1, "filename"), r"images\[1\] has no 'filename'"),
    "no split": (_drop(2, "split"), r"images\[2\] \('c.jpg'\) has no 'split'"),
    "no sentences": (_drop(0, "sentences"), r"images\[0\] \('a.jpg'\) has no 'sentences'"),
    "unknown split": (_set(2, "split", "dev"), r"images\[2\] \('c.jpg'\): unknown split 'dev'"),
    "split not a string": (_set(2, "split", 3), r"unknown split 3"),
    "filename not a string": (_set(0, "filename", 7), r"images\[0\]: 'filename' must be"),
    "filepath not a string": (_set(0, "filepath", []), r"'filepath' must be a string"),
    "sentences not a list": (_set(0, "sentences", "hi"), r"'sentences' must be a list"),
    "empty sentences": (_set(0, "sentences", []), r"\('a.jpg'\) has no sentences"),
    "sentence without tokens or raw": (_sentence(0, 1, {"sentid": 3}),
                                       r"\('a.jpg'\): sentences\[1\] has neither 'tokens' nor"),
    "tokens not strings": (_sentence(0, 0, {"tokens": ["a", 1]}),
                           r"sentences\[0\]: 'tokens' must be a list of strings"),
    "raw not a string": (_sentence(0, 0, {"raw": None}), r"'raw' must be a string"),
    "empty caption": (_sentence(0, 0, {"raw": " ..."}), r"sentences\[0\] is empty"),
    "sentence not an object": (_sentence(0, 0, "a dog"),
                               r"sentences\[0\] is a string, expected an object"),
    "entry not an object": (lambda d: d["images"].append([1]),
                            r"images\[4\] is an array, expected an object"),
    "images not a list": (lambda d: d.update(images={}), r"'images' is an object"),
    "no images": (lambda d: d.pop("images"), r"no 'images' key"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_karpathy_malformed_entries(tmp_path, case):
    edit, message = MALFORMED[case]
    data = fixture_data()
    path, image_dir = write_fixture(tmp_path, data)
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        load_karpathy(path, image_dir, "val")  # the whole file is checked, whatever split
    text = str(err.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert re.search(message, text), text


@pytest.mark.parametrize("content, message", [
    ('{"images": [', "not valid JSON: Expecting value at line 1 column 13"),
    ("", "empty file"),
    (b"\xff\xfe{}", "not UTF-8 text (byte 0)"),
    ("[1, 2]", "expected a JSON object with an 'images' list (Karpathy split format), "
               "found an array"),
])
def test_karpathy_not_a_split_file(tmp_path, content, message):
    path = tmp_path / "dataset_coco.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError) as err:
        load_karpathy(path, tmp_path, "train")
    assert str(err.value) == f"{path}: {message}"


def test_karpathy_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="no such file") as err:
        load_karpathy(tmp_path / "dataset_flickr8k.json", tmp_path, "train")
    assert "dataset_flickr8k.json" in str(err.value)
    with pytest.raises(DataError, match="not a regular file"):
        load_karpathy(tmp_path, tmp_path, "train")
    path, _ = write_fixture(tmp_path)
    with pytest.raises(DataError, match=r"Flickr8k_Dataset: image folder not found"):
        load_karpathy(path, tmp_path / "Flickr8k_Dataset", "test")


def test_karpathy_missing_images(tmp_path):
    path, image_dir = write_fixture(tmp_path)
    (image_dir / "a.jpg").unlink()
    (image_dir / "d.jpg").unlink()
    with pytest.raises(DataError) as err:
        load_karpathy(path, image_dir, "train")
    assert str(err.value) == (f"{path}: 2 of the 2 train images are missing under "
                              f"{image_dir}; the first is {image_dir / 'a.jpg'}")
    assert len(load_karpathy(path, image_dir, "test")) == 1  # other splits are complete
    items = load_karpathy(path, image_dir, "train", check_images=False)  # found lazily
    with pytest.raises(DataError, match=r"a.jpg: no such image file"):
        load_image(items[0].image_path, 8)


def test_karpathy_bad_split_argument(tmp_path):
    path, image_dir = write_fixture(tmp_path)
    with pytest.raises(ConfigError, match="split must be one of"):
        load_karpathy(path, image_dir, "dev")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=12)
WORDS = st.lists(st.sampled_from(["a", "dog", "runs"]) | st.text(max_size=5), max_size=4)
SENTENCE = st.one_of(
    st.fixed_dictionaries({"tokens": WORDS}, optional={"raw": st.text(max_size=12)}),
    st.fixed_dictionaries({"raw": st.sampled_from(["A dog.", "..."]) | st.text(max_size=12)}),
    st.fixed_dictionaries({}, optional={"tokens": WORDS | JSON, "raw": JSON}))
PLAUSIBLE_ENTRY = st.fixed_dictionaries(
    {"filename": st.sampled_from(["a.jpg", "b.jpg"]),  # only a.jpg exists
     "split": st.sampled_from(["train", "val", "test", "restval"]),
     "sentences": st.lists(SENTENCE, min_size=1, max_size=3)},
    optional={"filepath": st.sampled_from(["", "sub"]) | JSON})
ENTRY = PLAUSIBLE_ENTRY | st.dictionaries(
    st.sampled_from(["filename", "filepath", "split", "sentences", "imgid"]),
    st.sampled_from(["a.jpg", "", "train", "x"]) | st.lists(SENTENCE, max_size=2) | JSON,
    max_size=5)
SPLIT_FILE = st.one_of(JSON, st.fixed_dictionaries({"images": st.lists(PLAUSIBLE_ENTRY,
                                                                       max_size=3)}),
                       st.fixed_dictionaries({"images": st.lists(ENTRY | JSON, max_size=4)}))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=SPLIT_FILE, split=st.sampled_from(["train", "val", "test", "restval"]),
       check=st.booleans())
@pytest.mark.slow
def test_karpathy_loader_only_returns_or_raises_data_error(data, split, check):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "a.jpg").write_bytes(b"")
        path = root / "dataset.json"
        path.write_text(json.dumps(data))
        try:
            items = load_karpathy(path, root, split, check_images=check)
        except DataError as err:
            assert str(err).startswith(str(path)) and "\n" not in str(err)
            return
        for it in items:
            assert it.split in ("train", "val", "test", "restval")
            assert it.captions and all(c and all(isinstance(w, str) for w in c)
                                       for c in it.captions)


@pytest.mark.skipif(not HAVE_PIL, reason="Pillow is not installed")
def test_load_image(tmp_path):
    path = tmp_path / "x.png"
    tiny_image(path)
    x = load_image(path, (5, 7))
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.ones(5, 7))
    torch.testing.assert_close(x[1:], torch.zeros(2, 5, 7))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.jpg: not a readable image"):
        load_image(bad, 8)


def test_load_image_without_pillow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `import PIL` fail
    with pytest.raises(DataError, match="pip install pillow"):
        load_image(tmp_path / "x.png", 8)


# --------------------------------------------------------------------------------------
# Tokeniser and vocabulary


def test_tokenize():
    assert tokenize("Two digits: a LARGE seven, top-left!") == ["two", "digits", "a", "large",
                                                               "seven", "topleft"]
    assert tokenize("  “Café”  —  déjà vu… ") == ["café", "déjà", "vu"]
    assert tokenize("...") == []


def test_vocabulary_specials_and_min_count():
    vocab = Vocabulary.build([["a", "dog"], ["a", "cat"], ["a", "dog", "runs"]], min_count=2)
    assert vocab.itos[:4] == list(SPECIALS) == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert vocab.itos[4:] == ["a", "dog"]  # by count, then alphabetical
    assert len(vocab) == 6 and "cat" not in vocab
    ids = vocab.encode(["a", "cat", "dog"])
    assert ids == [1, vocab.index("a"), 3, vocab.index("dog"), 2]
    assert vocab.decode(ids) == ["a", "<unk>", "dog"]
    assert Vocabulary.build([["b", "a"], ["a", "b"]]).itos[4:] == ["a", "b"]
    with pytest.raises(ConfigError):
        Vocabulary.build([], min_count=0)


def test_vocabulary_round_trip_on_scene_captions(splits):
    tokens = [t for refs in splits["train"].tokens() for t in refs]
    vocab = Vocabulary.build(tokens)
    assert set(DIGIT_WORDS) <= set(vocab.itos)
    for t in tokens[:200]:
        assert vocab.decode(vocab.encode(t)) == t
    val = [t for refs in splits["val"].tokens() for t in refs]
    assert all(vocab.decode(vocab.encode(t)) == t for t in val)  # closed vocabulary


def test_encode_max_len_batch_and_decode():
    vocab = Vocabulary.build([["a", "b", "c"]])
    assert vocab.encode(["a", "b", "c"], max_len=4) == [1, vocab.index("a"),
                                                        vocab.index("b"), 2]
    assert vocab.encode([], max_len=2) == [1, 2]
    with pytest.raises(ConfigError):
        vocab.encode(["a"], max_len=1)
    batch = vocab.encode_batch([["a"], ["a", "b", "c"]])  # (2, 5)
    assert batch.dtype == torch.int64 and batch.shape == (2, 5)
    assert batch[0].tolist() == [1, vocab.index("a"), 2, 0, 0]
    assert vocab.decode(batch[0]) == ["a"]
    assert vocab.decode([1, 0, vocab.index("c"), 2, vocab.index("a")]) == ["c"]
    with pytest.raises(ValueError):
        vocab.decode([99])


def test_vocabulary_state_dict(tmp_path):
    vocab = Vocabulary.build([["a", "dog"], ["two", "digits"]])
    state = vocab.state_dict()
    assert Vocabulary.from_state_dict(json.loads(json.dumps(state))) == vocab
    torch.save({"vocab": state}, tmp_path / "v.pt")
    loaded = torch.load(tmp_path / "v.pt", weights_only=True)
    assert Vocabulary.from_state_dict(loaded["vocab"]) == vocab
    for bad in ({}, {"itos": ["a", "b"]}, {"itos": [*SPECIALS, "a", "a"]},
                {"itos": [*SPECIALS, 3]}, [1]):
        with pytest.raises(CheckpointError):
            Vocabulary.from_state_dict(bad)


# --------------------------------------------------------------------------------------
# BLEU and CIDEr


def coco_direct(references, hypotheses):
    """The same scores straight from pycocoevalcap's scorers."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(h)] for i, h in enumerate(hypotheses)}
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    return bleu, Cider().compute_score(gts, res)[0]


@needs_coco
def test_bleu_identical_captions_score_one(capsys):
    refs = [[["a", "large", "seven", "at", "the", "top", "left"]],
            [["there", "is", "a", "small", "two", "in", "the", "middle"]]]
    hyps = [r[0] for r in refs]
    scores = corpus_bleu(refs, hyps)
    for n in range(1, 5):
        assert scores[f"bleu{n}"] == pytest.approx(1.0, abs=1e-6)
    assert capsys.readouterr().out == ""  # the scorer's printing is swallowed


@needs_coco
def test_bleu_known_example():
    refs = [[["the", "cat", "sat", "on", "the", "mat"]]]
    hyps = [["the", "cat", "sat", "on", "a", "mat"]]
    scores = corpus_bleu(refs, hyps, cider=False)
    # Clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty.
    expected = [5 / 6, (5 / 6 * 3 / 5) ** (1 / 2), (5 / 6 * 3 / 5 * 2 / 4) ** (1 / 3),
                (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** (1 / 4)]
    bleu, _ = coco_direct(refs, hyps)
    for n in range(4):
        assert scores[f"bleu{n + 1}"] == bleu[n]
        assert scores[f"bleu{n + 1}"] == pytest.approx(expected[n], abs=1e-6)
    assert "cider" not in scores


@needs_coco
def test_bleu_and_cider_match_the_library_on_scene_captions(splits):
    refs = splits["val"].tokens()
    rng = np.random.default_rng(0)
    hyps = []
    for r in refs:  # one reference, with some words dropped and the order partly shuffled
        h = [w for w in r[0] if rng.random() > 0.2]
        if len(h) > 3:
            i = int(rng.integers(len(h) - 1))
            h[i], h[i + 1] = h[i + 1], h[i]
        hyps.append(h)
    scores = corpus_bleu(refs, hyps)
    bleu, cider = coco_direct(refs, hyps)
    assert [scores[f"bleu{n}"] for n in range(1, 5)] == bleu
    assert scores["cider"] == cider
    assert 0 < scores["bleu4"] < scores["bleu1"] < 1 and scores["cider"] > 0


@needs_coco
def test_bleu_short_and_empty_hypotheses():
    refs = [[["a", "large", "seven", "at", "the", "top"]], [["a", "small", "two"]],
            [["two", "digits"]]]
    scores = corpus_bleu(refs, [["a", "seven"], [], ["two"]])
    assert set(scores) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider"}
    assert all(np.isfinite(v) and v >= 0 for v in scores.values())
    assert scores["bleu4"] < 1e-3


def test_bleu_input_checks():
    with pytest.raises(ValueError, match="2 reference sets but 1"):
        corpus_bleu([[["a"]], [["b"]]], [["a"]])
    with pytest.raises(ValueError, match="no reference"):
        corpus_bleu([[]], [["a"]])
    with pytest.raises(ValueError, match="whitespace"):
        corpus_bleu([[["a b"]]], [["a"]])
    with pytest.raises(ValueError, match="token lists"):
        corpus_bleu([["a dog"]], [["a"]])


def test_bleu_without_pycocoevalcap(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocoevalcap.bleu.bleu", None)
    with pytest.raises(ConfigError, match=r"pip install pycocoevalcap"):
        corpus_bleu([[["a"]]], [["a"]])
