"""Side-by-side speed measurements: run each as `python -m benchmarks.<name>` from the repo root."""
from __future__ import annotations

from typing import Any, Callable


def run_cli(prog: str, main: Callable[..., Any], *args: Any) -> Any:
    """``main(*args)`` as a command: expected bad input (no data folder, a device this machine lacks,
    a bad value) ends in one line ``PROG: error: ...`` and exit status 1; other errors keep their traceback."""
    try:
        return main(*args)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"{prog}: error: {err}") from None
