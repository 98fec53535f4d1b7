"""The data side of training: images and targets on the device, the flow-target cache, crops,
per-cell-type rescaling, augmentation, and the validation truth of each crop.

A split (``TrainData``) is decoded once and kept on the training device as uint8 images and
uint8 / float16 targets; every batch is cut from it by batched torch ops on that device, so a GPU
never waits for the host. Where a variant rescales (``Variant.cell_diameter``) or augments a flow
target, a batch is resampled through one ``grid_sample`` per batch: crop, scale and flips in one
go, with the flow vectors turned with the image.
"""
from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from kit import flows, rle
from kit.competition import IMAGE_SHAPE
from kit.data import sartorius
from kit.data.rescale import CENTRED, resample, warp
from kit.files import atomic_output
from kit.model.encoding import model_input
from kit.model.hardware import memory_format
from kit.model.variants import Variant

# Augmentation ranges (hot-drop-unet); the paper names "random affine" without its ranges.
MAX_ROTATION_DEG = 20.0
SCALE_RANGE = (0.9, 1.1)
MAX_TRANSLATE = 0.05  # fraction of the image side
FLOW_SCALE_JITTER = (0.75, 1.25)  # flow augmentation: Cellpose's random zoom around the common diameter


@dataclass
class TrainData:
    """Images and targets of one split, decoded once and kept on the training device.

    ``images``: uint8[N, H, W]; ``targets``: uint8[N, 1, H, W] union masks, or float16[N, 3, H, W]
    (dy, dx, cell mask) for the flow target; ``annotations``: each image's original RLEs;
    ``scales``: float32[N] resampling factor of each image (1 at native scale, see
    ``kit.data.rescale.type_scales``); ``labels``: int32[N, H, W] instances, kept only where validation crops
    rescaled images (their truth is cut from them); ``shards``: the DDP ranks each of which holds only its
    own share of the images (LIVECell pretraining), 1 where every rank holds them all.
    """

    ids: list[str]
    cell_types: list[str]
    images: torch.Tensor
    targets: torch.Tensor
    annotations: list[list[str]]
    scales: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    shards: int = 1
    _truth: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def rescaled(self) -> bool:
        """Whether any image is resampled; asked once per split, not once per batch (a device sync)."""
        return self.scales is not None and bool((self.scales != 1).any())

    def truth(self, crop: tuple[int, int] | None) -> list[list[str]]:
        """Each image's true cells as RLEs of the validation view (whole image, or the centre
        crop ``make_batch`` cuts), computed once per split and crop size."""
        if crop not in self._truth:
            self._truth[crop] = self._crop_truth(crop) if crop is not None else self.annotations
        return self._truth[crop]

    def truth_runs(self, crop: tuple[int, int] | None) -> list[rle.RunTable]:
        """``truth(crop)`` parsed (``rle.decode_many`` per image), once per split and crop size: what
        ``kit.metrics.score_label_runs`` takes, so that no epoch parses an annotation again."""
        key = ("runs", crop)
        if key not in self._truth:
            shape = crop or tuple(self.images.shape[-2:])
            self._truth[key] = [rle.decode_many([r for r in rles if rle.holds_mask(r)], shape)
                                for rles in self.truth(crop)]
        return self._truth[key]

    def _crop_truth(self, crop: tuple[int, int]) -> list[list[str]]:
        if not self.rescaled:
            return [_crop_annotations(a, crop, tuple(self.images.shape[-2:])) for a in self.annotations]
        if self.labels is None:
            raise ValueError("a rescaled validation split needs its label images (load_split keeps them)")
        truth = []
        for i in range(len(self)):
            labels = resample(self.labels[i:i + 1, None].float(), self.scales[i:i + 1], crop,
                              CENTRED, "nearest")
            labels = labels[0, 0].round().to(torch.int32).cpu().numpy()
            truth.append([run for run in rle.encode_labels(labels) if run])
        return truth


def load_split(layout: sartorius.CompetitionLayout, ids: Sequence[str], variant: Variant, device: torch.device,
               cache_dir: Path | None = None, df: pd.DataFrame | None = None,
               scales: Mapping[str, float] | None = None, keep_labels: bool = False) -> TrainData:
    """Decode the images and build the targets of ``ids`` once; tensors end up on ``device``.

    ``df``: the already read ``train.csv`` (read again when None); ``cache_dir``: see ``flow_target``;
    ``scales``: ``kit.data.rescale.type_scales`` of the run (native scale when None); ``keep_labels``: keep the
    label images (a validation split whose crops are rescaled).
    """
    return split_from_samples(sartorius.load_samples(layout, ids, df), variant, device, cache_dir, scales, keep_labels)


