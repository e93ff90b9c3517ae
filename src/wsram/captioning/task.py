"""The captioning task for the one training loop (wsram.train; the Task protocol in wsram.task).

Data are the embedded digit scenes (:mod:`.scenes`) or a Karpathy split file with its
images (:mod:`.karpathy`). The encoder is fixed, so every split's features are computed
once (and cached on disk with ``feature_cache``); a training batch is B images' features
with one of their reference captions each, drawn from the task's own seeded stream.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import checkpoint
from ..diagnostics import diag_seed, diagnose
from ..engine import own_policy_rollout
from ..errors import CheckpointError, ConfigError, WsramError
from ..methods import METHODS, Method
from ..rollout import Rollout
from ..run_dir import RunDir
from .bleu import corpus_bleu
from .config import CaptionConfig
from .encoder import (
    DigitEncoder,
    ResNetEncoder,
    cached_features,
    compute_features,
    label_accuracy,
    pretrain_digit_encoder,
    scene_labels,
    weights_digest,
)
from .karpathy import load_image, load_karpathy
from .model import CaptionModel
from .scenes import SceneSpec, make_scenes
from .vocab import PAD_ID, Vocabulary

SCENE_SEED = 0  # the embedded dataset is one fixed dataset, whatever the training seed
ENCODER_FILE = "encoder.pt"


@dataclass
class CaptionSplit:
    """One split: its size, reference captions (tokens), and its images on demand."""

    name: str
    references: list[list[list[str]]]
    images: Callable[[int, int], Tensor]  # (start, stop) -> (n, C, H, W) in [0, 1]
    identity: str  # what the images are, for the feature cache's key
    objects: list[Any] | None = None  # scenes: (digit, size, region) per digit

    def __len__(self) -> int:
        return len(self.references)


def load_split(cfg: CaptionConfig, split: str) -> CaptionSplit:
    """A split of the configured dataset (``train``, ``val`` or ``test``)."""
    if cfg.dataset == "scenes":
        spec = SceneSpec(num_train=cfg.num_train, num_val=cfg.num_val, num_test=cfg.num_test)
        s = make_scenes(split, spec, seed=SCENE_SEED, data_dir=cfg.data_dir)
        return CaptionSplit(split, s.tokens(), lambda a, b: s.images[a:b],
                            f"scenes:{spec}:{SCENE_SEED}:{cfg.data_dir}", s.objects)
    items = load_karpathy(cfg.karpathy_json, cfg.image_dir, split)
    if not items:
        raise WsramError(f"{cfg.karpathy_json}: no images in the {split} split")

    def images(a: int, b: int) -> Tensor:
        return torch.stack([load_image(it.image_path, cfg.image_size) for it in items[a:b]])

    stat = Path(cfg.karpathy_json).stat()
    return CaptionSplit(split, [it.captions for it in items], images,
                        f"karpathy:{Path(cfg.karpathy_json).resolve()}:{stat.st_size}:"
                        f"{stat.st_mtime_ns}:{cfg.image_dir}:{cfg.image_size}")


class CaptionStream:
    """Training batches: B random images' features and one random reference each."""

    def __init__(self, feats: list[Tensor], captions: Tensor, lengths: Tensor,
                 device: torch.device, seed: int):
        self.feats, self.captions, self.lengths = feats, captions, lengths  # (N, R, L), (N, R)
        self.device = device
        self.gen = torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int) -> tuple[list[Tensor], Tensor]:
        N, R, _ = self.captions.shape
        idx = torch.randint(N, (batch_size,), generator=self.gen)
        # a reference per image, uniformly among the ones it has (lengths > 0)
        counts = (self.lengths[idx] > 0).sum(1)
        ref = (torch.rand(batch_size, generator=self.gen) * counts).long()
        y = self.captions[idx, ref]
        y = y[:, :int((y != PAD_ID).sum(1).max())]
        return [f[idx].to(self.device) for f in self.feats], y.to(self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rng = state.get("generator") if isinstance(state, dict) else None
        checkpoint.restore_generator(self.gen, rng, "caption stream state 'generator'")


def encode_references(vocab: Vocabulary, refs: list[list[list[str]]],
                      max_len: int) -> tuple[Tensor, Tensor]:
    """(N, R, L) ids of every reference (R the most any image has, missing ones all pad)
    and (N, R) their lengths (0 = no such reference)."""
    R = max(len(r) for r in refs)
    L = min(max_len, max(len(c) for r in refs for c in r) + 2)
    out = torch.full((len(refs), R, L), PAD_ID, dtype=torch.long)
    lengths = torch.zeros(len(refs), R, dtype=torch.long)
    for n, r in enumerate(refs):
        for j, c in enumerate(r):
            ids = vocab.encode(c, max_len=L)
            out[n, j, :len(ids)] = torch.tensor(ids)
            lengths[n, j] = len(ids)
    return out, lengths


class CaptionTask:
    """Captions of images for the one training loop: a fixed encoder's features (computed
    once per split, cached on disk with ``feature_cache``), a vocabulary from the training
    captions, the hard-attention decoder (:class:`CaptionModel`), BLEU/CIDEr of decoded
    captions on val (``best.pt`` is chosen by BLEU-4), and per-word training metrics."""

    select_key = "bleu4"
    select_higher = True

    def __init__(self, cfg: CaptionConfig, progress: bool = True):
        self.cfg = cfg
        self.progress = progress
        self.splits: dict[str, CaptionSplit] = {}
        self.features: dict[str, list[Tensor]] = {}
        self.encoder: nn.Module | None = None
        self.vocab: Vocabulary | None = None
        self.encoder_stats: dict[str, float] = {}

    def method(self) -> Method:
        return METHODS[self.cfg.method]

    # --- data, vocabulary, encoder, features ---
    def split(self, name: str) -> CaptionSplit:
        if name not in self.splits:
            self.splits[name] = load_split(self.cfg, name)
        return self.splits[name]

    def prepare(self, run_dir: Path | None, device: torch.device, main: bool = True,
                resume: bool = False, vocab: Vocabulary | None = None,
                encoder: nn.Module | None = None) -> None:
        """Vocabulary from the training captions (or the given one), the encoder (the given
        one, or pretrained here, or read), and the training features."""
        _need_scorer()
        train = self.split("train")
        state = None
        last = RunDir(run_dir).last if run_dir is not None else None
        if resume and last is not None and last.is_file():
            state = checkpoint.load(last)
            if "vocab" not in state:
                raise CheckpointError(f"{last}: not a caption checkpoint (no vocabulary)")
            if vocab is None:  # the run's own word ids
                vocab = Vocabulary.from_state_dict(state["vocab"])
        self.vocab = vocab or Vocabulary.build((c for r in train.references for c in r),
                                               min_count=self.cfg.min_count)
        if encoder is None:
            encoder = self.load_encoder(run_dir, main, resume)
        self.encoder = encoder.to(device)
        self._digest = None
        if state is not None:
            self.check_encoder(last, state)
        self.features["train"] = self.split_features("train")

    def load_encoder(self, run_dir: Path | None, main: bool, resume: bool) -> nn.Module:
        """The fixed encoder. A digit encoder is saved in the run folder (encoder.pt),
        whether pretrained here or copied from ``encoder_weights``, and read from there
        first, so the run folder alone can be resumed and evaluated; a torchvision one is
        read from the user's file. Checkpoints record the encoder's weights digest, and a
        run is refused an encoder other than the one it was trained with."""
        cfg = self.cfg
        if cfg.encoder != "digits":
            return ResNetEncoder(cfg.encoder, cfg.encoder_weights)
        own = run_dir / ENCODER_FILE if run_dir is not None else None
        if own is not None and own.is_file():
            return read_digit_encoder(own)
        if cfg.encoder_weights:
            path = Path(cfg.encoder_weights)
            if not path.is_file():
                raise WsramError(f"{path}: no such encoder file")
            enc = read_digit_encoder(path)
            self.encoder_stats = {k: v for k, v in checkpoint.load(path).items()
                                  if k.startswith("encoder_") and isinstance(v, float)}
        elif run_dir is None or resume:
            raise WsramError(f"{own}: the run's encoder is missing")
        else:
            if main:  # minutes before the first update: say what they are for
                print(f"wsram: pretraining the digit encoder first: {cfg.encoder_steps} updates "
                      "of 64 training scenes (1500: about 3.5 minutes on one quiet CPU "
                      f"thread); saved as {own}, which --encoder-weights {own} reuses in "
                      "later runs", file=sys.stderr)
            enc = self.pretrain_encoder()
        if main and own is not None:
            checkpoint.save(own, {"kind": "digits", "encoder": enc.state_dict(),
                                  **self.encoder_stats})
        return enc

    def pretrain_encoder(self) -> DigitEncoder:
        """Pretrain on fresh training scenes (training digits only), then measure how often
        it names a validation scene's digits and sizes exactly."""
        cfg = self.cfg
        spec = SceneSpec(num_train=2048, num_val=cfg.num_val, num_test=1)

        def batch(i: int) -> tuple[Tensor, Tensor]:
            s = make_scenes("train", spec, seed=1000 + cfg.seed * 7919 + i, data_dir=cfg.data_dir)
            return s.images, scene_labels(s.objects)

        with torch.random.fork_rng():
            enc, stats = pretrain_digit_encoder(batch, cfg.encoder_steps, seed=cfg.seed,
                                                progress=self.progress)
        val = self.split("val")
        n = len(val)
        stats["encoder_val_accuracy"] = label_accuracy(enc, val.images(0, n),
                                                       scene_labels(val.objects))
        self.encoder_stats = stats
        return enc

    def encoder_digest(self) -> str:
        if getattr(self, "_digest", None) is None:
            self._digest = weights_digest(self.encoder)
        return self._digest

    def check_encoder(self, path: Path, state: dict[str, Any]) -> None:
        """Refuse a checkpoint trained on the features of another encoder."""
        saved = state.get("encoder_digest")
        if saved is not None and saved != self.encoder_digest():
            raise CheckpointError(f"{path}: trained with another encoder (weights digest "
                                  f"{saved}, this run's encoder has {self.encoder_digest()})")
        if list(self.channels()) != list(state.get("channels", [])):
            raise CheckpointError(f"{path}: made with another encoder (feature channels "
                                  f"{state.get('channels')} vs {list(self.channels())})")

    def split_features(self, name: str) -> list[Tensor]:
        if name not in self.features:
            s = self.split(name)
            key = {"encoder": self.cfg.encoder, "weights": self.encoder_digest(),
                   "data": s.identity, "split": name}
            self.features[name] = cached_features(
                self.cfg.feature_cache, key,
                lambda: compute_features(self.encoder, s.images, len(s), desc=f"{name} features",
                                         progress=self.progress))
        return self.features[name]

    def channels(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self.encoder.channels)

    # --- Task ---
    def build_model(self) -> CaptionModel:
        cfg = self.cfg
        return CaptionModel(len(self.vocab), self.channels(), hidden=cfg.hidden, embed=cfg.embed,
                            neighbourhood=cfg.neighbourhood, loc_std=cfg.loc_std,
                            q_word=cfg.q_word)

    def stream(self, device: torch.device, seed: int) -> CaptionStream:
        caps, lengths = encode_references(self.vocab, self.split("train").references,
                                          self.cfg.max_len)
        return CaptionStream(self.features["train"], caps, lengths, device, seed)

    def prepare_eval(self, device: torch.device) -> None:
        self.features["val"] = self.split_features("val")
        self.device = device
        # the diagnostics' fixed batch: a stream of its own
        self.diag_batch = self.stream(device, self.cfg.seed + 2).sample(self.cfg.diag_batch)

    def evaluate(self, model: nn.Module, split: str = "val", size: int | None = None,
                 beam_size: int = 1) -> dict[str, float]:
        """Corpus BLEU-1..4 and CIDEr of decoded captions (never teacher-forced)."""
        n = min(len(self.split(split)), size if size is not None else self.cfg.eval_size)
        hyps = self.captions(model, split, n, beam_size)
        return corpus_bleu(self.split(split).references[:n], hyps)

    @torch.no_grad()
    def captions(self, model: nn.Module, split: str, n: int, beam_size: int = 1,
                 batch_size: int = 100, with_attention: bool = False) -> Any:
        """Decoded captions (token lists) of the first n images of a split; with
        ``with_attention`` also each word's (loc, layer)."""
        feats = self.split_features(split)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        hyps, attn = [], []
        for a in range(0, n, batch_size):
            b = min(n, a + batch_size)
            words, locs, scales = model.decode([f[a:b].to(device) for f in feats],
                                               self.cfg.max_len, beam_size)
            for i in range(b - a):
                w = self.vocab.decode(words[i])
                hyps.append(w)
                attn.append((locs[i, :len(w) + 1].cpu(), scales[i, :len(w) + 1].cpu()))
        model.train(was_training)
        return (hyps, attn) if with_attention else hyps

    def diagnose(self, model: nn.Module, method: Method, step: int) -> dict[str, float]:
        cfg = self.cfg
        x, y = self.diag_batch
        return diagnose(model, method, x, y, cfg.samples, cfg.diag_repeats,
                        seed=diag_seed(cfg.seed, step), temperature=cfg.temperature,
                        gamma=cfg.cv_gamma)

    def train_metrics(self, model: nn.Module, rollout: Rollout, x: list[Tensor], y: Tensor,
                      bf16: bool) -> dict[str, Tensor]:
        """Per-word error and negative log-likelihood of one trajectory of the policy
        itself (never of q), teacher-forced: ``error``, ``nll`` (nats per word)."""
        rollout = own_policy_rollout(model, rollout, x, y, bf16)
        lp = rollout.class_log_probs[:, 0].detach()  # (B, T, V)
        target = y[:, 1:]
        mask = (target != PAD_ID).float()
        words = mask.sum()
        wrong = ((lp.argmax(-1) != target).float() * mask).sum() / words
        nll = -rollout.log_lik[:, 0].detach().sum() / words
        return {"error": wrong, "nll": nll}

    def restore(self, run_dir: Path, path: Path, state: dict[str, Any]) -> None:
        """The run's vocabulary (from the checkpoint) and encoder (from the run folder),
        refusing a checkpoint made with another encoder."""
        if "vocab" not in state:
            raise CheckpointError(f"{path}: not a caption checkpoint (no vocabulary)")
        self.vocab = Vocabulary.from_state_dict(state["vocab"])
        self.encoder = self.load_encoder(run_dir, main=False, resume=True)
        self.check_encoder(path, state)

    def extra_state(self) -> dict[str, Any]:
        return {"vocab": self.vocab.state_dict(), "channels": list(self.channels()),
                "encoder_digest": self.encoder_digest()}


def read_digit_encoder(path: Path) -> DigitEncoder:
    state = checkpoint.load(path)
    if state.get("kind") != "digits" or not isinstance(state.get("encoder"), dict):
        raise CheckpointError(f"{path}: not a digit-scene encoder (an encoder.pt of a caption run)")
    enc = DigitEncoder()
    checkpoint.load_into(enc, state["encoder"], path, "encoder weights do not fit")
    return enc.eval().requires_grad_(False)


def _need_scorer() -> None:
    try:
        import pycocoevalcap  # noqa: F401 - an optional extra: only its presence is checked
    except ImportError:
        raise ConfigError("captioning is scored with the coco-caption BLEU/CIDEr code: "
                          "pip install pycocoevalcap (or pip install 'wsram[captioning]')"
                          ) from None
