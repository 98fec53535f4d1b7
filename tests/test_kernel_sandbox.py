"""A Kaggle-like sandbox runs the built notebooks end to end (``benchmarks.bench_kernels``).

Each notebook runs under nbclient in a fresh folder laid out as Kaggle lays out a session: an
input root holding the competition data under its slug (and, for inference, the training
kernel's output under that kernel's slug), a working folder as the current directory, and an
environment where ``import kit`` fails, so the notebook can only use the source it embeds. The
training notebook trains two variants in turn (one kernel for both: the longest path through its
code), each for one tiny CPU epoch; the inference notebook averages their weights into a
submission for the 3 test images. A second training kernel turns every stage on (LIVECell
pretraining, fine-tuning, a pseudo-label round, which its barely trained flow network leaves without
a cell) with tiny LIVECell and train_semi_supervised fixtures in the competition folder.
"""
from __future__ import annotations

import contextlib
import csv
import io

import pytest
import torch

from benchmarks import bench_kernels, bench_variants
from kit import build_kernel, submission
from kit.data import pseudo_labels, sartorius
from kit.inference import type_classifier
from kit.kaggle import kernels as kaggle_kernels

pytestmark = pytest.mark.slow

VARIANTS = ("unet", "hot-unet")
TRAIN_KERNEL = "sartorius-kit-train-unet-hot-unet"
TINY_TRAINING = "--epochs 1 --max-images 4 --crop 64x64 --device cpu"


@pytest.fixture(scope="module")
def sandbox(shared_dir, tmp_path_factory) -> tuple[bench_kernels.SandboxRun, str]:
    """Both notebooks run by the benchmark, and what it printed."""
    work = tmp_path_factory.mktemp("sandbox")
    args = bench_kernels.get_args_parser().parse_args(
        ["--data", str(shared_dir), "--variants", *VARIANTS, "--train-args", TINY_TRAINING, "--work", str(work),
         "--cell-timeout", "300", "--mount-layout", "new"])  # the staged sandbox runs the classic layout
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run = bench_kernels.main(args)
    return run, printed.getvalue()


def test_the_training_notebook_leaves_weights_metrics_and_curves(sandbox):
    run, printed = sandbox
    outputs = sorted(p.name for p in run.train_working.iterdir())
    assert "kit" not in outputs and "cache" not in outputs  # source in a scratch folder; flow cache dropped
    for name in VARIANTS:
        assert {f"{name}.pt", f"{name}-metrics.csv", f"{name}-curves.png"} <= set(outputs), outputs
        with open(run.train_working / f"{name}-metrics.csv", newline="") as handle:
            assert [row["epoch"] for row in csv.DictReader(handle)] == ["1"]
        assert f"  {name}: 1 epochs, best 1: score " in printed
    log = bench_kernels.notebook_text(run.train_notebook)
    assert 0 <= log.index("running on python ") < log.index("--variant unet ")  # the versions first
    assert 0 <= log.index("--variant unet ") < log.index("--variant hot-unet ")
    assert log.count("--device cpu") == 2
    assert "/input/competitions/sartorius-cell-instance-segmentation " in log  # newer sessions' mount, found
    assert f"training notebook {TRAIN_KERNEL}: " in printed


def test_the_inference_notebook_writes_a_valid_submission_for_the_test_images(sandbox, shared_dir):
    run, printed = sandbox
    test_ids = sorted(sartorius.test_image_paths(sartorius.find_competition(shared_dir)))
    assert len(test_ids) == 3
    assert sorted(p.name for p in run.infer_working.iterdir()) == ["submission.csv"]
    submission.validate(run.infer_working / "submission.csv", test_ids)
    with open(run.infer_working / "submission.csv", newline="") as handle:
        assert {row["id"] for row in csv.DictReader(handle)} == set(test_ids)
    attached = run.infer_working.parent / "input" / "notebooks" / "sandbox-user" / TRAIN_KERNEL  # newer sessions
    weights = " ".join(str(attached / f"{name}.pt") for name in VARIANTS)
    assert f"--weights {weights} --out" in bench_kernels.notebook_text(run.infer_notebook)  # both found
    assert "for 3 test images; valid submission.csv" in printed


def test_the_training_kernel_ships_the_cell_type_classifier_and_inference_loads_it(sandbox):
    run, _ = sandbox
    saved = run.train_working / type_classifier.FILE_NAME
    assert type_classifier.load_classifier(saved).classes == ("astro", "cort", "shsy5y")
    log = bench_kernels.notebook_text(run.infer_notebook)
    attached = run.infer_working.parent / "input" / "notebooks" / "sandbox-user" / TRAIN_KERNEL / \
        type_classifier.FILE_NAME
    assert f"cell types from the classifier in {attached}" in log
    assert "fitting one" not in log  # the training images were not needed for the test images' types


