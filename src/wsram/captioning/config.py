"""The captioning task's configuration: TrainConfig's training fields plus data, encoder
and decoder. Every field is a ``wsram caption train`` option, as in classification."""

from __future__ import annotations

import typing
from dataclasses import dataclass

from ..config import TrainConfig, need

ENCODERS = ("digits", "resnet18", "resnet34", "resnet50")


@dataclass
class CaptionConfig(TrainConfig):
    # --- training fields whose defaults differ from classification's ---
    steps: int = 6000  # updates to train for (a resumed run trains up to this many)
    batch_size: int = 32  # B, captions per update (one reference of each of B images)
    eval_every: int = 1000  # updates between BLEU evaluations on val (0 = only at the end)
    eval_size: int = 200  # val images decoded by the evaluations during training
    diag_every: int = 1000  # updates between diagnostics (gradient variance, ESS); 0 = never
    diag_batch: int = 32  # captions in the fixed minibatch the diagnostics use
    # --- data ---
    dataset: str = "scenes"  # scenes (embedded digit scenes) or karpathy (a split file + images)
    karpathy_json: str | None = None  # Karpathy split file, e.g. dataset_flickr8k.json
    image_dir: str | None = None  # folder holding the images the split file names
    image_size: int = 224  # photographs are resized to this side before the encoder
    data_dir: str | None = None  # scenes: folder of MNIST IDX files; None = bundled digits
    num_train: int = 4000  # scenes: training scenes
    num_val: int = 500  # scenes: validation scenes (best.pt is chosen on these)
    num_test: int = 500  # scenes: test scenes
    min_count: int = 1  # vocabulary: words seen fewer times in training captions become <unk>
    max_len: int = 32  # tokens per caption, <bos> and <eos> included; longer ones are cut
    # --- encoder (fixed during caption training) ---
    encoder: str = "digits"  # digits (small CNN pretrained here) or resnet18/34/50 (torchvision)
    encoder_weights: str | None = None  # digits: a run's encoder.pt to reuse; resnet: weights file
    encoder_steps: int = 1500  # digits: pretraining updates when no encoder_weights are given
    feature_cache: str | None = None  # folder where encoder features are saved and reused
    # --- decoder and attention ---
    hidden: int = 128  # LSTM and glimpse-embedding width
    embed: int = 64  # word-embedding width
    neighbourhood: int = 3  # a glimpse reads n x n feature cells of the chosen layer
    loc_std: float = 0.1  # standard deviation of the location Gaussian, in [-1, 1] units
    q_word: str = "current"  # the word q sees: current (the one to explain) or preceding
    # --- evaluation ---
    beam_size: int = 3  # beam width of `wsram caption evaluate`

    TASK: typing.ClassVar[str] = "captioning"
    WORDS: typing.ClassVar[dict[str, str]] = {
        **TrainConfig.WORDS, "dataset": "scenes|karpathy", "q_word": "current|preceding",
        "encoder": "digits|resnet18|resnet34|resnet50"}
    #: no canvas to cover; captioning runs are not stacked, and graphs go through stacks
    HIDDEN_KEYS: typing.ClassVar[tuple[str, ...]] = ("coverage", "cuda_graphs")
    MODEL_KEYS: typing.ClassVar[tuple[str, ...]] = (
        "hidden", "embed", "neighbourhood", "encoder", "q_word",
    )
    RESUMABLE_KEYS: typing.ClassVar[tuple[str, ...]] = (
        *TrainConfig.RESUMABLE_KEYS, "feature_cache", "beam_size",
    )

    def input_paths(self) -> list[str]:
        return [p for p in (self.data_dir, self.karpathy_json, self.image_dir,
                            self.encoder_weights, self.feature_cache) if p]

    def validate(self) -> CaptionConfig:
        need(self.method != "cnn", "method: cnn is a classifier; captioning needs attention "
             "(var, var+c, wsram, wsram+c, wsram+q, wsram+q+c, vimco)")
        super().validate()
        need(self.coverage == 0, "coverage: not defined for captioning; leave it 0")
        need(self.dataset in ("scenes", "karpathy"),
             f"dataset: expected scenes or karpathy, got {self.dataset!r}")
        if self.dataset == "karpathy":
            need(bool(self.karpathy_json) and bool(self.image_dir),
                 "dataset karpathy: give --karpathy-json FILE and --image-dir DIR")
            need(self.encoder != "digits",
                 "dataset karpathy: photographs need a torchvision encoder "
                 "(--encoder resnet18|resnet34|resnet50 with --encoder-weights FILE)")
        need(self.encoder in ENCODERS,
             f"encoder: expected one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        need(self.encoder == "digits" or bool(self.encoder_weights),
             f"encoder {self.encoder}: give --encoder-weights FILE (nothing is downloaded)")
        need(self.image_size >= 32, f"image_size: must be >= 32, got {self.image_size}")
        for name in ("num_train", "num_val", "num_test"):
            need(getattr(self, name) >= 1, f"{name}: must be >= 1, got {getattr(self, name)}")
        need(self.min_count >= 1, f"min_count: must be >= 1, got {self.min_count}")
        need(self.max_len >= 3, f"max_len: must be >= 3 (<bos>, a word, <eos>), got {self.max_len}")
        need(self.encoder_steps >= 0, f"encoder_steps: must be >= 0, got {self.encoder_steps}")
        need(self.hidden >= 1 and self.embed >= 1, "hidden, embed: must be >= 1")
        need(self.neighbourhood >= 1, f"neighbourhood: must be >= 1, got {self.neighbourhood}")
        need(self.loc_std > 0, f"loc_std: must be > 0, got {self.loc_std}")
        need(self.q_word in ("current", "preceding"),
             f"q_word: expected current or preceding, got {self.q_word!r}")
        need(self.beam_size >= 1, f"beam_size: must be >= 1, got {self.beam_size}")
        return self
