"""The CPU's precision and memory layout, side by side in one run: fp32, bf16 autocast, channels_last, both.

    python -m benchmarks.bench_precision                       # hot-flow-unet, batch 2, 256x256, 2 threads
    python -m benchmarks.bench_precision --rounds 6 --steps 8  # steadier on a loaded machine
    python -m benchmarks.bench_precision --quality --data DATA --out runs/parity   # bf16 against fp32 scores

For each of the four settings, a training step (forward + backward + SGD step, as
``kit.training.loop.train_step`` runs it) and an inference forward pass (``torch.no_grad``, as
``kit.inference.ensemble`` runs it) on the same random batch. The settings take turns within each round and the
best round counts, so a load that comes and goes touches all four alike. Prints images/s, the ratio to
fp32, and whether ``kit.model.hardware.cpu_has_native_bf16`` found native bf16 (what ``--precision auto``
follows). Random inputs: the speed of a convolution does not depend on the values.

``--quality`` instead trains the same short schedule in fp32 and in bf16 for each ``--seeds`` (``kit.train``
in its own process, ``--epochs`` on 256x256 crops) and scores each on the whole validation images of its
split (``kit.infer --split val``): the precision's effect beside the seeds' spread.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from kit import cli
from kit.model import hardware, network
from kit.model.losses import build_loss
from kit.model.variants import VARIANTS
from kit.training.loop import train_step
from kit.training.setup import build_optimizer

SETTINGS = {"fp32": (None, torch.contiguous_format), "bf16": (torch.bfloat16, torch.contiguous_format),
            "channels_last": (None, torch.channels_last), "bf16 + channels_last": (torch.bfloat16, torch.channels_last)}


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m benchmarks.bench_precision", description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="hot-flow-unet")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="square crop side in pixels")
    parser.add_argument("--steps", type=int, default=4, help="timed steps of each setting in a round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds; the best one of each setting counts")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the kit's CPU runs use the default)")
    parser.add_argument("--quality", action="store_true", help="train and score fp32 against bf16 instead")
    parser.add_argument("--data", type=Path, default=None, help="--quality: the competition data")
    parser.add_argument("--out", type=Path, default=Path("runs/parity"), help="--quality: the runs' folder")
    parser.add_argument("--epochs", type=int, default=4, help="--quality: epochs of each run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="--quality: seeds (split, init, batches)")
    return parser


def main(args: argparse.Namespace):
    return quality(args) if args.quality else speed(args)


def speed(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    torch.set_num_threads(args.threads)
    variant = VARIANTS[args.variant].replace(batch_size=args.batch_size)
    native = hardware.cpu_has_native_bf16()
    print(f"{variant.name}, batch {args.batch_size}, {args.size}x{args.size}, {args.threads} threads, best of "
          f"{args.rounds} rounds of {args.steps} steps; torch {torch.__version__}; native bf16 on this CPU: "
          f"{'yes' if native else 'no'} (--precision auto: {'bf16' if native else 'fp32'}, "
          f"{hardware.memory_format(torch.device('cpu'))})")
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, variant.in_channels, args.size, args.size)
    target = torch.rand(args.batch_size, variant.out_channels, args.size, args.size)
    runners = {name: _runners(variant, x, target, dtype, layout) for name, (dtype, layout) in SETTINGS.items()}
    best = {name: [0.0, 0.0] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, (train, infer) in runners.items():
            best[name][0] = max(best[name][0], _images_per_s(train, args.steps, args.batch_size))
            best[name][1] = max(best[name][1], _images_per_s(infer, args.steps, args.batch_size))
    print(f"{'setting':<22}{'train img/s':>12}{'x fp32':>8}{'infer img/s':>13}{'x fp32':>8}")
    for name, (train, infer) in best.items():
        print(f"{name:<22}{train:>12.2f}{train / best['fp32'][0]:>8.2f}{infer:>13.2f}{infer / best['fp32'][1]:>8.2f}")
    return {name: (train, infer) for name, (train, infer) in best.items()}


def quality(args: argparse.Namespace) -> dict[tuple[int, str], str]:
    """Per seed and precision, train and score in child processes; prints the scores side by side."""
    data = ["--data", str(args.data)] if args.data else []
    lines = {}
    for seed in args.seeds:
        for precision in ("fp32", "bf16"):
            out = args.out / f"{precision}-seed{seed}"
            subprocess.run([sys.executable, "-m", "kit.train", "--variant", args.variant, *data, "--out", str(out),
                            "--crop", f"{args.size}x{args.size}", "--device", "cpu", "--epochs", str(args.epochs),
                            "--seed", str(seed), "--precision", precision, "--restart"], check=True)
            done = subprocess.run([sys.executable, "-m", "kit.infer", *data, "--weights",
                                   str(out / f"{args.variant}.pt"), "--split", "val", "--evaluate", "--device", "cpu",
                                   "--out", str(out / "val.csv")], check=True, capture_output=True, text=True)
            lines[seed, precision] = next(line for line in done.stdout.splitlines()
                                          if "leaderboard score over" in line)
            print(f"seed {seed} {precision}: {lines[seed, precision]}", flush=True)
    return lines


def _runners(variant, x: torch.Tensor, target: torch.Tensor, dtype: torch.dtype | None,
             layout: torch.memory_format):
    """(one training step, one inference pass) of a fresh model in ``dtype`` autocast and ``layout``."""
    model = network.build_model(variant).to(memory_format=layout)
    optimizer, criterion = build_optimizer(model, variant), build_loss(variant)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x = x.contiguous(memory_format=layout)
    device = torch.device("cpu")

    def train() -> None:
        model.train()
        train_step(model, x, target, criterion, optimizer, scaler, dtype)

    @torch.no_grad()
    def infer() -> None:
        model.eval()
        with hardware.autocast(device, dtype):
            model(x)

    train(), infer()  # warm-up: oneDNN picks and caches its kernels for this shape and layout
    return train, infer


def _images_per_s(step, steps: int, batch_size: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
