"""A training run's folder: the guards before any work (writable, room for the checkpoints, an
earlier run continued, moved aside or refused) and what each epoch leaves there: ``NAME.pt`` (best
weights), ``NAME-last.pt`` (resumable), ``NAME-metrics.csv``, ``NAME-curves.png``; and its log lines."""
from __future__ import annotations

import csv
import io
import logging
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from kit.cli import format_time_limit
from kit.files import (check_free_space, check_writable_dir, guard_existing_run,
                       remove_stale_temporaries, save_png, write_text_atomic)
from kit.model.checkpoints import checkpoint_bytes, save_checkpoint
from kit.model.variants import Variant
from kit.training.stage_options import FINETUNE

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "val_iou", "val_accuracy", "val_score",
                  "lr", "images_per_s", "epoch_s", "elapsed_s", "stage", "steps")
# Written as they are; the value is what a row of an older kit (no stage, no steps) gets.
_TEXT_COLUMNS = {"epoch": None, "stage": FINETUNE, "steps": ""}


def best_weights(out: Path, name: str) -> Path:
    """``OUT/NAME.pt``: the weights of the run's best epoch (what ``kit.infer`` takes)."""
    return out / f"{name}.pt"


def last_checkpoint(out: Path, name: str) -> Path:
    """``OUT/NAME-last.pt``: the resumable checkpoint of the run's last epoch."""
    return out / f"{name}-last.pt"


def step_weights(out: Path, name: str, steps: int) -> Path:
    """``OUT/NAME-stepN.pt``: the weights after N optimiser steps (``kit.train --keep-steps``)."""
    return out / f"{name}-step{steps}.pt"


def run_files(name: str) -> list[str]:
    """The files a run of variant ``name`` writes in ``--out``."""
    return [best_weights(Path(), name).name, last_checkpoint(Path(), name).name, f"{name}-metrics.csv",
            f"{name}-curves.png"]


def prepare_out(out: Path, variant: Variant, resume: bool, restart: bool) -> None:
    """Before any work: ``out`` writable and with room for the checkpoints, no temporaries of a killed
    save left, and an earlier run there continued (``resume``), moved aside (``restart``) or refused."""
    if resume and restart:
        raise ValueError("--resume continues the run in --out and --restart starts afresh: pass one of them")
    check_writable_dir(out)
    names = run_files(variant.name)
    for path in remove_stale_temporaries(out, names):
        logger.info(f"removed {path}: a partial file left by a save that was killed")
    if not last_checkpoint(out, variant.name).is_file():  # found now, not after the images and flow targets are loaded
        _refuse_without_checkpoint(out, variant.name, resume, restart)
    if not resume:
        kept = guard_existing_run(out, names, restart)
        if kept is not None:
            logger.info(f"--restart: the earlier {variant.name} run's files were moved to {kept}")
    check_free_space(out, checkpoint_space(out, variant),
                     f"the checkpoints {' and '.join(run_files(variant.name)[:2])} and the temporary copy a "
                     "save writes beside them")


def _refuse_without_checkpoint(out: Path, name: str, resume: bool, restart: bool) -> None:
    """No ``NAME-last.pt``: nothing to resume. When files of the run are there all the same (a run stopped
    in its first epoch), only ``--restart`` can go on; both refusals say so."""
    left = [n for n in run_files(name) if (out / n).exists()]
    if resume and not left:
        raise FileNotFoundError(f"--resume: no checkpoint {last_checkpoint(out, name)}; run without --resume to "
                                "start training")
    if left and not restart:
        raise FileExistsError(f"{out} holds a {name} run that finished no epoch ({', '.join(left)}, no "
                              f"{last_checkpoint(out, name).name}), so it cannot be resumed: run again with --restart "
                              "instead"
                              f"{' of --resume' if resume else ''} (its files are moved to {out / 'previous'}/), "
                              "or pass another --out")


def checkpoint_space(out: Path, variant: Variant) -> int:
    """Bytes a run's saves may still need in ``out``: the best weights, the resumable checkpoint and the
    temporary copy of the larger that a save writes beside it (``kit.files.atomic_output``), less what
    those two files already take (a resumed run replaces them)."""
    largest = checkpoint_bytes(variant)
    present = sum(path.stat().st_size for path in (best_weights(out, variant.name), last_checkpoint(out, variant.name))
                  if path.is_file())
    return max(3 * largest - present, largest)


