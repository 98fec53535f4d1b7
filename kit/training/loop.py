"""The training loop and its evaluation: the epochs within the time budget, one epoch's optimiser
steps, the validation metrics (the paper's pixel metrics and the leaderboard score)."""
from __future__ import annotations

import functools
import logging
import math
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from kit import metrics, postprocess
from kit.model.checkpoints import save_checkpoint
from kit.model.encoding import decode_output
from kit.model.hardware import autocast, precision_name
from kit.model.variants import Variant
from kit.training.batches import TrainData, make_batch, validation_batch
from kit.training.config import RunConfig, TrainingState
from kit.training.run_folder import (best_weights, clock, finish_epoch, last_checkpoint, progress_line, quality,
                                     step_weights)
from kit.training.stage_options import FINETUNE
from kit.training.stages import describe

logger = logging.getLogger(__name__)


def train_epochs(state: TrainingState, config: RunConfig, device: torch.device, train_data: TrainData,
                 val_data: TrainData | None) -> None:
    """The epochs from the first one ``state.history`` lacks to ``variant.epochs``, stopping cleanly
    when the time budget runs out; rank 0 logs the progress lines."""
    log = logger.info if state.rank == 0 else (lambda message: None)
    variant, out, budget = state.variant, state.out, state.budget
    done, last = len(state.history), state.stage.last_epoch if state.stage else variant.epochs
    if done >= last:
        log(f"{last_checkpoint(out, variant.name)} already holds {done} epochs; raise --epochs to go on")
    else:
        if state.stage is not None and (state.stage.name != FINETUNE or state.stage.extra_data
                                        or state.stage.first_epoch > 1):  # a run with stages
            log(describe(state.stage, len(train_data) * train_data.shards))
        log(f"{variant.name}: {len(train_data) * train_data.shards} train / {len(val_data or ())} val images on {device}"
            f"{f' x{state.world}' if state.world > 1 else ''}, {precision_name(state.amp_dtype)}, batch "
            f"{variant.batch_size}, epochs {done + 1}-{last}; validation instances: {instance_method(variant)}")
    epoch_seconds: list[float] = []
    # A single process with a budget stops within the epoch that spends it instead, so that a
    # budget buys the same training time whatever an epoch takes (DDP ranks stop together here).
    per_epoch_stop = state.world > 1 or not budget.limited
    for epoch in range(done + 1, last + 1):
        next_epoch = max(epoch_seconds[-3:], default=0.0)
        if per_epoch_stop and epoch_seconds and stop_before_epoch(device, budget.process_seconds() + next_epoch,
                                                                  budget.limit):
            log(f"stopping before epoch {epoch}: it would end past the time limit {clock(budget.limit)} "
                f"({clock(budget.process_seconds())} used, an epoch takes {clock(next_epoch)}); "
                f"best weights kept in {best_weights(out, variant.name)}; --resume continues")
            break
        epoch_start = time.monotonic()
        row = run_epoch(state, epoch, train_data, val_data, config.seed)
        epoch_seconds.append(time.monotonic() - epoch_start)
        if row is not None:
            log(progress_line(row, last, epoch_seconds, budget.left()))
        if budget.out_of_time:
            log(f"stopped within epoch {epoch}: its training spent the time limit "
                f"{clock(budget.limit)}; best weights in {best_weights(out, variant.name)}")
            break
    if state.history:
        best = max(state.history, key=quality)
        log(f"best epoch {best['epoch']}: score {best['val_score']:.4f}, dice {best['val_dice']:.3f}; "
            f"weights in {best_weights(out, variant.name)}")


def run_epoch(state: TrainingState, epoch: int, train_data: TrainData, val_data: TrainData | None,
              seed: int) -> dict | None:
    """Train one epoch; on rank 0 also validate and write the outputs. Returns rank 0's metrics row."""
    epoch_start = time.monotonic()
    lr = state.optimizer.param_groups[0]["lr"]
    # a sharded split (each rank its own images) is walked whole by each rank; else each takes its share
    shared = (0, 1) if train_data.shards > 1 else (state.rank, state.world)
    order = epoch_order(len(train_data), seed, epoch, *shared)
    train_loss, images_per_s = train_epoch(state.model, train_data, order, state.variant, state.criterion,
                                           state.optimizer, state.scaler, state.amp_dtype,
                                           epoch_generator(seed, epoch, 1 + state.rank), state.crop,
                                           functools.partial(after_step, state))
    if not state.step_lr_per_batch:
        state.scheduler.step()
    validation_start = time.monotonic()
    if state.world > 1:  # mean loss and summed throughput over the ranks
        totals = torch.tensor([train_loss / state.world, images_per_s], device=train_data.images.device)
        dist.all_reduce(totals)
        train_loss, images_per_s = totals.tolist()
    if state.rank != 0:
        return None
    scores = evaluate(state.raw_model, val_data, state.variant, state.criterion, state.amp_dtype, state.crop)
    row = {"epoch": epoch, "train_loss": train_loss, **scores, "lr": lr, "images_per_s": images_per_s,
           "stage": state.stage.name if state.stage else FINETUNE, "steps": state.steps}
    finish_epoch(row, state, epoch_start)
    state.budget.reserve = time.monotonic() - validation_start
    return row


def after_step(state: TrainingState) -> bool:
    """After each optimiser step: move the cosine schedule's lr; True once the time budget (less
    the last validation's and save's duration) is spent. A single process stops mid-epoch then;
    under DDP the ranks keep to the per-epoch stop, which they decide together."""
    if state.step_lr_per_batch:
        state.scheduler.step()
    state.steps += 1
    if state.steps in state.keep_steps and state.rank == 0:
        keep_step_weights(state)
    if state.world > 1 or not state.budget.limited:
        return False
    return state.budget.spent()


