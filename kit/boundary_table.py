"""Fit the boundary-tuning table on annotated images (the table kit.postprocess applies).

The method paper re-decides the pixels near a predicted mask's boundary with a classic classifier
(SVM with a degree-3 polynomial kernel, or Gaussian naive Bayes, whichever is more accurate) on
two features, the pixel intensity and its Sobel gradient magnitude. This module samples those
pixels from annotated images, fits and scores both classifiers, and tabulates the better one as
the 256 x 256 ``kit.postprocess.BoundaryLUT`` that inference applies (scikit-learn is needed
here only, never at inference).

CLI: ``python -m kit.boundary_table fit --data DIR --out FILE [--weights FILE ...]`` fits the table on
the annotated training images (by default those outside the validation split of ``--weights``,
recorded in them: ``kit.split``; without ``--weights`` the default split's, with a note) and reports
both classifiers' accuracy.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kit import cli
from kit.files import OutputError, check_writable_dir
from kit.inference.boundary_fit import MAX_IMAGES, PIXELS_PER_IMAGE, FitConfig, fit_from_folder
from kit.postprocess import BoundaryLUT
from kit.progress import show_progress


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m kit.boundary_table", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit the boundary-tuning lookup table on annotated images")
    fit.add_argument("--data", default=None,
                     help="folder holding the competition data (default: kit.paths.input_root())")
    fit.add_argument("--out", required=True, help="where to write the table (.npz)")
    fit.add_argument("--split", choices=("train", "all"), default="train",
                     help="images to fit on: the training split (keeps validation images unseen) or all")
    fit.add_argument("--max-images", type=int, default=MAX_IMAGES, help="images used at most (the paper: 200)")
    fit.add_argument("--pixels-per-image", type=int, default=PIXELS_PER_IMAGE, help="boundary pixels per image")
    fit.add_argument("--seed", type=int, default=0, help="seed of the image and pixel sampling (not the split)")
    fit.add_argument("--weights", nargs="+", type=Path, default=[], metavar="FILE",
                     help="the weights the table will be used with: --split train leaves out the validation "
                          "split they were trained with (default: the default split, seed 0, val-fraction 0.2)")
    return parser


def main(args: argparse.Namespace) -> BoundaryLUT:
    """Fit and save the table; bad input ends the run with ``kit.boundary_table: error: ...``."""
    show_progress()
    try:
        config = fit_config(args)
        check_writable_dir(config.out.parent, "--out")  # before the fit, not after it
        return fit_from_folder(config)
    except (FileNotFoundError, ValueError, OutputError) as err:
        raise SystemExit(f"kit.boundary_table: error: {err}") from None


def fit_config(args: argparse.Namespace) -> FitConfig:
    """The frozen settings of a ``fit`` from the parsed command line."""
    return FitConfig(out=Path(args.out), data=None if args.data is None else Path(args.data), split=args.split,
                     max_images=args.max_images, pixels_per_image=args.pixels_per_image, seed=args.seed,
                     weights=tuple(args.weights))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
