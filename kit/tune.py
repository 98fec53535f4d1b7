"""Fit the flow variant's extraction settings per cell type and store them in the checkpoint.

``python -m kit.tune --data DIR --weights FILE [--split val] [--tta] [--out FILE]``

The network's outputs on the chosen annotated images (the validation split by default) are
predicted once, through ``kit.infer``'s own path. Then, for each cell type on its own images, every
combination of ``GRID`` (cell-probability threshold, flow-error threshold, minimum size as a
factor of ``kit.postprocess.MIN_SIZE``) is scored with the leaderboard metric, and the best one is
written into the checkpoint's ``inference["postprocess"]``, where ``kit.infer`` and the inference
kernel take it from. The file is rewritten atomically with nothing but that entry changed
(``--out`` writes a copy instead).

Fitted and scored on the same images, the tuned score is optimistic by the choice among the
grid's 36 combinations per type; the report prints the untuned score beside it. The tuned scores
are kept in the checkpoint too (``inference["validation"]``), so that ``kit.infer --select-best``
can pick, among flow models tuned on the same images, the one that scores best.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import torch

from kit import data, flows, infer, metrics, models, postprocess
from kit.files import atomic_output

GRID = {"cell_prob": (0.3, 0.4, 0.5, 0.6), "flow_threshold": (0.4, 0.6, 0.8), "min_size": (0.5, 1.0, 1.5)}


class Fit(NamedTuple):
    """``fit_settings``' result: the tuned settings, a printable report, each type's tuned score."""
    settings: dict  # {"cell_prob": {type: v}, "flow_threshold": {...}, "min_size": {...}}
    report: str
    scores: dict  # {type: mean leaderboard score of its images at its tuned settings}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kit.tune", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder holding the competition data")
    parser.add_argument("--weights", required=True, help="a flow variant's weights file from kit.train")
    parser.add_argument("--split", choices=("val", "train"), default="val", help="annotated images to fit on")
    parser.add_argument("--tta", action="store_true", help="fit on flip-averaged outputs (then infer with --tta)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--out", default=None, help="write the tuned checkpoint here (default: over --weights)")
    return parser


def main(args: argparse.Namespace) -> dict:
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"kit.tune: error: {err}") from None


def run(args: argparse.Namespace) -> dict:
    """Predict, fit per type, report, save; returns the tuned settings."""
    device = models.resolve_device(args.device)
    ensemble = infer.load_ensemble([args.weights], device)
    if ensemble[0].variant.target != "flow":
        raise ValueError(f"{args.weights} holds mask variant {ensemble[0].variant.name!r}; kit.tune fits the "
                         "flow variants' extraction")
    image_paths, truth, cell_types = annotated_images(args.data, args.split)
    outputs = predict_outputs(ensemble, image_paths, cell_types, device, args.tta)
    fit = fit_settings(outputs, truth, cell_types)
    validation = validation_record(fit, list(image_paths), args.split, args.tta)
    print(fit.report)
    print(f"type mean at the tuned settings: {validation['type_mean']:.4f} ({len(image_paths)} {args.split} images)")
    out = Path(args.out or args.weights)
    save_tuned(args.weights, out, fit.settings, validation)
    print(f"wrote the tuned settings into {out}; kit.infer uses them from there")
    return fit.settings


def annotated_images(data_dir: str | Path | None, split: str, max_images: int | None = None
                     ) -> tuple[dict[str, Path], dict[str, list[str]], dict[str, str]]:
    """``({id: PNG path}, {id: annotation RLEs}, {id: cell type})`` of the kit's ``split`` ("val" or
    "train"), its first ``max_images``, in ``kit.infer --split``'s order."""
    layout = data.find_competition(data_dir, need_test=False)
    train_df = data.read_train_csv(layout.train_csv)
    image_paths, cell_types = infer.select_images(layout, train_df, split, None, None)
    ids = list(image_paths)[:max_images]
    annotations = train_df.groupby("id")["annotation"].apply(list)
    return ({i: image_paths[i] for i in ids}, {i: annotations[i] for i in ids}, {i: cell_types[i] for i in ids})


def predict_outputs(ensemble, image_paths: Mapping[str, Path], cell_types: Mapping[str, str],
                    device: torch.device, tta: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """``{id: (prob float32[H, W], flow float32[2, H, W] or None for a mask variant)}``, one image at
    a time (rescaled members resample each image anyway)."""
    outputs = {}
    for image_id, path in image_paths.items():
        image = data.load_image(path)[None]
        prob, flow = infer.predict(ensemble, image, [cell_types[image_id]], device, tta, [image_id])
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
    """Write ``weights``' checkpoint with ``inference["postprocess"] = tuned`` (and
    ``inference["validation"]``, from ``validation_record``, when given) to ``out``, atomically."""
    checkpoint = models.read_checkpoint(weights)
    inference = {**checkpoint.get("inference", {}), "postprocess": {k: dict(v) for k, v in tuned.items()}}
    if validation is not None:
        inference["validation"] = dict(validation)
    checkpoint["inference"] = inference
    with atomic_output(out) as tmp:
        torch.save(checkpoint, tmp)


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


if __name__ == "__main__":
    main(get_args_parser().parse_args())
