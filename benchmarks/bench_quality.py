"""Model quality at a fixed wall-clock budget: the kit's variants beside Cellpose, one scorer.

    python -m benchmarks.bench_quality --data DIR --out runs/quality --budget 45 \\
        --variants hot-flow-unet-plus --peer cellpose --parallel --tune --tta
    python -m benchmarks.bench_quality --data DIR --out runs/quality --variants ... --table-only

Every entry trains on the kit's stratified 80/20 split of the images under ``--data`` for
``--budget`` minutes of wall-clock time (data loading and flow targets included): a kit variant
in its own ``python -m kit.train`` process (``--time-limit``; log, metrics CSV and curves PNG
in ``OUT/NAME/``), the peer in its own ``python -m benchmarks.peer_cellpose`` process. With
``--parallel`` the entries train side by side, each pinned to its own core with one thread, so
that they share the machine's state (and whatever else runs on it) alike.

Then the whole 520x704 validation images are predicted, the kit's through ``kit.infer``'s own
path (the inference kernel's code), Cellpose's through its own ``eval``, and every entry is scored
by ``score_instances``: the leaderboard score overall, per cell type and as the mean of the three
types' scores (the split is cort-heavy), the pixel Dice, IoU and accuracy of the instances'
union, the training images/s, the wall time and the weights file scored. ``--tune`` adds a row per
flow variant with ``kit.tune``'s per-type settings (fitted on the same validation images; a copy
of the weights), ``--tta`` a row with flip TTA. An entry whose outputs exist is not trained again.
The table goes to ``OUT/quality.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from benchmarks import run_cli
from kit import data, infer, metrics, models, postprocess, rle, tune
from kit.files import write_text_atomic
from kit.variants import VARIANTS

REPO = Path(__file__).resolve().parent.parent
PEERS = ("cellpose",)
COLUMNS = ("entry", "val score", "cort", "astro", "shsy5y", "type mean", "Dice", "IoU", "accuracy",
           "train images/s", "wall time", "weights")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_quality", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding the competition data")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "quality", help="one folder per entry")
    parser.add_argument("--budget", type=int, default=45, help="wall-clock minutes of training per entry")
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=["hot-flow-unet-plus"])
    parser.add_argument("--peer", nargs="*", choices=PEERS, default=[], help="peers trained the same way")
    parser.add_argument("--parallel", action="store_true", help="train the entries side by side, a core each")
    parser.add_argument("--cores", type=int, nargs="+", default=None,
                        help="with --parallel: the cores to pin the entries to, in turn (default: 0, 1, ...)")
    parser.add_argument("--crop", default=None, metavar="HxW",
                        help="kit.train --crop for the variants that train on whole images (a CPU budget needs crops)")
    parser.add_argument("--tune", action="store_true", help="add rows with kit.tune's per-type settings")
    parser.add_argument("--tta", action="store_true", help="add rows with flip test-time augmentation")
    parser.add_argument("--device", default="cpu", help="training and prediction device (default: cpu)")
    parser.add_argument("--table-only", action="store_true", help="score finished entries, train nothing")
    parser.add_argument("--max-val-images", type=int, default=None,
                        help="score only the first N validation images (smoke runs)")
    parser.add_argument("train_args", nargs="*", metavar="-- KIT.TRAIN ARGS",
                        help="passed to every kit.train run (smoke runs: --max-images 4 --crop 64x64)")
    return parser


def main(args: argparse.Namespace) -> str:
    """Train what is missing, score every entry, print and write the table; returns it."""
    entries = [*args.variants, *args.peer]
    if not entries:
        raise ValueError("nothing to measure: name --variants and/or --peer")
    if not args.table_only:
        train_entries(entries, args)
    layout = data.find_competition(args.data, need_test=False)
    train_df = data.read_train_csv(layout.train_csv)
    rows = []
    for entry in entries:
        rows += score_entry(entry, args, layout, train_df)
    table = format_table(rows, args.budget)
    write_text_atomic(args.out / "quality.md", table + "\n")
    print(table)
    return table


def train_entries(entries: Sequence[str], args: argparse.Namespace) -> None:
    """Start every entry whose outputs are missing (side by side with ``--parallel``), wait for all."""
    running = []
    for k, entry in enumerate(entries):
        folder = args.out / entry
        if _finished(entry, folder):
            print(f"{entry}: already trained in {folder}")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        command, env = _command(entry, args, folder), dict(os.environ)
        if args.parallel:
            cores = args.cores or list(range(os.cpu_count()))
            command = ["taskset", "-c", str(cores[k % len(cores)]), *command]
            env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        print(f"{entry}: {' '.join(command)}", flush=True)
        log = open(folder / "log.txt", "w")
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        running.append((entry, process, log, time.monotonic()))
        if not args.parallel:
            _wait(*running.pop())
    for item in running:
        _wait(*item)


def score_entry(entry: str, args: argparse.Namespace, layout: data.CompetitionLayout,
                train_df: pd.DataFrame) -> list[dict]:
    """The table rows of one entry: plain, then ``--tune`` and ``--tta`` where they apply."""
    folder = args.out / entry
    table = data.image_table(train_df)
    cell_types = dict(zip(table["id"], table["cell_type"]))
    val_ids = data.split_train_val(table)[1][: args.max_val_images]
    truth = train_df.groupby("id")["annotation"].apply(list)
    truth = {image_id: truth[image_id] for image_id in val_ids}
    types = {image_id: cell_types[image_id] for image_id in val_ids}
    if entry in PEERS:
        run = json.loads((folder / "run.json").read_text())
        with np.load(folder / "val-labels.npz") as saved:
            labels = {image_id: saved[image_id] for image_id in val_ids}
        return [_row(entry, score_instances(labels, truth, types), run["train_images_per_s"], run["wall_s"],
                     run["weights"])]
    weights = folder / f"{entry}.pt"
    history = pd.read_csv(folder / f"{entry}-metrics.csv")
    speed, wall = float(history["images_per_s"].median()), _wall_seconds(folder)
    device = models.resolve_device(args.device)
    ensemble = infer.load_ensemble([weights], device)
    paths = {image_id: layout.train_dir / f"{image_id}.png" for image_id in val_ids}
    # kit.infer's path, its network run once: the plain and the tuned rows differ only in the extraction.
    outputs = tune.predict_outputs(ensemble, paths, types, device)
    config = postprocess.PostprocessConfig().with_tuned(ensemble[0].settings.get("postprocess"))
    name = entry
    rows = [_row(name, score_instances(_extract(outputs, paths, types, config), truth, types), speed, wall, weights)]
    if args.tune and VARIANTS[entry].target == "flow":
        tuned, report = tune.fit_settings(outputs, truth, types)
        print(report)
        weights, name = folder / f"{entry}-tuned.pt", f"{entry} + tuned per-type settings"
        tune.save_tuned(folder / f"{entry}.pt", weights, tuned)
        config = postprocess.PostprocessConfig().with_tuned(tuned)
        rows.append(_row(name, score_instances(_extract(outputs, paths, types, config), truth, types),
                         speed, wall, weights))
    if args.tta:
        flipped = tune.predict_outputs(ensemble, paths, types, device, tta=True)
        rows.append(_row(f"{name} + flip TTA", score_instances(_extract(flipped, paths, types, config), truth, types),
                         speed, wall, weights))
    return rows


def score_instances(labels: Mapping[str, np.ndarray], truth: Mapping[str, Sequence[str]],
                    cell_types: Mapping[str, str]) -> dict[str, float]:
    """The one scorer of every entry: leaderboard score overall, per type, the types' mean, and
    the pixel Dice / IoU / accuracy of the instances' union against the annotations' union
    (means over images). ``labels``: int[H, W] per image id; ``truth``: its annotation RLEs."""
    ids = list(truth)
    missing = sorted(set(ids) - set(labels))
    if missing:
        raise ValueError(f"no prediction for {len(missing)} validation image(s), e.g. {missing[0]}")
    scores = pd.Series(metrics.score_labels([truth[i] for i in ids], [labels[i] for i in ids]), index=ids)
    pixel = pd.DataFrame([metrics.pixel_metrics(_union(truth[i], labels[i].shape), labels[i] > 0) for i in ids])
    per_type = scores.groupby(pd.Series(cell_types)[ids]).mean()
    return {"val score": float(scores.mean()), **per_type.to_dict(), "type mean": float(per_type.mean()),
            "Dice": float(pixel["dice"].mean()), "IoU": float(pixel["iou"].mean()),
            "accuracy": float(pixel["accuracy"].mean())}


def format_table(rows: Sequence[Mapping], budget: int) -> str:
    lines = [f"Budget: {budget} minutes of training per entry; whole validation images, one scorer.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [row["entry"], *(_number(row.get(c), 4) for c in COLUMNS[1:6]),
                 *(_number(row.get(c), 3) for c in COLUMNS[6:9]),
                 f"{row['train images/s']:.2f}", _clock(row["wall time"]), f"`{row['weights']}`"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _command(entry: str, args: argparse.Namespace, folder: Path) -> list[str]:
    if entry in PEERS:
        return [sys.executable, "-m", "benchmarks.peer_cellpose", "--data", str(args.data), "--out", str(folder),
                "--budget", str(args.budget), *(["--threads", "1"] if args.parallel else [])]
    crop = ["--crop", args.crop] if args.crop and not VARIANTS[entry].crop_size else []
    return [sys.executable, "-m", "kit.train", "--variant", entry, "--data", str(args.data), "--out", str(folder),
            "--time-limit", f"{args.budget // 60}:{args.budget % 60:02d}", "--device", args.device, *crop,
            *args.train_args]


def _finished(entry: str, folder: Path) -> bool:
    if entry in PEERS:
        return (folder / "run.json").is_file()
    return (folder / f"{entry}.pt").is_file() and (folder / "wall.json").is_file()


def _wait(entry: str, process: subprocess.Popen, log, started: float) -> None:
    code = process.wait()
    log.close()
    folder = Path(log.name).parent
    if code != 0:
        tail = Path(log.name).read_text().strip().splitlines()[-5:]
        raise SystemExit(f"{entry} failed (exit {code}); see {log.name}:\n" + "\n".join(tail))
    if entry not in PEERS:
        write_text_atomic(folder / "wall.json", json.dumps({"wall_s": time.monotonic() - started}) + "\n")


def _wall_seconds(folder: Path) -> float:
    return float(json.loads((folder / "wall.json").read_text())["wall_s"])


def _extract(outputs: Mapping[str, tuple], paths: Mapping[str, Path], types: Mapping[str, str],
             config: postprocess.PostprocessConfig) -> dict[str, np.ndarray]:
    """Instances from saved network outputs by ``kit.infer``'s extraction (``output_to_labels``)."""
    return {image_id: postprocess.output_to_labels(prob, flow, data.load_image(paths[image_id]), types[image_id],
                                                   config) for image_id, (prob, flow) in outputs.items()}


def _union(annotations: Sequence[str], shape) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for annotation in annotations:
        mask |= rle.decode(annotation, shape)
    return mask


def _row(entry: str, scores: Mapping[str, float], images_per_s: float, wall_s: float, weights) -> dict:
    return {"entry": entry, **scores, "train images/s": images_per_s, "wall time": wall_s,
            "weights": os.path.relpath(weights, REPO)}


def _number(value: float | None, digits: int) -> str:
    """A table cell; a cell type without validation images here is "n/a"."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def _clock(seconds: float) -> str:
    minutes = int(round(seconds / 60))
    return f"{minutes // 60}:{minutes % 60:02d}"


if __name__ == "__main__":
    run_cli("python -m benchmarks.bench_quality", main, get_args_parser().parse_args())
