"""The GPU acceptance run: every GPU figure the README waits for, in one command and one report.

    bash benchmarks/gpu_check.sh OUT                 # one GPU, about 9 minutes (the device machine)
    python -m benchmarks.gpu_check --out OUT --cpu   # the same steps, tiny, on the CPU (the test suite)

Steps, each a child process whose command, wall time, exit status and output tail go into
``OUT/report.md``:
1. ``benchmarks.bench_train``: the trainer beside the naive fp32 DataLoader loop (images/s at
   batch 2 and 8, mixed precision, channels_last), then again with ``--compile``;
2. ``benchmarks.bench_variants``: the paper's five variants, 50 epochs at full resolution, then the
   kit's recipe at its own settings, each with its best epoch's metrics;
3. ``kit.infer --split val --evaluate``: each one's full-image validation score;
4. ``benchmarks.bench_kernels``: the built training notebook, then the inference notebook on its
   weights, in the Kaggle-like sandbox, for a few epochs;
5. with ``--curve`` only: the learning curve (``benchmarks.learning_curve``) of ``hot-flow-unet`` on
   256x256 crops, its weights kept at the CPU curve's step counts (250 ... 4,000) and each scored
   on the whole validation images, untuned and tuned; 4,000 steps at batch 2 are 8,000 crop passes,
   a minute or two on one H100 (not measured);
6. with ``--pretrain`` only: the pretrain -> fine-tune path (``kit.train --pretrain livecell``) on a
   LIVECell-format copy of the training split (``benchmarks.fixture_data``), ``--pretrain-epochs``
   then ``--epochs`` of ``hot-flow-unet``, and its full-image validation score beside step 3's. A
   plumbing and throughput check (the copy holds the competition's own images), not LIVECell's gain.
   Sized at 10 + 10 epochs of the 96 training images: about 2,000 image passes, under a minute on
   one H200 at the README's projected ~270 images/s (not measured), plus a copy of ~20 s; where the
   other steps leave too little of one 9-minute call, ``--skip speed`` frees the most.

The data is a copy of ``../shared/sartorius`` inside the checkout (``--data``, default
``.device-data``, git-ignored), because only the checkout travels to the device. A step that fails
is reported and the next one still runs; the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from kit import cli
from kit.files import write_text_atomic
from kit.model.variants import PAPER_VARIANTS, RECIPE

REPO = Path(__file__).resolve().parent.parent
TAIL_LINES = 40
TINY_SEED = 1  # the CPU mode's training runs: their weights hold out this seed's validation split
STEP_KEYS = ("speed", "variants", "scores", "kernels", "pretrain", "curve")
PRETRAINED = "hot-flow-unet"
CURVE_VARIANT = "hot-flow-unet"
# The CPU learning curve's step counts (docs/results.md), so the GPU's points sit beside them.
CURVE_STEPS = (250, 500, 1000, 2000, 4000)
CURVE_CROP = "256x256"


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="report and run folder")
    parser.add_argument("--data", type=Path, default=REPO / ".device-data", help="a copy of the competition slice")
    parser.add_argument("--cpu", action="store_true", help="tiny settings on the CPU (the test suite's mode)")
    parser.add_argument("--epochs", type=int, default=50, help="epochs of each variant (GPU mode)")
    parser.add_argument("--skip", nargs="*", choices=STEP_KEYS, default=[], help="steps to leave out")
    parser.add_argument("--variants", nargs="+", choices=(*PAPER_VARIANTS, RECIPE), default=[*PAPER_VARIANTS, RECIPE],
                        help="variants to train and score (default: the paper's five and the kit's recipe)")
    parser.add_argument("--pretrain", action="store_true",
                        help=f"also the pretrain -> fine-tune path: {PRETRAINED} pretrained on a LIVECell-format copy "
                             "of the training split, then fine-tuned, and scored")
    parser.add_argument("--pretrain-epochs", type=int, default=10, help="epochs of each stage with --pretrain (GPU mode)")
    parser.add_argument("--curve", action="store_true",
                        help=f"also the learning curve: {CURVE_VARIANT} on {CURVE_CROP} crops, its weights kept at "
                             f"{', '.join(map(str, CURVE_STEPS))} steps, each scored by benchmarks.learning_curve")
    return parser


def main(args: argparse.Namespace) -> int:
    """Run every step, write ``OUT/report.md``; returns the exit status (1 if a step failed)."""
    args.out.mkdir(parents=True, exist_ok=True)
    sections = [f"# GPU acceptance run ({'CPU mode' if args.cpu else 'GPU'})", ""]
    failed = 0
    listing = steps(args.data, args.out, args.cpu, args.epochs, args.variants)
    listing += pretrain_steps(args.data, args.out, args.cpu, args.pretrain_epochs) if args.pretrain else []
    listing += curve_steps(args.data, args.out, args.cpu) if args.curve else []
    for key, title, command in listing:
        if key in args.skip:
            continue
        status, seconds, tail = run_step(command)
        failed += status != 0
        sections += [f"## {title}", "", f"`{' '.join(command[1:])}`: exit {status}, {seconds:.0f} s", "",
                     "```", *tail, "```", ""]
        write_text_atomic(args.out / "report.md", "\n".join(sections))  # a killed run keeps its steps so far
        print(f"{title}: exit {status} in {seconds:.0f} s", flush=True)
    return 1 if failed else 0


def steps(data: Path, out: Path, cpu: bool, epochs: int,
          names: Sequence[str] = (*PAPER_VARIANTS, RECIPE)) -> list[tuple[str, str, list[str]]]:
    """(key, title, command) of each step; ``cpu`` shrinks every one to seconds and leaves out
    ``--compile`` (whose point is the GPU's kernels, and which takes minutes to build on a CPU)."""
    python = [sys.executable, "-m"]
    device = ["--device", "cpu" if cpu else "cuda"]
    speed = ["--images", "2", "--steps", "1", "--warmup", "1", "--crop", "64x64", "--workers", "0"] if cpu else []
    tiny = ["--max-images", "4", "--crop", "96x128", "--seed", str(TINY_SEED)] if cpu else []
    train = ["--epochs", "1" if cpu else str(epochs), *device, *tiny]
    recipe_train = ["--epochs", "1", *device, "--max-images", "4", "--crop", "128", "--seed", str(TINY_SEED)] \
        if cpu else device
    runs = out / "variants"
    listing = [
        ("speed", "Trainer vs naive loop", [*python, "benchmarks.bench_train", "--data", str(data), *device, *speed]),
    ]
    paper = [name for name in names if name in PAPER_VARIANTS]
    if paper:
        listing.append(("variants", "The paper's variants", [*python, "benchmarks.bench_variants", "--data", str(data),
                                                             "--out", str(runs), "--variants", *paper, "--", *train]))
    if RECIPE in names:
        listing.append(("variants", "The kit's recipe", [*python, "benchmarks.bench_variants", "--data", str(data),
                                                         "--out", str(runs), "--variants", RECIPE, "--", *recipe_train]))
    if not cpu:
        listing.insert(1, ("speed", "Trainer vs naive loop, --compile",
                           [*python, "benchmarks.bench_train", "--data", str(data), *device, "--compile"]))
    for name in names:
        ids = ["--ids", *_val_ids(data, TINY_SEED)[:2]] if cpu else []  # of the split the weights hold out
        listing.append(("scores", f"Full-image validation score: {name}",
                        [*python, "kit.infer", "--data", str(data), "--weights", str(runs / f"{name}.pt"),
                         "--split", "val", "--evaluate", "--out", str(runs / f"{name}-val.csv"), *device, *ids]))
    kernel_args = "--epochs 1 --max-images 4 --crop 96x128 --device cpu" if cpu else "--epochs 3"
    listing.append(("kernels", "Kernels in the sandbox", [*python, "benchmarks.bench_kernels", "--data", str(data),
                                               "--variants", "unet", "--train-args", kernel_args,
                                               "--work", str(out / "sandbox")]))
    return listing


def pretrain_steps(data: Path, out: Path, cpu: bool, epochs: int) -> list[tuple[str, str, list[str]]]:
    """(key, title, command) of the pretrain -> fine-tune path: the LIVECell-format copy, the two
    stages in one ``kit.train`` run, and the full-image validation score."""
    python = [sys.executable, "-m"]
    device = ["--device", "cpu" if cpu else "cuda"]
    copy, runs = out / "pretrain-data", out / "pretrain"
    stages = ["--pretrain-epochs", "1", "--epochs", "1", "--max-images", "4", "--crop", "96x128"] if cpu else \
        ["--pretrain-epochs", str(epochs), "--epochs", str(epochs)]
    ids = ["--ids", *_val_ids(data)[:2]] if cpu else []
    return [
        ("pretrain", "LIVECell-format copy of the training split",
         [*python, "benchmarks.fixture_data", "--data", str(data), "--out", str(copy), "--replace"]),
        ("pretrain", f"Pretrain on the LIVECell copy, then fine-tune: {PRETRAINED}",
         [*python, "kit.train", "--variant", PRETRAINED, "--data", str(copy), "--out", str(runs), "--pretrain",
          "livecell", *stages, *device, "--restart"]),
        ("pretrain", f"Full-image validation score: {PRETRAINED} pretrained",
         [*python, "kit.infer", "--data", str(data), "--weights", str(runs / f"{PRETRAINED}.pt"), "--split", "val",
          "--evaluate", "--out", str(runs / f"{PRETRAINED}-val.csv"), *device, *ids]),
    ]


def curve_steps(data: Path, out: Path, cpu: bool) -> list[tuple[str, str, list[str]]]:
    """(key, title, command) of the learning curve: one run keeping its weights at ``CURVE_STEPS`` (the
    step schedule's 50 epochs, so the lr falls as on the CPU curve), then each kept file scored on the
    whole validation images. The CPU mode keeps steps 1 and 2 of a 4-image epoch."""
    python = [sys.executable, "-m"]
    device = ["--device", "cpu" if cpu else "cuda"]
    runs = out / "curve"
    keep = ["1", "2"] if cpu else [str(n) for n in CURVE_STEPS]
    tiny = ["--epochs", "1", "--max-images", "4", "--crop", "96x128"] if cpu else ["--crop", CURVE_CROP]
    return [
        ("curve", f"Learning curve: {CURVE_VARIANT} keeping its weights at steps {', '.join(keep)}",
         [*python, "kit.train", "--variant", CURVE_VARIANT, "--data", str(data), "--out", str(runs), *tiny,
          *device, "--keep-steps", *keep, "--restart"]),
        ("curve", "Learning curve: each kept weights file on the whole validation images",
         [*python, "benchmarks.learning_curve", "--run", str(runs), "--variant", CURVE_VARIANT, "--data", str(data),
          "--crop", "96x128" if cpu else CURVE_CROP, *device, *(["--max-images", "3"] if cpu else [])]),
    ]


def run_step(command: Sequence[str]) -> tuple[int, float, list[str]]:
    """(exit status, seconds, the last ``TAIL_LINES`` lines of its output)."""
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return done.returncode, time.monotonic() - started, done.stdout.splitlines()[-TAIL_LINES:]


def _val_ids(data_dir: Path, seed: int | None = None) -> list[str]:
    """The validation ids of the split ``kit.train --seed SEED`` draws (default: its default seed)."""
    from kit.data import sartorius
    from kit.split import DEFAULT_SEED, split_train_val

    layout = sartorius.find_competition(data_dir, need_test=False)
    images = sartorius.image_table(sartorius.read_train_csv(layout.train_csv))
    return split_train_val(images, seed=DEFAULT_SEED if seed is None else seed)[1]


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
