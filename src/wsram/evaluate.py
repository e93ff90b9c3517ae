"""Former home of ``evaluate_run`` and ``test_errors``: kept so that scripts written before
the classification/captioning layout keep working. New code imports them from
:mod:`wsram.classification`."""

from wsram.classification.evaluate import evaluate_run, test_errors

__all__ = ["evaluate_run", "test_errors"]
