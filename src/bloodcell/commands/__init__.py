"""One module per CLI verb (see :mod:`bloodcell.cli`)."""
