"""Score a submission locally exactly as the leaderboard does: ``python -m kit.validate``.

The test set's annotations are hidden, so a local check scores a submission made for *training*
images against their ``train.csv`` annotations. Like the leaderboard, it scores a stated set of
images (the validation split, every annotated image, or ``--ids``), not whatever the submission
happens to list: an image the submission lacks scores 0, and the summary counts them. The
validation split is the one the weights that made the submission were trained with (``--weights``,
recorded in them: ``kit.split``); without ``--weights`` it is the default split, and a note says so.
An image the weights trained on is named in a warning wherever it is scored. The per-image scores
and overlay PNGs of the worst images (image in gray, truth outlines green, prediction outlines
magenta) go to ``overlays/`` beside the submission.

    python -m kit.validate --data ../shared --submission runs/val/submission.csv --overlays 8
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kit import cli, metrics
from kit.files import OutputError
from kit.inference.validation import ValidateConfig, run
from kit.progress import show_progress


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m kit.validate", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=None,
                        help="folder holding the competition data somewhere below it (default: kit.paths.input_root())")
    parser.add_argument("--submission", type=Path, required=True,
                        help="submission.csv (id,predicted) for training images")
    parser.add_argument("--split", choices=("val", "train"), default="val",
                        help="images scored: the validation split (as `kit.infer --split val` picks it) "
                             "or every annotated image; each one missing from the submission scores 0")
    parser.add_argument("--ids", nargs="+", default=None, help="score exactly these annotated images instead")
    parser.add_argument("--weights", nargs="+", type=Path, default=None, metavar="FILE",
                        help="the weights file(s) that made the submission: --split val scores the validation "
                             "split they were trained with, and images they trained on are named in a warning "
                             "(default: the default split, seed 0, val-fraction 0.2)")
    parser.add_argument("--overlays", type=int, default=8, metavar="N",
                        help="write overlay PNGs of the N worst-scoring images (0: none)")
    parser.add_argument("--overlay-dir", type=Path, default=None,
                        help="where overlays and per-image scores go (default: overlays/ beside the submission)")
    return parser


def main(args: argparse.Namespace) -> metrics.ScoreReport:
    """Validate and score the submission, print the tables, write per-image scores and overlays."""
    if args.overlays < 0:
        raise SystemExit(f"kit.validate: error: --overlays must be >= 0, got {args.overlays}")
    show_progress()
    try:
        return run(validate_config(args))
    except (FileNotFoundError, ValueError, OutputError) as err:  # SubmissionError is a ValueError
        raise SystemExit(f"kit.validate: error: {err}") from None


def validate_config(args: argparse.Namespace) -> ValidateConfig:
    """The frozen settings of a scoring from the parsed command line."""
    return ValidateConfig(submission=args.submission, data=args.data, split=args.split,
                          ids=None if args.ids is None else tuple(args.ids), weights=tuple(args.weights or ()),
                          overlays=args.overlays, overlay_dir=args.overlay_dir)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
