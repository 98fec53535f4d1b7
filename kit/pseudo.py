"""Pseudo-labels for the competition's unannotated images: ``python -m kit.pseudo --data DIR --weights FILE
--out FILE.csv --min-confidence X``.

``train_semi_supervised/`` (in the competition folder, beside ``train/``) holds 1,972 flat 520x704
PNGs without annotations; each name's prefix before ``[`` is its cell type (``astros`` for astro,
``cort``, ``shsy5y``). This command predicts their instances with trained weights, exactly as
``kit.infer`` does (``kit.inference.ensemble``'s prediction, flips, tuned per-type settings, extraction),
keeps the cells whose confidence is at least ``--min-confidence`` and writes them in ``train.csv``'s form (its nine
columns, then ``confidence``), which ``kit.train --extra-data FILE.csv`` trains on beside the real
annotations.

A cell's confidence is the network's mean cell probability over the cell's pixels: every pixel of
an extracted cell already passed the cell-probability threshold (0.5 unless tuned), so a value near
1 says the whole cell is certain and one near the threshold that most of it is borderline. The
flow-error filter of the extraction still applies first. An image left without a cell gets no row
(``train.csv`` has none either) and is not trained on.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kit import cli
from kit.cli import DEFAULT_MIN_CONFIDENCE
from kit.files import OutputError, exit_on_sigterm
from kit.inference.ensemble import DEFAULT_BATCH_SIZE
from kit.inference.pseudo_labelling import PseudoConfig, run
from kit.progress import show_progress


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m kit.pseudo", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder holding the competition data (default: kit.paths.input_root())")
    parser.add_argument("--weights", nargs="+", required=True, help="weights files from kit.train (one target type)")
    parser.add_argument("--out", required=True, type=Path, help="pseudo-label CSV to write (train.csv's form)")
    parser.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE, metavar="X",
                        help="keep cells whose mean cell probability is at least X, in [0, 1] "
                             f"(default {DEFAULT_MIN_CONFIDENCE})")
    parser.add_argument("--max-images", type=int, help="only the first N images (by name)")
    parser.add_argument("--tta", action="store_true", help="average over horizontal/vertical flips")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    return parser


def main(args: argparse.Namespace) -> Path:
    show_progress()
    try:
        return run(pseudo_config(args))
    except (FileNotFoundError, ValueError, OutputError) as err:
        raise SystemExit(f"kit.pseudo: error: {err}") from None


def pseudo_config(args: argparse.Namespace) -> PseudoConfig:
    """The frozen settings of a run from the parsed command line; a value out of range is an error."""
    if not 0.0 <= args.min_confidence <= 1.0:
        raise ValueError(f"--min-confidence must be in [0, 1] (a mean probability), got {args.min_confidence}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    return PseudoConfig(weights=tuple(Path(w) for w in args.weights), out=Path(args.out),
                        data=None if args.data is None else Path(args.data), min_confidence=args.min_confidence,
                        max_images=args.max_images, tta=args.tta, batch_size=args.batch_size, device=args.device)


if __name__ == "__main__":
    exit_on_sigterm()
    main(get_args_parser().parse_args())
