"""An ensemble of weights files and its prediction, shared by ``kit.infer``, ``kit.tune`` and
``kit.pseudo``: loading the files (one target type), picking the best-validated one, the averaged
(and flip-augmented) network outputs at each image's native size, and the batched predict ->
extract loop (``predicted_instances``)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kit import postprocess
from kit.data import sartorius
from kit.data.rescale import resample
from kit.model import checkpoints, encoding, hardware
from kit.model.variants import Variant

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 4  # images a forward pass predicts (kit.infer, kit.pseudo)


class Member(NamedTuple):
    """One weights file of an ensemble: the model in eval mode on the device, its variant, its path,
    and the checkpoint's ``InferenceSettings`` (per-type scales, tuned post-processing settings)."""

    model: torch.nn.Module
    variant: Variant
    path: Path
    settings: checkpoints.InferenceSettings = checkpoints.InferenceSettings()


def load_ensemble(weights: Sequence[str | Path], device: torch.device) -> list[Member]:
    """One ``Member`` per file; every file must hold the same target type."""
    ensemble = []
    for path in weights:
        model, variant, checkpoint = checkpoints.load_checkpoint(path, map_location=device)
        model = model.to(memory_format=hardware.memory_format(device))  # as the trainer ran
        ensemble.append(Member(model, variant, Path(path), checkpoints.InferenceSettings.of(checkpoint, path)))
    targets = {member.variant.target for member in ensemble}
    if len(targets) > 1:
        listed = ", ".join(f"{m.path.name} ({m.variant.name}: {m.variant.target})" for m in ensemble)
        raise ValueError(f"weights of different target types cannot be averaged: {listed}; "
                         "pass only mask variants or only flow variants")
    return ensemble


def split_records(weights: Sequence[Member | str | Path]) -> list[tuple[str, Mapping | None]]:
    """Each weights file's path and recorded validation split, for ``kit.split.of_weights``: a loaded
    ``Member``'s, or read from the file (``kit.validate``, ``kit.boundary_table``: no model needed)."""
    return [(str(item.path), item.settings.split) if isinstance(item, Member) else
            (str(item), checkpoints.InferenceSettings.of(checkpoints.read_checkpoint(item), item).split)
            for item in weights]


def best_validated(ensemble: Sequence[Member]) -> Member:
    """The member whose ``kit.tune`` validation score (``settings.validation["type_mean"]``) is
    highest; every member must carry one, fitted on the same images, or scores cannot be compared."""
    unscored = [str(m.path) for m in ensemble if m.settings.validation is None]
    if unscored:
        raise ValueError(f"--select-best: {unscored[0]} carries no validation score; run "
                         f"`python -m kit.tune --data DIR --weights {unscored[0]}` on it first")
    records = [m.settings.validation for m in ensemble]
    if len({r["image_ids_sha256"] for r in records}) > 1:
        listed = ", ".join(f"{m.path} ({r['images']} {r['split']} images)" for m, r in zip(ensemble, records))
        raise ValueError(f"--select-best: {listed} were tuned on different images, so their scores cannot be "
                         "compared; run kit.tune on each with the same --data and --split")
    best = max(ensemble, key=lambda m: m.settings.validation["type_mean"])
    for member, record in zip(ensemble, records):
        chosen = "  <- used" if member is best else ""
        logger.info(f"  {member.path}: validation type mean {record['type_mean']:.4f} over {record['images']} "
                    f"{record['split']} images{' (flip TTA)' if record['tta'] else ''}{chosen}")
    return best


