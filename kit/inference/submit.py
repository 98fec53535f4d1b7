"""Offline inference (``kit.infer``'s library): trained weights -> instances -> a validated
``submission.csv``, with the cell types of images that come without one, and its score on annotated
images."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from kit import metrics, paths, postprocess, rle, submission
from kit.data import sartorius
from kit.files import check_writable_dir, remove_stale_temporaries
from kit.inference import type_classifier
from kit.inference.ensemble import (DEFAULT_BATCH_SIZE, Member, best_validated, load_ensemble, predicted_instances,
                                    split_records)
from kit.inference.image_sets import select_images
from kit.model import hardware
from kit.progress import module_logger
from kit.split import of_weights

logger = module_logger(__name__)


@dataclass(frozen=True)
class InferConfig:
    """One inference run as the command line asks for it, built once by ``infer_config``; ``run``
    and everything below it take this, never the argparse Namespace."""

    weights: tuple[Path, ...]
    out: Path
    data: Path | None = None
    split: str = "test"  # "test", "train" or "val"
    ids: tuple[str, ...] | None = None
    tta: bool = False
    select_best: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str | None = None
    evaluate: bool = False
    boundary_lut: Path | None = None
    cell_type_model: Path | None = None
    flow_threshold: float | None = None
    allow_empty: bool = False


def run(config: InferConfig) -> Path:
    """Predict the selected images, write and validate the submission, optionally score it."""
    started = time.perf_counter()
    device = hardware.resolve_device(config.device)
    out = config.out or paths.working_dir() / "submission.csv"
    check_writable_dir(out.parent)  # before the predictions, not after them
    for path in remove_stale_temporaries(out.parent, [out.name]):
        logger.info(f"removed {path}: a partial file left by a write that was killed")
    ensemble = load_ensemble(config.weights, device)  # first: a bad weights file fails fast
    if config.select_best:
        ensemble = [best_validated(ensemble)]
    classifier = load_cell_type_model(config.cell_type_model, ensemble[0].path)
    layout = sartorius.find_competition(config.data, need_train=True, need_test=config.split == "test")
    train_df = sartorius.read_train_csv(layout.train_csv)
    held_out = None if config.split == "test" else of_weights(split_records(ensemble), sartorius.image_table(train_df))
    image_paths, cell_types = select_images(layout, train_df, config.split, config.ids, classifier, held_out)
    postprocess_config = postprocess.PostprocessConfig(
        boundary=postprocess.load_boundary_lut(config.boundary_lut) if config.boundary_lut else None,
    ).with_tuned(ensemble[0].settings.postprocess)
    which = f"{config.split}: {held_out.describe()}" if config.split == "val" else config.split
    logger.info(f"{len(image_paths)} images ({which}), {len(ensemble)} weights file(s) of target "
                f"{ensemble[0].variant.target!r}, device {device}, tta {'on' if config.tta else 'off'}")
    predictions = predict_labels(ensemble, image_paths, cell_types, device, config.batch_size, config.tta,
                                 postprocess_config, config.flow_threshold)
    n_cells = sum(int(labels.max()) for labels in predictions.values())
    if n_cells == 0:
        _check_empty(out, len(predictions), config.allow_empty)
    submission.write_submission(predictions, out, expected_ids=list(image_paths))
    logger.info(f"wrote {out}: {n_cells} cells in {len(predictions)} images ({time.perf_counter() - started:.1f} s)")
    if config.evaluate:
        report_score(train_df, out, cell_types)
    return out


def load_cell_type_model(path: str | Path | None, first_weights: str | Path
                         ) -> type_classifier.CellTypeClassifier | None:
    """The classifier in ``path``, else in the file beside ``first_weights``; None if neither is given or there."""
    if path is None:
        beside = Path(first_weights).parent / type_classifier.FILE_NAME
        if not beside.is_file():
            return None
        path = beside
    classifier = type_classifier.load_classifier(path)
    logger.info(f"cell types from the classifier in {path}")
    return classifier


def predict_labels(ensemble: Sequence[Member], image_paths: Mapping[str, Path], cell_types: Mapping[str, str],
                   device: torch.device, batch_size: int = DEFAULT_BATCH_SIZE, tta: bool = False,
                   config: postprocess.PostprocessConfig = postprocess.PostprocessConfig(),
                   flow_threshold: float | None = None) -> dict[str, np.ndarray]:
    """``{id: int32[H, W] instances}`` for every image (``kit.inference.ensemble.predicted_instances``)."""
    images = {image_id: (path, cell_types[image_id]) for image_id, path in image_paths.items()}
    return {found.id: found.labels for found in predicted_instances(ensemble, images, device, batch_size, tta, config,
                                                                     flow_threshold)}


def report_score(train_df: pd.DataFrame, submission_path: Path, cell_types: Mapping[str, str]) -> metrics.ScoreReport:
    """Log the leaderboard-style score of ``submission_path`` on its (annotated) images."""
    solution = train_df.loc[train_df["id"].isin(list(cell_types)), ["id", "annotation"]]
    report = metrics.score_report(solution, submission.read_submission(submission_path), cell_types)
    logger.info(f"leaderboard score over {len(cell_types)} images: {report.score:.4f}")
    logger.info(report.per_cell_type.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return report


def _check_empty(out: Path, n_images: int, allow_empty: bool) -> None:
    """A submission without a single cell is said out loud, and replaces one that has cells only
    with ``--allow-empty``."""
    try:
        earlier = submission.read_submission(out) if out.is_file() else None
    except submission.SubmissionError:
        earlier = None  # an unreadable file is no good submission to protect
    if not allow_empty and earlier is not None and earlier["predicted"].map(rle.holds_mask).any():
        raise ValueError(f"no cell predicted in any of the {n_images} images (untrained or broken weights?), "
                         f"and {out} holds cells: it was kept. Pass --allow-empty to replace it anyway")
    logger.warning(f"kit.infer: warning: no cell predicted in any of the {n_images} images (untrained or broken "
                   "weights?); the submission scores 0")
