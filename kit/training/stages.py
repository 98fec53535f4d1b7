"""Training in stages, one checkpoint for all: LIVECell pretraining, fine-tuning on the competition's
images (with ``--extra-data`` pseudo-labels beside them), and pseudo-label rounds.

``python -m kit.train --variant NAME --pretrain livecell[:LINES] ...`` first trains on LIVECell
(``--pretrain-epochs``, within ``--pretrain-time-limit``), then fine-tunes on the competition's
training split from the pretrained weights with a fresh optimizer and lr schedule (``--epochs``,
within ``--time-limit``). A later ``--resume --extra-data FILE.csv`` whose pseudo-labels the run has
not trained on starts a pseudo-label round: the next stage, ``pseudo-1``, ``pseudo-2``, ..., again
from the last weights with a fresh schedule, for ``--epochs`` epochs within ``--time-limit``.

Every stage validates on the competition's validation split, so its rows compare with the others.
Epochs are numbered through the stages; each metrics row names its ``stage``, and the checkpoints
(``NAME.pt``, ``NAME-last.pt``) keep every stage's rows in ``history`` and the stages themselves in
``stages`` (name, first epoch, epochs, data). ``--resume`` continues whichever stage the last
checkpoint is in with its optimizer and schedule, or starts the next one when that stage is done.
A stage's time limit counts its own training time, resumed sessions included.

LIVECell's lines in the one-hot variants: SH-SY5Y is the competition's shsy5y line and gets its plane;
the seven others have no competition type and get all-zero planes (``kit.models.model_input``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from kit import data, livecell, models, pseudo
from kit.competition import DEFAULT_PRETRAIN_EPOCHS

PRETRAIN = "pretrain"
FINETUNE = "finetune"
PSEUDO = "pseudo-"


@dataclass(frozen=True)
class Stage:
    """One stage of a run: its name, epochs ``first_epoch`` .. ``last_epoch`` (numbered through the
    stages), its training-time limit in seconds, its data, and whether it starts now from the
    previous stage's weights (``fresh``) or continues from ``NAME-last.pt`` with its optimizer."""

    name: str
    first_epoch: int
    epochs: int
    time_limit: float
    pretrain_lines: tuple[str, ...] | None = None  # pretrain: LIVECell lines (None: all, from the COCO files)
    pretrain_max_images: int | None = None
    extra_data: tuple[str, ...] = ()  # pseudo-label CSVs trained on beside the split (kit.pseudo)
    fresh: bool = True
    read_summary: tuple[str, ...] = ()  # pretrain: each LIVECell file's summary line (kit.livecell.ReadSummary)

    @property
    def last_epoch(self) -> int:
        return self.first_epoch + self.epochs - 1

    def record(self) -> dict:
        """What the checkpoint keeps of the stage (``stages``)."""
        source = "livecell" if self.pretrain_lines is None else "livecell:" + ",".join(self.pretrain_lines)
        record = {"name": self.name, "first_epoch": self.first_epoch, "epochs": self.epochs,
                  "data": source if self.name == PRETRAIN else "competition",
                  "extra_data": [Path(p).name for p in self.extra_data], "max_images": self.pretrain_max_images}
        return {**record, "livecell_read": list(self.read_summary)} if self.name == PRETRAIN else record


@dataclass(frozen=True)
class StageRequest:
    """The command line's stage options (``kit.train --pretrain ... --extra-data ...``)."""

    pretrain: tuple[str, ...] | None | bool = False  # False: no pretraining; None: all LIVECell lines
    pretrain_epochs: int = DEFAULT_PRETRAIN_EPOCHS
    pretrain_time_limit: float = 0.0
    pretrain_max_images: int | None = None
    extra_data: tuple[str, ...] = ()
    epochs: int = 50
    time_limit: float = 0.0


