"""From predictions to instances, timed on one core, with every ratio measured in this one run.

    python -m benchmarks.bench_instances [--data ../shared/sartorius] [--numpy-images 120]

1. Post-processing per image, instance extraction and RLE (``rle.encode_labels``) included:
   mask variants (``postprocess.mask_to_labels``, with and without the boundary table) on a
   simulated prediction (the true union mask blurred, sigma 1.5 px), and flow following
   (``flows.flows_to_labels``) on the flows of the true instances. Targets: <= 30 ms and <= 100 ms
   per image. The same run prints the oracle score of the flow round trip over all images.
2. Boundary tuning: the 256 x 256 table read vs the fitted scikit-learn classifier's ``predict``
   on the same boundary-band pixels (target >= 100x).
3. ``flows.masks_to_flows`` vs the same algorithm as a per-cell numpy loop (bounding boxes from
   ``scipy.ndimage.find_objects``, vectorised Jacobi steps), over the shared images (target >= 10x).
"""
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_name] = "1"  # one core, before numpy / numba / cv2 start their pools

import argparse  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import run_cli  # noqa: E402
from benchmarks.numpy_twins import numpy_masks_to_flows  # noqa: E402
from kit import cli, competition, flows, metrics, paths, postprocess, rle
from kit.data import sartorius
from kit.inference import boundary_fit
from kit.split import split_train_val  # noqa: E402

cv2.setNumThreads(1)
BLUR_SIGMA = 1.5


def time_per_image(fn, items) -> tuple[np.ndarray, list]:
    """(seconds per item, results) after one warm-up call that compiles the kernels."""
    fn(items[0])
    times, results = [], []
    for item in items:
        t0 = time.perf_counter()
        results.append(fn(item))
        times.append(time.perf_counter() - t0)
    return np.array(times), results


def bench_postprocess(samples, lut) -> None:
    probs = [cv2.GaussianBlur((s.labels > 0).astype(np.float32), (0, 0), BLUR_SIGMA) for s in samples]
    with_table = postprocess.PostprocessConfig(boundary=lut)
    rows = [
        ("mask_to_labels + RLE", lambda i: rle.encode_labels(
            postprocess.mask_to_labels(probs[i], samples[i].image, samples[i].cell_type))),
        ("  ... with boundary table", lambda i: rle.encode_labels(
            postprocess.mask_to_labels(probs[i], samples[i].image, samples[i].cell_type, with_table))),
    ]
    true_flows = [flows.masks_to_flows(s.labels) for s in samples]
    recovered = [None] * len(samples)  # the flow row's instances, kept for the oracle score

    def follow_and_encode(i):
        recovered[i] = flows.flows_to_labels(true_flows[i], samples[i].labels > 0)
        return rle.encode_labels(recovered[i])

    rows.append(("flows_to_labels + RLE", follow_and_encode))
    print(f"1. post-processing per image, one core, {len(samples)} images (ms: mean / median / max; "
          "mean / max per cell type)")
    types = np.array([s.cell_type for s in samples])
    for name, fn in rows:
        t = time_per_image(fn, list(range(len(samples))))[0] * 1e3
        per_type = "  ".join(f"{c} {t[types == c].mean():5.1f}/{t[types == c].max():5.1f}" for c in competition.CELL_TYPES)
        print(f"   {name:28s} {t.mean():6.1f} / {np.median(t):6.1f} / {t.max():6.1f}   {per_type}")
    print("   targets: mask variants <= 30 ms, flow following <= 100 ms per image")
    oracle = metrics.score_labels([s.annotations for s in samples], recovered)
    as_is = metrics.score_labels([s.annotations for s in samples], [s.labels for s in samples])
    print(f"   oracle: true flows followed back score {oracle.mean():.4f} (the label images themselves, "
          f"overlaps resolved: {as_is.mean():.4f}); per type " +
          "  ".join(f"{c} {oracle[types == c].mean():.4f}" for c in competition.CELL_TYPES))


