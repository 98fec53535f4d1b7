"""Train the variants one after another and print the README's comparison table, from one run.

    python -m benchmarks.bench_variants --data DIR --out runs/variants                  # seed schedule, GPU
    python -m benchmarks.bench_variants --out runs/variants --table-only                # finished runs only
    python -m benchmarks.bench_variants --data DIR --out runs/smoke --variants unet hot-unet \\
        -- --epochs 1 --max-images 4 --crop 96x128 --device cpu                         # anything after -- goes to kit.train

Each variant trains in its own ``python -m kit.train`` process (log: ``OUT/NAME-train.log``), so
one variant's failure or memory never touches the next. The table reads each run's metrics CSV,
which also works for runs downloaded from Kaggle: the best epoch's validation leaderboard score,
pixel Dice, IoU and accuracy, the median training images/s over the epochs and the summed epoch
time (training + validation). The table is also written to ``OUT/variants.md``.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import pandas as pd

from benchmarks import run_cli
from kit import cli
from kit.files import write_text_atomic
from kit.model.variants import VARIANTS
from kit.training import run_folder

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ("variant", "val score", "Dice", "IoU", "accuracy", "best epoch", "epochs", "images/s", "wall time",
           "paper IoU", "paper Dice", "paper accuracy")
# The method paper's Table I (pixel IoU, Dice, accuracy), as printed there.
PAPER_TABLE_I = {"unet": (0.528, 0.068, 0.94), "hot-unet": (0.522, 0.067, 0.94),
                 "hot-unet-weighted": (0.583, 0.092, 0.942), "hot-flow-unet": (0.22, 0.04, 0.889),
                 "hot-drop-unet": (0.098, 0.014, 0.879)}
PAPER_NOTE = ("The paper's Dice values lie below its IoU values, which no segmentation can give: "
              "Dice = 2·IoU / (1 + IoU) ≥ IoU; its columns are copied as printed.")


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m benchmarks.bench_variants",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="folder holding the competition data (passed to kit.train)")
    parser.add_argument("--out", type=Path, required=True, help="kit.train's output folder, shared by the variants")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="default: all five, in registry order")
    parser.add_argument("--table-only", action="store_true", help="tabulate OUT/NAME-metrics.csv, train nothing")
    parser.add_argument("train_args", nargs="*", metavar="-- KIT.TRAIN ARGS",
                        help="passed to every kit.train run (e.g. --epochs 10 --batch-size 8)")
    return parser


def main(args: argparse.Namespace) -> str:
    """Train (unless ``--table-only``), then print and write the table; returns it."""
    if not args.table_only:
        for name in args.variants:
            train_variant(name, args.data, args.out, args.train_args)
    table = format_table([variant_summary(args.out, name) for name in args.variants])
    write_text_atomic(args.out / "variants.md", table + "\n")
    print(table)
    return table


def train_variant(name: str, data_dir: Path | None, out: Path, train_args: Sequence[str]) -> float:
    """``python -m kit.train --variant NAME ...`` with its output in ``OUT/NAME-train.log``; returns seconds."""
    command = [sys.executable, "-m", "kit.train", "--variant", name, "--out", str(out), *train_args]
    if data_dir is not None:
        command += ["--data", str(data_dir)]
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / f"{name}-train.log"
    print(f"training {name}: {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    with open(log_path, "w") as log:
        done = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-5:]
        raise SystemExit(f"kit.train failed for {name} (exit {done.returncode}); see {log_path}:\n" + "\n".join(tail))
    print(f"  done in {seconds / 60:.1f} min", flush=True)
    return seconds


def variant_summary(out: Path, name: str) -> dict:
    """One table row from ``OUT/NAME-metrics.csv``: the best epoch (as kit.train picks it) and the run's speed."""
    path = out / f"{name}-metrics.csv"
    if not path.is_file():
        raise SystemExit(f"{path} not found: train {name} first (drop --table-only) or point --out at its run")
    metrics = pd.read_csv(path)
    if metrics.empty:
        raise SystemExit(f"{path} holds no epoch")
    best = max(metrics.to_dict("records"), key=run_folder.quality)  # the epoch whose weights NAME.pt holds
    return {"variant": name, "val score": best["val_score"], "Dice": best["val_dice"], "IoU": best["val_iou"],
            "accuracy": best["val_accuracy"], "best epoch": int(best["epoch"]), "epochs": int(metrics["epoch"].max()),
            "images/s": float(metrics["images_per_s"].median()), "wall time": float(metrics["elapsed_s"].iloc[-1])}


def format_table(rows: Sequence[dict]) -> str:
    """The rows as a markdown table (scores to 3 decimals, wall time as H:MM:SS) with the paper's
    Table I beside each of its variants, and the note on that table's Dice column."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        paper = PAPER_TABLE_I.get(row["variant"])
        cells = [row["variant"], *(f"{row[key]:.3f}" for key in ("val score", "Dice", "IoU", "accuracy")),
                 str(row["best epoch"]), str(row["epochs"]), f"{row['images/s']:.1f}", _hms(row["wall time"]),
                 *((f"{value:g}" for value in paper) if paper else ("not in the paper",) * 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", PAPER_NOTE])


def _hms(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


if __name__ == "__main__":
    run_cli("python -m benchmarks.bench_variants", main, get_args_parser().parse_args())
