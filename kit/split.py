"""The validation split, in one home: which annotated images a run holds out, how they are drawn
from ``train.csv`` (``split_train_val``, the only place), what a checkpoint records of them
(``Split.to_dict``, kept in ``InferenceSettings.split``), and the split a command tunes or scores
given weights on (``of_weights``): the weights' own, never a default that may hold their training
images.

Weights written before the split was recorded are taken to have the default split (seed 0,
val-fraction 0.2), with a one-line note. Several weights files with different splits are scored
only on the images that every one of them held out: the union of their training images is not
scored.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from kit.competition import CELL_TYPES

DEFAULT_SEED = 0
DEFAULT_VAL_FRACTION = 0.2
_SHOWN = 5  # ids a message names before "..."

logger = logging.getLogger(__name__)


def split_train_val(images: pd.DataFrame, val_fraction: float = DEFAULT_VAL_FRACTION,
                    seed: int = DEFAULT_SEED) -> tuple[list[str], list[str]]:
    """Deterministic split stratified by cell type: ``round(n * val_fraction)`` images of each type.

    ``images`` has columns ``id, cell_type`` (``kit.data.sartorius.image_table``); the result does not depend
    on row order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cell_type in CELL_TYPES:  # fixed order keeps the draws reproducible
        ids = sorted(images.loc[images["cell_type"] == cell_type, "id"])
        chosen = set(rng.permutation(len(ids))[: round(len(ids) * val_fraction)].tolist())
        for i, image_id in enumerate(ids):
            (val if i in chosen else train).append(image_id)
    return sorted(train), sorted(val)


def ids_sha256(ids: Iterable[str]) -> str:
    """The digest of a set of image ids (sorted, space-joined), as ``kit.tune``'s validation record keeps it."""
    return hashlib.sha256(" ".join(sorted(ids)).encode()).hexdigest()


@dataclass(frozen=True)
class Split:
    """The annotated images a run held out (``val_ids``, sorted) and how they were drawn.

    ``seed`` and ``val_fraction`` are None for the images held out in common by several splits
    (``of_weights``); ``recorded`` is False for the default split assumed for older weights.
    """

    val_ids: tuple[str, ...]
    seed: int | None = DEFAULT_SEED
    val_fraction: float | None = DEFAULT_VAL_FRACTION
    recorded: bool = True

    @classmethod
    def compute(cls, images: pd.DataFrame, seed: int = DEFAULT_SEED, val_fraction: float = DEFAULT_VAL_FRACTION,
                recorded: bool = True) -> "Split":
        """The split of ``images`` (``kit.data.sartorius.image_table``) that ``kit.train --seed --val-fraction`` draws."""
        return cls(tuple(split_train_val(images, val_fraction, seed)[1]), seed, val_fraction, recorded)

    @property
    def sha256(self) -> str:
        return ids_sha256(self.val_ids)

    def train_ids(self, images: pd.DataFrame) -> list[str]:
        """The annotated images of ``images`` outside the split: what the run may have trained on."""
        held = set(self.val_ids)
        return sorted(i for i in images["id"] if i not in held)

    def to_dict(self) -> dict:
        """What a checkpoint records (plain values, safe for ``weights_only``)."""
        return {"seed": self.seed, "val_fraction": self.val_fraction, "val_ids": list(self.val_ids),
                "val_ids_sha256": self.sha256}

    @classmethod
    def from_dict(cls, record: Mapping) -> "Split":
        """Rebuild from ``to_dict``; ids that do not match their digest are an error."""
        split = cls(tuple(sorted(str(i) for i in record["val_ids"])), record.get("seed"), record.get("val_fraction"))
        if record.get("val_ids_sha256", split.sha256) != split.sha256:
            raise ValueError("the recorded validation ids do not match their digest (a damaged file)")
        return split

    def describe(self) -> str:
        """``seed 1, val-fraction 0.2`` (or what an intersection is)."""
        if self.seed is None:
            return "the images every weights file held out"
        default = "" if self.recorded else ", assumed"
        return f"seed {self.seed}, val-fraction {self.val_fraction:g}{default}"

    def overlap_warning(self, ids: Iterable[str], asked: str) -> str | None:
        """One line naming the images of ``ids`` that the weights may have trained on (None: none)."""
        held = set(self.val_ids)
        trained = sorted(i for i in ids if i not in held)
        if not trained:
            return None
        return (f"warning: {asked}: {len(trained)} image(s) lie outside the weights' validation split "
                f"({self.describe()}), so the weights trained on them and their scores are optimistic: "
                f"{some_ids(trained)}")


def of_weights(records: Sequence[tuple[str, Mapping | None]], images: pd.DataFrame) -> Split:
    """The split to tune and score weights on: ``records`` holds each file's path and recorded split
    (``InferenceSettings.split``; None for older weights: the default split, with a note). Files with
    different splits give the images none of them trained on, with a note. No records: the default
    split (what a caller without weights asks for, and says so itself)."""
    if not records:
        return Split.compute(images)
    splits = []
    for path, record in records:
        if record is None:
            logger.info(f"note: {path} records no validation split (written before the kit recorded it): "
                        f"its split is assumed to be the default (seed {DEFAULT_SEED}, val-fraction "
                        f"{DEFAULT_VAL_FRACTION:g})")
            splits.append(Split.compute(images, recorded=False))
            continue
        try:
            splits.append(Split.from_dict(record))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: unreadable validation split: {err}") from None
    distinct = {split.val_ids: split for split in splits}
    if len(distinct) == 1:
        return splits[0]
    common = set.intersection(*(set(ids) for ids in distinct))
    logger.info(f"note: the {len(records)} weights files hold {len(distinct)} different validation splits "
                f"({'; '.join(s.describe() for s in distinct.values())}): only the {len(common)} images that "
                "every one held out are used; the union of their training images is not scored")
    if not common:
        raise ValueError(f"{', '.join(str(p) for p, _ in records)}: no annotated image is held out by all of "
                         "them; pass weights trained with the same --seed and --val-fraction")
    return Split(tuple(sorted(common)), None, None)


def present(split: Split, images: pd.DataFrame, where: str) -> list[str]:
    """The split's validation ids that ``images`` (this data folder's) holds, with a note for those it lacks."""
    known = set(images["id"])
    found = [i for i in split.val_ids if i in known]
    missing = len(split.val_ids) - len(found)
    if missing:
        logger.info(f"note: {missing} of the {len(split.val_ids)} validation images of the weights' split are "
                    f"not in {where}: using the {len(found)} that are")
    if not found:
        raise ValueError(f"{where} holds none of the weights' {len(split.val_ids)} validation images "
                         f"({some_ids(list(split.val_ids))}); pass the --data the weights were trained on")
    return found


def some_ids(ids: Sequence[str]) -> str:
    """The first few of ``ids``, space-separated, then ``...`` if there are more."""
    return " ".join(ids[:_SHOWN]) + (" ..." if len(ids) > _SHOWN else "")
