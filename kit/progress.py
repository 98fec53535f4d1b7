"""The commands' progress lines: library code logs them (``logging.getLogger(__name__)``: INFO for
progress, WARNING for a warning) so that a notebook or a test chooses what it sees; each command's
``main`` calls ``show_progress()`` to print them as plain lines, progress on stdout and warnings on
stderr, as a user of the command line expects."""
from __future__ import annotations

import logging
import sys


class _CurrentStream(logging.StreamHandler):
    """Writes each line to ``sys.stdout`` (below WARNING) or ``sys.stderr`` as they are at that
    moment, so that a notebook's or a test's redirect (made after the handler) still gets the lines."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self._record_level = logging.INFO

    def emit(self, record: logging.LogRecord) -> None:
        self._record_level = record.levelno
        super().emit(record)

    @property
    def stream(self):
        return sys.stderr if self._record_level >= logging.WARNING else sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        """``StreamHandler.__init__`` assigns stderr here; the stream is chosen per line instead."""


def show_progress() -> None:
    """Print the kit's INFO lines and warnings (once, however often a command runs in one process)."""
    kit_logger = logging.getLogger("kit")
    kit_logger.setLevel(logging.INFO)
    if not any(isinstance(handler, _CurrentStream) for handler in kit_logger.handlers):
        kit_logger.addHandler(_CurrentStream())


def module_logger(name: str) -> logging.Logger:
    """The logger of the kit module named ``name`` (its ``__name__``). A command run as ``python -m
    kit.NAME`` has ``__name__ == "__main__"``, outside the ``kit`` logger that ``show_progress``
    shows, so it logs under its import name ``kit.NAME`` instead."""
    if name == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        name = spec.name if spec is not None else name
    return logging.getLogger(name)