def finish_epoch(row: dict, state, epoch_start: float) -> None:
    """Record the epoch in ``state.history`` (a ``kit.training.config.TrainingState``); write the best
    weights (if best), the resumable checkpoint, the CSV and the curves."""
    history, variant, out = state.history, state.variant, state.out
    row["epoch_s"] = time.monotonic() - epoch_start
    row["elapsed_s"] = row["epoch_s"] + (history[-1]["elapsed_s"] if history else 0.0)
    history.append(row)
    best = max(history, key=quality)
    if best is row:
        save_checkpoint(best_weights(out, variant.name), state.raw_model, variant, epoch=row["epoch"],
                               best_score=row["val_score"], history=history, inference=state.inference,
                               stages=state.stage_records)
    save_checkpoint(last_checkpoint(out, variant.name), state.raw_model, variant, optimizer=state.optimizer,
                           scheduler=state.scheduler, scaler=state.scaler, epoch=row["epoch"],
                           best_score=best["val_score"], history=history, inference=state.inference,
                           stages=state.stage_records)
    write_metrics(out / f"{variant.name}-metrics.csv", history)
    plot_curves(out / f"{variant.name}-curves.png", history, variant.name)


def quality(row: dict) -> tuple[float, float]:
    """Best = highest validation score, then lowest validation loss; NaN ranks last."""
    score, loss = row["val_score"], row["val_loss"]
    return (score if math.isfinite(score) else -math.inf, -loss if math.isfinite(loss) else -math.inf)


def progress_line(row: dict, epochs: int, epoch_seconds: Sequence[float], budget_left: float = math.inf) -> str:
    """One epoch's line; its ETA is the remaining epochs' time or, when sooner, the time limit's end
    (a budgeted run of 200 epochs stops long before they would end)."""
    epochs_left = (epochs - row["epoch"]) * float(np.mean(epoch_seconds))
    eta = max(min(epochs_left, budget_left), 0.0)
    until = " (time limit)" if budget_left < epochs_left else ""
    stage = "" if row.get("stage", FINETUNE) == FINETUNE else f"{row['stage']} "
    return (f"{stage}epoch {row['epoch']}/{epochs}  train {row['train_loss']:.4f}  val {row['val_loss']:.4f}  "
            f"dice {row['val_dice']:.3f}  iou {row['val_iou']:.3f}  acc {row['val_accuracy']:.3f}  "
            f"score {row['val_score']:.4f}  lr {row['lr']:.2e}  {row['images_per_s']:.1f} img/s  "
            f"{row['epoch_s']:.0f}s  ETA {clock(eta)}{until}")


def clock(seconds: float) -> str:
    """``H:MM`` from a minute on, else whole seconds."""
    return format_time_limit(round(seconds)) if seconds >= 60 else f"{seconds:.0f}s"


def write_metrics(path: Path, history: Sequence[dict]) -> None:
    """``NAME-metrics.csv``: one row per epoch in ``METRIC_COLUMNS``, written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    for row in history:
        writer.writerow([row.get(c, _TEXT_COLUMNS[c]) if c in _TEXT_COLUMNS else f"{row[c]:.6g}"
                         for c in METRIC_COLUMNS])
    write_text_atomic(path, buffer.getvalue())


def plot_curves(path: Path, history: Sequence[dict], title: str) -> None:
    """Loss, validation scores, learning rate and images/s per epoch; a dashed line marks the best epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    best = max(history, key=quality)["epoch"]
    figure = Figure(figsize=(10, 7))
    FigureCanvasAgg(figure)
    panels = {"loss": ("train_loss", "val_loss"), "validation": ("val_dice", "val_iou", "val_accuracy", "val_score"),
              "learning rate": ("lr",), "throughput": ("images_per_s",)}
    for axes, (name, keys) in zip(figure.subplots(2, 2).flat, panels.items()):
        for key in keys:
            axes.plot(epochs, [row[key] for row in history], marker=".", label=key)
        axes.axvline(best, color="grey", linestyle="--", linewidth=1, label=f"best epoch {best}")
        axes.set_xlabel("epoch")
        axes.set_title(f"{title}: {name}")
        axes.legend(fontsize="small")
    figure.tight_layout()
    save_png(figure, path)
