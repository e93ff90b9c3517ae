"""The classification task: digits on a canvas, read a few glimpses at a time.

- :mod:`.config`: :class:`ClassificationConfig`, every ``wsram train`` option;
- :mod:`.task`: :class:`ClassificationTask` for the training loop, :func:`build_model`,
  :func:`test_set`;
- :mod:`.model` (the attention model), :mod:`.cnn` (the whole-canvas baseline),
  :mod:`.glimpse` (the sensor), :mod:`.data` (digits and canvases);
- :mod:`.evaluate` (the three test errors), :mod:`.plots` (figures), :mod:`.cost`
  (``wsram cost``), :mod:`.compare` (``wsram compare``).
"""

from wsram.classification.config import ClassificationConfig
from wsram.classification.evaluate import evaluate_run, test_errors
from wsram.classification.model import AttentionModel
from wsram.classification.task import ClassificationTask, build_model, test_set

__all__ = ["AttentionModel", "ClassificationConfig", "ClassificationTask", "build_model",
           "evaluate_run", "test_errors", "test_set"]