def split_from_samples(samples: Sequence[sartorius.Sample], variant: Variant, device: torch.device,
                       cache_dir: Path | None = None, scales: Mapping[str, float] | None = None,
                       keep_labels: bool = False) -> TrainData:
    """``load_split`` for samples already loaded: competition images, LIVECell's (``kit.data.livecell``) or
    pseudo-labelled ones (``kit.pseudo``) take the same path to targets on ``device``; ``scales``
    needs every sample's cell type."""
    images = torch.from_numpy(np.stack([s.image for s in samples]))
    if variant.target == "flow":
        targets = torch.from_numpy(np.stack([
            np.concatenate([flow_target(s, cache_dir), (s.labels > 0)[None].astype(np.float16)])
            for s in samples]))
    else:
        targets = torch.from_numpy(np.stack([(s.labels > 0)[None] for s in samples]).astype(np.uint8))
    factors = None
    if scales is not None:
        factors = torch.tensor([scales[s.cell_type] for s in samples], dtype=torch.float32, device=device)
    labels = torch.from_numpy(np.stack([s.labels for s in samples])).to(device) if keep_labels else None
    return TrainData([s.id for s in samples], [s.cell_type for s in samples], images.to(device),
                     targets.to(device), [s.annotations for s in samples], factors, labels)