def test_an_inference_notebook_without_its_weights_names_the_kernel_to_attach(shared_dir, tmp_path):
    kernels = kaggle_kernels.build_kernels("sandbox-user", [VARIANTS], tmp_path / "kernels")
    working = tmp_path / "working"
    env = bench_kernels.kernel_env(bench_kernels.kaggle_inputs(tmp_path, shared_dir), working)
    with pytest.raises(bench_kernels.NotebookFailed) as failure:
        bench_kernels.run_notebook(kernels[-1] / f"{kernels[-1].name}.ipynb", working, env, cell_timeout_s=300)
    message = str(failure.value)
    assert "FileNotFoundError" in message and "no unet.pt, hot-unet.pt below" in message
    assert f"sandbox-user/{TRAIN_KERNEL}" in message
    assert not (working / "submission.csv").exists()


def test_the_sandbox_refuses_an_environment_where_the_kit_is_importable(shared_dir, tmp_path):
    kernels = kaggle_kernels.build_kernels("sandbox-user", [VARIANTS], tmp_path / "kernels")
    working = tmp_path / "working"
    env = bench_kernels.kernel_env(bench_kernels.kaggle_inputs(tmp_path, shared_dir), working)
    env["PYTHONPATH"] = str(bench_variants.REPO)
    with pytest.raises(bench_kernels.NotebookFailed, match="kit is importable outside the checkout"):
        bench_kernels.run_notebook(kernels[-1] / f"{kernels[-1].name}.ipynb", working, env, cell_timeout_s=300)


STAGED = "hot-flow-unet"  # kit.pseudo labels cells from a flow variant's output
STAGED_TRAINING = "--epochs 1 --max-images 4 --crop 64x64 --device cpu"


@pytest.fixture(scope="module")
def staged_sandbox(extras_dir, tmp_path_factory) -> tuple[bench_kernels.SandboxRun, str]:
    """The training kernel with every stage on, run with the LIVECell and train_semi_supervised
    fixtures in the competition folder, then the inference notebook on its weights."""
    work = tmp_path_factory.mktemp("staged-sandbox")
    args = bench_kernels.get_args_parser().parse_args(
        ["--data", str(extras_dir), "--variants", STAGED, "--train-args", STAGED_TRAINING, "--work", str(work),
         "--cell-timeout", "600", "--pretrain", "livecell:shsy5y,a172", "--pretrain-epochs", "1", "--pseudo-round",
         "--min-confidence", "0"])  # a network of two tiny epochs: every cell it finds is a pseudo-label
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run = bench_kernels.main(args)
    return run, printed.getvalue()


def test_the_training_kernel_pretrains_on_livecell_fine_tunes_and_asks_for_pseudo_labels(staged_sandbox, extras_dir):
    """Every stage on. The sandbox's network (two tiny epochs) finds no cell in train_semi_supervised/, so
    kit.pseudo writes a label file without one and the notebook skips the round, saying so; a round's own
    training on pseudo-labels is tests/test_train_stages.py's, the notebook's calls tests/test_notebook.py's."""
    run, printed = staged_sandbox
    with open(run.train_working / f"{STAGED}-metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["epoch"], row["stage"]) for row in rows] == [("1", "pretrain"), ("2", "finetune")]
    assert f"  {STAGED} stages: pretrain 1, finetune 2" in printed
    log = bench_kernels.notebook_text(run.train_notebook)
    assert "--pretrain livecell:shsy5y,a172 --pretrain-epochs 1 --pretrain-time-limit " in log
    assert "stage pretrain (new): 3 images of LIVECell (livecell:shsy5y,a172)" in log  # the train + val files' images
    labels = run.train_working / f"{STAGED}-pseudo-labels.csv"
    assert "-m kit.pseudo --data " in log and "--min-confidence 0" in log
    assert "of 6 images" in log  # the six fixture images of train_semi_supervised/ were predicted
    assert not pseudo_labels.holds_cells(labels) and "--extra-data" not in log
    assert f"the pseudo-label round of {STAGED} is skipped; its fine-tuned weights stand" in log
    checkpoint = torch.load(run.train_working / f"{STAGED}-last.pt", weights_only=True)
    assert [s["name"] for s in checkpoint["stages"]] == ["pretrain", "finetune"]
    assert [row["stage"] for row in checkpoint["history"]] == ["pretrain", "finetune"]


def test_the_staged_kernel_s_weights_make_a_valid_submission(staged_sandbox, shared_dir):
    run, printed = staged_sandbox
    test_ids = sorted(sartorius.test_image_paths(sartorius.find_competition(shared_dir)))
    submission.validate(run.infer_working / "submission.csv", test_ids)
    assert "for 3 test images; valid submission.csv" in printed


def test_the_rehearsal_runs_the_kernels_the_default_build_pushes(tmp_path):
    """``benchmarks.bench_kernels`` without ``--variants`` builds the training kernels that
    ``python -m kit.build_kernel`` builds by default, not a variant of its own."""
    pushed = build_kernel.main(build_kernel.get_args_parser().parse_args(["--user", "someone",
                                                                           "--out", str(tmp_path / "pushed")]))
    rehearsed = kaggle_kernels.build_kernels("sandbox-user", bench_kernels.training_groups(
        bench_kernels.get_args_parser().parse_args([]).variants), tmp_path / "rehearsed")
    assert [folder.name for folder in rehearsed] == [folder.name for folder in pushed]
    assert bench_kernels.training_groups(["unet", "hot-unet"]) == [("unet", "hot-unet")]
