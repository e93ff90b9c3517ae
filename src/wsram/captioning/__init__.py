"""Captioning experiment (METHOD.md, "Captioning"): data and metrics.

- :mod:`~wsram.captioning.scenes`: the embedded dataset, captioned scenes of MNIST digits.
- :mod:`~wsram.captioning.karpathy`: Karpathy's split files (Flickr8k, Flickr30k, COCO).
- :mod:`~wsram.captioning.vocab`: the tokeniser and the word vocabulary.
- :mod:`~wsram.captioning.bleu`: BLEU-1..4 and CIDEr via pycocoevalcap (an optional extra,
  imported only when scoring).
"""

from wsram.captioning.bleu import corpus_bleu
from wsram.captioning.karpathy import KarpathyItem, load_image, load_karpathy
from wsram.captioning.scenes import (
    DIGIT_WORDS,
    REGIONS,
    SIZE_WORDS,
    CaptionSet,
    SceneSpec,
    make_scene_splits,
    make_scenes,
)
from wsram.captioning.vocab import SPECIALS, Vocabulary, tokenize

__all__ = [
    "DIGIT_WORDS",
    "REGIONS",
    "SIZE_WORDS",
    "SPECIALS",
    "CaptionSet",
    "KarpathyItem",
    "SceneSpec",
    "Vocabulary",
    "corpus_bleu",
    "load_image",
    "load_karpathy",
    "make_scene_splits",
    "make_scenes",
    "tokenize",
]
