"""Image decoding and the preprocessing every stage shares.

One :class:`PreprocessConfig` travels with each cache, checkpoint and exported
model, so training, evaluation and serving turn an image into the same tensor:

1. :func:`decode_image` reads any common format into RGB ``uint8`` (grayscale,
   palette, RGBA, CMYK and 16-bit images are converted, not rejected);
2. :func:`prepare` takes a centred square crop (the PBC cell of interest sits
   at the centre) and resizes it to ``image_size``; with ``framing="cell"`` it
   first looks for the stained cell (:mod:`bloodcell.core.locate`) and frames
   it so it fills ``cell_share`` of the input, falling back to the centre crop
   when it finds none (:func:`prepare_with_info` says which it did);
3. :func:`normalize` scales to ``[0, 1]`` and applies the mean/std, channels
   first, on the fly.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bloodcell.core.classes import CLASSES
from bloodcell.core.errors import ConfigError, DataError
from bloodcell.core.locate import centre_box, crop_box, locate_cell

#: Images with more pixels than this are refused as possible decompression bombs.
MAX_PIXELS = 50_000_000

#: JPEGs with more pixels than this may be decoded at 1/2, 1/4 or 1/8 scale (a real
#: cell image is about 130,000 pixels, so cell images always decode at full scale).
DRAFT_ABOVE = 1_000_000

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: How the crop is placed: ``centre`` (the centred square, as in PBC) or ``cell`` (around the
#: located cell, scaled so the cell fills ``cell_share`` of it).
FRAMINGS = ("centre", "cell")

#: How pixel values are scaled: ``dataset`` (the fixed per-channel ``mean``/``std``) or ``image``
#: (each image standardised per channel by its own mean and standard deviation, which undoes a
#: lab's colour cast, white balance, stain intensity and contrast before the network sees it).
NORMALIZATIONS = ("dataset", "image")

#: Smallest per-channel standard deviation divided by under ``image`` normalization (on the
#: ``[0, 1]`` scale), so a flat image is not blown up into amplified noise.
MIN_IMAGE_STD = 0.02


#: Largest ``crop_fraction``: a square four times the image's shorter side.
MAX_CROP_FRACTION = 4.0
#: The eight symmetries of the square: (number of 90° rotations, horizontal flip), identity first.
#: A cell on a smear has no preferred orientation, so each is an equally valid view (test-time augmentation).
TTA_VIEWS: tuple[tuple[int, bool], ...] = tuple((k, f) for f in (False, True) for k in range(4))


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes a model input.

    Parameters
    ----------
    image_size : int
        Side of the square model input, in pixels.
    crop_fraction : float
        Side of the centred square crop as a fraction of the image's shorter
        side, taken before resizing (1.0 keeps the whole short side). Above 1
        (up to :data:`MAX_CROP_FRACTION`) the square is larger than the image
        and the slide's background colour fills around it: a zoom-out, for
        images whose cells fill more of the frame than the model's training
        images did (``bloodcell adapt`` sets it from the cells it is given).
    mean, std : tuple of float
        Per-channel normalization on the ``[0, 1]`` scale.
    class_names : tuple of str
        Output classes, in the order of the model's logits.
    framing : {"centre", "cell"}
        ``centre`` crops the centred square; ``cell`` crops a square around
        the located cell (see :mod:`bloodcell.core.locate`), falling back to
        the centred square when no cell is found.
    cell_share : float, optional
        With ``framing="cell"``: the side of the cell's stained part as a
        share of the crop's side, as measured on the training images by
        :func:`bloodcell.core.locate.typical_share`. Required then, unset
        otherwise.
    """

    image_size: int = 128
    crop_fraction: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: tuple[str, ...] = field(default=CLASSES)
    framing: str = "centre"
    cell_share: float | None = None
    normalization: str = "dataset"

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or not 8 <= self.image_size <= 2048:
            raise ConfigError(
                f"image_size must be an integer from 8 to 2048, got {self.image_size!r}. "
                "Example: image_size=128."
            )
        if not 0.1 <= float(self.crop_fraction) <= MAX_CROP_FRACTION:
            raise ConfigError(
                f"crop_fraction must be between 0.1 and {MAX_CROP_FRACTION:g}, got {self.crop_fraction!r}. "
                "Example: crop_fraction=0.9 keeps the central 90% of the shorter side; 1.5 zooms out."
            )
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ConfigError(
                f"mean and std need three values each (std > 0), got mean={self.mean!r}, "
                f"std={self.std!r}."
            )
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "crop_fraction", float(self.crop_fraction))
        self._check_framing()
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(
                f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}."
            )

    def _check_framing(self) -> None:
        if self.framing not in FRAMINGS:
            raise ConfigError(f"framing must be one of {', '.join(FRAMINGS)}, got {self.framing!r}.")
        if self.framing == "centre":
            if self.cell_share is not None:
                raise ConfigError("cell_share applies only to framing='cell'; leave it unset for framing='centre'.")
            return
        if self.cell_share is None or not 0.05 <= float(self.cell_share) <= 1.0:
            raise ConfigError(
                f"framing='cell' needs cell_share between 0.05 and 1.0, got {self.cell_share!r}. "
                "Measure it on training images with bloodcell.core.locate.typical_share."
            )
        object.__setattr__(self, "cell_share", float(self.cell_share))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"], d["class_names"] = list(self.mean), list(self.std), list(self.class_names)
        if self.framing == "centre":  # written as before, so earlier versions still read centre models
            del d["framing"], d["cell_share"]
        if self.normalization == "dataset":  # likewise: earlier versions read dataset-normalized models
            del d["normalization"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(
                f"Unknown preprocessing keys {sorted(unknown)}; expected some of {sorted(known)}."
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def pixel_key(self) -> str:
        """Hash of the settings that change cached pixels (size, crop and framing)."""
        settings = {"image_size": self.image_size, "crop_fraction": round(self.crop_fraction, 6)}
        if self.framing != "centre":  # centre keys stay as they were, so existing caches are reused
            settings.update(framing=self.framing, cell_share=round(self.cell_share, 6))
        return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]


def _open(source: str | Path | bytes, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except FileNotFoundError:
        raise DataError(f"{name}: file not found. Check the path.") from None
    except IsADirectoryError:
        raise DataError(f"{name}: is a folder, not an image file.") from None
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        if isinstance(e, UnidentifiedImageError):
            raise DataError(
                f"{name}: not a readable image (unknown or corrupt format). "
                "Remove the file or replace it with a PNG/JPEG/TIFF/BMP image."
            ) from None
        raise DataError(f"{name}: image is too large to decode safely ({e}).") from None
    except PermissionError:
        raise DataError(f"{name}: permission denied. Make the file readable or leave it out.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # Pillow's plugins raise these on damaged headers
        raise DataError(f"{name}: not a readable image ({e}). Remove the file or replace it with an intact copy.") from None
    _check_pixels(img, name, MAX_PIXELS)
    return img


def _check_pixels(img: Image.Image, name: str, limit: int) -> None:
    w, h = img.size
    if w * h > limit:
        if limit >= MAX_PIXELS:
            raise DataError(
                f"{name}: image is {w}x{h} = {w * h:,} pixels, over the {MAX_PIXELS:,}-pixel "
                "decompression-bomb limit. Downscale it before classifying a single cell."
            )
        raise DataError(
            f"{name}: image is {w}x{h} = {w * h:,} pixels, over the limit of {limit:,} pixels per image "
            "(a single-cell image is about 130,000). Crop or downscale it to the cell."
        )


def _draft(img: Image.Image, need: int | None) -> None:
    """Let a large JPEG decode at 1/2, 1/4 or 1/8 scale, keeping its shorter side at least ``need``."""
    w, h = img.size
    if need and img.format == "JPEG" and w * h > DRAFT_ABOVE and min(w, h) >= 2 * need:
        img.draft(None, (need, need))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr = ((arr - lo) * scale).round().astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(
    source: str | Path | bytes, name: str | None = None, *, max_pixels: int | None = None, need: int | None = None
) -> np.ndarray:
    """Decode an image file (path or bytes) to an RGB ``uint8`` array ``(H, W, 3)``.

    Parameters
    ----------
    source : str, Path or bytes
        The image file or its bytes.
    name : str, optional
        How the file is named in error messages.
    max_pixels : int, optional
        Largest image accepted, in pixels (default :data:`MAX_PIXELS`), checked
        from the file header before the pixels are decoded (for a large JPEG,
        at the reduced scale it decodes at).
    need : int, optional
        Shortest side the caller needs: a JPEG over :data:`DRAFT_ABOVE` pixels
        is decoded at the smallest 1/2, 1/4 or 1/8 scale keeping it.

    Raises
    ------
    DataError
        Naming the file, when it is missing, not an image, truncated, or over
        the pixel limit.
    """
    name = name or (str(source) if not isinstance(source, bytes) else "<uploaded bytes>")
    img = _open(source, name)
    _draft(img, need)
    if max_pixels is not None:
        _check_pixels(img, name, max_pixels)
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
        arr = np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e) or type(e).__name__
        hint = "The file is truncated or corrupt" if "truncated" in msg or "broken" in msg else "The file cannot be decoded"
        raise DataError(f"{name}: {hint} ({msg}). Re-export or remove it.") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise DataError(f"{name}: decoded to an unexpected shape {arr.shape}; expected (H, W, 3).")
    return arr


def center_crop_box(width: int, height: int, crop_fraction: float) -> tuple[int, int, int, int]:
    """The centred square crop box (left, top, right, bottom) for an image size."""
    return centre_box(width, height, crop_fraction)


def prepare_with_info(image: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, str, tuple[int, int, int, int]]:
    """Crop and resize an RGB ``uint8`` image to ``(size, size, 3)``, saying how it was framed.

    Returns
    -------
    array : ndarray
        The prepared ``uint8`` image.
    framing : {"cell", "centre"}
        ``cell`` when the crop was placed around a located cell, ``centre``
        when it is the centred square (always so for ``framing="centre"``
        configs, and the fallback when no cell was found).
    box : tuple of int
        The crop (left, top, right, bottom) in the image's pixels; with
        ``cell`` framing it may reach past the image, where the slide's
        background colour fills in.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(
            f"prepare expects an RGB uint8 array (H, W, 3), got dtype {image.dtype} and shape {image.shape}."
        )
    h, w = image.shape[:2]
    size = (cfg.image_size, cfg.image_size)
    if cfg.framing == "cell":
        found = locate_cell(image, cfg.cell_share, cfg.crop_fraction)
        if found.found:
            return _resized(Image.fromarray(crop_box(image, found.box)), size), "cell", found.box
    box = center_crop_box(w, h, cfg.crop_fraction)
    if box[0] < 0 or box[1] < 0 or box[2] > w or box[3] > h:
        return _resized(Image.fromarray(crop_box(image, box)), size), "centre", box
    pil = Image.fromarray(image)
    if box != (0, 0, w, h):
        pil = pil.crop(box)
    return _resized(pil, size), "centre", box


def _resized(pil: Image.Image, size: tuple[int, int]) -> np.ndarray:
    if pil.size != size:
        pil = pil.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(pil, dtype=np.uint8)


def prepare(image: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Crop (centred, or around the located cell with ``framing="cell"``) and resize an RGB
    ``uint8`` image to ``(size, size, 3)``."""
    return prepare_with_info(image, cfg)[0]


def input_need(cfg: PreprocessConfig) -> int:
    """Shortest image side :func:`prepare` can use: twice the model input over the crop fraction
    (four times as much with cell framing, where a cell may fill a quarter of the shorter side)."""
    need = int(np.ceil(2 * cfg.image_size / cfg.crop_fraction))
    return need if cfg.framing == "centre" else 4 * need


def load_prepared(source: str | Path | bytes, cfg: PreprocessConfig, name: str | None = None) -> np.ndarray:
    """Decode and prepare in one step: the path every stage shares."""
    return prepare(decode_image(source, name), cfg)


def tta_views(images: np.ndarray) -> list[np.ndarray]:
    """The eight views of ``uint8`` NHWC images in :data:`TTA_VIEWS` order: mirrored left-right, then turned
    (as the PyTorch backend turns NCHW tensors)."""
    return [np.ascontiguousarray(np.rot90(images[:, :, ::-1] if flip else images, k, axes=(1, 2)))
            for k, flip in TTA_VIEWS]


def normalize(batch, cfg: PreprocessConfig):
    """``uint8`` NHWC batch (NumPy or torch) to normalized float32 NCHW of the same kind."""
    if isinstance(batch, np.ndarray):
        x = batch.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        if cfg.normalization == "image":
            mean = x.mean(axis=(2, 3), keepdims=True)
            std = np.maximum(x.std(axis=(2, 3), keepdims=True), MIN_IMAGE_STD)
        else:
            mean = np.asarray(cfg.mean, np.float32).reshape(1, 3, 1, 1)
            std = np.asarray(cfg.std, np.float32).reshape(1, 3, 1, 1)
        return np.ascontiguousarray((x - mean) / std)
    return normalize_unit(batch.permute(0, 3, 1, 2).float().div_(255.0), cfg)


def normalize_unit(x, cfg: PreprocessConfig):
    """``[0, 1]`` float NCHW torch tensor to the model's input (the torch half of :func:`normalize`)."""
    if cfg.normalization == "image":
        std, mean = _torch_std_mean(x)
        return (x - mean) / std.clamp_min(MIN_IMAGE_STD)
    import torch  # deferred: a torch tensor means torch is loaded; the onnxruntime path never gets here

    mean = torch.tensor(cfg.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _torch_std_mean(x):
    import torch  # deferred, as above

    return torch.std_mean(x, dim=(2, 3), keepdim=True, correction=0)
