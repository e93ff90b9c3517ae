"""Caption tokenisation and the word vocabulary of the captioning decoder.

:func:`tokenize` is the one tokeniser of the project: the digit-scene captions and the
``raw`` sentences of Karpathy's split files both go through it. It follows Karpathy's
NeuralTalk preprocessing (lower-case, delete punctuation, split on whitespace), so a
``raw`` sentence gives the same tokens as the ``tokens`` field stored next to it.

Ids 0..3 are always ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``; the words follow, most
frequent first (ties alphabetical), so the same captions always give the same ids.
"""

from __future__ import annotations

import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from wsram.errors import CheckpointError, ConfigError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)

_ASCII_PUNCT = frozenset(string.punctuation)


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def tokenize(text: str) -> list[str]:
    """Lower-case, delete punctuation (ASCII and Unicode), split on whitespace.

    Punctuation is deleted, not replaced by a space, as in Karpathy's preprocessing:
    ``"A dog's ball."`` -> ``["a", "dogs", "ball"]``.
    """
    cleaned = "".join(ch for ch in text.lower() if not _is_punct(ch))
    return cleaned.split()


class Vocabulary:
    """Word <-> id map with the four special tokens at ids 0..3."""

    def __init__(self, words: Sequence[str]):
        """``words``: the non-special words in id order (ids start at 4)."""
        itos = list(SPECIALS) + list(words)
        stoi: dict[str, int] = {}
        for i, w in enumerate(itos):
            if not isinstance(w, str) or not w:
                raise ValueError(f"vocabulary words must be non-empty strings, got {w!r}")
            if w in stoi:
                raise ValueError(f"vocabulary word {w!r} appears twice")
            stoi[w] = i
        self.itos = itos
        self.stoi = stoi

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_count: int = 1,
              max_size: int | None = None) -> Vocabulary:
        """Keep the words seen at least ``min_count`` times (at most ``max_size`` words
        besides the specials, the most frequent first); the rest will encode as ``<unk>``."""
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ConfigError(f"vocabulary: min_count must be an integer >= 1, got {min_count!r}")
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int)
                                     or max_size < 0):
            raise ConfigError(f"vocabulary: max_size must be an integer >= 0 or None, "
                              f"got {max_size!r}")
        counts = Counter(w for tokens in token_lists for w in tokens if w not in SPECIALS)
        words = sorted((w for w, c in counts.items() if c >= min_count),
                       key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[:max_size]
        return cls(words)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: object) -> bool:
        return word in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"

    def index(self, word: str) -> int:
        """The id of ``word``, ``UNK_ID`` if it is not in the vocabulary."""
        return self.stoi.get(word, UNK_ID)

    def encode(self, tokens: Sequence[str], max_len: int | None = None) -> list[int]:
        """``[<bos>, w_1, ..., w_T, <eos>]`` as ids, unknown words as ``<unk>``.

        With ``max_len`` the result holds at most ``max_len`` ids: the words are cut so
        that ``<bos>`` and ``<eos>`` always stay. No padding (see :meth:`encode_batch`).
        """
        ids = [self.index(w) for w in tokens]
        if max_len is not None:
            if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
                raise ConfigError(f"vocabulary: max_len must be an integer >= 2 (room for "
                                  f"<bos> and <eos>), got {max_len!r}")
            ids = ids[:max_len - 2]
        return [BOS_ID, *ids, EOS_ID]

    def encode_batch(self, token_lists: Sequence[Sequence[str]],
                     max_len: int | None = None) -> Tensor:
        """Encode several captions and right-pad with ``<pad>``: (B, L) int64, L the
        longest encoding (at most ``max_len``)."""
        encoded = [self.encode(t, max_len) for t in token_lists]
        L = max((len(e) for e in encoded), default=2)
        out = torch.full((len(encoded), L), PAD_ID, dtype=torch.int64)  # (B, L)
        for b, e in enumerate(encoded):
            out[b, :len(e)] = torch.tensor(e, dtype=torch.int64)
        return out

    def decode(self, ids: Sequence[int] | Tensor) -> list[str]:
        """Words of one id sequence: stops at the first ``<eos>``, drops ``<pad>`` and
        ``<bos>``; ``<unk>`` stays."""
        if isinstance(ids, Tensor):
            ids = ids.reshape(-1).tolist()
        words: list[str] = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise ValueError(f"token id {i} is outside the vocabulary of {len(self)} tokens")
            if i == EOS_ID:
                break
            if i in (PAD_ID, BOS_ID):
                continue
            words.append(self.itos[i])
        return words

    def state_dict(self) -> dict[str, list[str]]:
        """Plain lists only (JSON-able, loadable with ``torch.load(weights_only=True)``)."""
        return {"itos": list(self.itos)}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Vocabulary:
        """Rebuild from :meth:`state_dict`; a malformed state raises CheckpointError."""
        itos = state.get("itos") if isinstance(state, Mapping) else None
        if not isinstance(itos, (list, tuple)) or not all(isinstance(w, str) for w in itos):
            raise CheckpointError("vocabulary state: expected a list of strings under 'itos'")
        if tuple(itos[:len(SPECIALS)]) != SPECIALS:
            raise CheckpointError(f"vocabulary state: the first tokens must be "
                                  f"{', '.join(SPECIALS)}, got {list(itos[:len(SPECIALS)])}")
        try:
            return cls(itos[len(SPECIALS):])
        except ValueError as err:
            raise CheckpointError(f"vocabulary state: {err}") from err
