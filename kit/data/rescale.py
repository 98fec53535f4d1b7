"""Per-cell-type rescaling, shared by training and inference: the factor that brings each cell
type's median diameter to a variant's ``cell_diameter``, and the batched resampling (crop, scale and
flips through one ``grid_sample``) that applies it; ``warp``, the kit's one affine resampling (the
training augmentation's too)."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

CENTRED = torch.full((1, 2), 0.5)  # crop corners of validation: the centre


def type_scales(diameters: Mapping[str, float], cell_diameter: float) -> dict[str, float]:
    """``{cell type: resampling factor}`` that brings each type's median diameter to ``cell_diameter``
    (1.0 everywhere when ``cell_diameter`` is 0)."""
    return {t: (cell_diameter / d if cell_diameter > 0 else 1.0) for t, d in sorted(diameters.items())}


def resample(batch: torch.Tensor, scales: torch.Tensor, crop: tuple[int, int] | None,
             corners: torch.Tensor | None = None, mode: str = "bilinear",
             flips: torch.Tensor | None = None) -> torch.Tensor:
    """float[B, C, h, w]: each item of float[B, C, H, W] magnified ``scales[b]`` times, then cut to
    ``crop`` (the whole rescaled image when None, which needs one scale for the batch), flipped
    along (y, x) where ``flips`` (bool[B, 2]).

    ``corners``: float[B or 1, 2] in [0, 1], where along the free room of each axis the crop
    starts (None or 0.5: centred). A crop that reaches past the image is centred and filled by reflection.
    ``mode``: "bilinear" or "nearest".
    """
    n, _, height, width = batch.shape
    if crop is None:
        if bool((scales != scales[0]).any()):
            raise ValueError("whole rescaled images of different scales cannot form one batch; pass a crop")
        crop = (round(height * float(scales[0])), round(width * float(scales[0])))
    u = (CENTRED if corners is None else corners).expand(n, 2)
    flips = torch.zeros(n, 2, dtype=torch.bool) if flips is None else flips
    scales = scales.float().cpu()
    theta = torch.zeros(n, 2, 3)
    for axis, (out_size, in_size) in enumerate(zip(crop, (height, width))):
        span = out_size / scales  # input pixels the crop covers along this axis
        start = u[:, axis] * (in_size - span).clamp(min=0) + (in_size - span).clamp(max=0) / 2
        sign = torch.where(flips[:, axis], -1.0, 1.0)
        row = 1 - axis  # affine_grid's theta rows are (x, y)
        theta[:, row, row] = sign * span / in_size
        theta[:, row, 2] = (2 * start + span) / in_size - 1
    return warp(batch, theta, crop, mode)


def warp(batch: torch.Tensor, theta: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """float[B, C, *size]: each item of float[B, C, H, W] resampled through its affine map ``theta[b]``
    (float[B, 2, 3] in ``grid_sample``'s [-1, 1] coordinates, rows (x, y)), reflected at the borders."""
    grid = F.affine_grid(theta.to(batch.device), [len(batch), 1, *size], align_corners=False)
    return F.grid_sample(batch, grid, mode=mode, padding_mode="reflection", align_corners=False)
