"""Studies: ``wsram compare`` trains the paper's variants on equal terms, over seeds and
learning rates, chooses each method's rate by a stated rule on training data, and
tabulates and plots the results with intervals (paper Figures 2, 3 and 4).

The modules, each importing only those before it:

- :mod:`.plan`: the grid of runs (:class:`~.plan.Run`, :class:`~.plan.Plan`), the families
  that share a chosen rate, the study's recorded config (``study.json``);
- :mod:`.executor`: training the runs, in this process or as parallel subprocesses with
  one progress bar, stopping them on a signal; their test errors;
- :mod:`.results`: one record per run (:class:`~.results.StudyRun`), the rate rules,
  means with intervals and differences between methods (no formatting);
- :mod:`.report`: ``results.md`` tables, ``results.json`` and the figures;
- :mod:`.commands`: the ``wsram compare`` command, registered below;
- :mod:`.convergence`: the tables and figures of the convergence study
  (docs/convergence.md), from its run folders' files.

The study sits above the classification task and the core (training, run folders,
statistics): nothing in them imports it; the command line loads it by name through the
registry (``registry.COMMAND_PACKAGES``).
"""

from wsram.registry import register_commands
from wsram.study.commands import add_commands

register_commands(add_commands)
