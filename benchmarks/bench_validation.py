"""One validation pass, with the true annotations parsed and cropped every epoch (as the trainer
did) beside parsing them once per run (``TrainData.truth``), measured side by side in one run.

    python -m benchmarks.bench_validation --data DIR [--variant hot-unet] [--crop 256x256] [--repeats 3]

Each pass is ``kit.training.loop.evaluate`` on the validation split with an untrained network (the
network's time is the same in both columns; the difference is the truth's parsing and cropping).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks import run_cli
from kit import cli
from kit.data import sartorius
from kit.model import network
from kit.model.losses import build_loss
from kit.model.variants import VARIANTS
from kit.split import split_train_val
from kit.training import batches, loop


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m benchmarks.bench_validation", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder with the competition data below it")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="hot-unet")
    parser.add_argument("--crop", type=cli.crop_size, default=(256, 256), metavar="HxW")
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def main(args: argparse.Namespace) -> dict[str, float]:
    layout = sartorius.find_competition(args.data, need_test=False)
    df = sartorius.read_train_csv(layout.train_csv)
    _, val_ids = split_train_val(sartorius.image_table(df))
    variant = VARIANTS[args.variant]
    split = batches.load_split(layout, val_ids, variant, torch.device("cpu"), df=df)
    torch.manual_seed(0)
    model, criterion = network.build_model(variant).eval(), build_loss(variant)
    each_epoch, once = [], []
    for _ in range(args.repeats):
        split._truth.clear()  # what every epoch paid before: parse and crop the annotations again
        each_epoch.append(_seconds(lambda: loop.evaluate(model, split, variant, criterion, crop=args.crop)))
        once.append(_seconds(lambda: loop.evaluate(model, split, variant, criterion, crop=args.crop)))
    parse = []
    for _ in range(args.repeats):
        split._truth.clear()
        parse.append(_seconds(lambda: split.truth_runs(args.crop)))
    result = {"parsed every epoch": statistics.median(each_epoch), "parsed once": statistics.median(once),
              "parsing alone": statistics.median(parse)}
    print(f"validation pass over {len(split)} images ({args.variant}, {args.crop[0]}x{args.crop[1]} crops), "
          f"median of {args.repeats}:")
    for name in ("parsed every epoch", "parsed once"):
        print(f"  {name:18s} {result[name]:7.2f} s")
    print(f"  saved per epoch    {result['parsed every epoch'] - result['parsed once']:7.2f} s "
          f"(the parsing and cropping alone: {result['parsing alone']:.2f} s)")
    return result


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


if __name__ == "__main__":
    run_cli("python -m benchmarks.bench_validation", main, get_args_parser().parse_args())
