"""Reader for Karpathy's caption split files (Flickr8k, Flickr30k, COCO).

The files ``dataset_flickr8k.json``, ``dataset_flickr30k.json`` and ``dataset_coco.json``
hold ``{"images": [{"filename", "filepath" (COCO only), "split", "sentences":
[{"tokens": [...], "raw": "..."}, ...], ...}, ...]}`` with split ``train``, ``val``,
``test`` or ``restval`` (COCO's extra training images). Images live at
``image_dir / filepath / filename`` (``image_dir / filename`` without ``filepath``).

The whole file is checked whichever split is asked for; every problem is one
:class:`wsram.errors.DataError` line naming the file, the entry and what is wrong.
Images are not read here except by :func:`load_image`, which needs Pillow (the
``captioning`` extra).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wsram.captioning.vocab import tokenize
from wsram.errors import ConfigError, DataError

FILE_SPLITS = ("train", "val", "test", "restval")


@dataclass
class KarpathyItem:
    """One image of a Karpathy split file and its reference captions."""

    image_path: Path
    captions: list[list[str]]  # reference captions as tokens
    split: str  # the split named in the file (``restval`` stays ``restval``)


def _short(value: Any, limit: int = 60) -> str:
    """repr of a value from the file, cut so that a message stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _kind(value: Any) -> str:
    """The JSON name of a value's type, with its article."""
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _where(index: int, entry: Any) -> str:
    name = entry.get("filename") if isinstance(entry, dict) else None
    return f"images[{index}]" + (f" ({_short(name)})" if isinstance(name, str) else "")


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a BOM is harmless
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from err
    if not text.strip():
        raise DataError(f"{path}: empty file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON: {err.msg} at line {err.lineno} "
                        f"column {err.colno}") from err
    except RecursionError as err:
        raise DataError(f"{path}: JSON nested too deeply") from err


def _sentence_tokens(path: Path, where: str, j: int, sent: Any) -> list[str]:
    """The tokens of one sentence: its ``tokens`` list, else ``raw`` tokenised."""
    at = f"{path}: {where}: sentences[{j}]"
    if not isinstance(sent, dict):
        raise DataError(f"{at} is {_kind(sent)}, expected an object")
    if "tokens" in sent:
        tokens = sent["tokens"]
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise DataError(f"{at}: 'tokens' must be a list of strings")
        tokens = [w for t in tokens for w in t.split()]  # BLEU splits on whitespace
    elif "raw" in sent:
        if not isinstance(sent["raw"], str):
            raise DataError(f"{at}: 'raw' must be a string")
        tokens = tokenize(sent["raw"])
    else:
        raise DataError(f"{at} has neither 'tokens' nor 'raw'")
    if not tokens:
        raise DataError(f"{at} is empty")
    return tokens


def _parse_entry(path: Path, index: int, entry: Any) -> tuple[str, str, list[list[str]]]:
    """(relative image path, split, captions) of one image entry."""
    where = _where(index, entry)
    if not isinstance(entry, dict):
        raise DataError(f"{path}: {where} is {_kind(entry)}, expected an object")
    for key in ("filename", "split", "sentences"):
        if key not in entry:
            raise DataError(f"{path}: {where} has no '{key}'")
    filename, split, sentences = entry["filename"], entry["split"], entry["sentences"]
    if not isinstance(filename, str) or not filename.strip():
        raise DataError(f"{path}: {where}: 'filename' must be a non-empty string")
    filepath = entry.get("filepath", "")
    if not isinstance(filepath, str):
        raise DataError(f"{path}: {where}: 'filepath' must be a string")
    if split not in FILE_SPLITS:
        raise DataError(f"{path}: {where}: unknown split {_short(split)}; expected one of "
                        f"{', '.join(FILE_SPLITS)}")
    if not isinstance(sentences, list):
        raise DataError(f"{path}: {where}: 'sentences' must be a list")
    if not sentences:
        raise DataError(f"{path}: {where} has no sentences")
    captions = [_sentence_tokens(path, where, j, s) for j, s in enumerate(sentences)]
    rel = str(Path(filepath) / filename) if filepath else filename
    return rel, split, captions


def load_karpathy(json_path: str | Path, image_dir: str | Path, split: str, *,
                  restval_as_train: bool = True,
                  check_images: bool = True) -> list[KarpathyItem]:
    """The images of one split with their tokenised reference captions, in file order.

    ``split``: ``train``, ``val``, ``test`` or ``restval``; with ``restval_as_train`` the
    ``train`` split also holds the ``restval`` images (the usual COCO practice).
    ``check_images``: make sure every image of the split exists under ``image_dir``
    (reports the first missing one and how many are missing); otherwise a missing image
    is only found when :func:`load_image` reads it.
    """
    if split not in FILE_SPLITS:
        raise ConfigError(f"karpathy: split must be one of {', '.join(FILE_SPLITS)}; "
                          f"got {split!r}")
    path = Path(json_path)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        found = (_kind(data) if not isinstance(data, dict)
                 else "no 'images' key" if "images" not in data
                 else f"'images' is {_kind(data['images'])}")
        raise DataError(f"{path}: expected a JSON object with an 'images' list (Karpathy "
                        f"split format), found {found}")
    wanted = {split} | ({"restval"} if split == "train" and restval_as_train else set())
    items = []
    for index, entry in enumerate(data["images"]):
        rel, item_split, captions = _parse_entry(path, index, entry)
        if item_split in wanted:
            items.append(KarpathyItem(image_path=Path(image_dir) / rel, captions=captions,
                                      split=item_split))
    if check_images:
        folder = Path(image_dir)
        if not folder.is_dir():
            raise DataError(f"{folder}: image folder not found (images of {path.name})")
        missing = [it.image_path for it in items if not it.image_path.is_file()]
        if missing:
            raise DataError(f"{path}: {len(missing)} of the {len(items)} {split} images are "
                            f"missing under {folder}; the first is {missing[0]}")
    return items


def load_image(path: str | Path, size: int | Sequence[int]) -> Tensor:
    """Read an image file as RGB, resized (bilinear) to ``size`` (side, or (H, W)).

    Returns (3, H, W) float32 in [0, 1]. Needs Pillow: ``pip install pillow``.
    """
    try:
        from PIL import Image, UnidentifiedImageError  # Pillow: imported when an image is read
    except ImportError as err:
        raise DataError("reading caption images needs Pillow: pip install pillow "
                        "(or pip install 'wsram[captioning]')") from err
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise ConfigError(f"load_image: size must be positive, got {size!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
            array = np.asarray(rgb, dtype=np.float32) / 255.0  # (H, W, 3)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable image ({err})") from err
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, H, W)
