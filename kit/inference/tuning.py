"""Tuning the flow variant's extraction (``kit.tune``'s library): the network's outputs on annotated
images predicted once, every ``GRID`` point scored per cell type with the leaderboard metric, the best
written into the checkpoint's ``InferenceSettings.postprocess`` (and the tuned score into its
``validation``)."""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import torch

from kit import flows, metrics, postprocess
from kit.data import sartorius
from kit.files import check_writable_dir, remove_stale_temporaries
from kit.inference.ensemble import load_ensemble, Member, predict, split_records
from kit.inference.image_sets import annotated_images
from kit.model import checkpoints, hardware
from kit.progress import module_logger

logger = module_logger(__name__)

GRID = {"cell_prob": (0.3, 0.4, 0.5, 0.6), "flow_threshold": (0.4, 0.6, 0.8), "min_size": (0.5, 1.0, 1.5)}


class Fit(NamedTuple):
    """``fit_settings``' result: the tuned settings, a printable report, each type's tuned score."""
    settings: dict  # {"cell_prob": {type: v}, "flow_threshold": {...}, "min_size": {...}}
    report: str
    scores: dict  # {type: mean leaderboard score of its images at its tuned settings}


@dataclass(frozen=True)
class TuneConfig:
    """One tuning run as the command line asks for it, built once by ``tune_config``."""

    weights: Path
    out: Path  # where the tuned checkpoint goes (the weights file itself by default)
    data: Path | None = None
    split: str = "val"  # "val" or "train"
    tta: bool = False
    device: str | None = None


def run(config: TuneConfig) -> dict:
    """Predict, fit per type, report, save; returns the tuned settings."""
    device = hardware.resolve_device(config.device)
    check_writable_dir(config.out.parent)  # before the predictions, not after them
    for path in remove_stale_temporaries(config.out.parent, [config.out.name]):
        logger.info(f"removed {path}: a partial file left by a write that was killed")
    ensemble = load_ensemble([config.weights], device)
    if ensemble[0].variant.target != "flow":
        raise ValueError(f"{config.weights} holds mask variant {ensemble[0].variant.name!r}; kit.tune fits the "
                         "flow variants' extraction")
    image_paths, truth, cell_types = annotated_images(config.data, config.split, None, split_records(ensemble))
    outputs = predict_outputs(ensemble, image_paths, cell_types, device, config.tta)
    fit = fit_settings(outputs, truth, cell_types)
    validation = validation_record(fit, list(image_paths), config.split, config.tta)
    logger.info(fit.report)
    logger.info(f"type mean at the tuned settings: {validation['type_mean']:.4f} "
                f"({len(image_paths)} {config.split} images)")
    save_tuned(config.weights, config.out, fit.settings, validation)
    logger.info(f"wrote the tuned settings into {config.out}; kit.infer uses them from there")
    return fit.settings


