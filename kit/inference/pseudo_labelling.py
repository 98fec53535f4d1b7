"""Pseudo-labels for the competition's unannotated images: ``python -m kit.pseudo --data DIR --weights FILE
--out FILE.csv --min-confidence X``.

``train_semi_supervised/`` (in the competition folder, beside ``train/``) holds 1,972 flat 520x704
PNGs without annotations; each name's prefix before ``[`` is its cell type (``astros`` for astro,
``cort``, ``shsy5y``). This command predicts their instances with trained weights, exactly as
``kit.infer`` does (``kit.ensemble``'s prediction, flips, tuned per-type settings, extraction),
keeps the cells whose confidence is at least ``--min-confidence`` and writes them in ``train.csv``'s form (its nine
columns, then ``confidence``), which ``kit.train --extra-data FILE.csv`` trains on beside the real
annotations.

A cell's confidence is the network's mean cell probability over the cell's pixels: every pixel of
an extracted cell already passed the cell-probability threshold (0.5 unless tuned), so a value near
1 says the whole cell is certain and one near the threshold that most of it is borderline. The
flow-error filter of the extraction still applies first. An image left without a cell gets no row
(``train.csv`` has none either) and is not trained on.
"""
from __future__ import annotations

import argparse
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from kit import cli, data, ensemble, models, postprocess, rle
from kit.competition import DEFAULT_MIN_CONFIDENCE, IMAGE_SHAPE
from kit.files import OutputError, check_writable_dir, exit_on_sigterm, remove_if_left_empty, write_text_atomic
from kit.progress import module_logger, show_progress
from kit.split import of_weights

SEMI_SUPERVISED_DIR = "train_semi_supervised"
TRAIN_CSV_COLUMNS = ("id", "annotation", "width", "height", "cell_type", "plate_time", "sample_date",
                     "sample_id", "elapsed_timedelta")
_NAME_TYPES = {"astros": "astro", "astro": "astro", "cort": "cort", "shsy5y": "shsy5y"}

logger = module_logger(__name__)


@dataclass(frozen=True)
class PseudoConfig:
    """One pseudo-labelling run as the command line asks for it, built once by ``pseudo_config``;
    ``run`` takes this, never the argparse Namespace."""

    weights: tuple[Path, ...]
    out: Path
    data: Path | None = None
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    max_images: int | None = None
    tta: bool = False
    batch_size: int = ensemble.DEFAULT_BATCH_SIZE
    device: str | None = None


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m kit.pseudo", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder holding the competition data (default: kit.paths.input_root())")
    parser.add_argument("--weights", nargs="+", required=True, help="weights files from kit.train (one target type)")
    parser.add_argument("--out", required=True, type=Path, help="pseudo-label CSV to write (train.csv's form)")
    parser.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE, metavar="X",
                        help="keep cells whose mean cell probability is at least X, in [0, 1] "
                             f"(default {DEFAULT_MIN_CONFIDENCE})")
    parser.add_argument("--max-images", type=int, help="only the first N images (by name)")
    parser.add_argument("--tta", action="store_true", help="average over horizontal/vertical flips")
    parser.add_argument("--batch-size", type=int, default=ensemble.DEFAULT_BATCH_SIZE)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    return parser


def main(args: argparse.Namespace) -> Path:
    show_progress()
    try:
        return run(pseudo_config(args))
    except (FileNotFoundError, ValueError, OutputError) as err:
        raise SystemExit(f"kit.pseudo: error: {err}") from None


def pseudo_config(args: argparse.Namespace) -> PseudoConfig:
    """The frozen settings of a run from the parsed command line; a value out of range is an error."""
    if not 0.0 <= args.min_confidence <= 1.0:
        raise ValueError(f"--min-confidence must be in [0, 1] (a mean probability), got {args.min_confidence}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    return PseudoConfig(weights=tuple(Path(w) for w in args.weights), out=Path(args.out),
                        data=None if args.data is None else Path(args.data), min_confidence=args.min_confidence,
                        max_images=args.max_images, tta=args.tta, batch_size=args.batch_size, device=args.device)


