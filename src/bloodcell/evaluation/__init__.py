"""Evaluation: how far to trust a model, in numbers and figures.

The verbs, each the code its ``bloodcell`` command runs (:mod:`~bloodcell.evaluation.verbs`):
:func:`evaluate`, :func:`calibrate`, :func:`compare` and :func:`report`.

* :mod:`~bloodcell.evaluation.metrics` - accuracy, per-class metrics, confusion
  matrix, ROC-AUC, log loss, bootstrap intervals, partial label sets;
* :mod:`~bloodcell.evaluation.calibration` - ECE, temperature scaling,
  abstention thresholds and accuracy-coverage curves;
* :mod:`~bloodcell.evaluation.labelled` - read a labelled dataset for a model;
* :mod:`~bloodcell.evaluation.scoring` - run a model over a dataset, giving an
  :class:`~bloodcell.evaluation.results.Evaluation`;
* :mod:`~bloodcell.evaluation.fit_calibration` - fit and store a model's calibration;
* :mod:`~bloodcell.evaluation.plots` (style in :mod:`~bloodcell.evaluation.figure_style`,
  grids in :mod:`~bloodcell.evaluation.image_grids`) and
  :mod:`~bloodcell.evaluation.html_report` - figures and the HTML report;
* :mod:`~bloodcell.evaluation.comparison` and :mod:`~bloodcell.evaluation.compare_plot` -
  one table and one bar plot over several models;
* :mod:`~bloodcell.evaluation.summary_text` - the summaries printed on the terminal.
"""

from bloodcell.evaluation.results import Evaluation
from bloodcell.evaluation.verbs import Comparison, Report, calibrate, choose_device, compare, evaluate, report

__all__ = ["Comparison", "Evaluation", "Report", "calibrate", "choose_device", "compare", "evaluate", "report"]
