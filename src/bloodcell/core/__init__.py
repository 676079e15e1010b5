"""Shared basics of every stage: class names, errors, settings, image preprocessing, statistics,
atomic file writes, the model folder and which model to use. Imports nothing else of bloodcell."""

__version__ = "0.1.0"
