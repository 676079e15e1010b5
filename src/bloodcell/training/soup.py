"""``bloodcell soup``: average the weights of networks fine-tuned from one start into one network,
optionally re-estimating its batch-norm statistics on training images (see :mod:`bloodcell.networks.soup`)."""

from __future__ import annotations

from pathlib import Path

from bloodcell.data.cache import load_arrays, sample_rows
from bloodcell.networks.soup import average_weights

#: Training images the batch-norm statistics are re-estimated on (eight views each).
BATCH_NORM_IMAGES = 3000


def soup(models: list[str | Path], output: str | Path, *, weights: list[float] | None = None,
         batch_norm_data: str | Path | None = None, batch_norm_images: int = BATCH_NORM_IMAGES, seed: int = 0,
         force: bool = False, progress: bool = False) -> Path:
    """Average networks' weights into one model folder (``bloodcell soup``).

    Parameters
    ----------
    models : list of str or Path
        Two or more model folders of one architecture and the same preprocessing, best
        fine-tuned from the same pretrained weights; an ensemble folder stands for its members.
    output : str or Path
        The model folder to write (uncalibrated: run ``bloodcell calibrate`` on it).
    weights : list of float, optional
        One positive weight per given folder (scaled to sum 1; default: equal; an ensemble's
        members share its weight as the ensemble weights them).
    batch_norm_data : str or Path, optional
        A dataset or split manifest (its ``train`` rows): the soup's batch-norm statistics are
        re-estimated on up to ``batch_norm_images`` of its images (seeded by ``seed``) instead of
        averaged. Needed when the networks' statistics differ, as a network's and its fine-tune's
        on other labs' looks do.
    force : bool
        Replace ``output`` if it exists.
    progress : bool
        Show progress bars on stderr while the images are read and the statistics re-estimated.

    Returns
    -------
    Path
        ``output``, a model folder every command accepts.

    Raises
    ------
    ConfigError
        Fewer than two networks, bad weights or image count, or ``output`` exists (without ``force``)
        or is a given folder.
    ModelError
        A folder is not a readable model, or the networks differ in architecture, input or tensors.
    DataError
        ``batch_norm_data`` cannot be read.
    """
    images = None
    if batch_norm_data is not None:  # every check of the data before any weight is read
        rows = sample_rows(batch_norm_data, batch_norm_images, seed, option="--batch-norm-images")

        def images(preprocess):
            return load_arrays(rows, preprocess, require_labels=False, progress=progress).images
    return average_weights(models, output, weights=weights, force=force, batch_norm_images=images, progress=progress)
