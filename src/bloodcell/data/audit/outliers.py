"""Outlier scores: how unlike the rest of its dataset an image looks.

Method (documented in the audit report as well):

1. Each image is described by the appearance features of
   :data:`bloodcell.data.audit.features.FEATURE_NAMES` (colour, background share,
   stain amount and position, centre-versus-border contrast, sharpness,
   texture, grey-level entropy), measured on a 64x64 copy.
2. Every feature is standardized robustly over the dataset: minus its median,
   divided by its median absolute deviation (scaled by 1.4826 to match a
   standard deviation), so a few extreme images do not set the scale.
3. An image's raw score is its mean Euclidean distance to its ``k`` nearest
   other images (default ``k = 10``) in that space; exact copies count once.
4. The score is the raw score divided by the dataset's median raw score:
   ``1`` is a typical image, ``6`` an image six times further from its nearest
   neighbours than usual.

A nearest-neighbour distance, unlike a distance to one global centre, does
not penalize a whole sub-population that is merely different (a staining
batch, a second microscope): such images have close neighbours among
themselves. What scores high is an image with no close neighbours at all,
such as a blank frame, a photograph of something else, a colour-inverted or
badly exposed image, a frame without a cell at its centre, or a clump of
cells. On the PBC release, non-cell test images score above 13 while the
most unusual genuine images score about 5 to 8.
"""

from __future__ import annotations

import numpy as np

#: Neighbours averaged in the raw score.
DEFAULT_NEIGHBORS = 10
#: Scores above this are flagged (and left out of splits unless asked otherwise).
DEFAULT_THRESHOLD = 6.0
#: Fewer distinct images than this and no scores are computed.
MIN_IMAGES = 20


def robust_standardize(features: np.ndarray) -> np.ndarray:
    """Features minus their median, over 1.4826 x their median absolute deviation."""
    med = np.median(features, axis=0)
    dev = np.abs(features - med)
    scale = 1.4826 * np.median(dev, axis=0)
    fallback = 1.2533 * dev.mean(axis=0)
    scale = np.where(scale > 1e-9, scale, np.where(fallback > 1e-9, fallback, 1.0))
    return (features - med) / scale


def outlier_scores(features: np.ndarray, neighbors: int = DEFAULT_NEIGHBORS) -> np.ndarray | None:
    """Outlier score of each row of ``features`` (distinct images); ``None`` if too few rows.

    Parameters
    ----------
    features : numpy.ndarray
        ``(N, F)`` appearance features, one row per distinct image.
    neighbors : int
        ``k`` of the k-nearest-neighbour distance.

    Returns
    -------
    numpy.ndarray or None
        ``float64`` ``(N,)`` scores, ``1.0`` for a typical image.
    """
    from sklearn.neighbors import NearestNeighbors  # deferred: scikit-learn takes a second to import, only scoring needs it

    n = len(features)
    if n < MIN_IMAGES:
        return None
    z = robust_standardize(np.asarray(features, np.float64))
    k = min(neighbors, n - 1)
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z)
    raw = dist[:, 1:].mean(axis=1)
    typical = float(np.median(raw))
    return raw / typical if typical > 0 else np.zeros(n)


def strongest_features(z_row: np.ndarray, names, n: int = 2) -> list[str]:
    """The ``n`` features that deviate most in a robustly standardized row, e.g. ``'saturation -9.1'``."""
    order = np.argsort(-np.abs(z_row))[:n]
    return [f"{names[i]} {z_row[i]:+.1f}" for i in order]
