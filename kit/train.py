"""Train one variant: ``python -m kit.train --variant NAME --data DIR --out DIR``.

Writes ``OUT/NAME.pt`` (best weights by validation leaderboard score), ``OUT/NAME-last.pt``
(resumable, every epoch), ``OUT/NAME-metrics.csv`` (one row per epoch) and ``OUT/NAME-curves.png``.

Built for the Kaggle GPUs: images are decoded once and kept on the device as uint8, flow
targets are computed once per image and cached under ``OUT/cache``, cropping and augmentation
run as batched torch ops on the device, mixed precision (bf16 where supported, else fp16 with
a GradScaler; bf16 on CPUs with native bf16) and channels_last. Two GPUs (Kaggle's T4 x2) train through DDP:
``torchrun --nproc_per_node 2 -m kit.train ...`` (``--batch-size`` is then per GPU).
Before each epoch the run stops cleanly if the slowest recent epoch would not fit in
``--time-limit``; ``--resume`` continues from ``NAME-last.pt``.

This module is the command line and the run's settings (``kit.training.config.RunConfig``); the run
is ``kit.training.run``'s (set-up ``kit.training.setup``, loop and evaluation ``kit.training.loop``,
the run folder's outputs and guards ``kit.training.run_folder``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kit import cli, paths
from kit.cli import DEFAULT_PRETRAIN_EPOCHS, DEFAULT_TIME_LIMIT, crop_size, parse_pretrain, parse_time_limit
from kit.files import OutputError, exit_on_sigterm, remove_if_left_empty
from kit.model.variants import OPTIMIZERS, SCHEDULES, VARIANTS, Variant, describe_variants, get_variant
from kit.progress import show_progress
from kit.split import DEFAULT_SEED, DEFAULT_VAL_FRACTION
from kit.training.config import RunConfig
from kit.training.run import train_in_stages
from kit.training.stage_options import StageOptions


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m kit.train", description=__doc__.splitlines()[0])
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
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help=f"stratified validation share (default {DEFAULT_VAL_FRACTION:g}); recorded in the weights")
    parser.add_argument("--crop", type=crop_size, metavar="HxW",
                        help="train on random HxW crops and validate on centre crops (default: the variant's "
                             "crop_size, else whole images)")
    parser.add_argument("--time-limit", type=parse_time_limit, default=DEFAULT_TIME_LIMIT, metavar="H:MM",
                        help="training time budget: one process stops within the epoch that spends it, "
                             f"torchrun's ranks before an epoch that would end past it (default {DEFAULT_TIME_LIMIT})")
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available; under torchrun "
                                         "each process uses its LOCAL_RANK's GPU)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="auto: bf16 on GPUs that have it, else fp16; on the CPU bf16 where it computes "
                             "bf16 natively (AVX-512 BF16, AMX, Arm BF16), else fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/NAME-last.pt")
    parser.add_argument("--restart", action="store_true",
                        help="start afresh although OUT holds a run of NAME (its files move to OUT/previous/)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="seed of the split (recorded in the weights), initialisation and batches")
    parser.add_argument("--keep-steps", type=int, nargs="+", default=[], metavar="N",
                        help="also keep the weights after each N optimiser steps as OUT/NAME-stepN.pt "
                             "(a learning curve: score each with kit.infer --split val --evaluate)")
    stages = parser.add_argument_group("stages (kit.training.stages): LIVECell pretraining and pseudo-labels")
    stages.add_argument("--pretrain", type=_pretrain_source, metavar="livecell[:LINES]",
                        help="a new run first trains on LIVECell (in the competition folder): all 8 lines, or "
                             "e.g. livecell:shsy5y,a172; then it fine-tunes on the competition's images")
    stages.add_argument("--pretrain-epochs", type=int, default=DEFAULT_PRETRAIN_EPOCHS,
                        help=f"epochs of the pretraining stage (default {DEFAULT_PRETRAIN_EPOCHS})")
    stages.add_argument("--pretrain-time-limit", type=parse_time_limit, metavar="H:MM",
                        help="the pretraining stage's training time (default: --time-limit, which is then "
                             "fine-tuning's own)")
    stages.add_argument("--pretrain-max-images", type=int, metavar="N",
                        help="LIVECell images to pretrain on, taken in turn from each line (default: all)")
    stages.add_argument("--extra-data", nargs="+", type=Path, default=[], metavar="CSV",
                        help="pseudo-labels from kit.pseudo (train.csv's form, images in train_semi_supervised/) "
                             "trained on beside the annotations; with --resume, new ones start a pseudo-label round")
    return parser


def main(args: argparse.Namespace) -> Path | None:
    """Run the command line; returns the best-weights path (None for ``--list``)."""
    if args.list:
        print(describe_variants())
        return None
    if args.variant is None:
        raise SystemExit("kit.train: error: --variant is required (see --list)")
    show_progress()
    try:
        config = run_config(args)
        with remove_if_left_empty(config.out):
            return train_in_stages(config)
    except (FileNotFoundError, FileExistsError, OutputError, ValueError) as err:
        raise SystemExit(f"kit.train: error: {err}") from None


def run_config(args: argparse.Namespace) -> RunConfig:
    """The frozen settings of a run from the parsed command line."""
    variant = effective_variant(args)
    return RunConfig(variant=variant, data=args.data,
                     out=Path(args.out) if args.out is not None else paths.working_dir(),
                     crop=effective_crop(args.crop, variant), time_limit=args.time_limit, device=args.device,
                     precision=args.precision, compile=args.compile, resume=args.resume, restart=args.restart,
                     seed=args.seed, max_images=args.max_images, val_fraction=args.val_fraction,
                     keep_steps=tuple(sorted(set(args.keep_steps))),
                     stages=StageOptions(pretrain=args.pretrain, pretrain_epochs=args.pretrain_epochs,
                                         pretrain_time_limit=args.pretrain_time_limit,
                                         pretrain_max_images=args.pretrain_max_images,
                                         extra_data=tuple(map(str, args.extra_data))))


def _pretrain_source(text: str) -> str:
    """``--pretrain``'s argparse type: the text, once ``kit.cli.parse_pretrain`` accepts it."""
    parse_pretrain(text)
    return text


def effective_variant(args: argparse.Namespace) -> Variant:
    """The registered variant with the command line's schedule overrides."""
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "optimizer": args.optimizer,
                 "schedule": args.schedule, "cell_diameter": args.cell_diameter, "residual": args.residual}
    return get_variant(args.variant).replace(**{k: v for k, v in overrides.items() if v is not None})


def effective_crop(crop: tuple[int, int] | None, variant: Variant) -> tuple[int, int] | None:
    """``--crop``, else the variant's ``crop_size``; a rescaling variant needs one (its images differ in size)."""
    crop = crop or ((variant.crop_size, variant.crop_size) if variant.crop_size else None)
    if crop is None and variant.cell_diameter > 0:
        raise ValueError(f"variant {variant.name} rescales every image (cell_diameter {variant.cell_diameter:g}), "
                         "so it trains on crops: pass --crop HxW")
    return crop


if __name__ == "__main__":
    exit_on_sigterm()
    main(get_args_parser().parse_args())