def bench_table(fit_samples, eval_samples, repeat: int = 20) -> postprocess.BoundaryLUT:
    features, inside = boundary_fit.sample_boundary_pixels(fit_samples)
    t0 = time.perf_counter()
    lut = boundary_fit.fit_boundary_lut(features, inside)
    fit_s = time.perf_counter() - t0
    accuracy = "  ".join(f"{k} {v.mean():.4f}+-{v.std():.4f}" for k, v in lut.accuracies.items())
    print(f"2. boundary tuning: {len(inside)} pixels from {len(fit_samples)} training-split images, "
          f"fit + 10 splits {fit_s:.1f} s; accuracy {accuracy}; chose {lut.classifier}")
    intensity, sobel = [], []
    for s in eval_samples:
        prob = cv2.GaussianBlur((s.labels > 0).astype(np.float32), (0, 0), BLUR_SIGMA)
        band = postprocess.boundary_band(postprocess.closing(prob > 0.5))
        codes = postprocess.quantised_features(s.image)
        intensity.append(codes[0][band])
        sobel.append(codes[1][band])
    intensity, sobel = np.concatenate(intensity), np.concatenate(sobel)
    pixels = np.stack([intensity, sobel], axis=1)
    table_s = min(_timed(lambda: lut.table[intensity, sobel]) for _ in range(repeat))
    print(f"   {len(pixels)} band pixels of {len(eval_samples)} validation images (blurred true masks):")
    print(f"   table read (BoundaryLUT.table[intensity, sobel]) {table_s * 1e3:9.2f} ms")
    for name in boundary_fit.CLASSIFIERS:
        model = boundary_fit.make_classifier(name).fit(features, inside)
        decisions = []
        sk_s = _timed(lambda: decisions.append(model.predict(pixels)))
        table = boundary_fit.classifier_table(model)
        same = np.array_equal(table[intensity, sobel], decisions[0])
        print(f"   sklearn {name:12s} predict            {sk_s * 1e3:9.2f} ms   table is {sk_s / table_s:8.0f}x "
              f"faster (identical decisions: {same})")
    print("   target: >= 100x")
    return lut


def bench_masks_to_flows(samples, n_numpy: int) -> None:
    labels = [s.labels for s in samples]
    subset = labels[:n_numpy]
    fast_flows = {}  # kept for the images the numpy loop also runs on, to compare

    def fast_flow(i):
        flow = flows.masks_to_flows(labels[i])
        if i < len(subset):
            fast_flows[i] = flow

    fast, _ = time_per_image(fast_flow, list(range(len(labels))))
    slow_flows = []
    slow_total = _timed(lambda: slow_flows.extend(numpy_masks_to_flows(l) for l in subset))
    for i, slow_flow in enumerate(slow_flows):
        np.testing.assert_allclose(fast_flows[i], slow_flow, atol=1e-5)
    fast_subset = fast[:n_numpy].sum()
    print(f"3. masks_to_flows over {len(labels)} images ({sum(int(l.max()) for l in labels)} cells): "
          f"{fast.sum():.2f} s ({fast.mean() * 1e3:.1f} ms/image)")
    print(f"   per-cell numpy loop over {len(subset)} of them: {slow_total:.2f} s vs numba {fast_subset:.2f} s "
          f"-> {slow_total / fast_subset:.1f}x (target >= 10x; results agree to 1e-5)")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m benchmarks.bench_instances", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder holding the competition layout")
    parser.add_argument("--numpy-images", type=int, default=120,
                        help="images for the slow numpy baseline of masks_to_flows (all 120: about 3 min)")
    return parser


def main(args: argparse.Namespace) -> None:
    layout = sartorius.find_competition(args.data or paths.input_root(), need_test=False)
    df = sartorius.read_train_csv(layout.train_csv)
    train_ids, val_ids = split_train_val(sartorius.image_table(df))
    samples = sartorius.load_samples(layout, None, df)
    by_id = {s.id: s for s in samples}
    lut = bench_table([by_id[i] for i in train_ids], [by_id[i] for i in val_ids[:8]])
    bench_postprocess(samples, lut)
    bench_masks_to_flows(samples, args.numpy_images)


if __name__ == "__main__":
    run_cli("python -m benchmarks.bench_instances", main, get_args_parser().parse_args())
