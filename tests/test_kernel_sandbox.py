"""A Kaggle-like sandbox runs the built notebooks end to end.

Each notebook runs under nbclient in a fresh folder laid out as Kaggle lays out a session: an
input root holding the competition data under its slug (and, for inference, the training
kernel's output under that kernel's slug), a working folder as the current directory, and an
environment where ``import kit`` fails, so the notebook can only use the source it embeds. The
training notebook trains two variants in turn (one kernel for both: the longest path through its
code), each for one tiny CPU epoch; the inference notebook averages their weights into a
submission for the 3 test images.
"""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from kit import build_kernel, data, submission
from kit.paths import COMPETITION_SLUG, INPUT_ROOT_ENV, WORKING_DIR_ENV

pytestmark = pytest.mark.slow

VARIANTS = ("unet", "hot-unet")
TRAIN_KERNEL = "sartorius-kit-train-unet-hot-unet"
TINY_TRAINING = "--epochs 1 --max-images 4 --crop 64x64 --device cpu"
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kernels")
    build_kernel.build_kernels("sandbox-user", [VARIANTS], out)
    return out


@pytest.fixture(scope="module")
def training_run(kernels, shared_dir, tmp_path_factory) -> tuple[Path, nbformat.NotebookNode]:
    """The training kernel's working folder after its notebook ran, and the executed notebook."""
    root = tmp_path_factory.mktemp("train-session")
    input_root = kaggle_inputs(root, shared_dir)
    working = root / "working"
    env = kernel_env(input_root, working, KIT_TRAIN_ARGS=TINY_TRAINING)
    notebook = run_notebook(kernels / TRAIN_KERNEL / f"{TRAIN_KERNEL}.ipynb", working, env)
    return working, notebook


def test_the_training_notebook_leaves_weights_metrics_and_curves(training_run):
    working, notebook = training_run
    outputs = sorted(p.name for p in working.iterdir())
    assert "kit" not in outputs  # the embedded source is written to a scratch folder, not output
    for name in VARIANTS:
        assert {f"{name}.pt", f"{name}-metrics.csv", f"{name}-curves.png"} <= set(outputs), outputs
        with open(working / f"{name}-metrics.csv", newline="") as handle:
            assert [row["epoch"] for row in csv.DictReader(handle)] == ["1"]
    log = notebook_text(notebook)
    assert 0 <= log.index("--variant unet ") < log.index("--variant hot-unet ")
    assert log.count("--device cpu") == 2


def test_the_inference_notebook_writes_a_valid_submission_for_the_test_images(
        kernels, training_run, shared_dir, tmp_path_factory):
    trained, _ = training_run
    root = tmp_path_factory.mktemp("infer-session")
    input_root = kaggle_inputs(root, shared_dir)
    # Kaggle mounts an attached kernel's output under that kernel's slug.
    (input_root / TRAIN_KERNEL).symlink_to(trained, target_is_directory=True)
    working = root / "working"
    notebook = run_notebook(kernels / "sartorius-kit-infer" / "sartorius-kit-infer.ipynb", working,
                            kernel_env(input_root, working))
    test_ids = sorted(data.test_image_paths(data.find_competition(shared_dir)))
    assert len(test_ids) == 3
    assert sorted(p.name for p in working.iterdir()) == ["submission.csv"]
    submission.validate(working / "submission.csv", test_ids)
    with open(working / "submission.csv", newline="") as handle:
        assert {row["id"] for row in csv.DictReader(handle)} == set(test_ids)
    weights = " ".join(str(input_root / TRAIN_KERNEL / f"{name}.pt") for name in VARIANTS)
    assert f"--weights {weights} --out" in notebook_text(notebook)  # both found, given to kit.infer


def test_an_inference_notebook_without_its_weights_names_the_kernel_to_attach(kernels, shared_dir,
                                                                              tmp_path_factory):
    root = tmp_path_factory.mktemp("unattached-session")
    working = root / "working"
    with pytest.raises(pytest.fail.Exception) as failure:
        run_notebook(kernels / "sartorius-kit-infer" / "sartorius-kit-infer.ipynb", working,
                     kernel_env(kaggle_inputs(root, shared_dir), working))
    message = str(failure.value)
    assert "FileNotFoundError" in message and "no unet.pt below" in message
    assert f"sandbox-user/{TRAIN_KERNEL}" in message
    assert not (working / "submission.csv").exists()


# --- the sandbox ---------------------------------------------------------------------------------

def kaggle_inputs(root: Path, shared_dir: Path) -> Path:
    """``root/input`` holding the competition data as Kaggle mounts it: ``input/<competition slug>``."""
    input_root = root / "input"
    input_root.mkdir()
    (input_root / COMPETITION_SLUG).symlink_to(shared_dir, target_is_directory=True)
    return input_root


def kernel_env(input_root: Path, working: Path, **extra: str) -> dict[str, str]:
    """This process's environment without PYTHONPATH (so not the checkout) and with the sandbox's
    paths; its scratch folder (where the notebook writes the kit's source) lies in the sandbox too."""
    scratch = working.parent / "tmp"
    scratch.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("KIT_")}
    env.update({INPUT_ROOT_ENV: str(input_root), WORKING_DIR_ENV: str(working), "TMPDIR": str(scratch), **extra})
    return env


def run_notebook(path: Path, working: Path, env: dict[str, str]) -> nbformat.NotebookNode:
    """Execute a copy of the notebook at ``path`` with ``working`` as the current folder.

    First proves that the kit cannot be imported there, so that a passing run shows the notebook
    is self-contained.
    """
    working.mkdir()
    probe = subprocess.run([sys.executable, "-c", "import kit; print(kit.__file__)"], cwd=working, env=env,
                           capture_output=True, text=True)
    if probe.returncode == 0:
        pytest.fail(f"kit is importable outside the checkout (from {probe.stdout.strip()}): the sandbox "
                    "cannot show that the notebook is self-contained; uninstall the kit (pip uninstall kit)")
    assert "No module named 'kit'" in probe.stderr
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(working)}})
    try:
        client.execute(env=env)
    except CellExecutionError as error:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # IPython colours its tracebacks
        pytest.fail(f"{path.name} failed in the sandbox:\n{plain}")
    return notebook


def notebook_text(notebook: nbformat.NotebookNode) -> str:
    """Everything the executed notebook printed."""
    return "".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))