def predict_outputs(ensemble: Sequence[Member], image_paths: Mapping[str, Path], cell_types: Mapping[str, str],
                    device: torch.device, tta: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """``{id: (prob float32[H, W], flow float32[2, H, W] or None for a mask variant)}``, one image at
    a time (rescaled members resample each image anyway)."""
    outputs = {}
    for image_id, path in image_paths.items():
        image = sartorius.load_image(path)[None]
        prob, flow = predict(ensemble, image, [cell_types[image_id]], device, tta, [image_id])
        outputs[image_id] = (prob[0], None if flow is None else flow[0])
    return outputs


def fit_settings(outputs: Mapping[str, tuple[np.ndarray, np.ndarray]], truth: Mapping[str, Sequence[str]],
                 cell_types: Mapping[str, str]) -> Fit:
    """The best ``GRID`` point per cell type (``Fit``). A tie with the default settings keeps the
    defaults (no move without a gain); other ties go to the first in grid order."""
    tuned: dict[str, dict] = {name: {} for name in GRID}
    best_scores = {}
    lines = ["cell type  images  default  tuned  cell_prob  flow_threshold  min_size"]
    default = postprocess.PostprocessConfig()
    for cell_type in sorted(set(cell_types.values())):
        ids = [i for i in outputs if cell_types[i] == cell_type]
        scores = _grid_scores([outputs[i] for i in ids], [truth[i] for i in ids], default.min_size[cell_type])
        untuned = (default.cell_prob[cell_type], default.flow_threshold[cell_type], 1.0)
        best = max(scores, key=lambda point: (scores[point], point == untuned))
        base = scores[untuned]
        cell_prob, flow_threshold, factor = best
        tuned["cell_prob"][cell_type] = cell_prob
        tuned["flow_threshold"][cell_type] = flow_threshold
        tuned["min_size"][cell_type] = int(round(factor * default.min_size[cell_type]))
        best_scores[cell_type] = scores[best]
        lines.append(f"{cell_type:9s}  {len(ids):6d}  {base:7.4f}  {scores[best]:.4f}  {cell_prob:9g}  "
                     f"{flow_threshold:14g}  {tuned['min_size'][cell_type]:8d}")
    return Fit(tuned, "\n".join(lines), best_scores)


def validation_record(fit: Fit, image_ids: Sequence[str], split: str, tta: bool) -> dict:
    """What ``save_tuned`` keeps of a fit: the types' mean tuned score (what ``kit.infer
    --select-best`` compares), each type's, and which images gave them (a digest of their ids)."""
    digest = hashlib.sha256(" ".join(sorted(image_ids)).encode()).hexdigest()
    return {"type_mean": float(np.mean(list(fit.scores.values()))), "per_type": dict(fit.scores),
            "images": len(image_ids), "image_ids_sha256": digest, "split": split, "tta": tta}


def save_tuned(weights: str | Path, out: str | Path, tuned: Mapping[str, Mapping[str, float]],
               validation: Mapping | None = None) -> None:
    """Write ``weights``' checkpoint with its ``InferenceSettings.postprocess = tuned`` (and
    ``.validation``, from ``validation_record``, when given) to ``out``, atomically through
    ``checkpoints.save_checkpoint``; everything else, a resumable file's optimiser state included, as it was."""
    model, variant, checkpoint = checkpoints.load_checkpoint(weights)
    settings = checkpoints.InferenceSettings.of(checkpoint, weights)
    settings = dataclasses.replace(settings, postprocess={k: dict(v) for k, v in tuned.items()},
                                   validation=settings.validation if validation is None else dict(validation))
    checkpoints.save_checkpoint(out, model, variant, optimizer=checkpoint.get("optimizer"),
                           scheduler=checkpoint.get("scheduler"), scaler=checkpoint.get("scaler"),
                           epoch=checkpoint.get("epoch", 0), best_score=checkpoint.get("best_score", float("nan")),
                           history=checkpoint.get("history", ()), inference=settings,
                           stages=checkpoint.get("stages", ()))


def _grid_scores(outputs: Sequence[tuple[np.ndarray, np.ndarray]], truth: Sequence[Sequence[str]],
                 min_size: int) -> dict[tuple[float, float, float], float]:
    """Mean leaderboard score of every grid point over one type's images. Flow following runs
    once per (cell_prob, flow_threshold); the minimum size only filters its result."""
    scores = {}
    for cell_prob, flow_threshold in itertools.product(GRID["cell_prob"], GRID["flow_threshold"]):
        followed = [flows.flows_to_labels(flow, prob > cell_prob, flow_threshold=flow_threshold, min_size=0)
                    for prob, flow in outputs]
        for factor in GRID["min_size"]:
            labels = [flows.drop_small(f, int(round(factor * min_size))) for f in followed]
            scores[(cell_prob, flow_threshold, factor)] = float(np.mean(metrics.score_labels(truth, labels)))
    return scores
