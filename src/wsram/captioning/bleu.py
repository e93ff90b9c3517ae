"""Caption metrics BLEU-1..4 and CIDEr through the COCO caption evaluation code.

The scores are computed by ``pycocoevalcap`` (the Python 3 packaging of the official
coco-caption code that captioning papers report): its ``Bleu`` and ``Cider`` scorers are
pure Python. Its Java parts (PTB tokeniser, METEOR, SPICE) are not used: captions come
in already tokenised by :func:`wsram.captioning.vocab.tokenize` or Karpathy's ``tokens``.

Both are corpus-level scores. BLEU follows coco-caption exactly: n-gram counts summed
over the corpus, the "closest" reference length for the brevity penalty, and the
library's 1e-9 smoothing, so an n-gram order with no match scores about 0, not an error.
CIDEr (the CIDEr-D variant) takes its idf weights from the references of the corpus
being scored, so it is meaningful only over many images (over one image it is 0).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

from wsram.errors import ConfigError

_INSTALL = "pip install pycocoevalcap (or pip install 'wsram[captioning]')"


def _check(references: Sequence[Sequence[Sequence[str]]],
           hypotheses: Sequence[Sequence[str]]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"corpus_bleu: {len(references)} reference sets but "
                         f"{len(hypotheses)} hypotheses")
    if not hypotheses:
        raise ValueError("corpus_bleu: no captions to score")
    for i, (refs, hyp) in enumerate(zip(references, hypotheses, strict=True)):
        if not refs:
            raise ValueError(f"corpus_bleu: image {i} has no reference captions")
        for tokens in (*refs, hyp):
            if isinstance(tokens, str):
                raise ValueError(f"corpus_bleu: image {i}: captions must be token lists, "
                                 f"got the string {tokens!r}")
            for t in tokens:
                # The scorers split the joined caption on whitespace.
                if not isinstance(t, str) or not t or t != "".join(t.split()):
                    raise ValueError(f"corpus_bleu: image {i}: tokens must be non-empty "
                                     f"strings without whitespace, got {t!r}")
        if not any(refs):
            raise ValueError(f"corpus_bleu: image {i}: every reference caption is empty")


def corpus_bleu(references: Sequence[Sequence[Sequence[str]]],
                hypotheses: Sequence[Sequence[str]], cider: bool = True) -> dict[str, float]:
    """Corpus BLEU-1..4 (and CIDEr) of one hypothesis per image against its references.

    references: per image, one or more reference captions, each a list of tokens;
    hypotheses: per image, one caption as a list of tokens (may be empty).
    Returns ``{"bleu1", "bleu2", "bleu3", "bleu4"[, "cider"]}`` as floats in [0, 1]
    (CIDEr in [0, 10]).
    """
    _check(references, hypotheses)
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError as err:
        raise ConfigError(f"caption metrics need the coco-caption scorers: {_INSTALL}") from err

    # coco-caption's input: dicts image id -> list of space-joined captions, one hypothesis.
    gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(hyp)] for i, hyp in enumerate(hypotheses)}
    # Bleu prints its totals to stdout (``verbose=1`` by default, and older releases have
    # no switch at all): swallow them.
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
        scores = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
        if cider:
            scores["cider"] = float(Cider().compute_score(gts, res)[0])
    return scores