def keep_step_weights(state: TrainingState) -> None:
    """``OUT/NAME-stepN.pt``: the weights after N optimiser steps (``--keep-steps``), for a learning curve;
    a weights file as ``NAME.pt`` is, its ``epoch`` the epoch in progress."""
    path = step_weights(state.out, state.variant.name, state.steps)
    save_checkpoint(path, state.raw_model, state.variant, epoch=len(state.history) + 1,
                           history=state.history, inference=state.inference, stages=state.stage_records)
    logger.info(f"kept {path} (step {state.steps})")


def train_epoch(model: nn.Module, train_data: TrainData, order: torch.Tensor, variant: Variant,
                criterion: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                amp_dtype: torch.dtype | None, generator: torch.Generator | None = None,
                crop: tuple[int, int] | None = None, after_step=None) -> tuple[float, float]:
    """One pass over the images ``order`` (int64[n] indices) in batches of ``variant.batch_size``.

    ``generator`` draws the crops and augmentation; ``after_step`` (no arguments), if given, runs
    after every optimiser step (a per-step lr schedule) and ends the pass early when it returns
    True (the time budget is spent). Returns (mean loss, this process' images/s).
    """
    model.train()
    batches = order.split(variant.batch_size)
    total = torch.zeros((), device=train_data.images.device)
    count, start = 0, time.perf_counter()
    for index in batches:
        x, target = make_batch(train_data, index, variant, crop, generator, augment=variant.augment)
        loss = train_step(model, x, target, criterion, optimizer, scaler, amp_dtype)
        total += loss * len(index)
        count += len(index)
        if after_step is not None and after_step():
            break
    mean_loss = total.item() / max(count, 1)  # no per-step .item(): the device runs ahead of the host
    return mean_loss, count / (time.perf_counter() - start)


def train_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, criterion: nn.Module,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               amp_dtype: torch.dtype | None) -> torch.Tensor:
    """One optimisation step on a batch; returns the (detached, not synced) loss."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(x.device, amp_dtype):
        loss = criterion(model(x), target)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


@torch.no_grad()
def evaluate(model: nn.Module, split: TrainData, variant: Variant, criterion: nn.Module,
             amp_dtype: torch.dtype | None = None, crop: tuple[int, int] | None = None) -> dict[str, float]:
    """Validation loss, the paper's pixel metrics (mean over images) and the leaderboard score.

    With ``crop`` the score is the mean over the centre crops that hold a true cell: a crop without
    cells scores 1.0 for an empty prediction, so counting those would let a model that predicts
    nothing win the model selection. Where no crop holds a cell the score is NaN, and the best
    epoch is the one of lowest validation loss.
    """
    model.eval()
    losses, pixel, labels = [], [], []
    truth = split.truth_runs(crop)
    for index in torch.arange(len(split)).split(variant.batch_size):
        x, target, images = validation_batch(split, index, variant, crop)
        with autocast(x.device, amp_dtype):
            output = model(x)
        losses.append(criterion(output, target).item() * len(index))
        prob, flow = decode_output(output, variant)
        prob, flow = prob.cpu().numpy(), None if flow is None else flow.cpu().numpy()
        images = images.cpu().numpy()
        true_masks = (target[:, -1] > 0.5).cpu().numpy()  # one device-to-host copy per batch
        for k, i in enumerate(index.tolist()):
            pixel.append(metrics.pixel_metrics(true_masks[k], prob[k] > postprocess.CELL_MASK_THRESHOLD))
            labels.append(predict_instances(prob[k], None if flow is None else flow[k], images[k],
                                            split.cell_types[i], variant))
    scored = [i for i in range(len(split)) if crop is None or len(truth[i])]
    scores = metrics.score_label_runs([truth[i] for i in scored], [labels[i] for i in scored])
    return {"val_loss": sum(losses) / len(split),
            **{f"val_{key}": float(np.mean([p[key] for p in pixel])) for key in ("dice", "iou", "accuracy")},
            "val_score": float(np.mean(scores)) if scored else math.nan}


def predict_instances(prob: np.ndarray, flow: np.ndarray | None, image: np.ndarray, cell_type: str,
                      variant: Variant) -> np.ndarray:
    """int32[H, W] instances for validation: the same extraction as inference
    (``kit.postprocess.output_to_labels``); ``flow`` is None exactly for the mask variants."""
    if (flow is None) != (variant.target == "mask"):
        raise ValueError(f"variant {variant.name} (target {variant.target}) got flow={flow is not None}")
    return postprocess.output_to_labels(prob, flow, image, cell_type)


def instance_method(variant: Variant) -> str:
    """Which instance extraction ``predict_instances`` uses for ``variant`` (for the log)."""
    return "kit.flows.flows_to_labels" if variant.target == "flow" else "kit.postprocess.mask_to_labels"


def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> torch.Tensor:
    """This rank's equal share of the epoch's permutation (the same permutation on every rank)."""
    order = torch.randperm(n, generator=epoch_generator(seed, epoch, 0))
    return order[rank::world][: n // world]


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A generator fixed by (seed, epoch, stream): a resumed run draws what an unbroken one would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1_009 + stream)


def stop_before_epoch(device: torch.device, projected_end: float, limit: float) -> bool:
    """Whether the next epoch would end past the limit; rank 0 decides for every rank."""
    stop = projected_end > limit
    if dist.is_initialized():
        flag = torch.tensor([float(stop)], device=device)
        dist.broadcast(flag, 0)
        stop = bool(flag.item())
    return stop
