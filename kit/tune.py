"""Fit the flow variant's extraction settings per cell type and store them in the checkpoint.

``python -m kit.tune --data DIR --weights FILE [--split val] [--tta] [--out FILE]``

The network's outputs on the chosen annotated images (by default the validation split the weights
were trained with, recorded in them: ``kit.split``) are
predicted once, through ``kit.infer``'s own path (``kit.inference.ensemble``, ``kit.inference.image_sets``). Then, for each cell type on its own images, every
combination of ``GRID`` (cell-probability threshold, flow-error threshold, minimum size as a
factor of ``kit.postprocess.MIN_SIZE_BY_TYPE``) is scored with the leaderboard metric, and the best one is
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
from pathlib import Path

from kit import cli
from kit.files import OutputError, exit_on_sigterm
from kit.inference.tuning import TuneConfig, run
from kit.progress import show_progress


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m kit.tune", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder holding the competition data")
    parser.add_argument("--weights", required=True, help="a flow variant's weights file from kit.train")
    parser.add_argument("--split", choices=("val", "train"), default="val",
                        help="annotated images to fit on: the weights' own validation split, or every annotated "
                             "image (those the weights trained on are named in a warning)")
    parser.add_argument("--tta", action="store_true", help="fit on flip-averaged outputs (then infer with --tta)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--out", default=None, help="write the tuned checkpoint here (default: over --weights)")
    return parser


def main(args: argparse.Namespace) -> dict:
    show_progress()
    try:
        return run(tune_config(args))
    except (FileNotFoundError, ValueError, OutputError) as err:
        raise SystemExit(f"kit.tune: error: {err}") from None


def tune_config(args: argparse.Namespace) -> TuneConfig:
    """The frozen settings of a run from the parsed command line."""
    return TuneConfig(weights=Path(args.weights), out=Path(args.out or args.weights),
                      data=None if args.data is None else Path(args.data), split=args.split, tta=args.tta,
                      device=args.device)


if __name__ == "__main__":
    exit_on_sigterm()  # a notebook's hard stop: the tuned file's temporary is removed
    main(get_args_parser().parse_args())
