"""Train one variant: ``python -m kit.train --variant NAME --data DIR --out DIR``.

Writes ``OUT/NAME.pt`` (best weights by validation leaderboard score), ``OUT/NAME-last.pt``
(resumable, every epoch), ``OUT/NAME-metrics.csv`` (one row per epoch) and ``OUT/NAME-curves.png``.

Built for the Kaggle GPUs: images are decoded once and kept on the device as uint8, flow
targets are computed once per image and cached under ``OUT/cache``, cropping and augmentation
run as batched torch ops on the device, mixed precision (bf16 where supported, else fp16 with
a GradScaler) and channels_last on CUDA. Two GPUs (Kaggle's T4 x2) train through DDP:
``torchrun --nproc_per_node 2 -m kit.train ...`` (``--batch-size`` is then per GPU).
Before each epoch the run stops cleanly if the slowest recent epoch would not fit in
``--time-limit``; ``--resume`` continues from ``NAME-last.pt``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from kit import data, metrics, models, paths, postprocess
from kit.batches import TrainData, crop_size, load_split, make_batch, type_scales, validation_batch
from kit.files import (OutputError, atomic_output, check_free_space, check_writable_dir, exit_on_sigterm,
                       guard_existing_run, remove_stale_temporaries, write_text_atomic)
from kit.losses import build_loss
from kit.variants import (DEFAULT_TIME_LIMIT, OPTIMIZERS, SCHEDULES, VARIANTS, Variant, describe_variants,
                          get_variant, parse_time_limit)

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "val_iou", "val_accuracy", "val_score",
                  "lr", "images_per_s", "epoch_s", "elapsed_s")


@dataclass(frozen=True)
class RunConfig:
    """One training run as the command line asks for it, built once by ``run_config``; everything
    below ``main`` takes this, never the argparse Namespace."""

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


@dataclass
class _TrainingState:
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
    inference: dict  # settings kit.infer needs beyond the variant (the per-type scales), saved in checkpoints
    step_lr_per_batch: bool  # the cosine schedule moves at every step, the step schedule every epoch
    clock: dict  # the cosine schedule's clock: origin, reserve (s kept for validating and saving), out_of_time


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kit.train", description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="variant to train (see --list)")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument("--data", type=Path, help="folder holding the competition data (default: kit.paths.input_root())")
    parser.add_argument("--out", type=Path, help="output folder (default: kit.paths.working_dir())")
    parser.add_argument("--epochs", type=int, help="epochs in all (default: the variant's, 50)")
    parser.add_argument("--batch-size", type=int, help="images per step (per GPU under torchrun; default 2)")
    parser.add_argument("--lr", type=float, help="initial learning rate (default: the variant's, 0.01)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, help="default: the variant's (sgd, momentum 0.9)")
    parser.add_argument("--schedule", choices=SCHEDULES, help="default: the variant's (step: x0.5 every 10 epochs)")
    parser.add_argument("--cell-diameter", type=float, metavar="PX",
                        help="rescale every image so its cell type's median diameter becomes PX pixels; 0: native "
                             "scale (default: the variant's, 30 for hot-flow-unet-plus, else 0)")
    parser.add_argument("--residual", action="store_true", default=None,
                        help="residual blocks and a style vector, as in Cellpose's network (default: the variant's)")
    parser.add_argument("--max-images", type=int,
                        help="smoke runs: the first N training images and N/4 validation images")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="stratified validation share (default 0.2)")
    parser.add_argument("--crop", type=crop_size, metavar="HxW",
                        help="train on random HxW crops and validate on centre crops (default: the variant's "
                             "crop_size, else whole images)")
    parser.add_argument("--time-limit", type=parse_time_limit, default=DEFAULT_TIME_LIMIT, metavar="H:MM",
                        help="training time budget: one process stops within the epoch that spends it, "
                             f"torchrun's ranks before an epoch that would end past it (default {DEFAULT_TIME_LIMIT})")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="auto: bf16 on GPUs that have it, else fp16; fp32 on CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/NAME-last.pt")
    parser.add_argument("--restart", action="store_true",
                        help="start afresh although OUT holds a run of NAME (its files move to OUT/previous/)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and batches")
    return parser


def main(args: argparse.Namespace) -> Path | None:
    """Run the command line; returns the best-weights path (None for ``--list``)."""
    if args.list:
        print(describe_variants())
        return None
    if args.variant is None:
        raise SystemExit("kit.train: error: --variant is required (see --list)")
    try:
        return train(run_config(args))
    except (FileNotFoundError, FileExistsError, OutputError, ValueError) as err:
        raise SystemExit(f"kit.train: error: {err}") from None


def run_config(args: argparse.Namespace) -> RunConfig:
    """The frozen settings of a run from the parsed command line."""
    variant = _effective_variant(args)
    out = Path(args.out) if args.out is not None else paths.working_dir()
    return RunConfig(variant, args.data, out, _effective_crop(args.crop, variant), args.time_limit, args.device,
                     args.precision, args.compile, args.resume, args.restart, args.seed, args.max_images,
                     args.val_fraction)


def train(config: RunConfig) -> Path:
    """Train ``config.variant``; returns ``OUT/NAME.pt``."""
    started = time.monotonic()
    rank, world, device = _setup_distributed(config.device)
    variant, out = config.variant, config.out
    if rank == 0:
        _prepare_out(config)
    train_data, val_data, inference = _load_splits(config, device, rank)
    state = _training_state(config, device, world, inference, started, len(train_data))
    log = print if rank == 0 else (lambda *a, **k: None)
    done = len(state.history)
    if done >= variant.epochs:
        log(f"{out / f'{variant.name}-last.pt'} already holds {done} epochs; raise --epochs to go on")
    else:
        log(f"{variant.name}: {len(train_data)} train / {len(val_data or ())} val images on {device}"
            f"{f' x{world}' if world > 1 else ''}, {_precision_name(state.amp_dtype)}, batch {variant.batch_size}"
            f", epochs {done + 1}-{variant.epochs}; validation instances: {instance_method(variant)}")
    epoch_seconds: list[float] = []
    # A single process with a budget stops within the epoch that spends it instead, so that a
    # budget buys the same training time whatever an epoch takes (DDP ranks stop together here).
    per_epoch_stop = world > 1 or config.time_limit <= 0
    for epoch in range(done + 1, variant.epochs + 1):
        next_epoch = max(epoch_seconds[-3:], default=0.0)
        if per_epoch_stop and epoch_seconds and _stop(device, time.monotonic() - started + next_epoch,
                                                      config.time_limit):
            log(f"stopping before epoch {epoch}: it would end past the time limit {_clock(config.time_limit)} "
                f"({_clock(time.monotonic() - started)} used, an epoch takes {_clock(next_epoch)}); "
                f"best weights kept in {out / f'{variant.name}.pt'}; --resume continues")
            break
        epoch_start = time.monotonic()
        row = _run_epoch(state, epoch, train_data, val_data, config)
        epoch_seconds.append(time.monotonic() - epoch_start)
        if row is not None:
            budget_left = config.time_limit - (time.monotonic() - state.clock["origin"])
            log(_progress_line(row, variant.epochs, epoch_seconds, budget_left if config.time_limit > 0 else math.inf))
        if state.clock["out_of_time"]:
            log(f"stopped within epoch {epoch}: its training spent the time limit "
                f"{_clock(config.time_limit)}; best weights in {out / f'{variant.name}.pt'}")
            break
    if state.history:
        best = max(state.history, key=_quality)
        log(f"best epoch {best['epoch']}: score {best['val_score']:.4f}, dice {best['val_dice']:.3f}; "
            f"weights in {out / f'{variant.name}.pt'}")
    if world > 1:
        # Tear down together: a rank that leaves while rank 0 still validates and saves can abort
        # in the backend's teardown ("terminate called without an active exception", seen with gloo).
        dist.barrier()
        dist.destroy_process_group()
    return out / f"{variant.name}.pt"


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
    with _autocast(x.device, amp_dtype):
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
        with _autocast(x.device, amp_dtype):
            output = model(x)
        losses.append(criterion(output, target).item() * len(index))
        prob, flow = models.decode_output(output, variant)
        prob, flow = prob.cpu().numpy(), None if flow is None else flow.cpu().numpy()
        images = images.cpu().numpy()
        true_masks = (target[:, -1] > 0.5).cpu().numpy()  # one device-to-host copy per batch
        for k, i in enumerate(index.tolist()):
            pixel.append(metrics.pixel_metrics(true_masks[k], prob[k] > 0.5))
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


def _setup_distributed(device_name: str | None) -> tuple[int, int, torch.device]:
    """(rank, world size, device); under torchrun (RANK set) joins the process group as nanoGPT does."""
    if device_name is None and not torch.cuda.is_available():
        # Not a silent fallback: the default schedule is 50 full-image epochs, days on a CPU.
        raise ValueError("no CUDA GPU is visible, and a full training run on the CPU takes days: pass "
                         "--device cpu to train there anyway (a smoke run: --device cpu --epochs 1 "
                         "--max-images 8 --crop 256x256)")
    wanted = device_name or "cuda"
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA GPU is visible (torch.cuda.is_available() is False); "
                         "use --device cpu")
    torch.backends.cudnn.benchmark = wanted == "cuda"  # fixed image sizes: let cuDNN pick its fastest kernels
    if int(os.environ.get("RANK", -1)) < 0:
        return 0, 1, torch.device(wanted)
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = torch.device(f"cuda:{local_rank}") if wanted == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _training_state(config: RunConfig, device: torch.device, world: int, inference: dict, started: float,
                    n_train: int) -> _TrainingState:
    """Fresh model, optimizer, lr schedule and scaler; loaded from ``OUT/NAME-last.pt`` with ``--resume``."""
    variant, out = config.variant, config.out
    torch.manual_seed(config.seed)  # same initial weights on every rank
    raw_model = models.build_model(variant).to(device)
    optimizer = _optimizer(raw_model, variant)
    clock = {"origin": started, "reserve": 0.0, "out_of_time": False}  # origin: moved back on --resume
    if variant.schedule == "cosine":
        steps = variant.epochs * math.ceil(n_train // world / variant.batch_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _cosine_factor(variant.warmup, steps, config.time_limit, clock))
    else:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, variant.lr_step, variant.lr_gamma)
    amp_dtype = _amp_dtype(device, config.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    history: list[dict] = []
    if config.resume:
        history = _resume(out / f"{variant.name}-last.pt", variant, raw_model, optimizer, scheduler, scaler)
        clock["origin"] -= history[-1]["elapsed_s"] if history else 0.0
    model = _wrap_model(raw_model, device, world, config.compile)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return _TrainingState(variant, out, rank, world, raw_model, model, optimizer, scheduler, scaler, amp_dtype,
                          build_loss(variant), history, config.crop, inference, variant.schedule == "cosine", clock)


def _run_epoch(state: _TrainingState, epoch: int, train_data: TrainData, val_data: TrainData | None,
               config: RunConfig) -> dict | None:
    """Train one epoch; on rank 0 also validate and write the outputs. Returns rank 0's metrics row."""
    epoch_start = time.monotonic()
    lr = state.optimizer.param_groups[0]["lr"]
    order = _epoch_order(len(train_data), config.seed, epoch, state.rank, state.world)
    per_batch = functools.partial(_after_step, state, config.time_limit)
    train_loss, images_per_s = train_epoch(state.model, train_data, order, state.variant, state.criterion,
                                           state.optimizer, state.scaler, state.amp_dtype,
                                           _generator(config.seed, epoch, 1 + state.rank), state.crop, per_batch)
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
    row = {"epoch": epoch, "train_loss": train_loss, **scores, "lr": lr, "images_per_s": images_per_s}
    _finish_epoch(row, state, epoch_start)
    state.clock["reserve"] = time.monotonic() - validation_start
    return row


