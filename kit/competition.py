"""The competition's fixed facts, for every module and the light commands: standard library only.

``python -m kit.build_kernel`` needs the cell types, the slug and the time limit but none of numpy,
pandas, numba, cv2 or torch, so these facts live here rather than beside the code that reads the data.
"""
from __future__ import annotations

import argparse
import re

COMPETITION_SLUG = "sartorius-cell-instance-segmentation"
IMAGE_SHAPE = (520, 704)  # (height, width) of every competition image
CELL_TYPES = ("cort", "astro", "shsy5y")  # one-hot channel order
# LIVECell's eight cell lines (its file-name prefixes, lower case), shipped in the competition's input
# as LIVECell_dataset_2021/. SH-SY5Y is the competition's shsy5y line itself; the seven others have no
# competition type, and the one-hot variants see all-zero cell-type planes for them (kit.models.model_input).
LIVECELL_CELL_LINES = ("a172", "bt474", "bv2", "huh7", "mcf7", "shsy5y", "skbr3", "skov3")
DEFAULT_PRETRAIN_EPOCHS = 20  # kit.train --pretrain-epochs: passes over LIVECell's train + val images (not tuned)
DEFAULT_MIN_CONFIDENCE = 0.8  # kit.pseudo --min-confidence; not tuned: the write-ups do not give theirs
DEFAULT_TIME_LIMIT = "8:30"  # inside Kaggle's 9-hour GPU notebook limit, with time left to save outputs


class TimeLimitError(ValueError, argparse.ArgumentTypeError):
    """A malformed ``--time-limit``; as an ArgumentTypeError, argparse prints its message as is."""


def parse_time_limit(text: str) -> int:
    """``"H:MM"`` -> seconds; ``TimeLimitError`` (a ValueError) shows the expected form. 0:00 is valid for the
    trainer (it still runs its first epoch)."""
    match = re.fullmatch(r"(\d+):([0-5]\d)", text.strip())
    if not match:
        raise TimeLimitError(f"time limit {text!r} is not H:MM (e.g. 8:30 or 0:30)")
    return 3600 * int(match.group(1)) + 60 * int(match.group(2))


class PretrainSourceError(ValueError, argparse.ArgumentTypeError):
    """A malformed ``--pretrain``; as an ArgumentTypeError, argparse prints its message as is."""


def parse_pretrain(text: str) -> tuple[str, ...] | None:
    """``"livecell"`` -> None (all eight lines), ``"livecell:shsy5y,a172"`` -> ``("shsy5y", "a172")``
    (case-insensitive, checked against ``LIVECELL_CELL_LINES``); anything else is a ``PretrainSourceError``."""
    source, _, lines = text.strip().partition(":")
    if source.lower() != "livecell":
        raise PretrainSourceError(f"--pretrain {text!r}: the source is 'livecell' or 'livecell:LINE,LINE' "
                                  f"(lines: {', '.join(LIVECELL_CELL_LINES)})")
    if not _:
        return None
    chosen = tuple(dict.fromkeys(part.strip().lower() for part in lines.split(",") if part.strip()))
    unknown = [line for line in chosen if line not in LIVECELL_CELL_LINES]
    if unknown or not chosen:
        raise PretrainSourceError(f"--pretrain {text!r}: LIVECell line(s) {unknown or [lines]} unknown; valid: "
                                  f"{', '.join(LIVECELL_CELL_LINES)}")
    return chosen
