"""Offline inference: trained weights -> instances -> a validated ``submission.csv``.

``python -m kit.infer --data DIR --weights FILE [FILE ...] --out submission/submission.csv``

Needs no network. Every weights file is read with ``torch.load(weights_only=True)`` (through
``kit.models.load_checkpoint``) and carries its variant's settings; several files of the same
target type (mask or flow) are averaged, or, with ``--select-best``, the one whose ``kit.tune``
validation score is highest is used alone. Images are predicted at native resolution in batches,
optionally with flip test-time augmentation, then post-processed: ``kit.postprocess.mask_to_labels``
for the mask variants, ``kit.flows.flows_to_labels`` for the flow variant.

Cell types: the test images come without one, yet the one-hot variants take it as input and the
post-processing uses it (minimum sizes, watershed seeds). For images listed in ``train.csv`` the
annotated type is used; test images get the type predicted by the classifier of
``kit.cell_type_classifier``, loaded from ``--cell-type-model`` (default: ``cell-types.npz`` beside
the first weights file, where the training kernel leaves it). Without such a file it is refitted on
the training images of the same data folder at start-up, and a printed line says so.

The ensemble and its prediction are ``kit.ensemble``'s, the images and their cell types
``kit.image_sets``'', both shared with ``kit.tune``.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from kit import cell_type_classifier, cli, data, flows, metrics, models, paths, postprocess, rle, submission
from kit.ensemble import DEFAULT_BATCH_SIZE, Member, best_validated, load_ensemble, predict, split_records
from kit.files import OutputError, check_writable_dir, exit_on_sigterm, remove_stale_temporaries
from kit.image_sets import select_images
from kit.progress import module_logger, show_progress
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


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m kit.infer", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None,
                        help="folder holding the competition data (default: kit.paths.input_root())")
    parser.add_argument("--weights", nargs="+", required=True, help="weights files from kit.train (one target type)")
    parser.add_argument("--out", default=None, help="submission file (default: <working dir>/submission.csv)")
    parser.add_argument("--split", choices=("test", "train", "val"), default="test",
                        help="images to predict: the test images, or annotated training images (all of them / "
                             "the validation split the weights were trained with, recorded in them)")
    parser.add_argument("--ids", nargs="+", default=None, help="only these image ids")
    parser.add_argument("--tta", action="store_true", help="average over horizontal/vertical flips")
    parser.add_argument("--select-best", action="store_true",
                        help="use only the weights file whose kit.tune validation score (the cell types' mean) "
                             "is highest, instead of averaging them; each must be tuned on the same images")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--evaluate", action="store_true", help="print the leaderboard score (annotated images only)")
    parser.add_argument("--boundary-lut", default=None,
                        help="boundary-tuning table from `python -m kit.boundary_table fit` (default: no tuning)")
    parser.add_argument("--cell-type-model", default=None, metavar="FILE",
                        help="cell-type classifier from `python -m kit.cell_type_classifier fit` (default: "
                             f"{cell_type_classifier.FILE_NAME} beside the first weights file used, if there, "
                             "else one refitted on the training images)")
    parser.add_argument("--flow-threshold", type=float, default=None,
                        help="flow variant: drop instances whose flow error exceeds this, for every cell type "
                             f"(default: the checkpoint's tuned value per type, else {flows.FLOW_THRESHOLD})")
    parser.add_argument("--allow-empty", action="store_true",
                        help="let a submission without any cell replace one that has cells")
    return parser


def main(args: argparse.Namespace) -> Path:
    """Write the submission; bad input ends the run with ``kit.infer: error: ...`` naming the culprit."""
    show_progress()
    try:
        return run(infer_config(args))
    except (FileNotFoundError, ValueError, OutputError) as err:  # SubmissionError is a ValueError
        raise SystemExit(f"kit.infer: error: {err}") from None


def infer_config(args: argparse.Namespace) -> InferConfig:
    """The frozen settings of a run from the parsed command line; contradictory ones are an error."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.evaluate and args.split == "test":
        raise ValueError("--evaluate needs annotated images: add --split train or --split val")
    return InferConfig(weights=tuple(Path(w) for w in args.weights), out=_path_or_none(args.out),
                       data=_path_or_none(args.data), split=args.split,
                       ids=None if args.ids is None else tuple(args.ids), tta=args.tta, select_best=args.select_best,
                       batch_size=args.batch_size, device=args.device, evaluate=args.evaluate,
                       boundary_lut=_path_or_none(args.boundary_lut),
                       cell_type_model=_path_or_none(args.cell_type_model),
                       flow_threshold=args.flow_threshold, allow_empty=args.allow_empty)