def _after_step(state: _TrainingState, time_limit: float) -> bool:
    """After each optimiser step: move the cosine schedule's lr; True once the time budget (less
    the last validation's and save's duration) is spent. A single process stops mid-epoch then;
    under DDP the ranks keep to the per-epoch stop, which they decide together."""
    if state.step_lr_per_batch:
        state.scheduler.step()
    if state.world > 1 or time_limit <= 0:
        return False
    clock = state.clock
    clock["out_of_time"] = time.monotonic() - clock["origin"] >= time_limit - clock["reserve"]
    return clock["out_of_time"]


def _effective_variant(args: argparse.Namespace) -> Variant:
    """The registered variant with the command line's schedule overrides."""
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "optimizer": args.optimizer,
                 "schedule": args.schedule, "cell_diameter": args.cell_diameter, "residual": args.residual}
    return get_variant(args.variant).replace(**{k: v for k, v in overrides.items() if v is not None})


def _effective_crop(crop: tuple[int, int] | None, variant: Variant) -> tuple[int, int] | None:
    """``--crop``, else the variant's ``crop_size``; a rescaling variant needs one (its images differ in size)."""
    crop = crop or ((variant.crop_size, variant.crop_size) if variant.crop_size else None)
    if crop is None and variant.cell_diameter > 0:
        raise ValueError(f"variant {variant.name} rescales every image (cell_diameter {variant.cell_diameter:g}), "
                         "so it trains on crops: pass --crop HxW")
    return crop


