"""The learning curve: the weights a run kept at fixed step counts, each scored on the whole validation images.

    python -m kit.train --variant hot-flow-unet --data DATA --out runs/curve --crop 256x256 --device cpu \\
        --keep-steps 250 500 1000 2000 4000 6000
    python -m benchmarks.learning_curve --run runs/curve --variant hot-flow-unet --data DATA --crop 256x256

For every ``RUN/NAME-stepN.pt`` (``kit.train --keep-steps``) not yet in ``OUT/learning-curve.csv`` (so it can
follow a run that is still training) the validation images of the run's split (recorded in the weights) are
predicted once through ``kit.infer``'s own path (``kit.inference.ensemble.predict``, full 520x704 images) and
scored with the leaderboard metric twice: untuned (``kit.postprocess.output_to_labels`` at the default
settings, what ``kit.infer`` does with untuned weights) and tuned (``kit.inference.tuning.fit_settings``: the best
grid point per cell type, fitted on the same images, so optimistic by that choice). Per cell type and
the mean of the three types, against optimiser steps and image-equivalents seen (steps x batch x the
crop's share of a full image).

Two curves are fitted to the type mean by least squares: a saturating power law
``a - b * n**-c`` and a straight line in ``log n``; their residuals are printed. Where they point at the
image-equivalents a Kaggle kernel sees (``--kernel-hours`` x ``--gpu-images-per-s``) is printed as a
**projection**: an extrapolation far beyond the measured range, which the two fits bracket, not a
measurement. Writes ``OUT/learning-curve.csv``, ``OUT/learning-curve.md`` and ``OUT/learning-curve.png``.
"""
from __future__ import annotations

import argparse
import math
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kit import cli, metrics, postprocess
from kit.competition import CELL_TYPES, IMAGE_SHAPE
from kit.files import atomic_output, save_png, write_text_atomic
from kit.inference.ensemble import load_ensemble, split_records
from kit.inference.image_sets import annotated_images
from kit.inference.tuning import fit_settings, predict_outputs
from kit.model import hardware

# The README's arithmetic projection for one T4 (fp16, 410 GFLOP a full-image pass), x2 for T4 x2
# before DDP overhead; replace it with a measured rate (benchmarks.gpu_check) once a GPU has run.
PROJECTED_T4X2_IMAGES_PER_S = 36.0
KERNEL_HOURS = 8.5  # kit.cli.DEFAULT_TIME_LIMIT
# The paper's schedule on Kaggle: 50 epochs of the full training set's 80 % (606 annotated images, 485
# after the validation split), whole images: what a hot-flow-unet kernel trains by default.
PAPER_SCHEDULE_IMAGES = 50 * 485


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m benchmarks.learning_curve", description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="the kit.train --out folder holding NAME-stepN.pt")
    parser.add_argument("--variant", default="hot-flow-unet", help="the run's variant name (NAME)")
    parser.add_argument("--data", type=Path, default=None, help="the competition data the run trained on")
    parser.add_argument("--out", type=Path, default=None, help="where the table and plot go (default: RUN)")
    parser.add_argument("--crop", type=cli.crop_size, default=None, metavar="HxW",
                        help="the run's training crop (image-equivalents per step); default whole images")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-images", type=int, default=None, help="the first N validation images (smoke runs)")
    parser.add_argument("--kernel-hours", type=float, default=KERNEL_HOURS, help="a training kernel's hours")
    parser.add_argument("--gpu-images-per-s", type=float, default=PROJECTED_T4X2_IMAGES_PER_S,
                        help="full images a second on Kaggle's T4 x2 (default: the FLOP projection, not measured)")
    parser.add_argument("--table-only", action="store_true", help="refit and replot OUT/learning-curve.csv")
    return parser


