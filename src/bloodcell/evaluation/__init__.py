"""Evaluation: how far to trust a model, in numbers and figures.

* :mod:`~bloodcell.evaluation.metrics` - accuracy, per-class metrics, confusion
  matrix, ROC-AUC, log loss, bootstrap intervals, partial label sets;
* :mod:`~bloodcell.evaluation.calibration` - ECE, temperature scaling,
  abstention thresholds and accuracy-coverage curves;
* :mod:`~bloodcell.evaluation.evaluate` - run a model over a dataset;
* :mod:`~bloodcell.evaluation.fit_calibration` - fit and store a model's calibration;
* :mod:`~bloodcell.evaluation.plots` and :mod:`~bloodcell.evaluation.report` - figures and the HTML report;
* :mod:`~bloodcell.evaluation.compare` - one table over several models.
"""
