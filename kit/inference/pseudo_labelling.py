"""Pseudo-labelling (``kit.pseudo``'s library): the competition's unannotated images predicted by
trained weights exactly as ``kit.infer`` predicts (``kit.inference.ensemble``), the cells whose
confidence reaches the threshold kept and written as a pseudo-label file (``kit.data.pseudo_labels``).

A cell's confidence is the network's mean cell probability over the cell's pixels: every pixel of
an extracted cell already passed the cell-probability threshold (0.5 unless tuned), so a value near
1 says the whole cell is certain and one near the threshold that most of it is borderline. The
flow-error filter of the extraction still applies first.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from kit import postprocess
from kit.cli import DEFAULT_MIN_CONFIDENCE
from kit.data import sartorius
from kit.data.pseudo_labels import SEMI_SUPERVISED_DIR, pseudo_rows, rows_to_csv, semi_supervised_images
from kit.files import check_writable_dir, remove_if_left_empty, write_text_atomic
from kit.inference import ensemble
from kit.model import hardware
from kit.progress import module_logger
from kit.split import of_weights

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


def run(config: PseudoConfig) -> Path:
    """Check everything that names and headers can tell (device, weights, images), then predict the
    unannotated images, keep the confident cells and write the CSV atomically."""
    started = time.perf_counter()
    device = hardware.resolve_device(config.device)
    members = ensemble.load_ensemble(config.weights, device)
    check_flow_weights(members)
    layout = sartorius.find_competition(config.data, need_test=False)
    report_teacher_split(members, layout)
    images = semi_supervised_images(layout.root)
    if config.max_images is not None:
        images = dict(list(images.items())[: max(config.max_images, 0)])
    for path, _ in images.values():  # a bad image found now, not after every earlier one is predicted
        sartorius.check_image_header(path)
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
    """The CSV rows of ``images`` (``kit.inference.ensemble.predicted_instances``); a failure part-way (an
    image that cannot be decoded, a SIGTERM) first writes the rows of the images already predicted to ``config.out`` and says so."""
    rows, ids, done, kept, found = [], list(images), 0, 0, 0  # done: images predicted
    extraction = postprocess.PostprocessConfig().with_tuned(members[0].settings.postprocess)
    try:
        for image in ensemble.predicted_instances(members, images, device, config.batch_size, config.tta, extraction):
            confidence = cell_confidence(image.labels, image.prob)
            found += len(confidence)
            chosen = confident_labels(image.labels, confidence, config.min_confidence)
            kept += int(chosen.max())
            rows += pseudo_rows(image.id, image.cell_type, chosen, confidence[confidence >= config.min_confidence])
            done += 1
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


def report_teacher_split(members: Sequence[ensemble.Member], layout: sartorius.CompetitionLayout) -> None:
    """Say which validation split the pseudo-labels' networks held out (``kit.split``): a run that
    trains on the labels keeps it unseen only with the same ``--seed``/``--val-fraction``."""
    if layout.train_csv is None:
        return
    images = sartorius.image_table(sartorius.read_train_csv(layout.train_csv))
    held_out = of_weights(ensemble.split_records(members), images)
    if held_out.seed is None:
        logger.warning(f"kit.pseudo: warning: the weights were trained with different validation splits, so the "
                       f"labels carry what each learned from images another held out: a run trained on them is "
                       f"scored honestly only on the {len(held_out.val_ids)} images all of them held out")
        return
    logger.info(f"the weights held out the validation split ({held_out.describe()}, {len(held_out.val_ids)} images): "
                "train on these pseudo-labels with the same --seed and --val-fraction to keep it unseen")


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
