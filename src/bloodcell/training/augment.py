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
   May-Grünwald-Giemsa staining strength between smears.

Randomness depends only on (seed, epoch, rank, batch index), so a resumed run
repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bloodcell.training.config import AugmentConfig

# Ruifrok & Johnston (2001) stain vectors: rows = optical density of H, E, DAB in RGB (as in scikit-image).
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
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
        self.geometric = cfg.hflip or cfg.vflip or cfg.rot90 or cfg.rotate > 0 or cfg.resized_crop < 1.0
        self.colour = bool(cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue)

    @property
    def active(self) -> bool:
        return self.geometric or self.colour or self.cfg.stain > 0

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a uint8 batch (N, 3, H, W), got {batch.dtype} {tuple(batch.shape)}")
        x = batch.float().div_(255.0)
        n = x.shape[0]
        # Draw every parameter, used or not, so each option's randomness is independent of the others.
        p = {
            "area": _uniform(n, self.cfg.resized_crop, 1.0, generator),
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
        p = {k: v.to(x.device) for k, v in p.items()}
        if self.geometric:
            x = self._geometry(x, p)
        if self.colour:
            x = self._colour(x, p)
        if self.cfg.stain > 0:
            x = self._stain(x, p)
        return x.clamp_(0.0, 1.0)

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
        s = self.cfg.stain
        to_hed = _HED_FROM_RGB.float().to(x.device)
        to_rgb = _RGB_FROM_HED.float().to(x.device)
        od = -torch.log(x.clamp(min=1.0 / 255.0))
        hed = torch.einsum("nchw,cd->ndhw", od, to_hed)
        hed = hed * (1 + s * p["stain_scale"]).view(-1, 3, 1, 1) + (s * p["stain_shift"]).view(-1, 3, 1, 1)
        return torch.exp(-torch.einsum("ndhw,dc->nchw", hed, to_rgb))


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
