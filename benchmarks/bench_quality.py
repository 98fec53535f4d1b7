"""Model quality at a fixed wall-clock budget: the kit's variants beside Cellpose, one scorer.

    python -m benchmarks.bench_quality --data DIR --out runs/quality --budget 45 \\
        --variants hot-flow-unet-plus --peer cellpose --parallel --tune --tta
    python -m benchmarks.bench_quality --data DIR --out runs/ablation --budget 15 --parallel \\
        --lever "native-scale=--cell-diameter 0" "sgd=--optimizer sgd --lr 0.2" --tta hot-flow-unet-plus
    python -m benchmarks.bench_quality --data DIR --out runs/quality --variants ... --table-only

Every entry trains on the kit's stratified 80/20 split of the images under ``--data`` for
``--budget`` minutes of wall-clock time (data loading and flow targets included): a kit variant
in its own ``python -m kit.train`` process (``--time-limit``; log, metrics CSV and curves PNG
in ``OUT/NAME/``), the peer in its own ``python -m benchmarks.peer_cellpose`` process. With
``--parallel`` the entries train side by side, each pinned to its own core with one thread, so
that they share the machine's state (and whatever else runs on it) alike; there are never more
entries running than cores, and a freed core takes the next entry. ``--lever NAME="ARGS"`` adds an
ablation entry: the ``--lever-base`` variant (the recipe) trained with those extra ``kit.train``
arguments, one lever at a time.

Then the whole 520x704 validation images are predicted, the kit's through ``kit.infer``'s own
path (the inference kernel's code), Cellpose's through its own ``eval``, and every entry is scored
by ``score_instances``: the leaderboard score overall, per cell type and as the mean of the three
types' scores (the split is cort-heavy), the pixel Dice, IoU and accuracy of the instances'
union, the training images/s, the wall time and the weights file scored. ``--tune`` adds a row per
flow variant with ``kit.tune``'s per-type settings (fitted on the same validation images; a copy
of the weights), ``--tta`` a row with flip TTA, ``--boundary-lut FILE`` a row per mask variant
with that boundary-tuning table (the paper's post-processing, its Table II); ``--tune`` and
``--tta`` take entry names to limit them to (bare: every entry). An entry whose outputs exist is
not trained again, an entry scored before from the same files is not scored again
(``OUT/NAME/rows.json``). The table goes to ``OUT/quality.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from benchmarks import run_cli
from kit import cli, metrics, postprocess, rle
from kit.data import sartorius
from kit.files import write_text_atomic
from kit.inference import tuning
from kit.inference.ensemble import load_ensemble
from kit.inference.image_sets import annotated_images
from kit.model import hardware
from kit.model.variants import RECIPE, VARIANTS

REPO = Path(__file__).resolve().parent.parent
PEERS = ("cellpose",)
COLUMNS = ("entry", "val score", "cort", "astro", "shsy5y", "type mean", "Dice", "IoU", "accuracy",
           "train images/s", "wall time", "weights")


class Entry(NamedTuple):
    """One row's training: a kit variant (with a lever's extra ``kit.train`` arguments) or a peer."""
    name: str  # also its folder below --out
    variant: str | None  # None: a peer
    train_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class QualityConfig:
    """One benchmark run as the command line asks for it (``quality_config``); the helpers take this."""

    data: Path
    out: Path
    budget: int  # training minutes per entry
    variants: tuple[str, ...]
    peer: tuple[str, ...]
    lever: tuple[tuple[str, tuple[str, ...]], ...]  # (entry name, extra kit.train arguments)
    lever_base: str
    parallel: bool
    cores: tuple[int, ...] | None
    crop: str | None
    tune: tuple[str, ...] | None  # None: no tuned rows; empty: every flow entry
    tta: tuple[str, ...] | None  # None: no TTA rows; empty: every kit entry
    boundary_lut: Path | None
    device: str
    table_only: bool
    max_val_images: int | None
    train_args: tuple[str, ...]


class Validation(NamedTuple):
    """The validation images every entry is scored on, keyed by image id."""
    paths: dict[str, Path]  # the PNGs
    truth: dict[str, list[str]]  # their annotations' RLEs
    types: dict[str, str]  # their cell types


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m benchmarks.bench_quality", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding the competition data")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "quality", help="one folder per entry")
    parser.add_argument("--budget", type=int, default=45, help="wall-clock minutes of training per entry")
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=["hot-flow-unet-plus"])
    parser.add_argument("--peer", nargs="*", choices=PEERS, default=[], help="peers trained the same way")
    parser.add_argument("--lever", nargs="+", default=[], metavar='NAME="ARGS"', type=_lever,
                        help='ablation entries: the --lever-base variant trained with these extra kit.train '
                             'arguments, e.g. "crop-384=--crop 384x384"')
    parser.add_argument("--lever-base", choices=list(VARIANTS), default=RECIPE,
                        help=f"the variant each lever changes (default: {RECIPE})")
    parser.add_argument("--parallel", action="store_true",
                        help="train the entries side by side, a core each (never more at once than cores)")
    parser.add_argument("--cores", type=int, nargs="+", default=None,
                        help="with --parallel: the cores to pin the entries to, in turn (default: 0, 1, ...)")
    parser.add_argument("--crop", default=None, metavar="HxW",
                        help="kit.train --crop for the variants that train on whole images (a CPU budget needs crops)")
    parser.add_argument("--tune", nargs="*", default=None, metavar="ENTRY",
                        help="add rows with kit.tune's per-type settings (for these entries; bare: every flow entry)")
    parser.add_argument("--tta", nargs="*", default=None, metavar="ENTRY",
                        help="add rows with flip test-time augmentation (for these entries; bare: every kit "
                             "entry; each costs four predictions of the validation images)")
    parser.add_argument("--boundary-lut", type=Path, default=None, metavar="FILE",
                        help="add a row per mask variant with this boundary-tuning table "
                             "(from python -m kit.boundary_table fit; the paper's Table II)")
    parser.add_argument("--device", default="cpu", help="training and prediction device (default: cpu)")
    parser.add_argument("--table-only", action="store_true", help="score finished entries, train nothing")
    parser.add_argument("--max-val-images", type=int, default=None,
                        help="score only the first N validation images (smoke runs)")
    parser.add_argument("train_args", nargs="*", metavar="-- KIT.TRAIN ARGS",
                        help="passed to every kit.train run (smoke runs: --max-images 4 --crop 64x64)")
    return parser


def main(args: argparse.Namespace) -> str:
    """Train what is missing, score every entry, print and write the table; returns it."""
    config = quality_config(args)
    entries = plan_entries(config)
    if config.boundary_lut is not None:
        postprocess.load_boundary_lut(config.boundary_lut)  # a missing or bad table fails before any training
    if not config.table_only:
        train_entries(entries, config)
    validation = validation_set(config.data, config.max_val_images)
    rows = []
    for entry in entries:
        rows += scored_rows(entry, config, validation)
    table = format_table(rows, config.budget)
    write_text_atomic(config.out / "quality.md", table + "\n")
    print(table)
    return table


def quality_config(args: argparse.Namespace) -> QualityConfig:
    """The frozen settings of a run from the parsed command line."""
    return QualityConfig(data=args.data, out=args.out, budget=args.budget, variants=tuple(args.variants),
                         peer=tuple(args.peer), lever=tuple(args.lever), lever_base=args.lever_base,
                         parallel=args.parallel, cores=None if args.cores is None else tuple(args.cores),
                         crop=args.crop, tune=None if args.tune is None else tuple(args.tune),
                         tta=None if args.tta is None else tuple(args.tta), boundary_lut=args.boundary_lut,
                         device=args.device, table_only=args.table_only, max_val_images=args.max_val_images,
                         train_args=tuple(args.train_args))


def plan_entries(config: QualityConfig) -> list[Entry]:
    """The variants, then the levers, then the peers; a clear error for a clash or an empty plan."""
    entries = [Entry(name, name) for name in config.variants]
    entries += [Entry(name, config.lever_base, extra) for name, extra in config.lever]
    entries += [Entry(name, None) for name in config.peer]
    if not entries:
        raise ValueError("nothing to measure: name --variants, --lever and/or --peer")
    names = [entry.name for entry in entries]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise ValueError(f"entry name(s) {', '.join(clashes)} given twice: each entry needs its own folder; "
                         "rename the lever")
    for option in ("tune", "tta"):
        unknown = sorted(set(getattr(config, option) or ()) - set(names))
        if unknown:
            raise ValueError(f"--{option} {' '.join(unknown)}: not an entry of this run ({', '.join(names)})")
    return entries


def train_entries(entries: Sequence[Entry], config: QualityConfig) -> None:
    """Start every entry whose outputs are missing and wait for all. With ``--parallel`` one per
    core, pinned, one thread each, and a freed core takes the next entry; else one after another."""
    cores = (config.cores or list(range(os.cpu_count()))) if config.parallel else [None]
    waiting = []
    for entry in entries:
        folder = config.out / entry.name
        if _finished(entry, folder):
            print(f"{entry.name}: already trained in {folder}")
        else:
            waiting.append(entry)
    running: dict[int, tuple] = {}  # slot (an index into cores) -> its entry's process
    while waiting or running:
        for slot in [k for k in range(len(cores)) if k not in running][: len(waiting)]:
            running[slot] = _start(waiting.pop(0), config, cores[slot])
        finished = [slot for slot, item in running.items() if item[1].poll() is not None]
        for slot in finished:
            _wait(*running.pop(slot))
        if not finished:
            time.sleep(2)


def validation_set(data_dir: Path, max_images: int | None) -> Validation:
    """The kit's validation split (its first ``max_images``), read once for every entry."""
    return Validation(*annotated_images(data_dir, "val", max_images))


