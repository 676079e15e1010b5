"""Evaluation: how far to trust a model, in numbers and figures.

* :mod:`~bloodcell.evaluate.metrics` - accuracy, per-class metrics, confusion
  matrix, ROC-AUC, log loss, bootstrap intervals, partial label sets;
* :mod:`~bloodcell.evaluate.calibration` - ECE, temperature scaling,
  abstention thresholds and accuracy-coverage curves;
* :mod:`~bloodcell.evaluate.evaluation` - run a model over a dataset;
* :mod:`~bloodcell.evaluate.fit_calibration` - fit and store a model's calibration;
* :mod:`~bloodcell.evaluate.plots` and :mod:`~bloodcell.evaluate.report` - figures and the HTML report;
* :mod:`~bloodcell.evaluate.compare` - one table over several models.
"""
