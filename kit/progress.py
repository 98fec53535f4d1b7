"""The commands' progress lines: library code logs them (``logging.getLogger(__name__)``, level INFO)
so that a notebook or a test chooses what it sees; each command's ``main`` calls ``show_progress()``
to print them on stdout as plain lines, as a user of the command line expects."""
from __future__ import annotations

import logging
import sys


class _CurrentStdout(logging.StreamHandler):
    """Writes each line to ``sys.stdout`` as it is at that moment, so that a notebook's or a test's
    redirect of stdout (made after the handler) still gets the lines."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        """``StreamHandler.__init__`` assigns stderr here; the stream is always the current stdout."""


def show_progress() -> None:
    """Print the kit's INFO lines on stdout (once, however often a command runs in one process)."""
    kit_logger = logging.getLogger("kit")
    kit_logger.setLevel(logging.INFO)
    if not any(isinstance(handler, _CurrentStdout) for handler in kit_logger.handlers):
        kit_logger.addHandler(_CurrentStdout())
