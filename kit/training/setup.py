"""What a training run holds before its first step: the devices and process group, the precision, the
data split, the optimiser, the lr schedule with its time ``Budget``, and a ``--resume``'s saved state
(``kit.training.config.TrainingState``)."""
from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from kit.data import sartorius
from kit.data.rescale import type_scales
from kit.model.checkpoints import InferenceSettings, load_checkpoint, read_checkpoint
from kit.model.hardware import autocast_dtype, memory_format, resolve_device
from kit.model.losses import build_loss
from kit.model.network import build_model
from kit.model.variants import Variant
from kit.split import Split, some_ids
from kit.training.batches import TrainData, load_split, split_from_samples
from kit.training.config import Budget, RunConfig, TrainingState
from kit.training.run_folder import last_checkpoint
from kit.training.stage_options import PRETRAIN
from kit.training.stages import (Stage, stage_elapsed, stage_records, start_from_previous, training_samples)


def setup_distributed(device_name: str | None) -> tuple[int, int, torch.device]:
    """(rank, world size, device); ``device_name`` is resolved by ``kit.model.hardware.resolve_device``
    (cuda, cuda:N, cpu), as every command's ``--device``. Under torchrun (RANK set) each process joins the process group
    as nanoGPT does and trains on the GPU of its LOCAL_RANK, so cuda:N has no meaning there and is refused."""
    if device_name is None and not torch.cuda.is_available():
        # Not a silent fallback: the default schedule is 50 full-image epochs, days on a CPU.
        raise ValueError("no CUDA GPU is visible, and a full training run on the CPU takes days: pass "
                         "--device cpu to train there anyway (a smoke run: --device cpu --epochs 1 "
                         "--max-images 8 --crop 256x256)")
    device = resolve_device(device_name or "cuda")
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed image sizes: let cuDNN pick its fastest kernels
    if int(os.environ.get("RANK", -1)) < 0:
        if device.index is not None:
            torch.cuda.set_device(device)  # what is allocated without a device (cuDNN's workspace) goes there too
        return 0, 1, device
    if device.index is not None:
        raise ValueError(f"--device {device_name} under torchrun: each process trains on the GPU of its "
                         "LOCAL_RANK (cuda:0, cuda:1, ...); pass --device cuda, and choose the GPUs with "
                         "CUDA_VISIBLE_DEVICES (e.g. CUDA_VISIBLE_DEVICES=1,2 torchrun ...)")
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = torch.device(f"cuda:{local_rank}") if device.type == "cuda" else device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def check_options(config: RunConfig, device: torch.device) -> None:
    """The command line's combinations that no data is needed to judge, refused before any is loaded
    (and before ``--out`` is made): the precision on this device, ``--keep-steps``."""
    autocast_dtype(device, config.precision)
    small = [n for n in config.keep_steps if n < 1]
    if small:
        raise ValueError(f"--keep-steps counts optimiser steps from 1; got {small[0]}")


def teardown_distributed(world: int) -> None:
    """Leave the process group together (no-op for a single process)."""
    if world > 1:
        # A rank that leaves while rank 0 still validates and saves can abort in the backend's
        # teardown ("terminate called without an active exception", seen with gloo).
        dist.barrier()
        dist.destroy_process_group()