def next_stage(request: StageRequest, checkpoint: dict | None) -> Stage | None:
    """The stage to train now, given the run's last checkpoint (None: a new run); None when the
    current stage has all its epochs and nothing new is asked for."""
    if checkpoint is None:
        return _first_stage(request)
    history = checkpoint.get("history", [])
    records = checkpoint.get("stages") or [{"name": FINETUNE, "first_epoch": 1, "extra_data": []}]
    current = records[-1]
    done = sum(1 for row in history if row.get("stage", FINETUNE) == current["name"])
    following = len(history) + 1
    if current["name"] == PRETRAIN:
        if done < current["epochs"]:  # as it began, in the time the command line gives it now
            return Stage(PRETRAIN, current["first_epoch"], current["epochs"], request.pretrain_time_limit,
                         _lines(current), current.get("max_images"), fresh=False)
        return fine_tuning_after(request, checkpoint)
    trained = set(current.get("extra_data", []))
    if request.extra_data and {Path(p).name for p in request.extra_data} != trained:
        rounds = sum(1 for r in records if r["name"].startswith(PSEUDO))
        return Stage(f"{PSEUDO}{rounds + 1}", following, request.epochs, request.time_limit,
                     extra_data=request.extra_data)
    if done < request.epochs:
        extra = request.extra_data or _same_files(current)
        return Stage(current["name"], current["first_epoch"], request.epochs, request.time_limit,
                     extra_data=extra, fresh=False)
    return None


def fine_tuning_after(request: StageRequest, checkpoint: dict) -> Stage:
    """Fine-tuning, starting at the epoch after the last of ``checkpoint`` (the pretraining's)."""
    return Stage(FINETUNE, len(checkpoint["history"]) + 1, request.epochs, request.time_limit,
                 extra_data=request.extra_data)


def stage_records(checkpoint: dict | None, stage: Stage) -> list[dict]:
    """The ``stages`` list the checkpoints of ``stage`` keep: the earlier stages' (from the run's
    resumable checkpoint, None for a new run), then its own."""
    earlier = checkpoint.get("stages", []) if checkpoint is not None else []
    return [*(r for r in earlier if r["first_epoch"] < stage.first_epoch), stage.record()]


def stage_elapsed(history: Sequence[dict], stage: Stage) -> float:
    """Seconds of training ``stage`` has had so far (its rows' epoch times, resumed sessions included)."""
    return float(sum(row["epoch_s"] for row in history if row.get("stage", FINETUNE) == stage.name))


def start_from_previous(path: Path, variant, model: torch.nn.Module) -> list[dict]:
    """A fresh stage: ``model`` gets the weights of the checkpoint ``path`` (the previous stage's
    last); returns the run's history. The optimizer and lr schedule stay fresh."""
    saved_model, _, checkpoint = models.load_checkpoint(path, expected_variant=variant)
    model.load_state_dict(saved_model.state_dict())
    return [dict(row) for row in checkpoint["history"]]


def training_samples(stage: Stage | None, layout: data.CompetitionLayout, train_ids: Sequence[str], df,
                     max_images: int | None = None, rank: int = 0, world: int = 1
                     ) -> tuple[list[data.Sample], Stage | None]:
    """The training images of ``stage`` and the stage as read: LIVECell's for pretraining (at most
    ``stage.pretrain_max_images``, else ``max_images``, a smoke run's ``--max-images``; under DDP
    this rank's share only, ``kit.livecell.read_livecell``), with each file's summary line in its
    ``read_summary``; else the split's with the stage's pseudo-labelled images after them."""
    if stage is not None and stage.name == PRETRAIN:
        chosen = livecell.read_livecell(livecell.find_livecell(layout.root), stage.pretrain_lines,
                                        max_images=stage.pretrain_max_images or max_images, rank=rank, world=world)
        if not chosen.images:
            raise ValueError(f"{layout.root / livecell.LIVECELL_DIR} holds no annotated LIVECell image of "
                             f"{stage.record()['data']}{f' for rank {rank} of {world}' if world > 1 else ''}")
        read = dataclasses.replace(stage, read_summary=tuple(summary.line() for summary in chosen.summaries))
        return chosen.samples(), read
    samples = data.load_samples(layout, train_ids, df)
    known = set(df["id"])
    for path in (() if stage is None else stage.extra_data):
        samples += pseudo.load_extra_samples(layout.root, path, known)
    return samples, stage


