"""A training run's settings and state: ``RunConfig`` (what the command line asks for, frozen),
``Budget`` (the time limit and the run's clock) and ``TrainingState`` (what the loop holds)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kit.model.checkpoints import InferenceSettings
from kit.model.variants import Variant
from kit.training.stage_options import StageOptions
from kit.training.stages import Stage


@dataclass(frozen=True)
class RunConfig:
    """One training run as the command line asks for it, built once by ``kit.train.run_config``;
    everything below ``kit.train.main`` takes this, never the argparse Namespace."""

    variant: Variant  # the registered variant with the command line's overrides
    data: Path | None
    out: Path
    crop: tuple[int, int] | None  # training and validation crop (None: whole images)
    time_limit: float  # seconds
    device: str | None
    precision: str
    compile: bool
    resume: bool
    restart: bool
    seed: int
    max_images: int | None
    val_fraction: float
    stages: StageOptions = StageOptions()  # the command line's --pretrain / --extra-data
    keep_steps: tuple[int, ...] = ()  # --keep-steps: optimiser steps after which NAME-stepN.pt is kept
    stage: Stage | None = None  # the stage this train_stage() call trains (kit.training.run.train_in_stages sets it)


@dataclass
class Budget:
    """The time limit and the run's clock, which the cosine schedule, the stops and the ETA read.

    ``started``: when this process started (``time.monotonic``); ``resumed``: the training seconds
    of the epochs a ``--resume`` continues from; ``reserve``: the last validation's and save's
    seconds, kept back from the limit; ``out_of_time``: set once a single process has spent it.
    """

    limit: float  # seconds; 0 or less: no limit for the schedule and the stop within an epoch
    started: float = field(default_factory=time.monotonic)
    resumed: float = 0.0
    reserve: float = 0.0
    out_of_time: bool = False

    @property
    def limited(self) -> bool:
        return self.limit > 0

    def process_seconds(self) -> float:
        """Seconds since this process started."""
        return time.monotonic() - self.started

    def run_seconds(self) -> float:
        """The run's training seconds, a resumed run's earlier epochs included."""
        return self.process_seconds() + self.resumed

    def left(self) -> float:
        """Seconds left of the limit (infinite without one)."""
        return self.limit - self.run_seconds() if self.limited else math.inf

    def progress(self) -> float:
        """The share of the limit, less the reserve, spent so far (the cosine schedule's time axis)."""
        return self.run_seconds() / max(self.limit - self.reserve, 1.0)

    def spent(self) -> bool:
        """Whether the limit less the reserve is spent; remembered in ``out_of_time``."""
        self.out_of_time = self.run_seconds() >= self.limit - self.reserve
        return self.out_of_time


@dataclass
class TrainingState:
    """What one training process updates and checkpoints; ``model`` may wrap ``raw_model`` (compile, DDP)."""

    variant: Variant
    out: Path
    rank: int
    world: int
    raw_model: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    criterion: nn.Module
    history: list[dict]
    crop: tuple[int, int] | None  # training and validation crop (None: whole images)
    inference: InferenceSettings  # what kit.infer needs beyond the variant (the per-type scales)
    step_lr_per_batch: bool  # the cosine schedule moves at every step, the step schedule every epoch
    budget: Budget
    stage: Stage | None = None
    stage_records: list[dict] = field(default_factory=list)  # the checkpoints' ``stages``
    steps: int = 0  # this process' optimiser steps over the whole run, a resumed run's included
    keep_steps: tuple[int, ...] = ()
