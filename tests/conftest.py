"""Shared fixtures: the real competition slice in ../shared/sartorius.

Outside CI a missing slice skips the real-data tests; with CI=true it fails them, because a
real-data test that silently skips in CI proves nothing.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "sartorius"


def _require_shared() -> Path:
    if (SHARED / "train.csv").is_file():
        return SHARED
    message = f"competition slice not found at {SHARED} (expected train.csv, train/, test/)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; CI must run the real-data tests")
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The folder holding the competition's layout (train.csv, train/, test/, sample_submission.csv)."""
    return _require_shared()
