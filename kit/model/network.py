"""The paper's U-Net (with Cellpose's residual blocks and style vector as an option) and the network
of a variant (``build_model``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kit.model.variants import Variant


ENCODER_WIDTHS = (32, 64, 128, 256)


BOTTLENECK_WIDTH = 512


SIZE_MULTIPLE = 2 ** len(ENCODER_WIDTHS)  # four 2x poolings: H and W are padded to a multiple of 16


class UNet(nn.Module):
    """U-Net of the paper: 4 encoder levels (32-256 filters) of 2x(3x3 conv + BN + ReLU) with max
    pooling, a 512-filter bottleneck, transposed-conv upsampling with skip connections, 1x1 head.

    ``residual`` (beyond the paper, as in Cellpose's network): every block adds its input through
    a 1x1 projection, and a style vector, the bottleneck's features averaged over the image and
    scaled to unit length, is added per channel (one linear map per decoder) to every decoder's
    output, so that each pixel's decision sees the whole image's look.

    ``forward``: float[B, in_channels, H, W] -> float[B, out_channels, H, W] logits, any H x W:
    the input is reflect-padded at the bottom/right to a multiple of 16 and the output cropped back.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, residual: bool = False):
        super().__init__()
        block = _ResidualBlock if residual else _double_conv
        self.encoders = nn.ModuleList()
        width_in = in_channels
        for width in ENCODER_WIDTHS:
            self.encoders.append(block(width_in, width, dropout))
            width_in = width
        self.bottleneck = block(width_in, BOTTLENECK_WIDTH, dropout)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        width_in = BOTTLENECK_WIDTH
        for width in reversed(ENCODER_WIDTHS):
            self.upsamplers.append(nn.ConvTranspose2d(width_in, width, kernel_size=2, stride=2))
            self.decoders.append(block(2 * width, width, dropout))
            width_in = width
        self.styles = nn.ModuleList(nn.Linear(BOTTLENECK_WIDTH, width) for width in reversed(ENCODER_WIDTHS)) \
            if residual else None
        self.head = nn.Conv2d(width_in, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % SIZE_MULTIPLE, -width % SIZE_MULTIPLE
        if pad_h or pad_w:
            # Reflection continues the image texture; it needs the pad smaller than the side.
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        style = F.normalize(x.mean(dim=(2, 3)), dim=1) if self.styles is not None else None
        for k, (upsample, decoder, skip) in enumerate(zip(self.upsamplers, self.decoders, reversed(skips))):
            x = decoder(torch.cat([upsample(x), skip], dim=1))
            if style is not None:
                x = x + self.styles[k](style)[:, :, None, None]
        return self.head(x)[..., :height, :width]


def build_model(variant: Variant) -> UNet:
    """The network of ``variant``: 1 output channel for mask targets, 3 (dy, dx, cell logit) for flows."""
    return UNet(variant.in_channels, variant.out_channels, variant.dropout, variant.residual)


def _double_conv(width_in: int, width: int, dropout: float) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU blocks, each followed by dropout when ``dropout > 0``."""
    layers: list[nn.Module] = []
    for block_in in (width_in, width):
        layers += [nn.Conv2d(block_in, width, kernel_size=3, padding=1, bias=False),
                   nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class _ResidualBlock(nn.Module):
    """``_double_conv`` plus its input through a 1x1 projection (Cellpose's residual block):
    float[B, width_in, H, W] -> float[B, width, H, W]."""

    def __init__(self, width_in: int, width: int, dropout: float):
        super().__init__()
        self.convs = _double_conv(width_in, width, dropout)
        self.project = nn.Conv2d(width_in, width, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x) + self.project(x)
