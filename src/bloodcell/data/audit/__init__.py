"""Audit a dataset: every file accounted for, duplicates, label conflicts and outliers.

:func:`audit` is ``bloodcell audit``; the measurements live in
:mod:`bloodcell.data.audit.checks`.
"""

from bloodcell.data.audit.run import audit

__all__ = ["audit"]
