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
the seven others have no competition type and get all-zero planes (``kit.model.encoding.model_input``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from kit.data import livecell, pseudo_labels, sartorius
from kit.model.checkpoints import load_checkpoint
from kit.training.stage_options import FINETUNE, PRETRAIN, PSEUDO, StageOptions, pseudo_round_name

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
    read_summary: tuple[str, ...] = ()  # pretrain: each LIVECell file's summary line (kit.data.livecell.ReadSummary)

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


def next_stage(options: StageOptions, epochs: int, time_limit: float, checkpoint: dict | None) -> Stage | None:
    """The stage to train now, given the run's last checkpoint (None: a new run); None when the
    current stage has all its epochs and nothing new is asked for. ``epochs`` and ``time_limit``
    (seconds): the run's, those of fine-tuning and of a pseudo-label round."""
    if checkpoint is None:
        return _first_stage(options, epochs, time_limit)
    history = checkpoint.get("history", [])
    records = checkpoint.get("stages") or [{"name": FINETUNE, "first_epoch": 1, "extra_data": []}]
    current = records[-1]
    done = sum(1 for row in history if row.get("stage", FINETUNE) == current["name"])
    following = len(history) + 1
    if current["name"] == PRETRAIN:
        if done < current["epochs"]:  # as it began, in the time the command line gives it now
            return Stage(PRETRAIN, current["first_epoch"], current["epochs"],
                         _pretrain_time_limit(options, time_limit), _lines(current), current.get("max_images"),
                         fresh=False)
        return fine_tuning_after(options, epochs, time_limit, checkpoint)
    trained = set(current.get("extra_data", []))
    if options.extra_data and {Path(p).name for p in options.extra_data} != trained:
        rounds = sum(1 for r in records if r["name"].startswith(PSEUDO))
        return Stage(pseudo_round_name(rounds + 1), following, epochs, time_limit, extra_data=options.extra_data)
    if done < epochs:
        extra = options.extra_data or _same_files(current)
        return Stage(current["name"], current["first_epoch"], epochs, time_limit, extra_data=extra, fresh=False)
    return None


def fine_tuning_after(options: StageOptions, epochs: int, time_limit: float, checkpoint: dict) -> Stage:
    """Fine-tuning, starting at the epoch after the last of ``checkpoint`` (the pretraining's)."""
    return Stage(FINETUNE, len(checkpoint["history"]) + 1, epochs, time_limit, extra_data=options.extra_data)


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
    saved_model, _, checkpoint = load_checkpoint(path, expected_variant=variant)
    model.load_state_dict(saved_model.state_dict())
    return [dict(row) for row in checkpoint["history"]]


def training_samples(stage: Stage | None, layout: sartorius.CompetitionLayout, train_ids: Sequence[str], df,
                     max_images: int | None = None, rank: int = 0, world: int = 1
                     ) -> tuple[list[sartorius.Sample], Stage | None]:
    """The training images of ``stage`` and the stage as read: LIVECell's for pretraining (at most
    ``stage.pretrain_max_images``, else ``max_images``, a smoke run's ``--max-images``; under DDP
    this rank's share only, ``kit.data.livecell.read_livecell``), with each file's summary line in its
    ``read_summary``; else the split's with the stage's pseudo-labelled images after them."""
    if stage is not None and stage.name == PRETRAIN:
        chosen = livecell.read_livecell(livecell.find_livecell(layout.root), stage.pretrain_lines,
                                        max_images=stage.pretrain_max_images or max_images, rank=rank, world=world)
        if not chosen.images:
            raise ValueError(f"{layout.root / livecell.LIVECELL_DIR} holds no annotated LIVECell image of "
                             f"{stage.record()['data']}{f' for rank {rank} of {world}' if world > 1 else ''}")
        read = dataclasses.replace(stage, read_summary=tuple(summary.line() for summary in chosen.summaries))
        return chosen.samples(), read
    samples = sartorius.load_samples(layout, train_ids, df)
    known = set(df["id"])
    for path in (() if stage is None else stage.extra_data):
        samples += pseudo_labels.load_extra_samples(layout.root, path, known)
    return samples, stage


def describe(stage: Stage, n_images: int) -> str:
    """The log line that opens a stage."""
    what = {PRETRAIN: f"LIVECell ({stage.record()['data']})"}.get(stage.name, "the competition's training split")
    extra = f" + {', '.join(Path(p).name for p in stage.extra_data)}" if stage.extra_data else ""
    how = "continued" if not stage.fresh else ("from the previous stage's weights" if stage.first_epoch > 1 else "new")
    return (f"stage {stage.name} ({how}): {n_images} images of {what}{extra}, epochs {stage.first_epoch}-"
            f"{stage.last_epoch}")


def _first_stage(options: StageOptions, epochs: int, time_limit: float) -> Stage:
    if options.pretrain is None:
        return Stage(FINETUNE, 1, epochs, time_limit, extra_data=options.extra_data)
    options.checked()
    return Stage(PRETRAIN, 1, options.pretrain_epochs, _pretrain_time_limit(options, time_limit),
                 options.pretrain_lines(), options.pretrain_max_images)


def _pretrain_time_limit(options: StageOptions, time_limit: float) -> float:
    """The pretraining's own limit, else the run's (which is then fine-tuning's own)."""
    return time_limit if options.pretrain_time_limit is None else options.pretrain_time_limit


def _lines(record: dict) -> tuple[str, ...] | None:
    source = record.get("data", "livecell")
    return tuple(source.split(":", 1)[1].split(",")) if ":" in source else None


def _same_files(record: dict) -> tuple[str, ...]:
    """A resumed stage that trained on pseudo-labels needs their files again: the run keeps names only."""
    if record.get("extra_data"):
        raise ValueError(f"--resume: stage {record['name']} trains on {record['extra_data']} too; pass them "
                         "again with --extra-data")
    return ()