def make_batch(split: TrainData, index: torch.Tensor, variant: Variant, crop: tuple[int, int] | None = None,
               generator: torch.Generator | None = None, augment: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(network input float[B, C, h, w], target float[B, out_channels, h, w]) on the data's device.

    ``crop``: random crops (with ``generator``), or centre crops when ``generator`` is None. A
    rescaled split or an augmented flow target is resampled (``resample_batch``); otherwise the
    crop is a plain slice.
    """
    x, target, _ = _batch(split, index, variant, crop, generator, augment)
    return x, target


def validation_batch(split: TrainData, index: torch.Tensor, variant: Variant,
                     crop: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``make_batch``'s centred view with the uint8[B, h, w] images it was cut from (cut once), as
    evaluation needs both: the network's input and the images for the post-processing."""
    return _batch(split, index, variant, crop, None, False)


def _batch(split: TrainData, index: torch.Tensor, variant: Variant, crop: tuple[int, int] | None,
           generator: torch.Generator | None, augment: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if split.rescaled or (augment and variant.target == "flow"):
        images, target = resample_batch(split, index, crop, generator, augment)
    else:
        images, targets = batch_images(split, index, crop, generator, with_targets=True)
        target = targets.float()
    x = model_input(images, [split.cell_types[i] for i in index.tolist()], variant)
    if augment and variant.target == "mask":
        x, target = augment_batch(x, target, generator)
    x = x.contiguous(memory_format=memory_format(x.device))
    return x, target, images


def batch_images(split: TrainData, index: torch.Tensor, crop: tuple[int, int] | None = None,
                 generator: torch.Generator | None = None, with_targets: bool = False):
    """The uint8[B, H, W] images of ``index`` (and their targets if ``with_targets``) of a split at
    native scale, cropped as ``make_batch`` crops them: random with ``generator``, centred without."""
    on_device = index.to(split.images.device)
    images, targets = split.images[on_device], split.targets[on_device] if with_targets else None
    if crop is not None:
        tops, lefts = _crop_offsets(images.shape[-2:], crop, len(index), generator)
        images = _crop(images, tops, lefts, crop)
        targets = None if targets is None else _crop(targets, tops, lefts, crop)
    return (images, targets) if with_targets else images


def resample_batch(split: TrainData, index: torch.Tensor, crop: tuple[int, int] | None,
                   generator: torch.Generator | None, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8[B, h, w] images, float[B, C, h, w] targets) cut at each image's scale.

    With ``augment`` (training) each scale is jittered within ``FLOW_SCALE_JITTER`` and each crop
    flipped at random; a flipped flow field has its component along the flipped axis negated.
    The cell-mask channel is resampled bilinearly and thresholded at 0.5, the flows bilinearly.
    """
    device = split.images.device
    on_device = index.to(device)
    scales = split.scales[on_device] if split.scales is not None else torch.ones(len(index), device=device)
    flips = torch.zeros(len(index), 2, dtype=torch.bool)
    corners = torch.rand(len(index), 2, generator=generator) if generator is not None else CENTRED
    if augment:
        u = torch.rand(len(index), 3, generator=generator)
        low, high = FLOW_SCALE_JITTER
        scales = scales * torch.exp(math.log(low) + (math.log(high) - math.log(low)) * u[:, 0]).to(device)
        flips = u[:, 1:] < 0.5
    images = resample(split.images[on_device, None].float(), scales, crop, corners, "bilinear", flips)
    targets = resample(split.targets[on_device].float(), scales, crop, corners, "bilinear", flips)
    if targets.shape[1] == 3:  # (dy, dx, mask): a flip turns the vectors too
        sign = torch.where(flips, -1.0, 1.0).to(device)
        targets[:, 0] *= sign[:, 0, None, None]
        targets[:, 1] *= sign[:, 1, None, None]
    targets[:, -1] = (targets[:, -1] > 0.5).float()
    return images[:, 0].round().clamp(0, 255).to(torch.uint8), targets


def augment_batch(x: torch.Tensor, target: torch.Tensor,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random affine (rotation, scale, translation) and horizontal/vertical flips per sample.

    ``x``: float[B, C, H, W] whose channel 0 is the image (other channels, the constant one-hot
    planes, are left alone); ``target``: float[B, 1, H, W] mask. The image is resampled bilinearly,
    the mask by nearest neighbour, both with reflection at the borders, on ``x``'s device.
    """
    batch, _, height, width = x.shape
    u = torch.rand(batch, 6, generator=generator).to(x.device)
    angle = torch.deg2rad((2 * u[:, 0] - 1) * MAX_ROTATION_DEG)
    scale = SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * u[:, 1]
    flip_x, flip_y = torch.where(u[:, 2] < 0.5, -1.0, 1.0), torch.where(u[:, 3] < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(batch, 2, 3, device=x.device)
    # A rotation in pixels, written in grid_sample's [-1, 1] coordinates of a non-square image.
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip_x, -sin * flip_y * height / width
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip_x * width / height, cos * flip_y
    theta[:, :, 2] = (2 * u[:, 4:6] - 1) * 2 * MAX_TRANSLATE
    image = warp(x[:, :1], theta, (height, width), "bilinear")
    mask = warp(target, theta, (height, width), "nearest")
    return torch.cat([image, x[:, 1:]], dim=1), mask


def flow_target(sample: sartorius.Sample, cache_dir: Path | None = None) -> np.ndarray:
    """float16[2, H, W] (dy, dx) of ``kit.flows.masks_to_flows``, cached as ``cache_dir/ID-DIGEST.npy``.

    The digest covers the labels and the source of ``kit.flows``, so a changed annotation or flow
    algorithm never reuses a stale file.
    """
    if cache_dir is None:
        return flows.masks_to_flows(sample.labels).astype(np.float16)
    digest = hashlib.sha1(np.ascontiguousarray(sample.labels).tobytes())
    digest.update(_flows_source())
    path = Path(cache_dir) / f"{sample.id}-{digest.hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path)
    flow = flows.masks_to_flows(sample.labels).astype(np.float16)
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, flow)
    return flow


@functools.cache
def _flows_source() -> bytes:
    """``kit.flows``' source, read once per process (it is part of every flow-cache digest)."""
    return Path(flows.__file__).read_bytes()


def _crop_offsets(shape: Sequence[int], crop: tuple[int, int], n: int,
                  generator: torch.Generator | None) -> tuple[list[int], list[int]]:
    """Top-left corners of ``n`` crops: random with ``generator``, else centred."""
    height, width = shape
    if crop[0] > height or crop[1] > width:
        raise ValueError(f"--crop {crop[0]}x{crop[1]} is larger than the {height}x{width} images")
    if generator is None:
        return [(height - crop[0]) // 2] * n, [(width - crop[1]) // 2] * n
    tops = torch.randint(0, height - crop[0] + 1, (n,), generator=generator).tolist()
    lefts = torch.randint(0, width - crop[1] + 1, (n,), generator=generator).tolist()
    return tops, lefts


def _crop(batch: torch.Tensor, tops: Sequence[int], lefts: Sequence[int], crop: tuple[int, int]) -> torch.Tensor:
    return torch.stack([item[..., top: top + crop[0], left: left + crop[1]]
                        for item, top, left in zip(batch, tops, lefts)])


def _crop_annotations(annotations: Sequence[str], crop: tuple[int, int],
                      shape: tuple[int, int] = IMAGE_SHAPE) -> list[str]:
    """The centre crop of the RLEs of ``shape`` images, re-encoded at the crop's size (empty ones dropped)."""
    (top,), (left,) = _crop_offsets(shape, crop, 1, None)
    cropped = (rle.decode(a, shape)[top: top + crop[0], left: left + crop[1]] for a in annotations)
    return [rle.encode(mask) for mask in cropped if mask.any()]
