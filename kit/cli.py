"""The commands' argument parser, their argument types and the kit's defaults for them.

A mistyped name is answered in one line with the closest valid ones:
argparse answers a bad choice with the whole usage block first (16 lines for ``kit.train``) and
then every valid name; the line that matters scrolls past. ``ArgumentParser`` here prints only
``PROG: error: argument --variant: invalid choice 'x'; did you mean 'y'?`` for a choice error, and
argparse's usual answer for every other error. The argument types ``parse_time_limit`` and
``parse_pretrain`` raise ``argparse.ArgumentTypeError`` subclasses that are also ``ValueError``, so
library code calls them too. Standard library only: ``kit.build_kernel`` uses
it and must stay light.
"""
from __future__ import annotations

import argparse
import difflib
import re
from typing import Any, Iterable

from kit.competition import LIVECELL_CELL_LINES


def closest_names(value: str, names: Iterable[Any], limit: int = 3) -> list[str]:
    """The valid names nearest to ``value`` by spelling, best first: the best, and those nearly as
    close (a typo of ``hot-flow-unet-plus`` should not also suggest ``hot-drop-unet``); none when
    nothing is close."""
    scored = sorted(((difflib.SequenceMatcher(None, str(value), str(name)).ratio(), str(name)) for name in names),
                    key=lambda pair: -pair[0])
    if not scored or scored[0][0] < 0.6:
        return []
    return [name for ratio, name in scored[:limit] if ratio >= scored[0][0] - 0.05]


def unknown_name(value: Any, names: Iterable[Any], what: str = "choice") -> str:
    """``"invalid choice 'x'; did you mean 'y'?"``, or with nothing close, every valid name."""
    names = [str(name) for name in names]
    near = closest_names(str(value), names)
    if near:
        return f"invalid {what} {str(value)!r}; did you mean {' or '.join(repr(name) for name in near)}?"
    return f"invalid {what} {str(value)!r}; choose from {', '.join(names)}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, with choice errors in one line ending in the closest valid names.

    Sub-command parsers (``add_subparsers().add_parser``) are of this class too, since argparse
    makes them of their parent's class.
    """

    _choice_error: str | None = None

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            self._choice_error = unknown_name(value, action.choices)
            raise argparse.ArgumentError(action, self._choice_error)

    def error(self, message: str) -> None:  # argparse's hook: it must exit
        if self._choice_error is not None and message.endswith(self._choice_error):
            self.exit(2, f"{self.prog}: error: {message}\n")
        super().error(message)


# The kit's defaults that several commands (and the kernel builder) share.
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


def format_time_limit(seconds: float) -> str:
    """``H:MM`` of ``seconds`` (whole minutes, rounded down): ``parse_time_limit``'s inverse, and how the
    kit writes every duration of a minute or more."""
    minutes = int(seconds) // 60
    return f"{minutes // 60}:{minutes % 60:02d}"


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


def crop_size(text: str) -> tuple[int, int]:
    """``"HxW"`` or ``"N"`` (square) -> (height, width); the ``--crop`` argument type."""
    match = re.fullmatch(r"(\d+)(?:x(\d+))?", text.strip())
    if not match or int(match.group(1)) < 1 or int(match.group(2) or 1) < 1:
        raise argparse.ArgumentTypeError(f"crop {text!r} is not HxW (e.g. 128x128) or N")
    return int(match.group(1)), int(match.group(2) or match.group(1))
