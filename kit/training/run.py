"""A training run, start to end: the stage the run is at, then, after pretraining, fine-tuning in the
same process (``train_in_stages``, what ``kit.train`` calls), each stage set up, trained and saved by
``train_stage``."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from kit.model.checkpoints import read_checkpoint
from kit.training.config import Budget, RunConfig
from kit.training.loop import train_epochs
from kit.training.run_folder import best_weights, last_checkpoint, prepare_out
from kit.training.setup import (check_options, load_splits, setup_distributed, teardown_distributed,
                                training_state)
from kit.training.stage_options import PRETRAIN
from kit.training.stages import fine_tuning_after, next_stage


def train_in_stages(config: RunConfig) -> Path:
    """Train ``config.variant`` through its stages (``next_stage``); returns the best weights' path."""
    last = last_checkpoint(config.out, config.variant.name)
    checkpoint = read_checkpoint(last) if config.resume and last.is_file() else None
    epochs, limit = config.variant.epochs, config.time_limit
    stage = next_stage(config.stages, epochs, limit, checkpoint)
    if stage is None:  # the run's checks as ever (variant, options), then "already holds N epochs"
        return train_stage(config)
    weights = train_stage(dataclasses.replace(config, stage=stage, time_limit=stage.time_limit))
    if stage.name == PRETRAIN:  # what the pretraining left (all its epochs, or its time) goes to fine-tuning
        following = fine_tuning_after(config.stages, epochs, limit, read_checkpoint(last))
        weights = train_stage(dataclasses.replace(config, stage=following, time_limit=following.time_limit,
                                                  resume=True, restart=False))
    return weights


def train_stage(config: RunConfig) -> Path:
    """Train ``config.variant`` (one stage of it when ``config.stage`` is set); returns ``OUT/NAME.pt``."""
    budget = Budget(limit=config.time_limit)
    rank, world, device = setup_distributed(config.device)
    check_options(config, device)
    if rank == 0:
        prepare_out(config.out, config.variant, config.resume, config.restart)
    train_data, val_data, inference, stage = load_splits(config, device, rank)
    state = training_state(dataclasses.replace(config, stage=stage), device, world, inference, budget,
                           len(train_data) * train_data.shards)
    train_epochs(state, config, device, train_data, val_data)
    teardown_distributed(world)
    return best_weights(config.out, config.variant.name)