@torch.inference_mode()
def predict(ensemble: Sequence[Member], images: np.ndarray, cell_types: Sequence[str], device: torch.device,
            tta: bool = False, ids: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Ensemble (and flip) average: (prob float32[B, H, W], flows float32[B, 2, H, W] (dy, dx) or None).

    ``images``: uint8[B, H, W]. A non-finite model output raises an error naming the image and the
    weights file.
    """
    ids = list(ids) if ids is not None else [f"#{k}" for k in range(len(images))]
    batch = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    flips = [(), (-1,), (-2,), (-2, -1)] if tta else [()]
    prob_sum, flow_sum = 0.0, None
    for member in ensemble:
        for dims in flips:
            prob, flow = _member_output(member, batch, cell_types, dims, device)
            _check_finite(prob, flow, ids, member.path)
            prob_sum = prob_sum + prob
            if flow is not None:
                flow_sum = flow if flow_sum is None else flow_sum + flow
    n = len(ensemble) * len(flips)
    prob = (prob_sum / n).cpu().numpy()  # float32: decode_output returns float
    return prob, None if flow_sum is None else (flow_sum / n).cpu().numpy()


class Extracted(NamedTuple):
    """One image's prediction: its id and cell type, the ensemble's cell probability float32[H, W]
    and the instances extracted from it, int32[H, W]."""

    id: str
    cell_type: str
    prob: np.ndarray
    labels: np.ndarray


def predicted_instances(ensemble: Sequence[Member], images: Mapping[str, tuple[Path, str]], device: torch.device,
                        batch_size: int = DEFAULT_BATCH_SIZE, tta: bool = False,
                        config: postprocess.PostprocessConfig = postprocess.PostprocessConfig(),
                        flow_threshold: float | None = None) -> Iterator[Extracted]:
    """Each of ``images`` (``{id: (PNG path, cell type)}``) predicted in batches of ``batch_size`` and
    extracted (``kit.postprocess.output_to_labels``; ``flow_threshold``, when given, overrides the
    config's per-type flow-error thresholds), in order, one image at a time: what ``kit.infer`` and
    ``kit.pseudo`` predict."""
    ids = list(images)
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        pixels = np.stack([sartorius.load_image(images[i][0]) for i in batch])
        types = [images[i][1] for i in batch]
        prob, flow = predict(ensemble, pixels, types, device, tta, batch)
        for k, image_id in enumerate(batch):
            labels = postprocess.output_to_labels(prob[k], None if flow is None else flow[k], pixels[k], types[k],
                                                  config, flow_threshold)
            yield Extracted(image_id, types[k], prob[k], labels)


def _member_output(member: Member, images: torch.Tensor, cell_types: Sequence[str], dims: tuple[int, ...],
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One member's decoded output for uint8[B, H, W] ``images`` at their native size.

    A member trained on rescaled images (``settings.scales``) sees each image resampled to its
    cell type's scale exactly as training cut its crops (``kit.data.rescale.resample``, rounded to
    uint8); its outputs are resized back bilinearly. Flows are unit vectors, so only their grid
    changes, not their length.
    """
    scales = member.settings.scales
    if not scales:
        return _forward(member.model, member.variant, encoding.model_input(images, cell_types, member.variant),
                        dims, device)
    probs, flows_out = [], []
    for k, cell_type in enumerate(cell_types):
        scale = torch.tensor([float(scales[cell_type])])
        image = resample(images[k:k + 1, None].float(), scale, None, mode="bilinear")
        x = encoding.model_input(image[:, 0].round().clamp(0, 255).to(torch.uint8), [cell_type], member.variant)
        prob, flow = _forward(member.model, member.variant, x, dims, device)
        probs.append(F.interpolate(prob[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0])
        if flow is not None:
            flows_out.append(F.interpolate(flow, size=images.shape[-2:], mode="bilinear", align_corners=False))
    return torch.cat(probs), torch.cat(flows_out) if flows_out else None


def _forward(model: torch.nn.Module, variant: Variant, x: torch.Tensor, dims: tuple[int, ...],
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decoded output for input flipped along ``dims``, flipped back. Un-flipping a flow field
    also negates the component along each flipped axis (dy for H, dx for W)."""
    if dims:
        x = torch.flip(x, dims)
    with hardware.autocast(device, hardware.amp_dtype(device)):  # as the trainer ran: bf16 where the device has it
        output = model(x.contiguous(memory_format=hardware.memory_format(device)))
    prob, flow = encoding.decode_output(output, variant)
    if not dims:
        return prob, flow
    prob = torch.flip(prob, dims)
    if flow is not None:
        flow = torch.flip(flow, dims)  # a new tensor: negating in place is safe
        for dim in dims:
            flow[:, 0 if dim == -2 else 1] *= -1
    return prob, flow


def _check_finite(prob: torch.Tensor, flow: torch.Tensor | None, ids: Sequence[str], path: Path) -> None:
    bad = ~torch.isfinite(prob).flatten(1).all(dim=1)
    if flow is not None:
        bad |= ~torch.isfinite(flow).flatten(1).all(dim=1)
    if bad.any():
        names = [ids[k] for k in torch.nonzero(bad).flatten().tolist()]
        raise ValueError(f"weights {path}: the model output holds NaN or infinite values for image(s) "
                         f"{', '.join(names)}; the weights are broken (retrain, or drop this file)")
