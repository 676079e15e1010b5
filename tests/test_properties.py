"""Property-based tests of the decoding and reading layer (Hypothesis).

Whatever bytes arrive as an image file, npz archive or manifest, the outcome is a
result, a reported skip, or a ``BloodcellError`` whose message names the file;
never another exception. Example counts are in each test's name.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bloodcell.core.errors import BloodcellError
from bloodcell.core.preprocess import PreprocessConfig
from bloodcell.data import load_arrays, open_dataset

FORMATS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "GIF": ".gif", "WEBP": ".webp"}
MODES = ("RGB", "L", "RGBA", "P")
PRE = PreprocessConfig(image_size=8)
QUICK = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def _own_cache():
    with tempfile.TemporaryDirectory() as tmp:
        old = os.environ.get("BLOODCELL_CACHE")
        os.environ["BLOODCELL_CACHE"] = tmp
        yield
        if old is None:
            os.environ.pop("BLOODCELL_CACHE")
        else:
            os.environ["BLOODCELL_CACHE"] = old


def _encoded(fmt: str, mode: str, width: int, height: int, seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    img = Image.fromarray(rgb).convert(mode)
    if fmt == "JPEG" and mode in ("RGBA", "P"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@st.composite
def damaged_images(draw):
    """A small image in one of the supported formats, then truncated, overwritten or extended at random."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    data = bytearray(_encoded(fmt, draw(st.sampled_from(MODES)), draw(st.integers(1, 24)), draw(st.integers(1, 24)),
                              draw(st.integers(0, 2**16))))
    how = draw(st.sampled_from(("truncate", "overwrite", "insert", "intact")))
    if how == "truncate":
        del data[draw(st.integers(0, len(data))):]
    elif how == "overwrite":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif how == "insert":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=32))
    return fmt, how, bytes(data)


def _names_file(err: BloodcellError, path: Path) -> bool:
    return path.name in str(err)


def _read_folder_image(data: bytes, suffix: str) -> None:
    """Decode one file of a class folder directly and through the cache: a result, a skip or a named error."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "d", "ig", f"cell{suffix}")
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        ds = open_dataset(path.parents[1])
        try:
            arr = ds.read(0)
            assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
        except BloodcellError as e:
            assert _names_file(e, path), str(e)
        try:
            arrays = load_arrays(ds, PRE, workers=1, progress=False)
        except BloodcellError as e:
            assert _names_file(e, path), str(e)
        else:
            assert arrays.images.shape == (1, 8, 8, 3) and arrays.skipped == []


@settings(QUICK, max_examples=60)
@given(st.binary(max_size=512), st.sampled_from(sorted(set(FORMATS.values()))))
def test_random_bytes_as_an_image_file_60_examples(data, suffix):
    _read_folder_image(data, suffix)


@settings(QUICK, max_examples=90)
@given(damaged_images())
def test_truncated_and_corrupted_images_of_every_format_90_examples(case):
    fmt, _, data = case
    _read_folder_image(data, FORMATS[fmt])


_DTYPES = st.sampled_from(["uint8", "int8", "int16", "uint16", "int64", "float16", "float32", "float64", "bool",
                           "complex64", "<U3", "|S2", "object"])


@st.composite
def npz_arrays(draw):
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=5)))
    dtype = draw(_DTYPES)
    if dtype == "object":
        return np.empty(shape, object)
    if dtype in ("<U3", "|S2"):
        return np.full(shape, draw(st.sampled_from(["ig", "1", "x", ""])), dtype)
    if dtype.startswith(("float", "complex")):
        values = st.floats(allow_nan=True, allow_infinity=True, width=16 if dtype == "float16" else 32)
        return np.full(shape, draw(values)).astype(dtype)
    return np.random.default_rng(draw(st.integers(0, 99))).integers(0, 9, shape).astype(dtype)


@settings(QUICK, max_examples=150)
@given(st.dictionaries(st.sampled_from(["images", "labels", "class_names", "train_images", "train_labels",
                                        "val_images", "test_labels", "other"]), npz_arrays(), max_size=4))
def test_random_npz_arrays_of_any_shape_and_dtype_150_examples(arrays):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "blood.npz")
        np.savez(path, **arrays)
        try:
            ds = open_dataset(path)
        except BloodcellError as e:
            assert _names_file(e, path), str(e)
            return
        assert ds.arrays.dtype == np.uint8 and ds.arrays.ndim == 4 and ds.arrays.shape[-1] == 3
        assert len(ds) == len(ds.arrays) > 0
        arrays = load_arrays(ds, PRE, workers=1, progress=False, require_labels=False)
        assert len(arrays) == len(ds)


@settings(QUICK, max_examples=60)
@given(st.binary(max_size=300))
def test_random_bytes_as_an_npz_file_60_examples(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "blood.npz")
        path.write_bytes(data)
        with pytest.raises(BloodcellError) as info:
            open_dataset(path)
        assert _names_file(info.value, path)


_CELLS = st.one_of(
    st.sampled_from(["a.png", "sub/b.png", "missing.png", "", " ", "ig", "IG", "neutrophil", "blast", "train",
                     "validation", "holdout", "path", "label", "split", "../a.png", "/nonexistent/x.png", "\"", "a,b",
                     "d", "c.txt"]),
    st.text(max_size=8),
)


@st.composite
def manifests(draw):
    header = draw(st.lists(st.sampled_from(["path", "label", "split", "source_id", "extra", ""]), min_size=0,
                           max_size=5))
    rows = draw(st.lists(st.lists(_CELLS, max_size=6), max_size=8))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    text = buf.getvalue()
    if draw(st.booleans()):
        text = draw(st.text(max_size=200))
    return text, draw(st.sampled_from([".csv", ".tsv"])), draw(st.sampled_from(["utf-8", "latin-1", "utf-16"]))


@settings(QUICK, max_examples=80)
@given(manifests())
def test_random_manifests_80_examples(case):
    text, suffix, encoding = case
    with tempfile.TemporaryDirectory() as tmp:
        Image.new("RGB", (4, 4), (200, 10, 10)).save(Path(tmp, "a.png"))
        Path(tmp, "sub").mkdir()
        Image.new("RGB", (4, 4), (10, 200, 10)).save(Path(tmp, "sub", "b.png"))
        Path(tmp, "d").mkdir()
        Path(tmp, "c.txt").write_text("not an image")
        path = Path(tmp, f"list{suffix}")
        path.write_bytes(text.encode(encoding, errors="replace"))
        try:
            ds = open_dataset(path)
        except BloodcellError as e:
            assert _names_file(e, path), str(e)
            return
        assert len(ds) > 0 and all(s.path.is_file() for s in ds.samples)
        try:
            load_arrays(ds, PRE, workers=1, progress=False, require_labels=False)
        except BloodcellError as e:
            assert _names_file(e, path), str(e)