def _load_splits(config: RunConfig, device: torch.device, rank: int) -> tuple[TrainData, TrainData | None, dict]:
    """The stratified split (or its ``--max-images`` head), decoded; validation on rank 0 only.

    Also returns the checkpoint's inference settings: for a rescaling variant, the training
    images' median cell diameter per type and the resulting scales.
    """
    variant, cache_dir = config.variant, config.out / "cache"
    if not 0.0 < config.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {config.val_fraction}")
    layout = data.find_competition(config.data, need_test=False)
    df = data.read_train_csv(layout.train_csv)
    train_ids, val_ids = data.split_train_val(data.image_table(df), config.val_fraction, config.seed)
    inference, scales = {}, None
    if variant.cell_diameter > 0:  # measured on the whole training split: --max-images may miss a type
        diameters = data.cell_diameters(df, train_ids)
        scales = type_scales(diameters, variant.cell_diameter)
        inference = {"cell_diameters": diameters, "scales": scales}
    if config.max_images is not None:
        if config.max_images < 1:
            raise ValueError(f"--max-images must be >= 1, got {config.max_images}")
        n_val = max(1, round(config.max_images * config.val_fraction / (1.0 - config.val_fraction)))
        train_ids, val_ids = train_ids[: config.max_images], val_ids[:n_val]
    if not val_ids:
        raise ValueError(f"{layout.train_csv}: the split leaves no validation image; raise --val-fraction")
    if rank != 0:
        dist.barrier()  # rank 0 fills the flow cache first; the others then read it
    train_data = load_split(layout, train_ids, variant, device, cache_dir, df, scales)
    val_data = load_split(layout, val_ids, variant, device, cache_dir, df, scales,
                          keep_labels=scales is not None) if rank == 0 else None
    if rank == 0 and dist.is_initialized():
        dist.barrier()
    return train_data, val_data, inference


