"""The competition's run-length encoding, compiled with numba.

Convention (exactly the competition's): space-separated ``start length`` pairs, starts 1-indexed,
pixels numbered row-major over the (height, width) image, runs ascending and not overlapping.
Internally runs are kept 0-indexed (``starts0``), as flat pixel offsets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numba
import numpy as np

from kit.competition import IMAGE_SHAPE

_ERRORS = {
    1: "a value is not a non-negative integer",
    2: "odd number of values (expected 'start length' pairs)",
    3: "a start is < 1 (starts are 1-indexed)",
    4: "a run length is < 1",
    5: "a run goes past the end",
    6: "runs are not ascending or overlap",
}


class RLEError(ValueError):
    """A malformed RLE string; ``row`` is its position in the list that was parsed."""

    def __init__(self, message: str, row: int):
        super().__init__(message)
        self.row = row


@dataclass(frozen=True)
class RunTable:
    """Runs of many RLE strings: row i owns ``starts[offsets[i]:offsets[i+1]]`` (0-indexed)."""

    starts: np.ndarray  # int64[n_runs]
    lengths: np.ndarray  # int64[n_runs]
    offsets: np.ndarray  # int64[n_rows + 1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts0, lengths) of row ``i``."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.starts[a:b], self.lengths[a:b]

    def areas(self) -> np.ndarray:
        """int64[n_rows]: pixel count of every row."""
        return np.diff(np.concatenate(([0], np.cumsum(self.lengths, dtype=np.int64)))[self.offsets])

    def owners(self) -> np.ndarray:
        """int64[n_runs]: the row each run belongs to."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.offsets))


def holds_mask(text) -> bool:
    """Whether a CSV cell holds an RLE: not when it is empty, blank or missing (NaN)."""
    return isinstance(text, str) and text.strip() != ""


def encode(mask: np.ndarray) -> str:
    """RLE string of a 2-D boolean mask ("" when it is empty)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode expects a 2-D mask, got shape {mask.shape}")
    return encode_labels(mask.astype(bool, copy=False))[0] if mask.any() else ""


def decode(rle: str, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """Boolean mask of shape ``shape`` from one RLE string."""
    starts0, lengths = parse_runs(rle, shape)
    flat = np.zeros(shape[0] * shape[1], dtype=bool)
    _paint_mask(flat, starts0, lengths)
    return flat.reshape(shape)


def parse_runs(rle: str, shape: tuple[int, int] = IMAGE_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Validated (starts0, lengths) int64 arrays of one RLE string; ``ValueError`` names the problem."""
    table = decode_many([rle], shape)
    return table.starts, table.lengths


