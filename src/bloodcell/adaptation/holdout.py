"""Which of a lab's labelled cells adapt the model and which are held out to calibrate it.

The rule, per class (stratified, seeded): hold out a quarter of the class's
images, rounded to the nearest whole image (halves up), but at least one; a class with
fewer than :data:`MIN_TO_HOLD_OUT` images gives all of them to fitting and
none to the held-out part (with two images, one for each would leave one to
learn from and one to judge by, which is too little of both). The held-out
images fit the temperature, the abstention threshold and the
out-of-distribution threshold; they never train the network.
"""

from __future__ import annotations

import numpy as np

#: Share of each class held out.
HELD_OUT_SHARE = 0.25
#: A class needs this many images before any is held out.
MIN_TO_HOLD_OUT = 3


def held_out_count(n: int, share: float = HELD_OUT_SHARE) -> int:
    """Images of a class of ``n`` held out: ``round(share * n)``, at least 1, none below :data:`MIN_TO_HOLD_OUT`."""
    if n < MIN_TO_HOLD_OUT:
        return 0
    return int(min(n - 1, max(1, int(share * n + 0.5))))


def split_holdout(labels: np.ndarray, share: float = HELD_OUT_SHARE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(fit, held_out)`` of ``labels``, stratified by class and seeded (see the module's rule).

    Parameters
    ----------
    labels : ndarray of int, shape (N,)
        Class index of each image.
    share : float
        Share of each class held out.
    seed : int
        Seed of the draw.

    Returns
    -------
    fit, held_out : ndarray of int
        Sorted indices into ``labels``.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = held_out_count(len(idx), share)
        held += idx[:k].tolist()
        fit += idx[k:].tolist()
    return np.array(sorted(fit), dtype=np.int64), np.array(sorted(held), dtype=np.int64)
