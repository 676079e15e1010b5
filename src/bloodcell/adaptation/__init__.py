"""Adapt a model to a lab's own labelled cells (``bloodcell adapt``).

:func:`adapt` holds out part of the lab's cells (:mod:`~bloodcell.adaptation.holdout`),
retrains the end of each network on the rest (:mod:`~bloodcell.adaptation.tune`,
:mod:`~bloodcell.adaptation.tree`), calibrates the result and refits its
out-of-distribution check on the held-out cells (:mod:`~bloodcell.adaptation.calibrate`),
and writes an ordinary model folder whose card says what it was adapted on.
"""

from bloodcell.adaptation.verb import AdaptResult, adapt

__all__ = ["AdaptResult", "adapt"]