def decode_many(rles: Sequence[str], shape: tuple[int, int] = IMAGE_SHAPE) -> RunTable:
    """Parse and validate many RLE strings in one compiled pass (a whole ``train.csv`` at once).

    A malformed string raises ``RLEError`` (a ``ValueError``) naming its row (0-based position in ``rles``),
    the value's position and the problem.
    """
    if len(rles) == 0:
        empty = np.zeros(0, np.int64)
        return RunTable(empty, empty, np.zeros(1, np.int64))
    for i, rle in enumerate(rles):
        if not isinstance(rle, str):
            raise ValueError(f"RLE row {i}: expected a string, got {type(rle).__name__} {rle!r}")
    try:
        buf = np.frombuffer("\n".join(rles).encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError as err:
        raise ValueError(f"RLE contains a non-ASCII character at offset {err.start}") from None
    starts, lengths, offsets, code, row, token = _parse(buf, len(rles), shape[0] * shape[1])
    if code:
        where = f" of the {shape[0]}x{shape[1]} image ({shape[0] * shape[1]} pixels)" if code == 5 else ""
        raise RLEError(
            f"malformed RLE in row {row}, value {token + 1}: {_ERRORS[code]}{where}: {_excerpt(rles[row], token)}",
            row,
        )
    return RunTable(starts, lengths, offsets)


def decode_labels(rles: Sequence[str], shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """int32 label image: label k is ``rles[k-1]``.

    Overlap rule: a pixel claimed by several masks keeps the first-listed one (the lowest label),
    so every label image is a partition of the annotated pixels.
    """
    table = decode_many(rles, shape)
    flat = np.zeros(shape[0] * shape[1], dtype=np.int32)
    _paint_labels(flat, table.starts, table.lengths, table.offsets)
    return flat.reshape(shape)


def encode_labels(labels: np.ndarray) -> list[str]:
    """RLE of every instance of a label image in ONE pass over its pixels.

    Element k-1 is label k's RLE, "" for a label that does not occur; the list has ``labels.max()``
    elements (0 is background). Labels must be non-negative integers.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"encode_labels expects a 2-D label image, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise ValueError(f"encode_labels expects integer labels, got dtype {labels.dtype}")
    flat = np.ascontiguousarray(labels).reshape(-1)
    if flat.dtype == bool:
        flat = flat.view(np.uint8)
    text, bounds = _encode_labels(flat)
    if len(bounds) == 0:
        raise ValueError("encode_labels: labels must be >= 0 (0 is background)")
    raw = text.tobytes().decode("ascii")
    return [raw[bounds[k] : bounds[k + 1]] for k in range(len(bounds) - 1)]


def _excerpt(rle: str, token: int) -> str:
    values = rle.split()
    lo = max(token - 2, 0)
    shown = " ".join(values[lo : token + 3])
    return f"...{shown}..." if len(values) > 5 else repr(rle)


# ---------------------------------------------------------------- compiled kernels

_BIG = np.int64(10) ** 17  # values are clamped here (no int64 overflow): anything this large is past the image


@numba.njit(cache=True)
def _parse(buf, n_rows, n_pixels):
    """Parse rows separated by '\\n' into flat runs; returns (starts0, lengths, offsets, code, row, token)."""
    cap = (len(buf) + 1) // 4 + 1
    starts = np.empty(cap, np.int64)
    lengths = np.empty(cap, np.int64)
    offsets = np.zeros(n_rows + 1, np.int64)
    n_runs, row, token, value, in_number, prev_end = 0, 0, 0, np.int64(0), False, np.int64(0)
    pending_start = np.int64(0)
    for i in range(len(buf) + 1):
        c = buf[i] if i < len(buf) else 10
        if 48 <= c <= 57:
            value = value * 10 + (c - 48) if value < _BIG else _BIG
            in_number = True
            continue
        if c != 32 and c != 10 and c != 9 and c != 13:
            return starts, lengths, offsets, 1, row, token
        if in_number:
            if token % 2 == 0:
                if value < 1:
                    return starts, lengths, offsets, 3, row, token
                pending_start = value - 1
            else:
                if value < 1:
                    return starts, lengths, offsets, 4, row, token
                if pending_start + value > n_pixels:
                    return starts, lengths, offsets, 5, row, token
                if pending_start < prev_end:
                    return starts, lengths, offsets, 6, row, token - 1
                starts[n_runs] = pending_start
                lengths[n_runs] = value
                n_runs += 1
                prev_end = pending_start + value
            token += 1
            value, in_number = np.int64(0), False
        if c == 10:
            if token % 2 == 1:
                return starts, lengths, offsets, 2, row, token - 1
            row += 1
            offsets[row] = n_runs
            token, prev_end = 0, np.int64(0)
    return starts[:n_runs].copy(), lengths[:n_runs].copy(), offsets, 0, 0, 0


@numba.njit(cache=True)
def _paint_mask(flat, starts, lengths):
    for r in range(len(starts)):
        flat[starts[r] : starts[r] + lengths[r]] = True


@numba.njit(cache=True)
def _paint_labels(flat, starts, lengths, offsets):
    for k in range(len(offsets) - 1):
        for r in range(offsets[k], offsets[k + 1]):
            for p in range(starts[r], starts[r] + lengths[r]):
                if flat[p] == 0:
                    flat[p] = k + 1


@numba.njit(cache=True)
def _write_int(out, pos, value):
    """Write ``value`` (>= 0) as ASCII digits at ``out[pos:]``; return the new position."""
    n_digits, v = 1, value
    while v >= 10:
        v //= 10
        n_digits += 1
    for d in range(n_digits - 1, -1, -1):
        out[pos + d] = 48 + value % 10
        value //= 10
    return pos + n_digits


@numba.njit(cache=True)
def _encode_labels(flat):
    """One pixel pass collects runs in pixel order; a counting sort over runs groups them by label.

    Returns (ASCII text of all RLEs, label k's text at bounds[k-1]:bounds[k]); empty bounds when a
    label is negative.
    """
    # Pass 1 (the only one over pixels) records where the label changes: a tight loop whose branch
    # is rarely taken. Pass 2 turns the (few) changes into runs of non-zero labels.
    change_at = np.empty(len(flat) + 1, np.int64)  # worst case: the label changes at every pixel
    change_to = np.empty(len(flat) + 1, np.int64)
    n_changes, prev = 0, 0
    for i in range(len(flat)):
        if flat[i] != prev:
            change_at[n_changes], change_to[n_changes] = i, flat[i]
            n_changes += 1
            prev = flat[i]
    change_at[n_changes] = len(flat)
    run_start = np.empty(n_changes, np.int64)
    run_len = np.empty_like(run_start)
    run_label = np.empty_like(run_start)
    n_runs, n_labels = 0, 0
    for c in range(n_changes):
        lab = change_to[c]
        if lab < 0:
            return np.empty(0, np.uint8), np.empty(0, np.int64)
        if lab > 0:
            run_start[n_runs], run_label[n_runs] = change_at[c], lab
            run_len[n_runs] = change_at[c + 1] - change_at[c]
            n_runs += 1
            n_labels = max(n_labels, lab)
    first = np.zeros(n_labels + 2, np.int64)
    for r in range(n_runs):
        first[run_label[r] + 1] += 1
    for k in range(1, n_labels + 2):
        first[k] += first[k - 1]
    order = np.empty(n_runs, np.int64)
    cursor = first.copy()
    for r in range(n_runs):  # stable: runs stay ascending within a label
        order[cursor[run_label[r]]] = r
        cursor[run_label[r]] += 1
    # 1-indexed start (<= 20 digits) + space + length + space per run bounds the text size.
    text = np.empty(n_runs * 42 + 1, np.uint8)
    bounds = np.zeros(n_labels + 1, np.int64)
    pos = 0
    for k in range(1, n_labels + 1):
        for q in range(first[k], first[k + 1]):
            r = order[q]
            if q > first[k]:
                text[pos] = 32
                pos += 1
            pos = _write_int(text, pos, run_start[r] + 1)
            text[pos] = 32
            pos = _write_int(text, pos + 1, run_len[r])
        bounds[k] = pos
    return text[:pos], bounds
