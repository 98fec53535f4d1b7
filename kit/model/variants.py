"""The five U-Net variants of the method paper, as data.

A ``Variant`` holds everything that makes one variant differ from another (input channels, target
and loss, regularisation) and its training schedule. It travels inside every checkpoint as a plain
dict (``to_dict`` / ``from_dict``), so a model file says how it was trained and how to feed it.

Optimizer: the paper gives the learning rate (0.01, halved every 10 epochs) but not the optimizer.
0.01 is a usual SGD rate and a high one for Adam, so the seed schedule uses SGD with momentum 0.9
(Cellpose, whose flow targets one variant borrows, also trains with SGD + momentum 0.9);
``optimizer="adam"`` is available for comparison.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from kit.cli import closest_names
from kit.competition import CELL_TYPES

TARGETS = ("mask", "flow")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "cosine")
IMAGE_CHANNELS = 1  # 8-bit grayscale
HOT_CHANNELS = IMAGE_CHANNELS + len(CELL_TYPES)  # image + one-hot cell-type planes
_OUT_CHANNELS = {"mask": 1, "flow": 3}  # mask: one logit; flow: dy, dx, cell-probability logit


@dataclass(frozen=True)
class Variant:
    """One variant: network input/output, target and loss, regularisation, and the seed schedule.

    ``flow_scale`` (flow target only): the network learns ``flow_scale * (dy, dx)``, as Cellpose
    does with 5, so that the flow term of the loss weighs about as much as the probability term;
    ``kit.model.encoding.decode_output`` divides it back out.

    ``cell_diameter`` > 0 rescales every image, in training and at inference, so that its cell
    type's median diameter (measured on the training annotations, kept in the checkpoint) becomes
    this many pixels: Cellpose's central trick, so that one network sees astrocytes (30 px) and
    shsy5y cells (16 px) at one size. ``crop_size`` > 0 trains on random square crops of the
    rescaled images and validates on centre crops (``--crop`` overrides it).

    ``schedule``: "step" multiplies the lr by ``lr_gamma`` every ``lr_step`` epochs; "cosine" warms
    up linearly over the first ``warmup`` of the run, then follows a half cosine down to 0, where
    the run's progress is the larger of the steps done over those of ``epochs`` and the time used
    over ``--time-limit``: a wall-clock budget gets the whole schedule.
    """

    name: str
    in_channels: int
    out_channels: int
    target: str  # "mask": union of the cells, BCE; "flow": (dy, dx) MSE + cell probability BCE
    pos_weight: float = 1.0  # BCE weight of the cell (positive) pixels
    dropout: float = 0.0  # after every conv when > 0
    augment: bool = False  # mask: random affine + flips; flow: flips (vectors turned too) + scale jitter
    epochs: int = 50
    lr: float = 0.01
    lr_step: int = 10  # StepLR: multiply lr by lr_gamma every lr_step epochs
    lr_gamma: float = 0.5
    batch_size: int = 2
    optimizer: str = "sgd"
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    flow_scale: float = 5.0
    cell_diameter: float = 0.0  # pixels; 0: images at native scale
    crop_size: int = 0  # 0: whole images
    residual: bool = False  # residual blocks + a style vector, as in Cellpose's network (kit.model.network.UNet)
    schedule: str = "step"
    warmup: float = 0.0  # fraction of the run (cosine schedule)
    description: str = ""

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValueError(f"variant {self.name!r}: " + "; ".join(problems))

    @property
    def one_hot(self) -> bool:
        """Whether the input carries the one-hot cell-type planes after the image."""
        return self.in_channels == HOT_CHANNELS

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of str/int/float/bool: safe inside a ``weights_only`` checkpoint."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "Variant":
        """Rebuild a variant from ``to_dict`` output; unknown or missing settings are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"unknown variant setting(s) {unknown}; known: {sorted(known)}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in settings]
        if missing:
            raise ValueError(f"variant settings lack {missing}")
        return cls(**settings)

    def replace(self, **changes: Any) -> "Variant":
        """A copy with some settings changed (e.g. ``epochs`` or ``batch_size`` from the command line)."""
        return dataclasses.replace(self, **changes)

    def _problems(self) -> list[str]:
        """Every inconsistent setting, worded for the error message."""
        checks = [
            (self.target in TARGETS, f"target must be one of {TARGETS}, got {self.target!r}"),
            (self.in_channels in (IMAGE_CHANNELS, HOT_CHANNELS),
             f"in_channels must be {IMAGE_CHANNELS} (image) or {HOT_CHANNELS} (image + one-hot), "
             f"got {self.in_channels}"),
            (self.target not in TARGETS or self.out_channels == _OUT_CHANNELS[self.target],
             f"a {self.target!r} target needs out_channels={_OUT_CHANNELS.get(self.target)}, "
             f"got {self.out_channels}"),
            (self.pos_weight > 0, f"pos_weight must be > 0, got {self.pos_weight}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}"),
            (0.0 <= self.warmup < 1.0, f"warmup must be in [0, 1), got {self.warmup}"),
            (self.cell_diameter >= 0 and self.crop_size >= 0,
             f"cell_diameter and crop_size must be >= 0, got {self.cell_diameter}, {self.crop_size}"),
            (self.crop_size % 16 == 0, f"crop_size must be a multiple of 16, got {self.crop_size}"),
            (self.epochs >= 1 and self.batch_size >= 1 and self.lr_step >= 1,
             f"epochs, batch_size and lr_step must be >= 1, "
             f"got {self.epochs}, {self.batch_size}, {self.lr_step}"),
            (self.lr > 0 and 0 < self.lr_gamma <= 1,
             f"need lr > 0 and 0 < lr_gamma <= 1, got {self.lr}, {self.lr_gamma}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"),
            (self.flow_scale > 0, f"flow_scale must be > 0, got {self.flow_scale}"),
        ]
        return [message for ok, message in checks if not ok]


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("unet", IMAGE_CHANNELS, 1, "mask", description="image only; union mask, BCE"),
        Variant("hot-unet", HOT_CHANNELS, 1, "mask", description="image + one-hot cell type; union mask, BCE"),
        Variant("hot-unet-weighted", HOT_CHANNELS, 1, "mask", pos_weight=3.0,
                description="as hot-unet; BCE with pos_weight 3"),
        Variant("hot-flow-unet", HOT_CHANNELS, 3, "flow",
                description="as hot-unet; Cellpose-style flows (MSE) + cell probability (BCE)"),
        Variant("hot-drop-unet", HOT_CHANNELS, 1, "mask", dropout=0.2, augment=True,
                description="as hot-unet; dropout 0.2 after every conv, random affine + flips"),
        # Beyond the paper: the kit's recipe (README, "Model quality"), measured against Cellpose.
        Variant("hot-flow-unet-plus", HOT_CHANNELS, 3, "flow", augment=True, epochs=200, lr=0.002,
                batch_size=4, optimizer="adamw", weight_decay=1e-4, schedule="cosine", warmup=0.05,
                cell_diameter=30.0, crop_size=256,
                description="as hot-flow-unet; cells rescaled to 30 px, 256 crops, flips + scale jitter, "
                            "AdamW + warm-up/cosine over the run"),
    )
}
PAPER_VARIANTS = ("unet", "hot-unet", "hot-unet-weighted", "hot-flow-unet", "hot-drop-unet")
# The kit's recipe, beyond the paper (bench_quality's --lever-base). The inference kernel does not
# assume it wins: it uses whichever flow variant kit.tune scores best on the validation split.
RECIPE = "hot-flow-unet-plus"


def get_variant(name: str) -> Variant:
    """The registered variant called ``name``; an unknown name is an error listing the valid ones,
    ending with the closest ones."""
    if name not in VARIANTS:
        near = closest_names(name, VARIANTS)
        hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        raise ValueError(f"unknown variant {name!r}; valid variants: {', '.join(VARIANTS)}{hint}")
    return VARIANTS[name]


def describe_variants() -> str:
    """A plain-text table of the registered variants (``python -m kit.train --list``)."""
    header = ("name", "input", "target", "pos_weight", "dropout", "augment", "schedule", "description")
    rows = [header]
    for v in VARIANTS.values():
        inputs = "image + one-hot" if v.one_hot else "image"
        decay = f"x{v.lr_gamma:g}/{v.lr_step} ep" if v.schedule == "step" else f"cosine, warm-up {v.warmup:g}"
        schedule = f"{v.epochs} ep, {v.optimizer} lr {v.lr:g} {decay}, batch {v.batch_size}"
        rows.append((v.name, inputs, v.target, f"{v.pos_weight:g}", f"{v.dropout:g}",
                     "yes" if v.augment else "no", schedule, v.description))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
