"""Former home of ``build_model``, ``test_set`` and ``read_metrics``: kept so that scripts
written before the classification/captioning layout keep working. New code imports them
from :mod:`wsram.classification` and :mod:`wsram.run_dir`; ``load_run`` is now
:func:`wsram.tasks.load_run`, which returns the task too."""

from wsram.classification.task import build_model, test_set
from wsram.run_dir import read_metrics

__all__ = ["build_model", "read_metrics", "test_set"]