def main(args: argparse.Namespace) -> pd.DataFrame:
    out = args.out or args.run
    out.mkdir(parents=True, exist_ok=True)
    table_path = out / "learning-curve.csv"
    table = pd.read_csv(table_path) if table_path.is_file() else pd.DataFrame({"steps": []})
    if args.table_only and table.empty:
        raise SystemExit(f"--table-only: no {table_path} to refit; run without it first")
    if not args.table_only:
        scored = set(table["steps"].astype(int))  # a rerun scores only the weights kept since (a running run)
        for path in kept_weights(args.run, args.variant):
            if steps_of(path) not in scored:
                row = score_checkpoint(path, args.data, args.device, args.crop, args.max_images)
                table = pd.concat([table, pd.DataFrame([row])], ignore_index=True).sort_values("steps")
                table["steps"] = table["steps"].astype(int)
                with atomic_output(table_path) as tmp:  # each row kept as soon as it is scored
                    table.to_csv(tmp, index=False, float_format="%.4f")
    kernel_images = args.kernel_hours * 3600 * args.gpu_images_per_s
    report = describe(table, kernel_images, args)
    print(report)
    write_text_atomic(out / "learning-curve.md", report + "\n")
    plot(table, out / "learning-curve.png", kernel_images, args.variant)
    return table


def kept_weights(run: Path, name: str) -> list[Path]:
    """``RUN/NAME-stepN.pt`` in order of N; none is an error saying how to make them."""
    found = sorted(run.glob(f"{name}-step*.pt"), key=steps_of)
    if not found:
        raise SystemExit(f"no {name}-stepN.pt in {run}: train with kit.train --keep-steps N [N ...]")
    return found


def steps_of(path: Path) -> int:
    """N of ``NAME-stepN.pt``."""
    return int(re.search(r"-step(\d+)\.pt$", path.name).group(1))


