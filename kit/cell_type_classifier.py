"""The cell-type classifier: the test images come without a cell type, the one-hot variants need one.

A logistic regression on the image's radial power spectrum and intensity percentiles, fitted on
annotated training images. Its 5-fold accuracy on the 120 shared images is about 0.9 (cort is never
confused; astro and shsy5y sometimes are).

It is fitted once (``python -m kit.cell_type_classifier fit --data DIR --out FILE``; the training kernel does
it and leaves ``cell-types.npz`` beside the weights) and saved as plain arrays in an ``.npz``: the
scaler's mean and scale, the regression's coefficients and intercepts, the class names. Loading
never unpickles (``allow_pickle=False``), and predicting from the stored arrays is plain numpy
(standardise, linear scores, argmax), so inference needs neither scikit-learn nor the training images.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kit import cli
from kit.files import OutputError, exit_on_sigterm
from kit.inference.type_classifier import FILE_NAME, fit_and_save
from kit.progress import show_progress


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m kit.cell_type_classifier", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit the classifier on the annotated images and save it")
    fit.add_argument("--data", default=None,
                     help="folder holding the competition data (default: kit.paths.input_root())")
    fit.add_argument("--out", required=True, help=f"where to write it (.npz; kit.infer looks for {FILE_NAME} "
                                                   "beside the first weights file)")
    fit.add_argument("--seed", type=int, default=0)
    return parser


def main(args: argparse.Namespace) -> Path:
    """Fit and save the classifier; bad input ends the run with ``kit.cell_type_classifier: error: ...``."""
    show_progress()
    try:
        return fit_and_save(args.data, args.out, args.seed)
    except (FileNotFoundError, ValueError, OutputError) as err:
        raise SystemExit(f"kit.cell_type_classifier: error: {err}") from None


if __name__ == "__main__":
    exit_on_sigterm()  # a notebook's hard stop: the classifier's temporary is removed
    main(get_args_parser().parse_args())
