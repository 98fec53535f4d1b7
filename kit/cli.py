"""The commands' argument parser: a mistyped name is answered in one line with the closest valid ones.

argparse answers a bad choice with the whole usage block first (16 lines for ``kit.train``) and
then every valid name; the line that matters scrolls past. ``ArgumentParser`` here prints only
``PROG: error: argument --variant: invalid choice 'x'; did you mean 'y'?`` for a choice error, and
argparse's usual answer for every other error. Standard library only: ``kit.build_kernel`` uses it
and must stay light.
"""
from __future__ import annotations

import argparse
import difflib
from typing import Any, Iterable


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
