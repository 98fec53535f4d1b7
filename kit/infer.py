"""Offline inference: trained weights -> instances -> a validated ``submission.csv``.

``python -m kit.infer --data DIR --weights FILE [FILE ...] --out submission/submission.csv``

Needs no network. Every weights file is read with ``torch.load(weights_only=True)`` (through
``kit.model.checkpoints.load_checkpoint``) and carries its variant's settings; several files of the same
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

The ensemble and its prediction are ``kit.inference.ensemble``'s, the images and their cell types
``kit.inference.image_sets``', both shared with ``kit.tune``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kit import cli, flows
from kit.files import OutputError, exit_on_sigterm
from kit.inference import type_classifier
from kit.inference.ensemble import DEFAULT_BATCH_SIZE
from kit.inference.submit import InferConfig, run
from kit.progress import show_progress


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
                             f"{type_classifier.FILE_NAME} beside the first weights file used, if there, "
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


def _path_or_none(value: str | Path | None) -> Path | None:
    """A command-line path, None where it is not given (or given empty)."""
    return Path(value) if value else None


if __name__ == "__main__":
    exit_on_sigterm()
    main(get_args_parser().parse_args())