def _cosine_factor(warmup: float, total_steps: int, time_limit: float, clock: dict):
    """The lr factor of step k for ``LambdaLR``: linear warm-up over the first ``warmup`` of the
    run, then a half cosine to 0. The run's progress is the larger of k / ``total_steps`` and the
    seconds since ``clock["origin"]`` over ``time_limit``, so a time budget gets the whole schedule
    (a plain function, not an object, so that the scheduler's state holds no settings to pickle)."""
    def factor(step: int) -> float:
        progress = step / max(total_steps, 1)
        if time_limit > 0:
            horizon = max(time_limit - clock["reserve"], 1.0)
            progress = max(progress, (time.monotonic() - clock["origin"]) / horizon)
        progress = min(progress, 1.0)
        if progress < warmup:
            return max(progress / warmup, 1e-3)
        return 0.5 * (1.0 + math.cos(math.pi * (progress - warmup) / (1.0 - warmup)))
    return factor


def _optimizer(model: nn.Module, variant: Variant) -> torch.optim.Optimizer:
    if variant.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=variant.lr, weight_decay=variant.weight_decay)
    if variant.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=variant.lr, weight_decay=variant.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=variant.lr, momentum=variant.momentum,
                           weight_decay=variant.weight_decay)


def _amp_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Autocast dtype of ``--precision`` on ``device`` (None: fp32); auto is ``models.gpu_autocast_dtype``."""
    if precision == "auto":
        return models.gpu_autocast_dtype(device)
    if precision == "fp32":
        return None
    has_bf16 = device.type != "cuda" or models.gpu_autocast_dtype(device) == torch.bfloat16
    if precision == "bf16" and not has_bf16:
        raise ValueError(f"{torch.cuda.get_device_name(device)} has no bf16; use --precision fp16")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs CUDA; use fp32 or bf16 on CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _precision_name(amp_dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + GradScaler"}[amp_dtype]


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return contextlib.nullcontext() if amp_dtype is None else torch.autocast(device.type, dtype=amp_dtype)


def _resume(path: Path, variant: Variant, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
            scaler: torch.amp.GradScaler) -> list[dict]:
    """Load the resumable checkpoint into the fresh training state; returns its per-epoch history."""
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint {path}; run without --resume to start training")
    saved_model, saved, checkpoint = models.load_checkpoint(path, expected_variant=variant)
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


def _wrap_model(model: nn.Module, device: torch.device, world: int, compile_model: bool) -> nn.Module:
    """channels_last on CUDA, then torch.compile and DDP as asked; ``model`` keeps the plain weights."""
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        if world > 1:  # batch 2 per GPU: statistics over both GPUs' images (parameters are shared, not copied)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    wrapped = torch.compile(model) if compile_model else model
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    return wrapped


def _epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> torch.Tensor:
    """This rank's equal share of the epoch's permutation (the same permutation on every rank)."""
    order = torch.randperm(n, generator=_generator(seed, epoch, 0))
    return order[rank::world][: n // world]


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A generator fixed by (seed, epoch, stream): a resumed run draws what an unbroken one would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1_009 + stream)


def _stop(device: torch.device, projected_end: float, limit: float) -> bool:
    """Whether the next epoch would end past the limit; rank 0 decides for every rank."""
    stop = projected_end > limit
    if dist.is_initialized():
        flag = torch.tensor([float(stop)], device=device)
        dist.broadcast(flag, 0)
        stop = bool(flag.item())
    return stop


def _finish_epoch(row: dict, state: _TrainingState, epoch_start: float) -> None:
    """Record the epoch; write the best weights (if best), the resumable checkpoint, CSV and curves."""
    history, variant, out = state.history, state.variant, state.out
    row["epoch_s"] = time.monotonic() - epoch_start
    row["elapsed_s"] = row["epoch_s"] + (history[-1]["elapsed_s"] if history else 0.0)
    history.append(row)
    best = max(history, key=_quality)
    if best is row:
        models.save_checkpoint(out / f"{variant.name}.pt", state.raw_model, variant, epoch=row["epoch"],
                               best_score=row["val_score"], history=history, inference=state.inference)
    models.save_checkpoint(out / f"{variant.name}-last.pt", state.raw_model, variant, optimizer=state.optimizer,
                           scheduler=state.scheduler, scaler=state.scaler, epoch=row["epoch"],
                           best_score=best["val_score"], history=history, inference=state.inference)
    _write_metrics(out / f"{variant.name}-metrics.csv", history)
    _plot_curves(out / f"{variant.name}-curves.png", history, variant.name)


def _quality(row: dict) -> tuple[float, float]:
    """Best = highest validation score, then lowest validation loss; NaN ranks last."""
    score, loss = row["val_score"], row["val_loss"]
    return (score if math.isfinite(score) else -math.inf, -loss if math.isfinite(loss) else -math.inf)


def _progress_line(row: dict, epochs: int, epoch_seconds: Sequence[float], budget_left: float = math.inf) -> str:
    """One epoch's line; its ETA is the remaining epochs' time or, when sooner, the time limit's end
    (a budgeted run of 200 epochs stops long before they would end)."""
    epochs_left = (epochs - row["epoch"]) * float(np.mean(epoch_seconds))
    eta = max(min(epochs_left, budget_left), 0.0)
    until = " (time limit)" if budget_left < epochs_left else ""
    return (f"epoch {row['epoch']}/{epochs}  train {row['train_loss']:.4f}  val {row['val_loss']:.4f}  "
            f"dice {row['val_dice']:.3f}  iou {row['val_iou']:.3f}  acc {row['val_accuracy']:.3f}  "
            f"score {row['val_score']:.4f}  lr {row['lr']:.2e}  {row['images_per_s']:.1f} img/s  "
            f"{row['epoch_s']:.0f}s  ETA {_clock(eta)}{until}")


def _clock(seconds: float) -> str:
    minutes = int(round(seconds)) // 60
    return f"{minutes // 60}:{minutes % 60:02d}" if seconds >= 60 else f"{seconds:.0f}s"


def _write_metrics(path: Path, history: Sequence[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    for row in history:
        writer.writerow([row[c] if c == "epoch" else f"{row[c]:.6g}" for c in METRIC_COLUMNS])
    write_text_atomic(path, buffer.getvalue())


def _plot_curves(path: Path, history: Sequence[dict], title: str) -> None:
    """Loss, validation scores, learning rate and images/s per epoch; a dashed line marks the best epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    best = max(history, key=_quality)["epoch"]
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
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def run_files(name: str) -> list[str]:
    """The files a run of variant ``name`` writes in ``--out``."""
    return [f"{name}.pt", f"{name}-last.pt", f"{name}-metrics.csv", f"{name}-curves.png"]


