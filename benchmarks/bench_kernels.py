"""The built Kaggle kernels, run here as Kaggle runs them: the training notebooks, then the inference notebook.

    python -m benchmarks.bench_kernels --data DIR --train-args "--epochs 3"   # the default build's kernels
    python -m benchmarks.bench_kernels --data DIR --variants unet hot-unet --train-args "--epochs 1 --max-images 4 --crop 64x64 --device cpu"

A Kaggle-like sandbox under ``--work``: an input root holding the competition data under its slug
(and, for inference, the training kernel's output under that kernel's slug, as Kaggle mounts an
attached kernel), a working folder as the current directory, and an environment where ``import
kit`` fails, so the notebooks can only use the source they embed. Prints each notebook's wall time,
the trained variants' best validation rows and the submission's size. Run it before a push: a
kernel that fails here would fail on Kaggle after its GPU queue.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pandas as pd
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from benchmarks import bench_variants, run_cli
from kit import cli, paths, submission
from kit.cli import DEFAULT_MIN_CONFIDENCE, DEFAULT_PRETRAIN_EPOCHS
from kit.competition import COMPETITION_SLUG
from kit.data import sartorius
from kit.kaggle import kernels
from kit.model.variants import VARIANTS

CELL_TIMEOUT_S = 3 * 3600
MOUNT_LAYOUTS = ("classic", "new")  # how a Kaggle session mounts its inputs (older and newer sessions)
SANDBOX_USER = "sandbox-user"


class NotebookFailed(RuntimeError):
    """A notebook could not run in the sandbox, or one of its cells failed."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m benchmarks.bench_kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="folder holding the competition data (default: kit.paths.input_root())")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        help="variants one training kernel trains in turn (default: the training kernels that "
                             "python -m kit.build_kernel builds by default, run in turn)")
    parser.add_argument("--train-args", default="", help="extra kit.train arguments, as the kernel's KIT_TRAIN_ARGS")
    parser.add_argument("--tta", action="store_true", help="build the inference kernel with flip TTA")
    parser.add_argument("--pretrain", metavar="livecell[:LINES]",
                        help="the training kernel pretrains on LIVECell first (needs LIVECell_dataset_2021/ in --data)")
    parser.add_argument("--pretrain-epochs", type=int, default=DEFAULT_PRETRAIN_EPOCHS)
    parser.add_argument("--pseudo-round", action="store_true",
                        help="the training kernel ends with a pseudo-label round (needs train_semi_supervised/ in --data)")
    parser.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE,
                        help="the pseudo-label round keeps cells from this mean cell probability "
                             f"(default {DEFAULT_MIN_CONFIDENCE}; a barely trained sandbox network needs 0)")
    parser.add_argument("--cell-timeout", type=int, default=CELL_TIMEOUT_S, metavar="S",
                        help=f"seconds a notebook cell may run (default {CELL_TIMEOUT_S})")
    parser.add_argument("--work", type=Path, help="sandbox folder, emptied first (default: a temporary one)")
    parser.add_argument("--mount-layout", choices=MOUNT_LAYOUTS, default="classic",
                        help="classic: inputs at /kaggle/input/<slug>/; new: the competition at "
                             "input/competitions/<slug>/ and a notebook's output at input/notebooks/<user>/<slug>/")
    return parser


@dataclass
class TrainingRun:
    """What one training notebook left: its kernel folder, its working folder and the executed notebook."""

    kernel: Path
    working: Path
    notebook: nbformat.NotebookNode


@dataclass
class SandboxRun:
    """What the notebooks left: each training kernel's run, then the inference notebook's."""

    trainings: list[TrainingRun]
    infer_working: Path
    infer_notebook: nbformat.NotebookNode

    @property
    def train_working(self) -> Path:
        """The first training kernel's working folder (the only one when ``--variants`` names them)."""
        return self.trainings[0].working

    @property
    def train_notebook(self) -> nbformat.NotebookNode:
        return self.trainings[0].notebook


def main(args: argparse.Namespace) -> SandboxRun:
    """Build the kernels, run the training notebooks, then the inference notebook, and print the figures."""
    layout = sartorius.find_competition(args.data)
    work = Path(args.work or tempfile.mkdtemp(prefix="kit-kernels-"))
    shutil.rmtree(work, ignore_errors=True)
    stages = kernels.kernel_stages(pretrain=args.pretrain, pretrain_epochs=args.pretrain_epochs,
                                   pseudo_round=args.pseudo_round, min_confidence=args.min_confidence)
    groups = training_groups(args.variants)
    *trainers, inference = kernels.build_kernels(SANDBOX_USER, groups, work / "kernels", tta=args.tta,
                                                 stages=stages)
    trainings = [run_training(trainer, group, work / f"train-session-{index}" if index else work / "train-session",
                              layout.root, args)
                 for index, (trainer, group) in enumerate(zip(trainers, groups))]
    input_root = kaggle_inputs(work / "infer-session", layout.root, args.mount_layout)
    for training in trainings:
        attach_output(input_root, training.kernel.name, training.working, args.mount_layout)
    infer_working = work / "infer-session" / "working"
    started = time.perf_counter()
    infer_notebook = run_notebook(inference / f"{inference.name}.ipynb", infer_working,
                                  kernel_env(input_root, infer_working), args.cell_timeout)
    test_ids = list(sartorius.test_image_paths(layout))  # sorted by id
    submission.validate(infer_working / "submission.csv", test_ids)
    predicted = submission.read_submission(infer_working / "submission.csv")["predicted"]
    print(f"inference notebook {inference.name}: {time.perf_counter() - started:.0f} s for {len(test_ids)} "
          f"test images; valid submission.csv, {(predicted != '').sum()} cells")
    return SandboxRun(trainings, infer_working, infer_notebook)