def run(config: PseudoConfig) -> Path:
    """Check everything that names and headers can tell (device, weights, images), then predict the
    unannotated images, keep the confident cells and write the CSV atomically."""
    started = time.perf_counter()
    device = models.resolve_device(config.device)
    members = ensemble.load_ensemble(config.weights, device)
    check_flow_weights(members)
    layout = data.find_competition(config.data, need_test=False)
    report_teacher_split(members, layout)
    images = semi_supervised_images(layout.root)
    if config.max_images is not None:
        images = dict(list(images.items())[: max(config.max_images, 0)])
    for path, _ in images.values():  # a bad image found now, not after every earlier one is predicted
        data.check_image_header(path)
    with remove_if_left_empty(config.out.parent):
        check_writable_dir(config.out.parent)
        logger.info(f"{len(images)} unannotated images of {layout.root / SEMI_SUPERVISED_DIR}, {len(members)} "
                    f"weights file(s), device {device}, cells kept from mean probability {config.min_confidence:g}")
        rows, counts = predict_rows(members, images, device, config)
        write_text_atomic(config.out, rows_to_csv(rows))
    logger.info(f"wrote {config.out}: {counts[0]} of {counts[1]} cells kept in {len({r['id'] for r in rows})} "
                f"of {len(images)} images ({time.perf_counter() - started:.1f} s)")
    return config.out


def check_flow_weights(members: Sequence[ensemble.Member]) -> None:
    """kit.pseudo's confidence and cells come from a flow variant's output; a mask variant's weights are
    refused before any work (its extraction gives one whole-image "cell" per image)."""
    for member in members:
        if member.variant.target != "flow":
            raise ValueError(f"{member.path} holds weights of {member.variant.name}, a {member.variant.target} "
                             "variant; kit.pseudo needs a flow variant's weights (e.g. hot-flow-unet-plus.pt)")


def predict_rows(members: Sequence[ensemble.Member], images: Mapping[str, tuple[Path, str]], device,
                 config: PseudoConfig) -> tuple[list[dict], tuple[int, int]]:
    """The CSV rows of ``images``, batch by batch; a failure part-way (an image that cannot be decoded, a
    SIGTERM) first writes the rows of the images already predicted to ``config.out`` and says so."""
    rows, ids, done, kept, found = [], list(images), 0, 0, 0  # done: images predicted
    extraction = postprocess.PostprocessConfig().with_tuned(members[0].settings.postprocess)
    try:
        for start in range(0, len(ids), config.batch_size):
            batch = ids[start:start + config.batch_size]
            pixels = np.stack([data.load_image(images[i][0]) for i in batch])
            types = [images[i][1] for i in batch]
            prob, flow = ensemble.predict(members, pixels, types, device, config.tta, batch)
            for k, image_id in enumerate(batch):
                labels = postprocess.output_to_labels(prob[k], None if flow is None else flow[k], pixels[k],
                                                     types[k], extraction)
                confidence = cell_confidence(labels, prob[k])
                found += len(confidence)
                chosen = confident_labels(labels, confidence, config.min_confidence)
                kept += int(chosen.max())
                rows += pseudo_rows(image_id, types[k], chosen, confidence[confidence >= config.min_confidence])
            done += len(batch)
    except (Exception, SystemExit, KeyboardInterrupt) as err:
        if done == 0:
            raise
        write_text_atomic(config.out, rows_to_csv(rows))
        note = (f"wrote {config.out} with the {done} of {len(ids)} images predicted before this stop (the first "
                f"{done} by name, up to {ids[done - 1]}); it is a valid pseudo-label file as it is")
        if isinstance(err, ValueError):
            raise ValueError(f"{err}; {note}") from None
        logger.info(note)
        raise
    return rows, (kept, found)


def report_teacher_split(members: Sequence[ensemble.Member], layout: data.CompetitionLayout) -> None:
    """Say which validation split the pseudo-labels' networks held out (``kit.split``): a run that
    trains on the labels keeps it unseen only with the same ``--seed``/``--val-fraction``."""
    if layout.train_csv is None:
        return
    held_out = of_weights(ensemble.split_records(members), data.image_table(data.read_train_csv(layout.train_csv)))
    if held_out.seed is None:
        logger.warning(f"kit.pseudo: warning: the weights were trained with different validation splits, so the "
                       f"labels carry what each learned from images another held out: a run trained on them is "
                       f"scored honestly only on the {len(held_out.val_ids)} images all of them held out")
        return
    logger.info(f"the weights held out the validation split ({held_out.describe()}, {len(held_out.val_ids)} images): "
                "train on these pseudo-labels with the same --seed and --val-fraction to keep it unseen")


def semi_supervised_images(competition_root: str | Path) -> dict[str, tuple[Path, str]]:
    """``{image id: (path, cell type)}`` of ``train_semi_supervised/``, sorted by id (the file's stem)."""
    folder = Path(competition_root) / SEMI_SUPERVISED_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"no {SEMI_SUPERVISED_DIR}/ in {competition_root}: the competition's input ships "
                                "it beside train/ (kaggle competitions download -c sartorius-cell-instance-segmentation)")
    found = {path.stem: (path, cell_type_of(path.name)) for path in sorted(folder.glob("*.png"))}
    if not found:
        raise FileNotFoundError(f"{folder} holds no .png images")
    return found