def scored_rows(entry: Entry, config: QualityConfig, validation: Validation) -> list[dict]:
    """``score_entry``'s rows, kept in ``OUT/NAME/rows.json`` with what they were scored from (the
    weights or masks file's size and time, the rows asked for), so that printing the table again,
    or with entries scored by other processes, costs no prediction; anything changed scores anew."""
    path = config.out / entry.name / "rows.json"
    key = _score_key(entry, config)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            print(f"{entry.name}: scored before, rows read from {path}")
            return saved["rows"]
    rows = score_entry(entry, config, validation)
    write_text_atomic(path, json.dumps({"key": key, "rows": rows}, indent=1) + "\n")
    return rows


def score_entry(entry: Entry, config: QualityConfig, validation: Validation) -> list[dict]:
    """The table rows of one entry: plain, then ``--tune``, ``--boundary-lut`` and ``--tta`` where
    they apply."""
    folder = config.out / entry.name
    paths, truth, types = validation
    if entry.variant is None:
        run = json.loads((folder / "run.json").read_text())
        with np.load(folder / "val-labels.npz") as saved:
            labels = {image_id: saved[image_id] for image_id in truth}
        return [_row(entry.name, score_instances(labels, truth, types), run["train_images_per_s"], run["wall_s"],
                     run["weights"])]
    weights = folder / f"{entry.variant}.pt"
    history = pd.read_csv(folder / f"{entry.variant}-metrics.csv")
    speed, wall = float(history["images_per_s"].median()), _wall_seconds(folder)
    device = hardware.resolve_device(config.device)
    ensemble = load_ensemble([weights], device)

    def row(name: str, outputs, extraction: postprocess.PostprocessConfig, scored_weights: Path) -> dict:
        labels = _extract(outputs, paths, types, extraction)
        return _row(name, score_instances(labels, truth, types), speed, wall, scored_weights)

    # kit.infer's path, its network run once: the rows below differ only in the extraction.
    outputs = tuning.predict_outputs(ensemble, paths, types, device)
    extraction = postprocess.PostprocessConfig().with_tuned(ensemble[0].settings.postprocess)
    name, rows = entry.name, [row(entry.name, outputs, extraction, weights)]
    if _tuned_row(entry, config):
        fit = tuning.fit_settings(outputs, truth, types)
        print(fit.report)
        weights, name = folder / f"{entry.variant}-tuned.pt", f"{entry.name} + tuned per-type settings"
        tuning.save_tuned(folder / f"{entry.variant}.pt", weights, fit.settings,
                        tuning.validation_record(fit, list(paths), "val", tta=False))
        extraction = postprocess.PostprocessConfig().with_tuned(fit.settings)
        rows.append(row(name, outputs, extraction, weights))
    if _boundary_row(entry, config):
        lut = postprocess.load_boundary_lut(config.boundary_lut)
        rows.append(row(f"{entry.name} + boundary tuning", outputs,
                        dataclasses.replace(extraction, boundary=lut), weights))
    if _asked(config.tta, entry):
        flipped = tuning.predict_outputs(ensemble, paths, types, device, tta=True)
        rows.append(row(f"{name} + flip TTA", flipped, extraction, weights))
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


