"""The trainer's throughput against a naive fp32 loop, side by side in one run on one device.

Same network (``--variant``), same images and targets, same optimizer. The naive loop is the
paper's setup: a DataLoader that decodes every PNG again at every step (``--workers`` processes),
float32, NCHW, batch 2. The trainer's loop is ``kit.training.loop.train_epoch``: uint8 images held on the
device, batches gathered and converted there, mixed precision (bf16 where the GPU has it, else
fp16 + GradScaler) and channels_last on CUDA, at each ``--batch-size``. Reported: images/s after
``--warmup`` steps, the ratio to the naive loop, and the peak GPU memory.

    python -m benchmarks.bench_train --device cuda [--steps 30] [--batch-size 2 8] [--compile]
    python -m benchmarks.bench_train --device cpu --steps 2 --crop 128x128   # runs anywhere
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks import run_cli
from kit import cli
from kit.data import sartorius
from kit.model import encoding, hardware, network
from kit.model.losses import build_loss
from kit.model.variants import Variant, VARIANTS
from kit.split import split_train_val
from kit.training import batches, loop, setup


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m benchmarks.bench_train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="folder with the competition data below it")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="hot-unet")
    parser.add_argument("--images", type=int, default=32, help="training images used (first N of the split)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotune, compile)")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[2, 8], help="trainer batch size(s)")
    parser.add_argument("--naive-batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader processes of the naive loop")
    parser.add_argument("--crop", type=cli.crop_size, metavar="HxW", help="random crops (CPU runs)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the trainer's model")
    return parser


def main(args: argparse.Namespace) -> None:
    device = hardware.resolve_device(args.device)  # a GPU this machine lacks: one line, not torch's traceback
    torch.backends.cudnn.benchmark = True  # both loops: fixed shapes
    layout = sartorius.find_competition(args.data, need_test=False)
    df = sartorius.read_train_csv(layout.train_csv)
    train_ids, _ = split_train_val(sartorius.image_table(df))
    ids = train_ids[: args.images]
    variant = VARIANTS[args.variant]
    split = batches.load_split(layout, ids, variant, device, df=df)
    shape = "x".join(map(str, args.crop or split.images.shape[-2:]))
    print(f"{variant.name}, {len(ids)} images at {shape}, {args.steps} timed steps after {args.warmup}, "
          f"on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")

    naive = naive_throughput(layout, split, variant, device, args)
    print(f"naive     batch {args.naive_batch_size:>2}  fp32, NCHW, DataLoader decoding PNGs "
          f"({args.workers} workers): {naive:8.2f} img/s{_peak_memory(device)}")
    for batch_size in args.batch_size:
        fast = trainer_throughput(split, variant.replace(batch_size=batch_size), device, args)
        amp = hardware.precision_name(hardware.autocast_dtype(device, args.precision))
        layout_name = "channels_last" if device.type == "cuda" else "NCHW"
        print(f"trainer   batch {batch_size:>2}  {amp}, {layout_name}{', compiled' if args.compile else ''}, "
              f"images on the device: {fast:8.2f} img/s{_peak_memory(device)}  = {fast / naive:.2f}x naive")


def trainer_throughput(split: batches.TrainData, variant: Variant, device: torch.device,
                       args: argparse.Namespace) -> float:
    """Images/s of ``kit.training.loop.train_epoch`` as the trainer runs it."""
    torch.manual_seed(0)
    raw_model = network.build_model(variant).to(device)
    optimizer = setup.build_optimizer(raw_model, variant)
    amp_dtype = hardware.autocast_dtype(device, args.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    model = setup.wrap_model(raw_model, device, 1, args.compile)
    criterion = build_loss(variant)
    generator = torch.Generator().manual_seed(0)

    def run(steps: int) -> float:
        order = _cycled_order(len(split), steps * variant.batch_size, generator)
        return loop.train_epoch(model, split, order, variant, criterion, optimizer, scaler, amp_dtype,
                                 generator, args.crop)[1]

    run(args.warmup)
    _reset_peak_memory(device)
    return run(args.steps)


def naive_throughput(layout: sartorius.CompetitionLayout, split: batches.TrainData, variant: Variant,
                     device: torch.device, args: argparse.Namespace) -> float:
    """Images/s of a plain loop: PNG decoding in a DataLoader every step, fp32, NCHW."""
    torch.manual_seed(0)
    model = network.build_model(variant).to(device)
    optimizer = setup.build_optimizer(model, variant)
    criterion = build_loss(variant)
    dataset = _PngDataset(layout, split, variant, args.crop)
    loader = DataLoader(dataset, batch_size=args.naive_batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0)
    model.train()
    step, images, start = 0, 0, time.perf_counter()
    while step < args.warmup + args.steps:
        for x, target in loader:
            if step == args.warmup:
                _synchronize(device)
                _reset_peak_memory(device)
                images, start = 0, time.perf_counter()
            x, target = x.to(device), target.to(device)
            optimizer.zero_grad()
            loss = criterion(model(x), target)
            loss.backward()
            optimizer.step()
            loss.item()  # a per-step host sync, as a loop that logs every step has
            step, images = step + 1, images + len(x)
            if step == args.warmup + args.steps:
                break
    _synchronize(device)
    return images / (time.perf_counter() - start)


class _PngDataset(Dataset):
    """Decodes the PNG at every access; targets as the trainer builds them, held on the host."""

    def __init__(self, layout: sartorius.CompetitionLayout, split: batches.TrainData, variant: Variant,
                 crop: tuple[int, int] | None):
        self.paths = [layout.train_dir / f"{image_id}.png" for image_id in split.ids]
        self.cell_types, self.variant, self.crop = split.cell_types, variant, crop
        self.targets = split.targets.float().cpu().numpy()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = sartorius.load_image(self.paths[i]), self.targets[i]
        if self.crop is not None:
            top = np.random.randint(0, image.shape[0] - self.crop[0] + 1)
            left = np.random.randint(0, image.shape[1] - self.crop[1] + 1)
            image = image[top: top + self.crop[0], left: left + self.crop[1]]
            target = target[:, top: top + self.crop[0], left: left + self.crop[1]]
        x = encoding.model_input(torch.from_numpy(np.ascontiguousarray(image))[None], [self.cell_types[i]],
                               self.variant)[0]
        return x, torch.from_numpy(np.ascontiguousarray(target))


def _cycled_order(n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``length`` indices: random permutations of 0..n-1 one after another."""
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(-(-length // n))])[:length]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> str:
    if device.type != "cuda":
        return ""
    return f"  (peak {torch.cuda.max_memory_allocated(device) / 2 ** 30:.1f} GiB)"


if __name__ == "__main__":
    run_cli("python -m benchmarks.bench_train", main, get_args_parser().parse_args())