def cell_type_of(file_name: str) -> str:
    """The cell type a ``train_semi_supervised`` name starts with: its prefix before ``[`` (``astros`` -> astro)."""
    prefix = file_name.split("[", 1)[0] if "[" in file_name else None
    if prefix not in _NAME_TYPES:
        raise ValueError(f"{SEMI_SUPERVISED_DIR}/{file_name}: the name does not start with a cell type and '[' "
                         f"(expected one of {', '.join(sorted(_NAME_TYPES))}, e.g. astros[hippo]_...png); "
                         "rename it or remove it from the folder")
    return _NAME_TYPES[prefix]


def cell_confidence(labels: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """float64[n]: the mean of ``prob`` over each cell 1..n of ``labels`` (n = labels.max())."""
    n = int(labels.max())
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:]
    sums = np.bincount(flat, weights=prob.ravel().astype(np.float64), minlength=n + 1)[1:]
    return sums / np.maximum(counts, 1)


def confident_labels(labels: np.ndarray, confidence: np.ndarray, min_confidence: float) -> np.ndarray:
    """``labels`` with only the cells of confidence >= ``min_confidence``, numbered 1..m in their order."""
    keep = confidence >= min_confidence
    relabel = np.zeros(len(confidence) + 1, np.int32)
    relabel[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return relabel[labels]


def pseudo_rows(image_id: str, cell_type: str, labels: np.ndarray, confidence: Sequence[float]) -> list[dict]:
    """One ``train.csv`` row per cell of ``labels`` (RLE by ``kit.rle.encode_labels``), blank metadata."""
    runs = rle.encode_labels(labels)
    return [{"id": image_id, "annotation": run, "width": IMAGE_SHAPE[1], "height": IMAGE_SHAPE[0],
             "cell_type": cell_type, **dict.fromkeys(TRAIN_CSV_COLUMNS[5:], ""), "confidence": f"{value:.4f}"}
            for run, value in zip(runs, confidence) if run]


def rows_to_csv(rows: Sequence[Mapping]) -> str:
    """The CSV text of ``pseudo_rows`` (a header alone when there is none)."""
    buffer = io.StringIO()
    pd.DataFrame(list(rows), columns=[*TRAIN_CSV_COLUMNS, "confidence"]).to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def load_extra_samples(competition_root: str | Path, csv_path: str | Path,
                       known_ids: Sequence[str] = ()) -> list[data.Sample]:
    """``kit.train --extra-data``: the images of a pseudo-label CSV (``train.csv``'s form, checked by
    ``kit.data.read_train_csv``) from ``train_semi_supervised/``, with their label images. An id that is
    also an annotated image (``known_ids``) or has no image there is an error naming the CSV line."""
    csv_path = Path(csv_path)
    df = data.read_train_csv(csv_path)
    if df.empty:
        raise ValueError(f"{csv_path} holds no pseudo-labelled cell (kit.pseudo kept none at its "
                         "--min-confidence): make it again with a lower --min-confidence, or leave it out of "
                         "--extra-data")
    images = semi_supervised_images(competition_root)
    known = set(known_ids)
    for line, image_id in enumerate(df["id"], start=2):
        if image_id in known:  # first: such an id is never in train_semi_supervised/ either
            raise ValueError(f"{csv_path} line {line}: image {image_id} is an annotated training image (in "
                             "train.csv), not a pseudo-label of train_semi_supervised/; pass a CSV that "
                             "kit.pseudo wrote")
        if image_id not in images:
            raise FileNotFoundError(f"{csv_path} line {line}: image {image_id} is not in "
                                    f"{Path(competition_root) / SEMI_SUPERVISED_DIR}; pass the --data the labels were made from")
    for image_id in df["id"].unique():
        data.check_image_header(images[image_id][0])
    samples = []
    for image_id, rows in df.groupby("id", sort=True):
        path, cell_type = images[image_id]
        if rows["cell_type"].iloc[0] != cell_type:
            raise ValueError(f"{csv_path}: image {image_id} is labelled {rows['cell_type'].iloc[0]}, but its name "
                             f"says {cell_type}")
        annotations = rows["annotation"].tolist()
        image = data.load_image(path)
        samples.append(data.Sample(image_id, cell_type, image, rle.decode_labels(annotations, image.shape), annotations))
    return samples


if __name__ == "__main__":
    exit_on_sigterm()
    main(get_args_parser().parse_args())
