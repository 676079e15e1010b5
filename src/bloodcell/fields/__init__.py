"""Whole smear fields: find every white cell (and platelet) in a microscope field, classify each
with the single-cell model and count them.

* :mod:`~bloodcell.fields.detect` finds the cells (colour deconvolution, red-cell scale);
* :mod:`~bloodcell.fields.analyse` crops each cell as a PBC image shows one, classifies and counts;
* :mod:`~bloodcell.fields.tiles` counts a cell in the overlap of two tiles once;
* :mod:`~bloodcell.fields.output` and :mod:`~bloodcell.fields.overlay` write tables and pictures;
* :mod:`~bloodcell.fields.measure` scores found boxes against hand-drawn ones;
* :mod:`~bloodcell.fields.api` is ``bloodcell predict --fields``.
"""
