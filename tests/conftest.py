"""Shared fixtures: the real competition slice in ../shared/sartorius.

Outside CI a missing slice skips the real-data tests; with CI=true it fails them, because a
real-data test that silently skips in CI proves nothing.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from kit import competition, data

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


@pytest.fixture(scope="module")
def samples(shared_dir) -> list:
    """The first four annotated images of each cell type (12 ``kit.data.Sample``s, cort first)."""
    layout = data.find_competition(shared_dir)
    df = data.read_train_csv(layout.train_csv)
    table = data.image_table(df)
    ids = [i for t in competition.CELL_TYPES for i in sorted(table.loc[table.cell_type == t, "id"])[:4]]
    return data.load_samples(layout, ids, df)
