"""Where the kit reads inputs and writes outputs, on Kaggle and locally: the one place that knows.

On Kaggle the inputs are mounted under ``/kaggle/input`` and outputs go to ``/kaggle/working``.
Locally (and in the tests) the environment variables below override both, so that nothing
depends on the current working directory.
"""
from __future__ import annotations

import os
from pathlib import Path

INPUT_ROOT_ENV = "KIT_INPUT_ROOT"
WORKING_DIR_ENV = "KIT_WORKING_DIR"
KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")
# A checkout of the kit keeps its development data beside the project: ../shared/sartorius.
LOCAL_SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


def input_root() -> Path:
    """The folder searched for the competition data and weights.

    ``$KIT_INPUT_ROOT`` if set, else ``/kaggle/input`` on Kaggle, else ``../shared`` beside a checkout.
    """
    if os.environ.get(INPUT_ROOT_ENV):
        return Path(os.environ[INPUT_ROOT_ENV])
    if KAGGLE_INPUT.is_dir():
        return KAGGLE_INPUT
    return LOCAL_SHARED


def working_dir() -> Path:
    """The folder outputs go to: ``$KIT_WORKING_DIR``, else ``/kaggle/working`` on Kaggle, else ``runs/`` in the checkout."""
    if os.environ.get(WORKING_DIR_ENV):
        return Path(os.environ[WORKING_DIR_ENV])
    if KAGGLE_WORKING.is_dir():
        return KAGGLE_WORKING
    return Path(__file__).resolve().parent.parent / "runs"
