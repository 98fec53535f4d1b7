"""Training losses: pure functions, with thin ``nn.Module`` wrappers for the trainer.

Targets carry the same channels as the network output, so that batching, cropping and
augmentation treat every variant alike:
- mask variants: output float[B, 1, H, W] logits, target float[B, 1, H, W] in {0, 1} (union of the cells);
- flow variant: output float[B, 3, H, W] = (dy, dx, cell logit), target float[B, 3, H, W] =
  (dy, dx) unit flows of ``kit.flows.masks_to_flows`` and the {0, 1} cell mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kit.model.variants import Variant

# Cellpose's weighting: 0.5 x MSE on 5 x flows + BCE. Unit flows (|v| <= 1, mostly ~0.5 per
# component) would make a raw MSE small beside the BCE; x5 brings the two terms to similar size.
FLOW_MSE_WEIGHT = 0.5


def mask_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.0) -> torch.Tensor:
    """Mean binary cross-entropy with logits; cell pixels weigh ``pos_weight``.

    ``logits``, ``target``: float[B, 1, H, W] (target in {0, 1}). Returns a float32 scalar.
    """
    _check_shapes(logits, target, 1)
    # torch.full fills on the device; torch.tensor would copy from pageable host memory at every
    # step, which can hold the host until the device catches up.
    weight = torch.full((), pos_weight, dtype=torch.float32, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=weight)


def flow_loss(output: torch.Tensor, target: torch.Tensor, flow_scale: float) -> torch.Tensor:
    """``FLOW_MSE_WEIGHT`` x MSE(output flows, ``flow_scale`` x target flows) + BCE(cell logit, cell mask).

    ``output``: float[B, 3, H, W] (dy, dx, cell logit); ``target``: float[B, 3, H, W] (dy, dx unit
    flows, cell mask in {0, 1}). The network thus learns flows scaled by ``flow_scale`` (the variant's,
    ``kit.model.variants.Variant.flow_scale``; ``kit.model.encoding.decode_output`` divides them back).
    Returns a float32 scalar.
    """
    _check_shapes(output, target, 3)
    output, target = output.float(), target.float()
    mse = F.mse_loss(output[:, :2], flow_scale * target[:, :2])
    bce = F.binary_cross_entropy_with_logits(output[:, 2], target[:, 2])
    return FLOW_MSE_WEIGHT * mse + bce


class MaskLoss(nn.Module):
    """``mask_loss`` with a fixed ``pos_weight``."""

    def __init__(self, pos_weight: float = 1.0):
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mask_loss(logits, target, self.pos_weight)


class FlowLoss(nn.Module):
    """``flow_loss`` with a fixed ``flow_scale``."""

    def __init__(self, flow_scale: float):
        super().__init__()
        self.flow_scale = flow_scale

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return flow_loss(output, target, self.flow_scale)


def build_loss(variant: Variant) -> nn.Module:
    """The loss of ``variant``: ``FlowLoss`` for the flow target, ``MaskLoss`` otherwise."""
    if variant.target == "flow":
        return FlowLoss(variant.flow_scale)
    return MaskLoss(variant.pos_weight)


def _check_shapes(output: torch.Tensor, target: torch.Tensor, channels: int) -> None:
    if output.ndim != 4 or output.shape[1] != channels or output.shape != target.shape:
        raise ValueError(f"loss expects output and target of shape [B, {channels}, H, W], got "
                         f"{tuple(output.shape)} and {tuple(target.shape)}")
