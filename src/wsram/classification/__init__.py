"""The classification task: digits on a canvas, read a few glimpses at a time.

- :mod:`.config`: :class:`ClassificationConfig`, every ``wsram train`` option, and
  :func:`make_config`;
- :mod:`.task`: :class:`ClassificationTask` for the training loop, :func:`build_model`;
- :mod:`.model` (the attention model), :mod:`.cnn` (the whole-canvas baseline),
  :mod:`.glimpse` (the sensor), :mod:`.data` (canvases, own images, the splits);
- :mod:`.evaluate` (the three test errors), :mod:`.plots` (figures), :mod:`.predict`,
  :mod:`.cost` (``wsram cost``), :mod:`.commands` (its subcommands), :mod:`.migrate`.

Importing it registers the task (``wsram.registry``).
"""

from wsram.classification.commands import add_commands
from wsram.classification.config import ClassificationConfig, make_config
from wsram.classification.data.splits import check_inputs, test_set
from wsram.classification.evaluate import evaluate_run, summary_lines, test_errors
from wsram.classification.migrate import migrate_config
from wsram.classification.model import AttentionModel
from wsram.classification.plots import GLIMPSES
from wsram.classification.task import ClassificationTask, build_model
from wsram.registry import register
from wsram.task import TaskSpec

SPEC = register(TaskSpec(
    name="classification", noun="classification", command="wsram",
    config_class=ClassificationConfig, task_class=ClassificationTask,
    add_commands=add_commands, summary_lines=summary_lines, migrate=migrate_config,
    check_inputs=check_inputs, run_files=(GLIMPSES,), stackable=True,
))

__all__ = ["SPEC", "AttentionModel", "ClassificationConfig", "ClassificationTask",
           "build_model", "evaluate_run", "make_config", "test_errors", "test_set"]
