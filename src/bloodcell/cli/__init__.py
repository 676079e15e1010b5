"""The ``bloodcell`` command line: :mod:`bloodcell.cli.main` and one module per verb."""
