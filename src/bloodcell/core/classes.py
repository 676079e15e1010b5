"""The eight classes of a peripheral blood-smear differential and their aliases.

The canonical order follows the PBC release folders and MedMNIST's BloodMNIST
labels (0 = basophil ... 7 = platelet), so integer labels in ``.npz`` files map
onto :data:`CLASSES` by position.
"""

from __future__ import annotations

import difflib
import re

from bloodcell.core.errors import DataError

CLASSES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)

DISPLAY_NAMES: dict[str, str] = {
    "basophil": "Basophil",
    "eosinophil": "Eosinophil",
    "erythroblast": "Erythroblast",
    "ig": "Immature granulocyte",
    "lymphocyte": "Lymphocyte",
    "monocyte": "Monocyte",
    "neutrophil": "Neutrophil",
    "platelet": "Platelet",
}

_ALIASES: dict[str, str] = {
    "ig": "ig",
    "immature granulocyte": "ig",
    "immature granulocytes": "ig",
    "immaturegranulocyte": "ig",
    "immaturegranulocytes": "ig",
    "granulocyte immature": "ig",
    "promyelocyte": "ig",
    "myelocyte": "ig",
    "metamyelocyte": "ig",
    "basophil": "basophil",
    "basophils": "basophil",
    "eosinophil": "eosinophil",
    "eosinophils": "eosinophil",
    "erythroblast": "erythroblast",
    "erythroblasts": "erythroblast",
    "nrbc": "erythroblast",
    "nucleated red blood cell": "erythroblast",
    "nucleated red blood cells": "erythroblast",
    "lymphocyte": "lymphocyte",
    "lymphocytes": "lymphocyte",
    "monocyte": "monocyte",
    "monocytes": "monocyte",
    "neutrophil": "neutrophil",
    "neutrophils": "neutrophil",
    "band neutrophil": "neutrophil",
    "segmented neutrophil": "neutrophil",
    "platelet": "platelet",
    "platelets": "platelet",
    "thrombocyte": "platelet",
    "thrombocytes": "platelet",
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-.]+", " ", name.strip().lower()).strip()


def canonical_class(name: str, *, source: str | None = None) -> str:
    """Return the canonical class name for ``name`` (case and alias insensitive).

    Raises
    ------
    DataError
        If ``name`` matches none of the eight classes; the message lists the
        known names and suggests the closest one.
    """
    key = _key(name)
    if key in _ALIASES:
        return _ALIASES[key]
    if key.replace(" ", "") in _ALIASES:
        return _ALIASES[key.replace(" ", "")]
    close = difflib.get_close_matches(key, list(_ALIASES), n=1, cutoff=0.75)
    hint = f" Did you mean {_ALIASES[close[0]]!r}?" if close else ""
    where = f" in {source}" if source else ""
    raise DataError(
        f"Unknown class name {name!r}{where}. Known classes: {', '.join(CLASSES)} "
        f"(aliases such as 'IG', 'immature_granulocyte', 'thrombocyte' are accepted).{hint} "
        "Rename the folder or label, or leave it out of the dataset."
    )


def class_index(name: str) -> int:
    """Position of a (canonical or alias) class name in :data:`CLASSES`."""
    return CLASSES.index(canonical_class(name))