def _prepare_out(config: RunConfig) -> None:
    """Before any work: ``out`` writable and with room for the checkpoints, no temporaries of a killed
    save left, and an earlier run there continued (--resume), moved aside (--restart) or refused."""
    out, variant = config.out, config.variant
    if config.resume and config.restart:
        raise ValueError("--resume continues the run in --out and --restart starts afresh: pass one of them")
    check_writable_dir(out)
    names = run_files(variant.name)
    for path in remove_stale_temporaries(out, names):
        print(f"removed {path}: a partial file left by a save that was killed")
    last = out / f"{variant.name}-last.pt"
    if config.resume and not last.is_file():  # found now, not after the images and flow targets are loaded
        raise FileNotFoundError(f"--resume: no checkpoint {last}; run without --resume to start training")
    if not config.resume:
        kept = guard_existing_run(out, names, config.restart)
        if kept is not None:
            print(f"--restart: the earlier {variant.name} run's files were moved to {kept}")
    # The best weights and the resumable checkpoint are each written beside their previous copy.
    check_free_space(out, 2 * models.checkpoint_bytes(variant),
                     f"the checkpoints {variant.name}.pt and {variant.name}-last.pt")


if __name__ == "__main__":
    exit_on_sigterm()
    main(get_args_parser().parse_args())