def run(config: InferConfig) -> Path:
    """Predict the selected images, write and validate the submission, optionally score it."""
    started = time.perf_counter()
    device = models.resolve_device(config.device)
    out = config.out or paths.working_dir() / "submission.csv"
    check_writable_dir(out.parent)  # before the predictions, not after them
    for path in remove_stale_temporaries(out.parent, [out.name]):
        logger.info(f"removed {path}: a partial file left by a write that was killed")
    ensemble = load_ensemble(config.weights, device)  # first: a bad weights file fails fast
    if config.select_best:
        ensemble = [best_validated(ensemble)]
    classifier = load_cell_type_model(config.cell_type_model, ensemble[0].path)
    layout = data.find_competition(config.data, need_train=True, need_test=config.split == "test")
    train_df = data.read_train_csv(layout.train_csv)
    held_out = None if config.split == "test" else of_weights(split_records(ensemble), data.image_table(train_df))
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
                         ) -> cell_type_classifier.CellTypeClassifier | None:
    """The classifier in ``path``, else in the file beside ``first_weights``; None if neither is given or there."""
    if path is None:
        beside = Path(first_weights).parent / cell_type_classifier.FILE_NAME
        if not beside.is_file():
            return None
        path = beside
    classifier = cell_type_classifier.load_classifier(path)
    logger.info(f"cell types from the classifier in {path}")
    return classifier


def predict_labels(ensemble: Sequence[Member], image_paths: Mapping[str, Path], cell_types: Mapping[str, str],
                   device: torch.device, batch_size: int = DEFAULT_BATCH_SIZE, tta: bool = False,
                   config: postprocess.PostprocessConfig = postprocess.PostprocessConfig(),
                   flow_threshold: float | None = None) -> dict[str, np.ndarray]:
    """``{id: int32[H, W] instances}`` for every image, predicted in batches and post-processed
    (``flow_threshold``, when given, overrides the config's per-type flow-error thresholds)."""
    ids = list(image_paths)
    results = {}
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        images = np.stack([data.load_image(image_paths[i]) for i in batch])
        types = [cell_types[i] for i in batch]
        prob, flow = predict(ensemble, images, types, device, tta, batch)
        for k, image_id in enumerate(batch):
            results[image_id] = postprocess.output_to_labels(
                prob[k], None if flow is None else flow[k], images[k], types[k], config, flow_threshold)
    return results


def report_score(train_df: pd.DataFrame, submission_path: Path, cell_types: Mapping[str, str]) -> metrics.ScoreReport:
    """Log the leaderboard-style score of ``submission_path`` on its (annotated) images."""
    solution = train_df.loc[train_df["id"].isin(list(cell_types)), ["id", "annotation"]]
    report = metrics.score_report(solution, submission.read_submission(submission_path), cell_types)
    logger.info(f"leaderboard score over {len(cell_types)} images: {report.score:.4f}")
    logger.info(report.per_cell_type.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return report


def _path_or_none(value: str | Path | None) -> Path | None:
    """A command-line path, None where it is not given (or given empty)."""
    return Path(value) if value else None


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


if __name__ == "__main__":
    exit_on_sigterm()
    main(get_args_parser().parse_args())