def load_splits(config: RunConfig, device: torch.device, rank: int
                ) -> tuple[TrainData, TrainData | None, InferenceSettings, Stage | None]:
    """The stratified split (or its ``--max-images`` head), decoded; validation on rank 0 only.

    Also returns the checkpoint's inference settings (for a rescaling variant, the training
    images' median cell diameter per type and the resulting scales) and the stage as read (its
    LIVECell summary lines). Under DDP each rank holds only its share of LIVECell's images.
    """
    variant, cache_dir = config.variant, config.out / "cache"
    if not 0.0 < config.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {config.val_fraction}")
    layout = sartorius.find_competition(config.data, need_test=False)
    df = sartorius.read_train_csv(layout.train_csv)
    images = sartorius.image_table(df)
    held_out = Split.compute(images, config.seed, config.val_fraction)
    if config.resume:
        check_resumed_split(last_checkpoint(config.out, variant.name), held_out)
    train_ids, val_ids = held_out.train_ids(images), list(held_out.val_ids)
    inference, scales = InferenceSettings(split=held_out.to_dict()), None
    if variant.cell_diameter > 0:  # measured on the whole training split: --max-images may miss a type
        diameters = sartorius.cell_diameters(df, train_ids)
        scales = type_scales(diameters, variant.cell_diameter)
        inference = replace(inference, cell_diameters=diameters, scales=scales)
    if config.max_images is not None:
        if config.max_images < 1:
            raise ValueError(f"--max-images must be >= 1, got {config.max_images}")
        n_val = max(1, round(config.max_images * config.val_fraction / (1.0 - config.val_fraction)))
        train_ids, val_ids = train_ids[: config.max_images], val_ids[:n_val]
    if not val_ids:
        raise ValueError(f"{layout.train_csv}: the split leaves no validation image; raise --val-fraction")
    if rank != 0:
        dist.barrier()  # rank 0 fills the flow cache first; the others then read it
    world = dist.get_world_size() if dist.is_initialized() else 1
    samples, stage = training_samples(config.stage, layout, train_ids, df, config.max_images, rank, world)
    train_data = split_from_samples(samples, variant, device, cache_dir, _training_scales(config, scales, samples))
    del samples  # the host copies: the split now lives on the device
    if stage is not None and stage.name == PRETRAIN:
        train_data.shards = world
    val_data = load_split(layout, val_ids, variant, device, cache_dir, df, scales,
                          keep_labels=scales is not None) if rank == 0 else None
    if rank == 0 and dist.is_initialized():
        dist.barrier()
    return train_data, val_data, inference, stage


def check_resumed_split(last: Path, asked: Split) -> None:
    """A resumed run keeps the split it was trained on: another ``--seed``/``--val-fraction`` would
    train on some of its validation images. Weights from before the split was recorded pass."""
    if not last.is_file():
        return  # resume() says what is missing
    recorded = InferenceSettings.of(read_checkpoint(last), last).split
    if recorded is None or Split.from_dict(recorded).val_ids == asked.val_ids:
        return
    before = Split.from_dict(recorded)
    overlap = sorted(set(before.val_ids) - set(asked.val_ids))
    raise ValueError(f"--resume: {last} was trained with the split of {before.describe()}; this run asks for "
                     f"{asked.describe()}, which would train on {len(overlap)} of its validation images "
                     f"({some_ids(overlap)}): pass --seed {before.seed} "
                     f"--val-fraction {before.val_fraction:g}, or --restart to start afresh")


def _training_scales(config: RunConfig, scales: dict | None, samples) -> dict | None:
    """The split's per-type scales, and for LIVECell's images their lines' (pretraining a rescaling variant)."""
    if scales is None or config.stage is None or config.stage.name != PRETRAIN:
        return scales
    return {**scales, **type_scales(sartorius.sample_diameters(samples), config.variant.cell_diameter)}


