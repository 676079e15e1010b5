"""Training augmentation on batches of ``uint8`` images, with per-image randomness.

:class:`BatchAugment` takes a ``uint8`` batch ``(N, 3, H, W)`` and returns
floats in ``[0, 1]`` of the same shape, which then go through the same
normalisation as inference. Each image gets its own random parameters, drawn
from an explicit :class:`torch.Generator`; the work is vectorised over the
batch (one ``grid_sample`` for all geometry, a few tensor ops for colour), so
it costs a small fraction of a training step on a 2-core CPU and runs on the
GPU when training does. (torchvision's v2 transforms draw one parameter set
per call, so on a batch every image would get the same augmentation, and
calling them image by image costs more than the training step itself on 2
cores; the operations below are the same ones, batched.)

The pipeline, in order:

1. geometry, as one affine resampling per image: random resized crop (area
   fraction ``U(resized_crop, 1)``, aspect ratio log-uniform in 3/4..4/3),
   horizontal/vertical flips, a multiple of 90 degrees, and a small rotation
   ``U(-rotate, rotate)`` degrees; uncovered corners are filled by reflection,
   so they look like smear background rather than black;
2. colour jitter: brightness, contrast, saturation (factors ``U(1-s, 1+s)``)
   and hue (a rotation of the chroma plane by ``U(-hue, hue)`` turns);
3. stain jitter in HED space (haematoxylin, eosin, DAB) by Ruifrok-Johnston
   colour deconvolution, as in Tellez et al. 2018 (IEEE TMI 37:2126): each
   stain's optical density is scaled by ``U(1-s, 1+s)`` and shifted by
   ``U(-s, s)``, then converted back to RGB. It imitates differences in
   May-Grünwald-Giemsa staining strength between smears; ``stain_scale``
   multiplies each stain's optical density by ``exp(U(-a, a))`` on top, for
   the wider pale-to-dark range between labs.

Then what differs between microscopes and cameras, each off by default:
white balance (per-channel gains), grey images, defocus blur (Gaussian, random
sigma), low resolution (down- then up-sampling), sensor noise and JPEG-like
8x8 DCT quantisation. Geometry also takes a magnification (``zoom_out`` ..
``zoom_in``, log-uniform) and a translation (``translate``), so the cell of
interest appears at other sizes and off the centre.

Every parameter is drawn in a fixed order, new ones after the older ones, so a
recipe that leaves the new options off gets exactly the images it got before.
Randomness depends only on (seed, epoch, rank, batch index), so a resumed run
repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from bloodcell.core.locate import RGB_FROM_HED
from bloodcell.training.config import AugmentConfig

# Ruifrok & Johnston (2001) stain vectors: rows = optical density of H, E, DAB in RGB (as in scikit-image).
_RGB_FROM_HED = torch.from_numpy(RGB_FROM_HED).to(torch.float64)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_LUMA = (0.299, 0.587, 0.114)
# RGB <-> YIQ: hue rotation is a rotation of the (I, Q) chroma plane.
_YIQ_FROM_RGB = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]], dtype=torch.float64
)
_RGB_FROM_YIQ = torch.linalg.inv(_YIQ_FROM_RGB)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float32) * (hi - lo) + lo


class BatchAugment:
    """Apply an :class:`AugmentConfig` to a ``uint8`` NCHW batch (see module docstring)."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg
        self.zoom = cfg.zoom_out < 1.0 or cfg.zoom_in > 1.0
        self.geometric = (cfg.hflip or cfg.vflip or cfg.rot90 or cfg.rotate > 0 or cfg.resized_crop < 1.0
                          or self.zoom or cfg.translate > 0)
        self.colour = bool(cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue)
        self.stain = cfg.stain > 0 or cfg.stain_scale > 0
        self.camera = bool(cfg.white_balance or cfg.grey or cfg.blur or cfg.noise or cfg.jpeg
                           or cfg.low_resolution < 1.0)

    @property
    def active(self) -> bool:
        return self.geometric or self.colour or self.stain or self.camera

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a uint8 batch (N, 3, H, W), got {batch.dtype} {tuple(batch.shape)}")
        x = batch.float().div_(255.0)
        p = self._draw(x.shape[0], generator)
        p = {k: v.to(x.device) for k, v in p.items()}
        if self.geometric:
            x = self._geometry(x, p)
        if self.colour:
            x = self._colour(x, p)
        if self.stain:
            x = self._stain(x, p)
        if self.camera:
            x = camera(x, p, self.cfg, generator)
        return x.clamp_(0.0, 1.0)

    def _draw(self, n: int, generator: torch.Generator) -> dict:
        """Every per-image parameter, used or not, so each option's randomness is independent of the others."""
        cfg = self.cfg
        p = {
            "area": _uniform(n, cfg.resized_crop, 1.0, generator),
            "log_ratio": _uniform(n, math.log(3 / 4), math.log(4 / 3), generator),
            "cx": _uniform(n, -1.0, 1.0, generator),
            "cy": _uniform(n, -1.0, 1.0, generator),
            "hflip": torch.rand(n, generator=generator) < 0.5,
            "vflip": torch.rand(n, generator=generator) < 0.5,
            "k90": torch.randint(0, 4, (n,), generator=generator),
            "angle": _uniform(n, -1.0, 1.0, generator),
            "brightness": _uniform(n, -1.0, 1.0, generator),
            "contrast": _uniform(n, -1.0, 1.0, generator),
            "saturation": _uniform(n, -1.0, 1.0, generator),
            "hue": _uniform(n, -1.0, 1.0, generator),
            "stain_scale": _uniform(3 * n, -1.0, 1.0, generator).view(n, 3),
            "stain_shift": _uniform(3 * n, -1.0, 1.0, generator).view(n, 3),
        }
        # Drawn after the options above, so recipes without them see the same numbers as before.
        p.update({
            "zoom": _uniform(n, math.log(cfg.zoom_out), math.log(cfg.zoom_in), generator).exp(),
            "dx": _uniform(n, -1.0, 1.0, generator),
            "dy": _uniform(n, -1.0, 1.0, generator),
            "stain_amount": _uniform(3 * n, -1.0, 1.0, generator).view(n, 3),
            "gains": _uniform(3 * n, -1.0, 1.0, generator).view(n, 3),
            "grey": torch.rand(n, generator=generator) < cfg.grey,
            "sigma": _uniform(n, 0.0, cfg.blur, generator),
            "resolution": _uniform(n, cfg.low_resolution, 1.0, generator),
            "noise": _uniform(n, 0.0, cfg.noise, generator),
            "jpeg": _uniform(n, 0.0, cfg.jpeg, generator),
        })
        if cfg.lab_shift_p < 1.0:
            keep_look(p, torch.rand(n, generator=generator) >= cfg.lab_shift_p)
        return p

    def _geometry(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        cfg, n = self.cfg, x.shape[0]
        one = torch.ones(n, device=x.device)
        if cfg.resized_crop < 1.0:
            ratio = p["log_ratio"].exp()
            sx = (p["area"] * ratio).sqrt().clamp(max=1.0)
            sy = (p["area"] / ratio).sqrt().clamp(max=1.0)
            tx, ty = p["cx"] * (1 - sx), p["cy"] * (1 - sy)
        else:
            sx, sy, tx, ty = one, one, 0 * one, 0 * one
        if self.zoom:
            sx, sy = sx / p["zoom"], sy / p["zoom"]
        if cfg.translate > 0:
            # The content moves by translate * side in the output: 2 * translate in [-1, 1] units, times the scale.
            tx = tx + 2 * cfg.translate * p["dx"] * sx
            ty = ty + 2 * cfg.translate * p["dy"] * sy
        if cfg.hflip:
            sx = torch.where(p["hflip"], -sx, sx)
        if cfg.vflip:
            sy = torch.where(p["vflip"], -sy, sy)
        angle = torch.zeros(n, device=x.device)
        if cfg.rot90:
            angle = angle + p["k90"].float() * (math.pi / 2)
        if cfg.rotate > 0:
            angle = angle + p["angle"] * math.radians(cfg.rotate)
        cos, sin = angle.cos(), angle.sin()
        # Output (u, v) samples input R(angle) @ diag(sx, sy) @ (u, v) + (tx, ty), in [-1, 1] coordinates.
        theta = torch.stack(
            [torch.stack([cos * sx, -sin * sy, tx], 1), torch.stack([sin * sx, cos * sy, ty], 1)], 1
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        if self.zoom or cfg.translate > 0:
            grid = fold_into_border(grid)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _colour(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        cfg = self.cfg
        view = (-1, 1, 1, 1)
        luma = torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)
        if cfg.brightness:
            x = x * (1 + cfg.brightness * p["brightness"]).view(view)
        if cfg.contrast:
            mean = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
            x = (x - mean) * (1 + cfg.contrast * p["contrast"]).view(view) + mean
        if cfg.saturation:
            grey = (x * luma).sum(1, keepdim=True)
            x = (x - grey) * (1 + cfg.saturation * p["saturation"]).view(view) + grey
        if cfg.hue:
            a = p["hue"] * (cfg.hue * 2 * math.pi)
            cos, sin = a.cos(), a.sin()
            zero, one = torch.zeros_like(a), torch.ones_like(a)
            rot = torch.stack(
                [torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1), torch.stack([zero, sin, cos], 1)], 1
            )
            m = _RGB_FROM_YIQ.float().to(x.device) @ rot @ _YIQ_FROM_RGB.float().to(x.device)  # (N, 3, 3)
            x = torch.einsum("nij,njhw->nihw", m, x)
        return x.clamp(0.0, 1.0)

    def _stain(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        s, a = self.cfg.stain, self.cfg.stain_scale
        to_hed = _HED_FROM_RGB.float().to(x.device)
        to_rgb = _RGB_FROM_HED.float().to(x.device)
        od = -torch.log(x.clamp(min=1.0 / 255.0))
        hed = torch.einsum("nchw,cd->ndhw", od, to_hed)
        scale = (1 + s * p["stain_scale"]) * (a * p["stain_amount"]).exp()
        hed = hed * scale.view(-1, 3, 1, 1) + (s * p["stain_shift"]).view(-1, 3, 1, 1)
        return torch.exp(-torch.einsum("ndhw,dc->nchw", hed, to_rgb))


#: Per-image parameter values at which each other-lab option leaves the image as it is.
_UNSHIFTED = {"zoom": 1.0, "dx": 0.0, "dy": 0.0, "stain_amount": 0.0, "gains": 0.0, "grey": False, "sigma": 0.0,
              "resolution": 1.0, "noise": 0.0, "jpeg": 0.0, "hue": 0.0, "saturation": 0.0}


def keep_look(p: dict, keep: torch.Tensor) -> None:
    """Set the other-lab parameters of the images where ``keep`` is true to their no-change values, in place."""
    for key, value in _UNSHIFTED.items():
        mask = keep.view(-1, *([1] * (p[key].ndim - 1)))
        p[key] = torch.where(mask, torch.full_like(p[key], value), p[key])


#: Width of the border band (in [-1, 1] units) that zooming out and translation mirror into the gap.
FILL_BAND = 0.4


def fold_into_border(grid: torch.Tensor, band: float = FILL_BAND) -> torch.Tensor:
    """Map coordinates outside ``[-1, 1]`` back and forth inside the outer ``band`` of the image.

    Plain reflection maps 2 back to 0, so an image zoomed out to half its size
    would show mirrored halves of the centred cell along its edges. Folding
    within the border band fills any gap with mirrored smear background (and
    the edges of neighbouring cells), as a wider field would show; inside the
    image and within ``band`` of its border it is the same as reflection.
    """
    over = grid.abs() - 1
    phase = torch.remainder(over, 2 * band)
    depth = torch.where(phase < band, phase, 2 * band - phase)
    return torch.where(over > 0, grid.sign() * (1 - depth), grid)


# JPEG's luminance quantisation table (ITU T.81, Annex K), divided by its DC step: the shape of the steps.
_JPEG_TABLE = torch.tensor([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=torch.float32).view(8, 8) / 16


def _dct_matrix(size: int = 8) -> torch.Tensor:
    """The orthonormal DCT-II matrix (rows = frequencies), the transform JPEG uses."""
    k = torch.arange(size, dtype=torch.float64)
    m = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * size)) * math.sqrt(2 / size)
    m[0] /= math.sqrt(2)
    return m.float()


def camera(x: torch.Tensor, p: dict, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """What a different microscope and camera do, in the order light meets them (each off at its default)."""
    view = (-1, 1, 1, 1)
    if cfg.white_balance:
        x = (x * (1 + cfg.white_balance * p["gains"]).view(-1, 3, 1, 1)).clamp(0.0, 1.0)
    if cfg.grey:
        luma = (x * torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = torch.where(p["grey"].view(view), luma.expand_as(x), x)
    if cfg.blur:
        x = gaussian_blur(x, p["sigma"], cfg.blur)
    if cfg.low_resolution < 1.0:
        x = low_resolution(x, p["resolution"])
    if cfg.noise:
        # Drawn last and only when on: a field of numbers per pixel would be wasted otherwise.
        field = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)
        x = (x + field * p["noise"].view(view)).clamp(0.0, 1.0)
    if cfg.jpeg:
        x = jpeg_like(x, p["jpeg"])
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, largest: float) -> torch.Tensor:
    """Blur each image with its own Gaussian ``sigma`` (pixels), separably, borders mirrored."""
    n, c, h, w = x.shape
    radius = max(1, min(math.ceil(3 * largest), h - 1, w - 1))
    k = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    # sigma 0 gives weight 1 at the centre and 0 elsewhere: the image unchanged.
    kernel = torch.exp(-(k[None, :] ** 2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N * C, K)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


def low_resolution(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Down-sample each image by its ``factor`` (area average) and back up (bilinear): a coarser camera."""
    h, w = x.shape[-2:]
    sizes = (factor * min(h, w)).round().clamp(min=1).long()
    out = x.clone()
    for side in sizes.unique().tolist():
        if side >= min(h, w):
            continue
        pick = sizes == side
        small = F.interpolate(x[pick], size=(max(1, round(h * side / min(h, w))), max(1, round(w * side / min(h, w)))),
                              mode="area")
        out[pick] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return out


def jpeg_like(x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Quantise 8x8 DCT blocks with JPEG's table scaled to each image's DC ``step``: blocking and ringing."""
    n, c, h, w = x.shape
    ph, pw = -h % 8, -w % 8
    y = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
    hh, ww = y.shape[-2:]
    blocks = y.reshape(n, c, hh // 8, 8, ww // 8, 8).permute(0, 1, 2, 4, 3, 5)  # (N, C, by, bx, 8, 8)
    d = _dct_matrix().to(x.device)
    coef = d @ blocks @ d.T
    q = (step.view(-1, 1, 1, 1, 1, 1) * _JPEG_TABLE.to(x.device)).clamp(min=1e-6)
    coef = torch.round(coef / q) * q
    blocks = d.T @ coef @ d
    y = blocks.permute(0, 1, 2, 4, 3, 5).reshape(n, c, hh, ww)[..., :h, :w]
    return y.clamp(0.0, 1.0)


def batch_generator(seed: int, epoch: int, rank: int, batch: int) -> torch.Generator:
    """A generator for one batch, seeded from (seed, epoch, rank, batch index) only."""
    g = torch.Generator()
    g.manual_seed(mix_seed(seed, epoch, rank, batch))
    return g


def mix_seed(*parts: int) -> int:
    """Combine integers into one well-mixed 63-bit seed (SplitMix64 steps)."""
    x = 0x9E3779B97F4A7C15
    for part in parts:
        x = (x ^ (int(part) & (2**64 - 1))) * 0xBF58476D1CE4E5B9 & (2**64 - 1)
        x ^= x >> 31
        x = (x * 0x94D049BB133111EB) & (2**64 - 1)
        x ^= x >> 29
    return x & (2**63 - 1)


#: Augmentation keys that imitate how other labs' images differ (scale, position, colour, stain,
#: camera); a model trained with any of them has learnt to treat such cells as cells.
LAB_SHIFT_KEYS = ("zoom_out", "zoom_in", "translate", "white_balance", "grey", "stain_scale", "hue", "saturation",
                  "blur", "noise", "low_resolution", "jpeg")


def shifts_lab_appearance(cfg: AugmentConfig) -> bool:
    """Whether ``cfg`` changes any of :data:`LAB_SHIFT_KEYS` from its off value."""
    off = AugmentConfig()
    return any(getattr(cfg, k) != getattr(off, k) for k in LAB_SHIFT_KEYS)


def augmented_copies(images: np.ndarray, cfg: AugmentConfig, seed: int = 0, batch_size: int = 64) -> np.ndarray:
    """``uint8`` NHWC images drawn once through ``cfg``'s augmentation (seeded), same shape and dtype."""
    augment = BatchAugment(cfg)
    out = np.empty_like(images)
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).permute(0, 3, 1, 2).contiguous()
        y = augment(x, batch_generator(seed, 0, 0, start // batch_size)) if augment.active else x.float() / 255
        out[start:start + len(x)] = y.mul(255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out
