"""The captioning task (METHOD.md, "Captioning"): a fixed encoder's features, a hard
attention decoder, BLEU and CIDEr.

- :mod:`.config`: :class:`CaptionConfig`, every ``wsram caption train`` option;
- :mod:`.task`: :class:`CaptionTask` for the training loop;
- :mod:`.model` (the decoder), :mod:`.encoder` (the fixed encoder), :mod:`.vocab` (the
  tokeniser and vocabulary), :mod:`.scenes` (the embedded dataset: captioned scenes of
  MNIST digits), :mod:`.karpathy` (Karpathy's split files: Flickr8k, Flickr30k, COCO);
- :mod:`.evaluate` (BLEU-1..4 and CIDEr via pycocoevalcap, an optional extra imported only
  when scoring: :mod:`.bleu`), :mod:`.plots` (figures), :mod:`.commands` (its
  subcommands), :mod:`.migrate`.

Importing it registers the task (``wsram.registry``).
"""

from wsram.captioning.bleu import corpus_bleu
from wsram.captioning.commands import add_commands
from wsram.captioning.config import CaptionConfig
from wsram.captioning.evaluate import CAPTIONS, summary_lines
from wsram.captioning.karpathy import KarpathyItem, load_image, load_karpathy
from wsram.captioning.migrate import migrate_config
from wsram.captioning.plots import SHOW
from wsram.captioning.scenes import (
    DIGIT_WORDS,
    REGIONS,
    SIZE_WORDS,
    CaptionSet,
    SceneSpec,
    make_scene_splits,
    make_scenes,
)
from wsram.captioning.task import ENCODER_FILE, CaptionTask
from wsram.captioning.vocab import SPECIALS, Vocabulary, tokenize
from wsram.registry import register
from wsram.task import TaskSpec

SPEC = register(TaskSpec(
    name="captioning", noun="caption", command="wsram caption",
    config_class=CaptionConfig, task_class=CaptionTask,
    add_commands=add_commands, summary_lines=summary_lines, migrate=migrate_config,
    help="image captioning with hard attention (train, evaluate, show, plot)",
    run_files=(ENCODER_FILE, CAPTIONS, SHOW),
))

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
