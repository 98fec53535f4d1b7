"""What the network sees and what it says: a batch of images (and cell types) as the network's input,
its output as cell probability and flows."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from kit.competition import CELL_TYPES, LIVECELL_CELL_LINES
from kit.model.variants import IMAGE_CHANNELS, Variant


MIN_IMAGE_STD = 1.0  # grey levels: a flat image is centred, not blown up


def model_input(images: torch.Tensor, cell_types: Sequence[str], variant: Variant) -> torch.Tensor:
    """The network input for a batch: float32[B, C, H, W] on the images' device.

    ``images``: uint8[B, H, W] or uint8[B, 1, H, W]. Channel 0 is each image standardised to mean
    0 and standard deviation 1 (over its own pixels). One-hot variants append ``len(CELL_TYPES)``
    constant 0/1 planes in ``CELL_TYPES`` order; a LIVECell line (pretraining) sets its type's plane
    where it is one (shsy5y), else none (``kit.training.stages``).

    Why standardise: the competition's images have a standard deviation of only 9 to 16 grey
    levels, so image / 255 would vary by about 0.05 while the one-hot planes jump by 1 between cell
    types. The first layer's batch-norm statistics would then depend on which cell types a batch of
    2 happens to mix, and a network trained on those batch statistics would not hold with its
    running ones.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"model_input expects uint8 images, got {images.dtype}")
    if images.ndim == 4 and images.shape[1] == IMAGE_CHANNELS:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"model_input expects images of shape [B, H, W] or [B, 1, H, W], got {tuple(images.shape)}")
    if len(cell_types) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(cell_types)} cell types")
    x = images.unsqueeze(1).float()
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True).clamp_(min=MIN_IMAGE_STD)
    x = (x - mean) / std
    if not variant.one_hot:
        return x
    unknown = sorted(set(cell_types) - set(CELL_TYPES) - set(LIVECELL_CELL_LINES))
    if unknown:
        raise ValueError(f"unknown cell type(s) {unknown}; valid: {', '.join(CELL_TYPES)} (and LIVECell's lines "
                         f"{', '.join(LIVECELL_CELL_LINES)})")
    # LIVECell's lines other than SH-SY5Y (the competition's shsy5y) are no competition type: no plane is set.
    index = torch.tensor([CELL_TYPES.index(c) if c in CELL_TYPES else len(CELL_TYPES) for c in cell_types],
                         device=images.device)
    planes = F.one_hot(index, len(CELL_TYPES) + 1)[:, :len(CELL_TYPES)].to(x.dtype)[:, :, None, None]
    return torch.cat([x, planes.expand(-1, -1, *x.shape[-2:])], dim=1)


def decode_output(output: torch.Tensor, variant: Variant) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Network output float[B, out_channels, H, W] -> (cell probability float[B, H, W],
    flows float[B, 2, H, W] as (dy, dx) in the units of ``kit.flows.masks_to_flows``, or None)."""
    output = output.float()
    if variant.target == "flow":
        return torch.sigmoid(output[:, 2]), output[:, :2] / variant.flow_scale
    return torch.sigmoid(output[:, 0]), None
