"""Write and check ``submission.csv`` as Kaggle expects it, before Kaggle gets to reject it.

Format: header ``id,predicted``; one row per predicted cell with its RLE (``kit.rle``); a row
``id,`` for an image without cells; every test image present; no pixel in two masks of one image.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from collections import Counter
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from kit import rle
from kit.competition import IMAGE_SHAPE
from kit.files import atomic_output

HEADER = "id,predicted"
_FIX_OVERLAP = "assign every pixel to one cell (build one label image per image and write it with write_submission)"


class SubmissionError(ValueError):
    """A submission Kaggle would reject or mis-score; the message names the id and the row."""


def write_submission(predictions: Mapping[str, np.ndarray], path: str | os.PathLike,
                     expected_ids: Iterable[str] | None = None,
                     shape: tuple[int, int] = IMAGE_SHAPE) -> Path:
    """Write ``submission.csv`` from one label image per image id (0 = background), atomically.

    Rows follow ``expected_ids`` (else the mapping's order); with ``expected_ids`` the ids must be
    exactly those. The file is validated before it replaces ``path``, so a bad one never lands.
    """
    ids = list(predictions) if expected_ids is None else list(expected_ids)
    _check_same_ids(predictions, ids)
    lines = [HEADER]
    for image_id in ids:
        _check_id(image_id)
        labels = _check_label_image(predictions[image_id], image_id, shape)
        cells = [code for code in rle.encode_labels(labels) if code]
        lines += [f"{image_id},{code}" for code in cells] or [f"{image_id},"]
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="ascii", newline="\n")
        validate(tmp, ids, shape)
    return path


def validate(submission: str | os.PathLike | pd.DataFrame, expected_ids: Iterable[str],
             shape: tuple[int, int] = IMAGE_SHAPE) -> None:
    """Raise ``SubmissionError`` naming the id and row for: a bad header, malformed or out-of-bounds
    runs, overlapping masks within an image, ids not in ``expected_ids``, expected ids missing."""
    frame, where = _read(submission)
    ids = frame["id"].to_numpy(dtype=object)
    texts = frame["predicted"].to_numpy(dtype=object)
    expected = set(expected_ids)
    for i, image_id in enumerate(ids):
        if image_id not in expected:
            raise SubmissionError(f"{where(i)}: unknown image id {image_id!r}: it is not one of the "
                                  f"{len(expected)} expected images; remove its rows")
    missing = sorted(expected - set(ids))
    if missing:
        raise SubmissionError(f"{_origin(submission)}: {len(missing)} expected image(s) missing, e.g. "
                              f"{missing[:5]}; add a row `<id>,` for an image without cells")
    rows = np.flatnonzero([rle.holds_mask(t) for t in texts])
    try:
        table = rle.decode_many(texts[rows].tolist(), shape)
    except rle.RLEError as err:
        i = int(rows[err.row])
        raise SubmissionError(f"{where(i)} (image {ids[i]}): {err}") from None
    _check_overlaps(ids, rows, table, where)


def read_submission(path: str | os.PathLike) -> pd.DataFrame:
    """``submission.csv`` as a frame of strings (id, predicted; "" for no cell).

    Checks the CSV shape only (header, two fields per line, non-empty ids); ``validate`` checks the rest.
    """
    path = Path(path)
    try:
        with open(path, encoding="ascii", newline="") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SubmissionError(f"cannot read submission {path}: {err}") from None
    header = ",".join(lines[0]) if lines else ""
    if header != HEADER:
        raise SubmissionError(f"{path} line 1: header is {header!r}; expected {HEADER!r}")
    for n, fields in enumerate(lines[1:], start=2):
        if len(fields) != 2:
            raise SubmissionError(f"{path} line {n}: {len(fields)} field(s), expected 2 (`id,predicted`; "
                                  "`id,` for an image without cells)")
        if fields[0] == "":
            raise SubmissionError(f"{path} line {n}: empty id")
    return pd.DataFrame(lines[1:], columns=["id", "predicted"], dtype=object)


# ---------------------------------------------------------------- private helpers


def _read(submission) -> tuple[pd.DataFrame, Callable[[int], str]]:
    """The frame (ids and RLEs as strings) and a function naming row i for error messages."""
    if isinstance(submission, pd.DataFrame):
        if list(submission.columns) != ["id", "predicted"]:
            raise SubmissionError(f"submission columns are {list(submission.columns)}; expected ['id', 'predicted']")
        frame = submission.astype(object).where(submission.notna(), "")
        frame = frame.astype(str).reset_index(drop=True)
        return frame, lambda i: f"submission row {i}"
    path = Path(submission)
    return read_submission(path), lambda i: f"{path} line {i + 2}"


def _origin(submission) -> str:
    return "submission" if isinstance(submission, pd.DataFrame) else str(submission)


def _check_overlaps(ids: np.ndarray, rows: np.ndarray, table: rle.RunTable, where) -> None:
    """Sort every run by (image, start); masks are disjoint iff each run ends before the next one starts.

    (If consecutive runs are disjoint, then end_k <= start_k+1 < end_k+1 <= start_k+2 ..., so all are.)
    """
    image_code = pd.factorize(ids[rows])[0] if len(rows) else np.zeros(0, np.int64)
    run_row = table.owners()  # index into `rows`
    run_image = image_code[run_row]
    order = np.lexsort((table.starts, run_image))
    starts, ends = table.starts[order], (table.starts + table.lengths)[order]
    clash = np.flatnonzero((run_image[order][1:] == run_image[order][:-1]) & (starts[1:] < ends[:-1]))
    if len(clash):
        k = clash[0]
        first, second = sorted((int(rows[run_row[order[k]]]), int(rows[run_row[order[k + 1]]])))
        pixel = int(starts[k + 1]) + 1
        raise SubmissionError(f"{where(second)} (image {ids[second]}): its mask overlaps the mask of "
                              f"{where(first)} at pixel {pixel} (1-indexed); {_FIX_OVERLAP}")


def _check_same_ids(predictions: Mapping[str, np.ndarray], ids: list[str]) -> None:
    duplicated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicated:
        raise SubmissionError(f"expected ids repeat: {duplicated[:5]}")
    known = set(ids)
    missing = [i for i in ids if i not in predictions]
    unknown = [i for i in predictions if i not in known]
    if missing:
        raise SubmissionError(f"no prediction for {len(missing)} expected image(s), e.g. {missing[:5]}; "
                              "pass an all-zero label image for an image without cells")
    if unknown:
        raise SubmissionError(f"predictions for {len(unknown)} image(s) not expected, e.g. {unknown[:5]}")


def _check_id(image_id) -> None:
    if not isinstance(image_id, str) or not image_id or any(c in image_id for c in ',"\r\n'):
        raise SubmissionError(f"image id {image_id!r} cannot be written to a CSV row: "
                              "it must be a non-empty string without commas, quotes or newlines")


def _check_label_image(labels, image_id: str, shape: tuple[int, int]) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != tuple(shape):
        raise SubmissionError(f"image {image_id}: label image has shape {labels.shape}; expected {tuple(shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise SubmissionError(f"image {image_id}: label image has dtype {labels.dtype}; expected integers "
                              "(0 = background, one positive label per cell)")
    if labels.size and labels.min() < 0:
        raise SubmissionError(f"image {image_id}: negative labels; 0 is background, cells are > 0")
    return labels
