"""The peer of ``benchmarks.bench_quality``: Cellpose 3 trained from scratch on the kit's split.

``python -m benchmarks.peer_cellpose --data DIR --out DIR --budget MINUTES``

Cellpose keeps its own network (the residual U-Net with a style vector), its own flow targets,
its own training loop (``cellpose.train.train_seg``: AdamW, warm-up, its rescaling of every image
to diameter 30, its crops and rotations) and its own mask reconstruction (``CellposeModel.eval``).
What the kit fixes is only what makes the comparison fair: the same training and validation
images (``kit.split.split_train_val``), the same wall-clock budget for everything before the
weights exist (flow targets included), and, afterwards, the same scorer (``bench_quality``).

The budget becomes an epoch count: after the flow targets, a few throw-away steps on a copy of the
network time one batch, and ``n_epochs`` is what the rest of the budget holds. An epoch is one
batch of 8 random training images (``nimg_per_epoch``, as Cellpose's own CLI allows): Cellpose's
learning-rate schedule counts epochs (a 10-epoch warm-up, halvings in the last 50 of more than
100), and a CPU budget holds only a few passes over 244 images, which would end inside the
warm-up; one-batch epochs give the run the schedule's intended shape.
At validation each image is evaluated at its cell type's median training diameter, as the
competition's Cellpose solutions did (the kit's one-hot variants get the annotated type too).

Writes ``OUT/cellpose-weights`` (Cellpose's own file), ``OUT/val-labels.npz`` (int32 instances
per validation id) and ``OUT/run.json`` (timings, epochs, diameters). Needs
``pip install -r benchmarks/requirements-cellpose.txt``; never a dependency of the kit or its tests.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

from kit import cli
from kit.data import sartorius
from kit.files import atomic_output, write_text_atomic
from kit.split import split_train_val

CELLPOSE_VERSION = "3.1.1.3"
BATCH_SIZE = 8  # train_seg's default
PROBE_STEPS = 3  # timed throw-away steps that turn the budget into an epoch count


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m benchmarks.peer_cellpose", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding the competition data")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--budget", type=float, default=45.0, help="wall-clock minutes until the weights exist")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (the kit's default: 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--max-images", type=int, default=None, help="smoke runs: the first N training images")
    return parser


def main(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    torch, models, train_lib, dynamics, utils = _import_cellpose()
    if args.threads:
        torch.set_num_threads(args.threads)
    layout = sartorius.find_competition(args.data, need_test=False)
    df = sartorius.read_train_csv(layout.train_csv)
    train_ids, val_ids = split_train_val(sartorius.image_table(df), args.val_fraction, args.seed)
    train_ids = train_ids[: args.max_images] if args.max_images else train_ids
    samples = sartorius.load_samples(layout, train_ids, df)
    flows = dynamics.labels_to_flows([s.labels.astype(np.int32) for s in samples], device=torch.device("cpu"))
    images = [s.image.astype(np.float32) for s in samples]
    diameters = _type_diameters(samples, utils)
    model = models.CellposeModel(gpu=False, pretrained_model=False, diam_mean=30.0, nchan=2)
    args.out.mkdir(parents=True, exist_ok=True)
    seconds_per_batch = _probe(model.net, images, flows, train_lib, args.out)
    left = args.budget * 60 - (time.monotonic() - started)
    n_epochs = max(1, int(0.97 * left / seconds_per_batch))
    print(f"cellpose {CELLPOSE_VERSION}: {len(images)} training images, {seconds_per_batch:.2f} s per batch of "
          f"{BATCH_SIZE}, {n_epochs} one-batch epochs fit the {left / 60:.1f} minutes left", flush=True)
    train_start = time.monotonic()
    saved, _, _ = train_lib.train_seg(model.net, train_data=images, train_labels=flows, channels=[0, 0],
                                      normalize=True, n_epochs=n_epochs, batch_size=BATCH_SIZE,
                                      nimg_per_epoch=BATCH_SIZE, save_path=str(args.out), save_every=10 ** 9,
                                      model_name="cellpose-weights", min_train_masks=1)
    train_s = time.monotonic() - train_start
    wall_s = time.monotonic() - started
    trained = models.CellposeModel(gpu=False, pretrained_model=str(saved), nchan=2)
    labels, infer_s = _predict(trained, layout, df, val_ids, diameters)
    with atomic_output(args.out / "val-labels.npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **labels)
    run = {"entry": "cellpose", "weights": str(saved), "epochs": n_epochs, "train_images": len(images),
           "wall_s": wall_s, "train_images_per_s": n_epochs * BATCH_SIZE / train_s,
           "infer_images_per_s": len(labels) / infer_s, "diameters": diameters, "budget_min": args.budget}
    write_text_atomic(args.out / "run.json", json.dumps(run, indent=1) + "\n")
    print(f"cellpose: {n_epochs} epochs in {wall_s / 60:.1f} min; validation labels in {args.out / 'val-labels.npz'}")
    return run


def _import_cellpose():
    try:
        import torch
        from cellpose import dynamics, models, train, utils, version
    except ImportError as err:
        raise SystemExit(f"benchmarks.peer_cellpose: error: cellpose is not installed ({err}); "
                         "pip install -r benchmarks/requirements-cellpose.txt") from None
    if not version.startswith("3."):
        raise SystemExit(f"benchmarks.peer_cellpose: error: cellpose {version} found; this peer trains Cellpose 3's "
                         f"network from scratch: pip install cellpose=={CELLPOSE_VERSION}")
    return torch, models, train, dynamics, utils


def _type_diameters(samples, utils) -> dict[str, float]:
    """Median over each type's training images of Cellpose's own per-image diameter."""
    per_type: dict[str, list[float]] = {}
    for sample in samples:
        per_type.setdefault(sample.cell_type, []).append(float(utils.diameters(sample.labels)[0]))
    return {cell_type: float(np.median(values)) for cell_type, values in sorted(per_type.items())}


def _probe(net, images, flows, train_lib, out: Path) -> float:
    """Seconds per batch of Cellpose's own training loop: one short ``train_seg`` run on a copy of
    the network (its per-run preprocessing included, so the estimate errs on the safe side)."""
    start = time.perf_counter()
    (out / "probe").mkdir(exist_ok=True)
    train_lib.train_seg(copy.deepcopy(net), train_data=images, train_labels=flows, channels=[0, 0],
                        n_epochs=1, nimg_per_epoch=PROBE_STEPS * BATCH_SIZE, batch_size=BATCH_SIZE,
                        save_path=str(out / "probe"), model_name="probe", min_train_masks=1)
    return (time.perf_counter() - start) / PROBE_STEPS


def _predict(model, layout, df, ids, diameters) -> tuple[dict[str, np.ndarray], float]:
    """int32 instances of every validation image, each at its type's training diameter."""
    types = dict(zip(sartorius.image_table(df)["id"], sartorius.image_table(df)["cell_type"]))
    start, labels = time.perf_counter(), {}
    for image_id in ids:
        image = sartorius.load_image(layout.train_dir / f"{image_id}.png").astype(np.float32)
        masks = model.eval(image, channels=[0, 0], diameter=diameters[types[image_id]])[0]
        labels[image_id] = masks.astype(np.int32)
    return labels, time.perf_counter() - start


if __name__ == "__main__":
    main(get_args_parser().parse_args())
