"""Shared fixtures: the real competition slice in ../shared/sartorius.

Outside CI a missing slice skips the real-data tests; with CI=true it fails them, because a
real-data test that silently skips in CI proves nothing.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from kit import competition
from kit.data import sartorius
from kit.split import split_train_val

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "sartorius"
LIVECELL_REAL = SHARED.parent / "livecell-real"


def _require(folder: Path, needed: str, what: str) -> Path:
    if (folder / needed).exists():
        return folder
    message = f"{what} not found at {folder} (expected {needed})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; CI must run the real-data tests")
    pytest.skip(message)


def _require_shared() -> Path:
    return _require(SHARED, "train.csv", "competition slice")


@pytest.fixture(scope="session")
def livecell_real_dir() -> Path:
    """The real LIVECell slice (its README.md says what each file is)."""
    return _require(LIVECELL_REAL, "LIVECell_dataset_2021/annotations/LIVECell/livecell_coco_val.json",
                    "real LIVECell slice")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The folder holding the competition's layout (train.csv, train/, test/, sample_submission.csv)."""
    return _require_shared()


@pytest.fixture(scope="module")
def samples(shared_dir) -> list:
    """The first four annotated images of each cell type (12 ``kit.data.sartorius.Sample``s, cort first)."""
    layout = sartorius.find_competition(shared_dir)
    df = sartorius.read_train_csv(layout.train_csv)
    table = sartorius.image_table(df)
    ids = [i for t in competition.CELL_TYPES for i in sorted(table.loc[table.cell_type == t, "id"])[:4]]
    return sartorius.load_samples(layout, ids, df)


@pytest.fixture(scope="session")
def extras_dir(shared_dir, tmp_path_factory) -> Path:
    """A competition folder holding the shared slice (linked) beside the competition's two other inputs,
    built from its images in their formats (``benchmarks.fixture_data``): a tiny LIVECell tree
    (train: 2 shsy5y -> SHSY5Y, 1 cort -> A172; val: 1 astro -> BV2; test: 1 shsy5y) and a
    ``train_semi_supervised/`` of 2 images of each type, taken from the training split."""
    from benchmarks import fixture_data

    layout = sartorius.find_competition(shared_dir)
    table = sartorius.image_table(sartorius.read_train_csv(layout.train_csv))
    train_ids, _ = split_train_val(table)
    by_type = {t: sorted(table.loc[table.cell_type == t, "id"]) for t in competition.CELL_TYPES}
    livecell_splits = {"train": [*by_type["shsy5y"][:2], by_type["cort"][0]], "val": [by_type["astro"][0]],
                       "test": [by_type["shsy5y"][2]]}
    semi = [i for t in competition.CELL_TYPES for i in [i for i in train_ids if i in set(by_type[t])][:2]]
    return fixture_data.competition_with_extras(shared_dir, tmp_path_factory.mktemp("extras") / "competition",
                                                livecell_splits, semi)


@pytest.fixture
def unwritable_dir(tmp_path, monkeypatch) -> Path:
    """A folder nothing can be written to: read-only bits, and (root ignores those) a refusing mkstemp."""
    import errno
    import tempfile

    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    yield folder
    folder.chmod(0o755)


def sigterm_handler_of(module: str) -> str:
    """The SIGTERM handler that ``python -m MODULE --help`` has installed when argparse exits."""
    import subprocess
    import sys

    probe = ("import runpy, signal, sys\n"
             f"sys.argv = [{module!r}, '--help']\n"
             "try:\n"
             f"    runpy.run_module({module!r}, run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "print(getattr(signal.getsignal(signal.SIGTERM), '__qualname__', signal.getsignal(signal.SIGTERM)))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, check=True, timeout=120)
    return done.stdout.splitlines()[-1]


KAGGLE_TEST_USER = "kit-tester"
KAGGLE_DUMMY_KEY = "0123456789abcdef-dummy-key"


@pytest.fixture
def kaggle_credentials(tmp_path, monkeypatch) -> Path:
    """Dummy kaggle credentials in a temporary home: no KAGGLE_* of the machine, never a real kaggle.json.
    Returns the client's config folder (``kaggle.api.config`` must be pointed at its kaggle.json)."""
    for name in [k for k in os.environ if k.startswith("KAGGLE_")]:
        monkeypatch.delenv(name)
    config_dir = tmp_path / "kaggle-config"
    config_dir.mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config_dir))
    monkeypatch.setenv("KAGGLE_USERNAME", KAGGLE_TEST_USER)
    monkeypatch.setenv("KAGGLE_KEY", KAGGLE_DUMMY_KEY)
    return config_dir
