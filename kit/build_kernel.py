"""Build self-contained Kaggle kernels: one per training variant (or group) and one for inference.

``python -m kit.build_kernel [--user U] [--variants all|NAME|NAME+NAME ...] [--out kernels]``
writes one folder per kernel, each ready for ``kaggle kernels push -p FOLDER``:
``kernel-metadata.json`` and a notebook that carries the kit's source in its cells. Kaggle runs a
code competition's notebook offline with only its attached inputs, so nothing may be pip-installed:
the first cells write the kit's modules to a scratch folder (checked against their SHA-256), then
the last cell calls ``kit.kaggle.notebook``, which runs ``kit.train`` or ``kit.infer`` exactly as they run
locally. Kaggle's image already holds torch, numba, opencv, scikit-image, scikit-learn and pandas.

Builds are deterministic (sorted sources, fixed cell ids, no timestamps) and refuse to write a
credential, the home folder or the checkout's path. The builder needs no torch.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kit import cli
from kit.kaggle import kernels
from kit.model import variants
from kit.progress import show_progress
from kit.training.stage_options import KERNEL_PRETRAIN_MAX_IMAGES


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m kit.build_kernel",
        description="Build pushable Kaggle kernel folders (training per variant, and inference).")
    parser.add_argument("--user", help="Kaggle username (default: $KAGGLE_USERNAME, else kaggle.json's username)")
    parser.add_argument("--variants", nargs="+", metavar="all|NAME|NAME+NAME",
                        help="variants to train (default: the flow variants the inference kernel uses, one "
                             "kernel each): 'all' (one kernel each, the mask variants too), names, or a+b for one "
                             f"kernel training a then b. Valid: {', '.join(variants.VARIANTS)}")
    parser.add_argument("--out", default="kernels", help="folder receiving one sub-folder per kernel")
    parser.add_argument("--machine-shape", default=kernels.DEFAULT_MACHINE_SHAPE, type=_machine_shape_argument,
                        help="Kaggle accelerator: NvidiaTeslaT4 (GPU T4 x2), the one the kit offers; "
                             "docs/kaggle.md (Platform limits and machine shapes) says why not the others")
    parser.add_argument("--time-limit", default=cli.DEFAULT_TIME_LIMIT, metavar="H:MM",
                        help="wall time of a training kernel, shared by the variants it trains")
    parser.add_argument("--infer", nargs="+", metavar="NAME",
                        help="variants whose weights the inference kernel averages, one target type "
                             "(default: of the trained flow variants, the one kit.tune scores best on the "
                             "validation split; without one, every trained mask variant, averaged)")
    parser.add_argument("--tta", action="store_true", help="inference with flip test-time augmentation")
    parser.add_argument("--one-gpu", action="store_true",
                        help="train on one GPU even where the session has two (default: DDP over all)")
    parser.add_argument("--pretrain", metavar="livecell[:LINES]",
                        help="stage: pretrain on LIVECell (all 8 lines, or e.g. livecell:shsy5y,a172) before "
                             "fine-tuning (default: off)")
    parser.add_argument("--pretrain-epochs", type=int, default=cli.DEFAULT_PRETRAIN_EPOCHS,
                        help=f"epochs of the pretraining stage (default {cli.DEFAULT_PRETRAIN_EPOCHS})")
    parser.add_argument("--pretrain-max-images", type=int, default=KERNEL_PRETRAIN_MAX_IMAGES,
                        help="LIVECell images to pretrain on, in turn from each line (default "
                             f"{KERNEL_PRETRAIN_MAX_IMAGES}: they and their targets live on each GPU)")
    parser.add_argument("--pseudo-round", action="store_true",
                        help="stage: pseudo-label train_semi_supervised/ after fine-tuning and train one more "
                             "stage on them beside the annotations (default: off)")
    parser.add_argument("--min-confidence", type=float, default=cli.DEFAULT_MIN_CONFIDENCE,
                        help="pseudo-labelled cells kept from this mean cell probability "
                             f"(default {cli.DEFAULT_MIN_CONFIDENCE})")
    return parser


def main(args: argparse.Namespace) -> list[Path]:
    show_progress()
    try:
        groups = kernels.default_variant_groups() if args.variants is None else \
            kernels.parse_variant_groups(args.variants)
        time_limit_s = kernels.parse_kernel_time_limit(args.time_limit)
        stages = kernels.kernel_stages(pretrain=args.pretrain, pretrain_epochs=args.pretrain_epochs,
                                       pretrain_max_images=args.pretrain_max_images, pseudo_round=args.pseudo_round,
                                       min_confidence=args.min_confidence)
        folders = kernels.build_kernels(kernels.resolve_username(args.user), groups, args.out,
                                        machine_shape=args.machine_shape, time_limit_s=time_limit_s,
                                        use_all_gpus=not args.one_gpu, infer=args.infer, tta=args.tta, stages=stages)
    except (ValueError, OSError) as error:  # OSError: --out not writable (kit.files.OutputError and others)
        raise SystemExit(f"kit.build_kernel: error: {error}") from None
    print(f"built {len(folders) - 1} training kernel(s) and the inference kernel in {args.out}:")
    for folder in folders:
        print(f"  {folder}")
    for line in kernels.push_plan(folders, time_limit_s, args.machine_shape):
        print(line)
    return folders


def _machine_shape_argument(text: str) -> str:
    try:
        return kernels.check_machine_shape(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


if __name__ == "__main__":
    main(get_args_parser().parse_args())
