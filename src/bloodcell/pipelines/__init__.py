"""Pipelines: the default model and the model zoo, from a split manifest to the packaged model
and the README's table, resumable.

``bloodcell pipeline default`` (``make train-default``)
    trains the default model's members side by side, calibrates each on the validation
    split, combines them, calibrates the ensemble (plain and with test-time augmentation),
    distils it into one network (on every core), calibrates that, evaluates it once on the test
    split and packages it as the default model, with the ensemble inside for ``bloodcell adapt``.
``bloodcell pipeline zoo`` (``make zoo``)
    trains the study CNNs and the three-architecture ensemble and calibrates every model.
``bloodcell pipeline zoo-table`` (``make zoo-table``)
    compares every zoo model, each default member, their ensemble and the distilled network on the
    test split.

What each pipeline trains is one spec (:mod:`bloodcell.pipelines.spec`); a rerun after a stop
skips the finished members and resumes the interrupted ones (:mod:`bloodcell.pipelines.members`).
"""

from __future__ import annotations

from bloodcell.core.lazy import lazy_names

#: The pipelines :func:`pipeline` runs.
PIPELINES = ("default", "zoo", "zoo-table")

_LAZY = {"pipeline": "bloodcell.pipelines.verb", "MemberFailed": "bloodcell.pipelines.members"}


# the pipelines' steps load PyTorch; the names load on first use so the CLI's parser stays light
__getattr__ = lazy_names(__name__, _LAZY)


__all__ = ["PIPELINES", "MemberFailed", "pipeline"]
