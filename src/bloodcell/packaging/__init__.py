"""Packaging: ONNX export (:mod:`~bloodcell.packaging.onnx`), the packaged default model
(:mod:`~bloodcell.packaging.package`) and the model card (:mod:`~bloodcell.packaging.card`).

The Python verbs :func:`export` (``bloodcell export``) and :func:`info` (``bloodcell info``)
live here. ``export`` loads on first use: it needs PyTorch, and the model card (``info``, the
service's ``/v1/model``) is read on the onnxruntime path, which must not load it.
"""

from importlib import import_module

from bloodcell.packaging.card import info

__all__ = ["export", "info"]


def __getattr__(name: str):
    if name == "export":
        return import_module("bloodcell.packaging.exporter").export
    raise AttributeError(f"module 'bloodcell.packaging' has no attribute {name!r}")
