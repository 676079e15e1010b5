"""Exact and near-duplicate groups.

Exact duplicates share the SHA-256 of their bytes. Near-duplicates have
cell-centred perceptual hashes (:func:`bloodcell.data.audit.features.measure`) at
most ``threshold`` bits apart; groups are the connected components of that
relation (single linkage), so a chain of close images forms one group.
"""

from __future__ import annotations

import numpy as np


def hashes_to_words(hex_hashes: list[str], bits: int) -> np.ndarray:
    """Hex hashes of ``bits`` bits as a ``uint64`` array ``(N, ceil(bits / 64))``."""
    words = max(1, (bits + 63) // 64)
    out = np.zeros((len(hex_hashes), words), np.uint64)
    mask = (1 << 64) - 1
    for i, h in enumerate(hex_hashes):
        v = int(h, 16)
        for w in range(words):
            out[i, w] = (v >> (64 * w)) & mask
    return out


def near_pairs(words: np.ndarray, threshold: int, bits: int | None = None, block: int = 2048) -> list[tuple[int, int, int]]:
    """All pairs ``(i, j, distance)`` with ``i < j`` and Hamming distance ``<= threshold``.

    Bits are mapped to +1/-1 so that a matrix product gives ``bits - 2 * distance``
    for every pair at once (BLAS speed, exact in float32 for up to 2**24 bits).
    """
    n = len(words)
    if n < 2:
        return []
    signs = np.unpackbits(words.view(np.uint8), axis=1).astype(np.float32) * 2.0 - 1.0
    total = signs.shape[1]
    pairs: list[tuple[int, int, int]] = []
    min_dot = total - 2 * threshold
    for s in range(0, n, block):
        dots = signs[s:s + block] @ signs[s:].T
        ii, jj = np.nonzero(dots >= min_dot - 0.5)
        keep = jj > ii
        for i, j in zip(ii[keep], jj[keep]):
            pairs.append((s + int(i), s + int(j), int(round((total - dots[i, j]) / 2))))
    return pairs


def components(n: int, edges) -> np.ndarray:
    """Connected-component id (the smallest member index) of each of ``n`` nodes."""
    parent = np.arange(n)

    def find(x):
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for i, j in edges:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)])