def training_state(config: RunConfig, device: torch.device, world: int, inference: InferenceSettings,
                   budget: Budget, n_train: int) -> TrainingState:
    """Fresh model, optimizer, lr schedule and scaler; loaded from ``OUT/NAME-last.pt`` with ``--resume``
    (which also moves ``budget`` on by the saved epochs' training time)."""
    variant, out = config.variant, config.out
    torch.manual_seed(config.seed)  # same initial weights on every rank
    raw_model = build_model(variant).to(device)
    optimizer = build_optimizer(raw_model, variant)
    stage, last = config.stage, last_checkpoint(out, variant.name)
    scheduler = build_scheduler(optimizer, variant, n_train // world, budget, stage.epochs if stage else None)
    amp_dtype = autocast_dtype(device, config.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    history: list[dict] = []
    if config.resume and stage is not None and stage.fresh:  # a new stage from the previous one's last weights
        history = start_from_previous(last, variant, raw_model)
    elif config.resume:
        history = resume(last, variant, raw_model, optimizer, scheduler, scaler)
        budget.resumed = stage_elapsed(history, stage) if stage else (history[-1]["elapsed_s"] if history else 0.0)
    return TrainingState(variant=variant, out=out, rank=dist.get_rank() if dist.is_initialized() else 0,
                         world=world, raw_model=raw_model, model=wrap_model(raw_model, device, world, config.compile),
                         optimizer=optimizer, scheduler=scheduler, scaler=scaler, amp_dtype=amp_dtype,
                         criterion=build_loss(variant), history=history, crop=config.crop, inference=inference,
                         step_lr_per_batch=variant.schedule == "cosine", budget=budget, stage=stage,
                         stage_records=stage_records(read_checkpoint(last) if config.resume else None, stage)
                         if stage else [], steps=steps_done(history, n_train // world, variant.batch_size),
                         keep_steps=config.keep_steps)


def steps_done(history: list[dict], images_per_epoch: int, batch_size: int) -> int:
    """The optimiser steps of the epochs in ``history``: its last row's count, else (a checkpoint of an
    older kit) full epochs of ``images_per_epoch``."""
    if not history:
        return 0
    if "steps" in history[-1]:
        return int(history[-1]["steps"])
    return len(history) * math.ceil(images_per_epoch / batch_size)


def build_optimizer(model: nn.Module, variant: Variant) -> torch.optim.Optimizer:
    """The variant's optimiser (``variant.optimizer``: one of ``kit.model.variants.OPTIMIZERS``)."""
    if variant.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=variant.lr, weight_decay=variant.weight_decay)
    if variant.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=variant.lr, weight_decay=variant.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=variant.lr, momentum=variant.momentum,
                           weight_decay=variant.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, variant: Variant, images_per_epoch: int,
                    budget: Budget, epochs: int | None = None) -> torch.optim.lr_scheduler.LRScheduler:
    """The variant's lr schedule: warm-up + cosine over the epochs (``epochs``, default the
    variant's: a stage's own) or ``budget``, else x gamma every step."""
    if variant.schedule == "cosine":
        steps = (epochs or variant.epochs) * math.ceil(images_per_epoch / variant.batch_size)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_factor(variant.warmup, steps, budget))
    return torch.optim.lr_scheduler.StepLR(optimizer, variant.lr_step, variant.lr_gamma)


def cosine_factor(warmup: float, total_steps: int, budget: Budget):
    """The lr factor of step k for ``LambdaLR``: linear warm-up over the first ``warmup`` of the
    run, then a half cosine to 0. The run's progress is the larger of k / ``total_steps`` and, with
    a time limit, ``budget.progress()``, so a time budget gets the whole schedule (a plain function,
    not an object, so that the scheduler's state holds no settings to pickle)."""
    def factor(step: int) -> float:
        progress = step / max(total_steps, 1)
        if budget.limited:
            progress = max(progress, budget.progress())
        progress = min(progress, 1.0)
        if progress < warmup:
            return max(progress / warmup, 1e-3)
        return 0.5 * (1.0 + math.cos(math.pi * (progress - warmup) / (1.0 - warmup)))
    return factor


def resume(path: Path, variant: Variant, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
           scaler: torch.amp.GradScaler) -> list[dict]:
    """Load the resumable checkpoint into the fresh training state; returns its per-epoch history."""
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint {path}; run without --resume to start training")
    saved_model, saved, checkpoint = load_checkpoint(path, expected_variant=variant)
    if "optimizer" not in checkpoint or "scheduler" not in checkpoint:
        raise ValueError(f"--resume: {path} holds weights only (no optimizer state); it cannot be resumed")
    if saved.optimizer != variant.optimizer:
        raise ValueError(f"--resume: {path} was trained with {saved.optimizer}, not {variant.optimizer}")
    model.load_state_dict(saved_model.state_dict())
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler.is_enabled() and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    history = [dict(row) for row in checkpoint["history"]]
    if len(history) != checkpoint["epoch"]:
        raise ValueError(f"--resume: {path} is inconsistent: epoch {checkpoint['epoch']}, {len(history)} history rows")
    return history


def wrap_model(model: nn.Module, device: torch.device, world: int, compile_model: bool) -> nn.Module:
    """The device's memory format (``memory_format``), then SyncBatchNorm, torch.compile and DDP as
    asked; ``model`` keeps the plain weights."""
    model = model.to(memory_format=memory_format(device))
    if device.type == "cuda":
        if world > 1:  # batch 2 per GPU: statistics over both GPUs' images (parameters are shared, not copied)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    wrapped = torch.compile(model) if compile_model else model
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    return wrapped
