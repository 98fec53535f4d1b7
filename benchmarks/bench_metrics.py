"""kit.metrics.score against a dense computation, side by side on the shared training images.

Predictions: every image's truth label image shifted by a few pixels, 10 % of its cells dropped and a
spurious cell added. The dense computation decodes every true and predicted cell to a full-size
boolean mask, stacks them and multiplies the stacks (the intersection matrix), then applies the same
definition (integer IoU comparison, maximum one-to-one matching). Both must give identical values.

    python -m benchmarks.bench_metrics [--data ../shared] [--images 120] [--repeats 5]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from benchmarks import run_cli
from kit import cli, metrics, rle
from kit.data import sartorius


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m benchmarks.bench_metrics", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None,
                        help="folder with the competition data below it (default: kit.paths.input_root())")
    parser.add_argument("--images", type=int, default=120, help="how many images (sorted by id) to score")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the sparse path (the best is kept)")
    return parser


def main(args: argparse.Namespace) -> None:
    train = sartorius.read_train_csv(sartorius.find_competition(args.data, need_test=False).train_csv)
    ids = sorted(train["id"].unique())[: args.images]
    solution = train[train["id"].isin(ids)]
    truth = {i: g["annotation"].tolist() for i, g in solution.groupby("id")}
    rng = np.random.default_rng(0)
    predictions = {i: _perturb(rle.decode_labels(truth[i]), rng) for i in ids}
    rows = [(i, code) for i in ids for code in rle.encode_labels(predictions[i]) if code]
    submission = pd.DataFrame(rows, columns=["id", "predicted"])
    print(f"{len(ids)} images, {len(solution)} true cells, {len(submission)} predicted cells")

    metrics.score(solution, submission)  # compile / load the numba kernels outside the timing
    sparse_s, sparse = _best_of(args.repeats, lambda: metrics.score(solution, submission))
    report = metrics.score_report(solution, submission)
    labels_s, by_labels = _best_of(args.repeats, lambda: metrics.score_labels(
        [truth[i] for i in ids], [predictions[i] for i in ids]))
    start = time.perf_counter()
    dense_images = np.array([_dense_image_score(truth[i], [c for j, c in rows if j == i]) for i in ids])
    dense_s = time.perf_counter() - start
    dense = float(dense_images.mean())

    identical = sparse == dense and np.array_equal(report.per_image["score"].to_numpy(), dense_images)
    print(f"score(), sparse runs:       {sparse:.12f}  {sparse_s * 1e3:9.1f} ms (best of {args.repeats})")
    print(f"dense mask stacks, matmul:  {dense:.12f}  {dense_s * 1e3:9.1f} ms")
    print(f"score_labels() (label images, the trainer's path): mean {by_labels.mean():.12f}  "
          f"{labels_s * 1e3:9.1f} ms (best of {args.repeats})")
    print(f"identical values: {identical}; max |difference| per image "
          f"{np.abs(report.per_image['score'].to_numpy() - dense_images).max():.3g}")
    print(f"speed-up of score() over the dense computation: {dense_s / sparse_s:.0f}x (target >= 20x)")
    if not identical or not np.allclose(by_labels, dense_images, rtol=0, atol=1e-12):
        raise SystemExit("the sparse and dense computations disagree")


def _perturb(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    moved = np.roll(labels, tuple(rng.integers(-3, 4, size=2)), axis=(0, 1))
    present = np.unique(moved[moved > 0])
    moved[np.isin(moved, rng.choice(present, size=len(present) // 10, replace=False))] = 0
    moved[10:40, 10:50] = moved.max() + 1
    return moved


def _dense_image_score(true_rles: list[str], pred_rles: list[str]) -> float:
    true_masks = np.stack([rle.decode(r) for r in true_rles]).reshape(len(true_rles), -1)
    pred_masks = np.stack([rle.decode(r) for r in pred_rles]).reshape(len(pred_rles), -1)
    # float32 counts are exact up to 2**24 pixels, far above 520 * 704
    inter = (true_masks.astype(np.float32) @ pred_masks.astype(np.float32).T).astype(np.int64)
    union = true_masks.sum(axis=1)[:, None] + pred_masks.sum(axis=1)[None, :] - inter
    precisions = []
    for t in metrics.THRESHOLDS:
        hits = 100 * inter > round(100 * t) * union
        rows, cols = linear_sum_assignment(hits, maximize=True)
        tp = int(hits[rows, cols].sum())
        precisions.append(tp / (len(true_rles) + len(pred_rles) - tp))
    return float(np.mean(precisions))


def _best_of(repeats: int, fn):
    best, value = float("inf"), None
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


if __name__ == "__main__":
    run_cli("python -m benchmarks.bench_metrics", main, get_args_parser().parse_args())