def _lever(text: str) -> tuple[str, tuple[str, ...]]:
    """``NAME=ARGS`` (argparse type of ``--lever``)."""
    name, sep, extra = text.partition("=")
    if not sep or not name.strip() or not extra.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: write a lever as NAME=\"KIT.TRAIN ARGS\", "
                                         "e.g. \"crop-384=--crop 384x384\"")
    return name.strip(), tuple(shlex.split(extra))


def _score_key(entry: Entry, config: QualityConfig) -> dict:
    """What an entry's rows depend on besides the data: the scored file and the rows asked for that
    apply to it (a boundary table changes only mask variants' rows, --tune only flow variants')."""
    folder = config.out / entry.name
    scored = folder / ("val-labels.npz" if entry.variant is None else f"{entry.variant}.pt")
    files = [scored] + ([config.boundary_lut] if _boundary_row(entry, config) else [])
    return {"files": [[os.path.abspath(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
            "tune": _tuned_row(entry, config), "tta": entry.variant is not None and _asked(config.tta, entry),
            "max_val_images": config.max_val_images, "device": config.device}


def _tuned_row(entry: Entry, config: QualityConfig) -> bool:
    """Whether the entry gets a ``kit.tune`` row: flow variants asked for by ``--tune``."""
    return entry.variant is not None and VARIANTS[entry.variant].target == "flow" and _asked(config.tune, entry)


def _boundary_row(entry: Entry, config: QualityConfig) -> bool:
    """Whether the entry gets a boundary-tuning row: mask variants, when ``--boundary-lut`` is given."""
    return entry.variant is not None and VARIANTS[entry.variant].target == "mask" and config.boundary_lut is not None


def _asked(names: Sequence[str] | None, entry: Entry) -> bool:
    """Whether ``--tune`` / ``--tta`` (absent: None; bare: every entry) covers this entry."""
    return names is not None and (not names or entry.name in names)


def _start(entry: Entry, config: QualityConfig, core: int | None) -> tuple:
    folder = config.out / entry.name
    folder.mkdir(parents=True, exist_ok=True)
    command, env = _command(entry, config, folder), dict(os.environ)
    if core is not None:
        command = ["taskset", "-c", str(core), *command]
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    print(f"{entry.name}: {' '.join(command)}", flush=True)
    log = open(folder / "log.txt", "w")
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    return entry, process, log, time.monotonic()


def _command(entry: Entry, config: QualityConfig, folder: Path) -> list[str]:
    if entry.variant is None:
        return [sys.executable, "-m", "benchmarks.peer_cellpose", "--data", str(config.data), "--out", str(folder),
                "--budget", str(config.budget), *(["--threads", "1"] if config.parallel else [])]
    crop = ["--crop", config.crop] if config.crop and not VARIANTS[entry.variant].crop_size else []
    return [sys.executable, "-m", "kit.train", "--variant", entry.variant, "--data", str(config.data),
            "--out", str(folder), "--time-limit", f"{config.budget // 60}:{config.budget % 60:02d}",
            "--device", config.device, *crop, *config.train_args, *entry.train_args]


def _finished(entry: Entry, folder: Path) -> bool:
    if entry.variant is None:
        return (folder / "run.json").is_file()
    return (folder / f"{entry.variant}.pt").is_file() and (folder / "wall.json").is_file()


def _wait(entry: Entry, process: subprocess.Popen, log, started: float) -> None:
    code = process.wait()
    log.close()
    folder = Path(log.name).parent
    if code != 0:
        tail = Path(log.name).read_text().strip().splitlines()[-5:]
        raise SystemExit(f"{entry.name} failed (exit {code}); see {log.name}:\n" + "\n".join(tail))
    print(f"{entry.name}: done in {_clock(time.monotonic() - started)}", flush=True)
    if entry.variant is not None:
        write_text_atomic(folder / "wall.json", json.dumps({"wall_s": time.monotonic() - started}) + "\n")


def _wall_seconds(folder: Path) -> float:
    return float(json.loads((folder / "wall.json").read_text())["wall_s"])


def _extract(outputs: Mapping[str, tuple], paths: Mapping[str, Path], types: Mapping[str, str],
             extraction: postprocess.PostprocessConfig) -> dict[str, np.ndarray]:
    """Instances from saved network outputs by ``kit.infer``'s extraction (``output_to_labels``)."""
    return {image_id: postprocess.output_to_labels(prob, flow, sartorius.load_image(paths[image_id]), types[image_id],
                                                   extraction) for image_id, (prob, flow) in outputs.items()}


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