def training_groups(variants: list[str] | None) -> list[tuple[str, ...]]:
    """The training kernels to build and run: one training ``variants`` in turn, or without them the
    very kernels ``python -m kit.build_kernel`` builds by default (the README's rehearsal of its push)."""
    return [tuple(variants)] if variants else kernels.default_variant_groups()


def run_training(trainer: Path, variants: tuple[str, ...], session: Path, competition_dir: Path,
                 args: argparse.Namespace) -> TrainingRun:
    """Run one training notebook in its own Kaggle-like session folder; print its wall time and each
    variant's best validation row."""
    working = session / "working"
    env = kernel_env(kaggle_inputs(session, competition_dir, args.mount_layout), working, **{kernels.TRAIN_ARGS_ENV: args.train_args})
    started = time.perf_counter()
    notebook = run_notebook(trainer / f"{trainer.name}.ipynb", working, env, args.cell_timeout)
    print(f"training notebook {trainer.name}: {(time.perf_counter() - started) / 60:.1f} min")
    for name in variants:
        row = bench_variants.variant_summary(working, name)
        print(f"  {name}: {row['epochs']} epochs, best {row['best epoch']}: score {row['val score']:.4f}, "
              f"Dice {row['Dice']:.3f}, {row['images/s']:.1f} images/s")
        if args.pretrain or args.pseudo_round:
            print(f"  {name} stages: {stage_epochs(working / f'{name}-metrics.csv')}")
    return TrainingRun(trainer, working, notebook)


def stage_epochs(metrics_csv: Path) -> str:
    """``"pretrain 1-2, finetune 3-4"``: the epochs of each stage of a run, from its metrics CSV."""
    frame = pd.read_csv(metrics_csv, dtype={"stage": str})
    spans = frame.groupby("stage", sort=False)["epoch"].agg(["min", "max"])
    return ", ".join(f"{stage} {low}-{high}" if low != high else f"{stage} {low}" for stage, (low, high) in spans.iterrows())


def kaggle_inputs(session: Path, competition_dir: Path, mount_layout: str = "classic") -> Path:
    """``session/input`` holding the competition data as Kaggle mounts it: ``input/<competition slug>``,
    or in newer sessions (``mount_layout="new"``) ``input/competitions/<competition slug>``."""
    input_root = session / "input"
    mount = input_root / ("competitions" if mount_layout == "new" else "") / COMPETITION_SLUG
    mount.parent.mkdir(parents=True, exist_ok=True)
    mount.symlink_to(Path(competition_dir).resolve(), target_is_directory=True)
    return input_root


def attach_output(input_root: Path, slug: str, output: Path, mount_layout: str = "classic") -> Path:
    """Mount a kernel's ``output`` as an attached input: ``input/<slug>``, or in newer sessions
    ``input/notebooks/<user>/<slug>``; returns where."""
    mount = input_root / ("notebooks/" + SANDBOX_USER if mount_layout == "new" else "") / slug
    mount.parent.mkdir(parents=True, exist_ok=True)
    mount.symlink_to(Path(output).resolve(), target_is_directory=True)
    return mount


def kernel_env(input_root: Path, working: Path, **extra: str) -> dict[str, str]:
    """This process's environment without PYTHONPATH (so not the checkout) and with the sandbox's
    paths; its scratch folder (where the notebook writes the kit's source) lies in the sandbox too."""
    scratch = working.parent / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("KIT_")}
    env.update({paths.INPUT_ROOT_ENV: str(input_root), paths.WORKING_DIR_ENV: str(working),
                "TMPDIR": str(scratch), **extra})
    return env


def run_notebook(path: Path, working: Path, env: dict[str, str],
                 cell_timeout_s: int = CELL_TIMEOUT_S) -> nbformat.NotebookNode:
    """Execute a copy of the notebook at ``path`` with ``working`` as the current folder.

    First proves that the kit cannot be imported there, so that a passing run shows the notebook
    is self-contained. Raises ``NotebookFailed`` with the failing cell's traceback.
    """
    working.mkdir(parents=True)
    probe = subprocess.run([sys.executable, "-c", "import kit; print(kit.__file__)"], cwd=working, env=env,
                           capture_output=True, text=True)
    if probe.returncode == 0:
        raise NotebookFailed(f"kit is importable outside the checkout (from {probe.stdout.strip()}): the sandbox "
                             "cannot show that the notebook is self-contained; uninstall the kit (pip uninstall kit)")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=cell_timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": str(working)}})
    try:
        client.execute(env=env)
    except CellExecutionError as error:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # IPython colours its tracebacks
        raise NotebookFailed(f"{path.name} failed in the sandbox:\n{plain}") from None
    return notebook


def notebook_text(notebook: nbformat.NotebookNode) -> str:
    """Everything the executed notebook printed."""
    return "".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))


if __name__ == "__main__":
    run_cli("python -m benchmarks.bench_kernels", main, get_args_parser().parse_args())