def score_checkpoint(path: Path, data_dir: Path | None, device_name: str, crop,
                     max_images: int | None = None) -> dict:
    """One row: steps, image-equivalents, untuned and tuned scores per type and their means."""
    started = time.perf_counter()
    device = hardware.resolve_device(device_name)
    ensemble = load_ensemble([path], device)
    variant = ensemble[0].variant
    steps = steps_of(path)
    image_paths, truth, cell_types = annotated_images(data_dir, "val", max_images, split_records(ensemble))
    outputs = predict_outputs(ensemble, image_paths, cell_types, device)
    config = postprocess.PostprocessConfig().with_tuned(ensemble[0].settings.postprocess)
    labels = {i: postprocess.output_to_labels(prob, flow, None, cell_types[i], config)
              for i, (prob, flow) in outputs.items()}
    ids = list(image_paths)
    per_image = dict(zip(ids, metrics.score_labels([truth[i] for i in ids], [labels[i] for i in ids])))
    tuned = fit_settings(outputs, truth, cell_types).scores
    share = 1.0 if crop is None else crop[0] * crop[1] / (IMAGE_SHAPE[0] * IMAGE_SHAPE[1])
    row = {"steps": steps, "image_equivalents": steps * variant.batch_size * share, "images": len(ids),
           "score": float(np.mean(list(per_image.values())))}
    for cell_type in CELL_TYPES:  # NaN for a type without validation images (a --max-images smoke run)
        own = [s for i, s in per_image.items() if cell_types[i] == cell_type]
        row[f"untuned_{cell_type}"] = float(np.mean(own)) if own else math.nan
        row[f"tuned_{cell_type}"] = tuned.get(cell_type, math.nan)
    for kind in ("untuned", "tuned"):
        row[f"{kind}_type_mean"] = float(np.nanmean([row[f"{kind}_{t}"] for t in CELL_TYPES]))
    print(f"{path.name}: untuned type mean {row['untuned_type_mean']:.4f}, tuned {row['tuned_type_mean']:.4f} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    return row


def fit_curves(n: np.ndarray, score: np.ndarray) -> dict[str, tuple]:
    """``{name: (function, parameters, residuals)}`` of the two fits: none below 3 points (a line through
    two says nothing of its shape), the power law from 4."""
    from scipy.optimize import curve_fit

    def log_line(x, a, b):
        return a + b * np.log(x)

    def power(x, a, b, c):
        return a - b * np.power(x, -c)

    fits = {}
    if len(n) < 3:
        return fits
    coeffs = np.polyfit(np.log(n), score, 1)
    fits["log-linear a + b ln n"] = (log_line, (coeffs[1], coeffs[0]), score - log_line(n, coeffs[1], coeffs[0]))
    if len(n) >= 4:
        try:
            params, _ = curve_fit(power, n, score, p0=(score.max() + 0.1, 1.0, 0.5),
                                  bounds=([0.0, 0.0, 0.01], [1.0, np.inf, 3.0]), maxfev=20000)
            fits["power law a - b n^-c"] = (power, tuple(params), score - power(n, *params))
        except RuntimeError:  # no convergence: the table says so rather than print a wrong curve
            pass
    return fits


def describe(table: pd.DataFrame, kernel_images: float, args: argparse.Namespace) -> str:
    """The markdown table, each fit with its residuals, and the marked projection."""
    columns = ["steps", "image_equivalents", "score", *(f"untuned_{t}" for t in CELL_TYPES), "untuned_type_mean",
               *(f"tuned_{t}" for t in CELL_TYPES), "tuned_type_mean"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(f"{int(row[c]):,}" if c == "steps" else f"{row[c]:,.0f}"
                                       if c == "image_equivalents" else f"{row[c]:.4f}" for c in columns) + " |")
    n = table["image_equivalents"].to_numpy(float)
    lines.append("")
    lines.append(f"Projection (an extrapolation, not a measurement): a {args.kernel_hours:g}-hour kernel at "
                 f"{args.gpu_images_per_s:g} full images/s sees {kernel_images:,.0f} image-equivalents, "
                 f"{kernel_images / n.max():,.0f}x the largest measured point.")
    for key in ("untuned_type_mean", "tuned_type_mean"):
        for name, (function, params, residuals) in fit_curves(n, table[key].to_numpy(float)).items():
            lines.append(f"- {key}, {name}: parameters {', '.join(f'{p:.4g}' for p in params)}; residuals "
                         f"{', '.join(f'{r:+.4f}' for r in residuals)} (RMS {math.sqrt(np.mean(residuals ** 2)):.4f});"
                         f" projected at the paper's 50 epochs on Kaggle ({PAPER_SCHEDULE_IMAGES:,} image-equivalents): "
                         f"{function(PAPER_SCHEDULE_IMAGES, *params):.3f}; at the kernel's hours: "
                         f"{function(kernel_images, *params):.3f}")
    return "\n".join(lines)


def plot(table: pd.DataFrame, path: Path, kernel_images: float, name: str) -> None:
    """Score against image-equivalents (log axis): each type untuned, the type means, the fits dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 5.5))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    n = table["image_equivalents"].to_numpy(float)
    for cell_type in CELL_TYPES:
        axes.plot(n, table[f"untuned_{cell_type}"], marker=".", linewidth=1, label=f"{cell_type} (untuned)")
    for key, style in (("untuned_type_mean", "o-"), ("tuned_type_mean", "s-")):
        axes.plot(n, table[key], style, linewidth=2, label=key.replace("_", " "))
    grid = np.geomspace(n.min(), kernel_images, 200)
    for name_fit, (function, params, _) in fit_curves(n, table["untuned_type_mean"].to_numpy(float)).items():
        axes.plot(grid, np.clip(function(grid, *params), 0, 1), "--", linewidth=1, label=f"fit: {name_fit}")
    axes.axvline(PAPER_SCHEDULE_IMAGES, color="black", linestyle="-.", linewidth=1,
                 label="the paper's 50 epochs on Kaggle's images")
    axes.axvline(kernel_images, color="grey", linestyle=":", label="a T4x2 kernel's hours (projected)")
    axes.set_xscale("log")
    axes.set_xlabel("full-image equivalents seen (steps x batch x crop share)")
    axes.set_ylabel("validation leaderboard score")
    axes.set_title(f"{name}: learning curve on the whole validation images")
    axes.legend(fontsize="small")
    figure.tight_layout()
    save_png(figure, path)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