def line_diameters(samples: Sequence[data.Sample]) -> dict[str, float]:
    """``{cell line: median cell diameter}`` of LIVECell samples, as ``kit.data.cell_diameters``
    measures the competition's (the diameter of the disc of a cell's area, here of its label)."""
    diameters: dict[str, list[float]] = {}
    for sample in samples:
        areas = np.bincount(sample.labels.ravel())[1:]
        diameters.setdefault(sample.cell_type, []).extend(2.0 * np.sqrt(areas[areas > 0] / np.pi))
    return {line: float(np.median(values)) for line, values in sorted(diameters.items()) if values}


def describe(stage: Stage, n_images: int) -> str:
    """The log line that opens a stage."""
    what = {PRETRAIN: f"LIVECell ({stage.record()['data']})"}.get(stage.name, "the competition's training split")
    extra = f" + {', '.join(Path(p).name for p in stage.extra_data)}" if stage.extra_data else ""
    how = "continued" if not stage.fresh else ("from the previous stage's weights" if stage.first_epoch > 1 else "new")
    return (f"stage {stage.name} ({how}): {n_images} images of {what}{extra}, epochs {stage.first_epoch}-"
            f"{stage.last_epoch}")


def train_in_stages(config, train: Callable) -> Path:
    """``kit.train``'s run: the stage the run is at (``next_stage``), then, after pretraining,
    fine-tuning in the same process. ``config``: a ``kit.train_setup.RunConfig``; ``train`` trains
    one stage of it and returns the best weights' path."""
    last = config.out / f"{config.variant.name}-last.pt"
    checkpoint = models.read_checkpoint(last) if config.resume and last.is_file() else None
    stage = next_stage(config.stages, checkpoint)
    if stage is None:  # the run's checks as ever (variant, options), then "already holds N epochs"
        return train(config)
    weights = train(dataclasses.replace(config, stage=stage, time_limit=stage.time_limit))
    if stage.name == PRETRAIN:  # what the pretraining left (all its epochs, or its time) goes to fine-tuning
        following = fine_tuning_after(config.stages, models.read_checkpoint(last))
        weights = train(dataclasses.replace(config, stage=following, time_limit=following.time_limit,
                                            resume=True, restart=False))
    return weights


def _first_stage(request: StageRequest) -> Stage:
    if request.pretrain is False:
        return Stage(FINETUNE, 1, request.epochs, request.time_limit, extra_data=request.extra_data)
    if request.pretrain_epochs < 1:
        raise ValueError(f"--pretrain-epochs must be >= 1, got {request.pretrain_epochs}")
    if request.pretrain_max_images is not None and request.pretrain_max_images < 1:
        raise ValueError(f"--pretrain-max-images must be >= 1, got {request.pretrain_max_images}")
    return Stage(PRETRAIN, 1, request.pretrain_epochs, request.pretrain_time_limit, request.pretrain,
                 request.pretrain_max_images)


def _lines(record: dict) -> tuple[str, ...] | None:
    source = record.get("data", "livecell")
    return tuple(source.split(":", 1)[1].split(",")) if ":" in source else None


def _same_files(record: dict) -> tuple[str, ...]:
    """A resumed stage that trained on pseudo-labels needs their files again: the run keeps names only."""
    if record.get("extra_data"):
        raise ValueError(f"--resume: stage {record['name']} trains on {record['extra_data']} too; pass them "
                         "again with --extra-data")
    return ()
