"""Pseudo-label files: ``kit.pseudo``'s CSV (``train.csv``'s form, then ``confidence``) written and
read back as training samples, and the competition's unannotated images they label.

``train_semi_supervised/`` (in the competition folder, beside ``train/``) holds 1,972 flat 520x704
PNGs without annotations; each name's prefix before ``[`` is its cell type (``astros`` for astro,
``cort``, ``shsy5y``). An image left without a cell gets no row (``train.csv`` has none either).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from kit import rle
from kit.competition import COMPETITION_SLUG, IMAGE_SHAPE
from kit.data import sartorius
from kit.data.sartorius import TRAIN_CSV_COLUMNS

CONFIDENCE_COLUMN = "confidence"  # after train.csv's columns: the cell's mean cell probability


SEMI_SUPERVISED_DIR = "train_semi_supervised"


_NAME_TYPES = {"astros": "astro", "astro": "astro", "cort": "cort", "shsy5y": "shsy5y"}


def semi_supervised_images(competition_root: str | Path) -> dict[str, tuple[Path, str]]:
    """``{image id: (path, cell type)}`` of ``train_semi_supervised/``, sorted by id (the file's stem)."""
    folder = Path(competition_root) / SEMI_SUPERVISED_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"no {SEMI_SUPERVISED_DIR}/ in {competition_root}: the competition's input ships "
                                f"it beside train/ (kaggle competitions download -c {COMPETITION_SLUG})")
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


def pseudo_rows(image_id: str, cell_type: str, labels: np.ndarray, confidence: Sequence[float]) -> list[dict]:
    """One ``train.csv`` row per cell of ``labels`` (RLE by ``kit.rle.encode_labels``), blank metadata."""
    runs = rle.encode_labels(labels)
    return [{"id": image_id, "annotation": run, "width": IMAGE_SHAPE[1], "height": IMAGE_SHAPE[0],
             "cell_type": cell_type, **dict.fromkeys(TRAIN_CSV_COLUMNS[5:], ""), CONFIDENCE_COLUMN: f"{value:.4f}"}
            for run, value in zip(runs, confidence) if run]


def rows_to_csv(rows: Sequence[Mapping]) -> str:
    """The CSV text of ``pseudo_rows`` (a header alone when there is none)."""
    buffer = io.StringIO()
    pd.DataFrame(list(rows), columns=[*TRAIN_CSV_COLUMNS, CONFIDENCE_COLUMN]).to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def holds_cells(csv_path: str | Path) -> bool:
    """Whether a pseudo-label file of ``rows_to_csv`` holds a cell (a row below its header)."""
    with open(csv_path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip()) > 1


def load_extra_samples(competition_root: str | Path, csv_path: str | Path,
                       known_ids: Sequence[str] = ()) -> list[sartorius.Sample]:
    """``kit.train --extra-data``: the images of a pseudo-label CSV (``train.csv``'s form, checked by
    ``kit.sartorius.read_train_csv``) from ``train_semi_supervised/``, with their label images. An id that is
    also an annotated image (``known_ids``) or has no image there is an error naming the CSV line."""
    csv_path = Path(csv_path)
    df = sartorius.read_train_csv(csv_path)
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
        sartorius.check_image_header(images[image_id][0])
    samples = []
    for image_id, rows in df.groupby("id", sort=True):
        path, cell_type = images[image_id]
        if rows["cell_type"].iloc[0] != cell_type:
            raise ValueError(f"{csv_path}: image {image_id} is labelled {rows['cell_type'].iloc[0]}, but its name "
                             f"says {cell_type}")
        annotations = rows["annotation"].tolist()
        image = sartorius.load_image(path)
        samples.append(sartorius.Sample(image_id, cell_type, image, rle.decode_labels(annotations, image.shape), annotations))
    return samples
