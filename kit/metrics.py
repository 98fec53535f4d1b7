"""The competition's leaderboard metric, exactly, plus the method paper's pixel metrics (no torch).

Definition (Sartorius Cell Instance Segmentation): for each image and each IoU threshold t in
0.50, 0.55, ..., 0.95, a predicted cell hits a true cell when their IoU > t (strictly); matches are
one-to-one; precision(t) = TP / (TP + FP + FN). An image's score is the mean of precision(t) over
the thresholds, and the final score the mean over images (not TP/FP/FN pooled over images).

Conventions this module fixes (documented because the competition's text leaves them open):
- The solution decides which images are scored. An image of the solution that the submission lacks
  scores as an image with no predictions (0 when it has cells). A submission id the solution does
  not know is an error.
- An empty ``annotation`` / ``predicted`` (``""`` or NaN) is no cell: it adds no instance.
- An image with neither true nor predicted cells scores 1 at every threshold (nothing to find,
  nothing wrongly found). Kaggle's solution never holds such an image, so the leaderboard never
  meets this case; locally it arises from a solution row with an empty annotation, or from
  ``score_labels`` given an image without true cells.
- IoU is compared with t as an exact rational: ``100 * inter > round(100 * t) * union`` in integers,
  so an IoU of exactly 3/4 is not a hit at t = 0.75 (floats can go either way: ``np.arange(0.5, 1, 0.05)``
  holds 0.7000000000000002, and a float IoU is rounded).

IoU is computed sparsely: from overlaps of the runs (two RLE sets) or from label co-occurrence
(RLEs against a label image), never from stacks of full-size masks. True masks may overlap each
other (the training annotations do): every mask keeps its own runs, so areas and intersections are
exact, and a pixel in two true masks counts in both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numba
import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from kit import rle
from kit.competition import IMAGE_SHAPE
from kit.rle import RunTable

THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)  # 0.50, 0.55, ..., 0.95: exact decimals
_PERCENT = np.round(THRESHOLDS * 100).astype(np.int64)  # integer thresholds for the exact comparison


@dataclass(frozen=True)
class Overlaps:
    """Sparse intersections between one image's n true and m predicted cells.

    Pair q: true cell ``true_index[q]`` and predicted cell ``pred_index[q]`` share
    ``intersection[q] > 0`` pixels; pairs that do not touch are absent. Each (true, pred) pair
    occurs once.
    """

    true_area: np.ndarray  # int64[n]
    pred_area: np.ndarray  # int64[m]
    true_index: np.ndarray  # int64[k]
    pred_index: np.ndarray  # int64[k]
    intersection: np.ndarray  # int64[k]

    def union(self) -> np.ndarray:
        """int64[k]: pixels in either cell of each pair."""
        return self.true_area[self.true_index] + self.pred_area[self.pred_index] - self.intersection


@dataclass(frozen=True)
class ScoreReport:
    """The leaderboard score and its breakdowns."""

    score: float
    per_image: pd.DataFrame  # id, cell_type, score, n_true, n_pred (solution order: sorted by id)
    per_threshold: pd.DataFrame  # threshold, precision (mean over images), tp, fp, fn (summed)
    per_cell_type: pd.DataFrame  # cell_type, n_images, score, then one precision column per threshold
    precisions: np.ndarray  # float64[n_images, 10]: precision(t) of every image, rows as per_image


def score(solution: pd.DataFrame, submission: pd.DataFrame,
          shape: tuple[int, int] = IMAGE_SHAPE) -> float:
    """The leaderboard score of ``submission`` (columns id, predicted) against ``solution`` (id, annotation)."""
    _, precisions, _, _ = _evaluate(solution, submission, shape)
    return float(precisions.mean(axis=1).mean()) if len(precisions) else _no_images()


def score_report(solution: pd.DataFrame, submission: pd.DataFrame,
                 cell_types: Mapping[str, str] | None = None,
                 shape: tuple[int, int] = IMAGE_SHAPE) -> ScoreReport:
    """``score`` with its breakdown per image, per threshold and per cell type.

    ``cell_types`` maps image id -> cell type; by default the solution's ``cell_type`` column is
    used when it has one, else every image is of type "unknown".
    """
    ids, precisions, tp, counts = _evaluate(solution, submission, shape)
    if not len(ids):
        _no_images()
    if cell_types is None and "cell_type" in solution.columns:
        cell_types = dict(zip(solution["id"], solution["cell_type"]))
    types = [cell_types.get(i, "unknown") for i in ids] if cell_types is not None else ["unknown"] * len(ids)
    image_scores = precisions.mean(axis=1)
    per_image = pd.DataFrame({"id": ids, "cell_type": types, "score": image_scores,
                              "n_true": counts[:, 0], "n_pred": counts[:, 1]})
    per_threshold = pd.DataFrame({
        "threshold": THRESHOLDS, "precision": precisions.mean(axis=0), "tp": tp.sum(axis=0),
        "fp": (counts[:, 1:2] - tp).sum(axis=0), "fn": (counts[:, 0:1] - tp).sum(axis=0)})
    columns = {f"{t:.2f}": precisions[:, j] for j, t in enumerate(THRESHOLDS)}
    by_type = pd.DataFrame({"cell_type": types, "score": image_scores, **columns}).groupby("cell_type")
    per_cell_type = by_type.mean().reset_index()
    per_cell_type.insert(1, "n_images", by_type.size().to_numpy())
    return ScoreReport(float(image_scores.mean()), per_image, per_threshold, per_cell_type, precisions)


def score_labels(truth: Sequence[Sequence[str]], predictions: Sequence[np.ndarray]) -> np.ndarray:
    """float64[n_images]: each image's score, true cells as RLEs against a predicted label image.

    ``truth[i]`` holds image i's original (possibly overlapping) annotation RLEs; ``predictions[i]``
    is an integer label image (0 = background; labels need not be consecutive). This is the
    trainer's validation path: no RLE encoding of the predictions, one pass over the true pixels.
    """
    if len(truth) != len(predictions):
        raise ValueError(f"score_labels: {len(truth)} truth lists but {len(predictions)} label images")
    shapes = [np.shape(labels) for labels in predictions]
    return score_label_runs([rle.decode_many([r for r in rles if rle.holds_mask(r)], shape)
                             for rles, shape in zip(truth, shapes)], predictions)


def score_label_runs(truth: Sequence[RunTable], predictions: Sequence[np.ndarray]) -> np.ndarray:
    """``score_labels`` with the true cells already parsed (``rle.decode_many`` of each image's RLEs
    at its label image's shape): a validation split parses its truth once per run, not per epoch."""
    if len(truth) != len(predictions):
        raise ValueError(f"score_label_runs: {len(truth)} run tables but {len(predictions)} label images")
    scores = np.empty(len(truth))
    for i, (true_runs, labels) in enumerate(zip(truth, predictions)):
        labels = _check_labels(labels, f"score_labels: prediction {i}")
        overlaps = label_overlaps(true_runs, labels)
        tp = true_positives(overlaps)
        scores[i] = precisions_at(tp, len(overlaps.true_area), len(overlaps.pred_area)).mean()
    return scores


def pixel_metrics(true_mask: np.ndarray, pred_mask: np.ndarray) -> dict[str, float]:
    """The method paper's pixel metrics on union (foreground) masks: Dice, IoU and accuracy.

    Dice = 2|A∩B| / (|A| + |B|) = 2·IoU / (1 + IoU) >= IoU. Two empty masks agree perfectly
    (Dice = IoU = 1). Accuracy counts background pixels too, so it is high on sparse images.
    """
    true_mask, pred_mask = np.asarray(true_mask), np.asarray(pred_mask)
    if true_mask.shape != pred_mask.shape:
        raise ValueError(f"pixel_metrics: shapes differ: truth {true_mask.shape}, prediction {pred_mask.shape}")
    if true_mask.dtype != bool or pred_mask.dtype != bool:
        raise ValueError(f"pixel_metrics expects boolean masks, got {true_mask.dtype} and {pred_mask.dtype}")
    inter = int(np.count_nonzero(true_mask & pred_mask))
    total = int(np.count_nonzero(true_mask)) + int(np.count_nonzero(pred_mask))
    union = total - inter
    return {"dice": 2 * inter / total if total else 1.0,
            "iou": inter / union if union else 1.0,
            "accuracy": float(np.count_nonzero(true_mask == pred_mask) / max(true_mask.size, 1))}


def run_overlaps(true_runs: RunTable, pred_runs: RunTable) -> Overlaps:
    """Sparse intersections of two sets of masks given as runs (``kit.rle.decode_many``), one image.

    Either set may hold overlapping masks; every row is one cell (an empty row is a cell of area 0).
    """
    for name, table in (("true", true_runs), ("pred", pred_runs)):
        _check_run_table(table, name)
    t_owner = true_runs.owners()
    p_owner = pred_runs.owners()
    # numpy's stable sort exploits the ascending runs within each cell (faster than numba's argsort)
    t_order = np.argsort(true_runs.starts, kind="stable")
    p_order = np.argsort(pred_runs.starts, kind="stable")
    ti, pj, inter = _run_overlaps(true_runs.starts, true_runs.starts + true_runs.lengths, t_owner, t_order,
                                  pred_runs.starts, pred_runs.starts + pred_runs.lengths, p_owner, p_order,
                                  len(true_runs), len(pred_runs))
    return Overlaps(true_runs.areas(), pred_runs.areas(), ti, pj, inter)


def label_overlaps(true_runs: RunTable, labels: np.ndarray) -> Overlaps:
    """Sparse intersections of true masks (runs, may overlap) with the cells of a label image.

    Predicted cell j is the j-th smallest non-zero label present in ``labels``.
    """
    _check_run_table(true_runs, "true")
    labels = _check_labels(labels, "label_overlaps")
    flat = labels.reshape(-1)
    if len(true_runs.starts) and (true_runs.starts + true_runs.lengths).max() > flat.size:
        raise ValueError(f"label_overlaps: true runs go past the {labels.shape} label image")
    flat, lookup, pred_area = _compact_labels(flat)
    ti, pj, inter = _label_overlaps(true_runs.starts, true_runs.lengths, true_runs.offsets,
                                    flat, lookup, len(pred_area))
    return Overlaps(true_runs.areas(), pred_area, ti, pj, inter)


def true_positives(overlaps: Overlaps) -> np.ndarray:
    """int64[10]: the largest number of one-to-one matches with IoU > t, for each threshold t.

    Why counting pairs is usually exact: IoU(P, T) > 1/2 means P∩T holds more than half of the
    union, so more than half of P and more than half of T. Two disjoint true cells cannot both hold
    more than half of P, so with disjoint true cells every prediction has at most one partner with
    IoU > 0.5 (and at any higher t), and with disjoint predictions every true cell has at most one:
    the pairs with IoU > t are then already a one-to-one matching, and TP is their number.
    Annotations may overlap, though (train.csv's do), and ``score`` accepts overlapping predictions,
    so when some cell has two partners at t = 0.5 the matches are counted by a maximum bipartite
    matching, which maximises TP and hence the precision.
    """
    union = overlaps.union()
    hits = 100 * overlaps.intersection[None, :] > _PERCENT[:, None] * union[None, :]  # [10, k]
    tp = hits.sum(axis=1).astype(np.int64)
    ti, pj = overlaps.true_index[hits[0]], overlaps.pred_index[hits[0]]
    if len(np.unique(ti)) == len(ti) and len(np.unique(pj)) == len(pj):
        return tp  # no cell has two partners at t=0.5, hence at no higher t either
    for j in range(len(THRESHOLDS)):
        tp[j] = _matching_size(overlaps.true_index[hits[j]], overlaps.pred_index[hits[j]])
    return tp


def precisions_at(tp: np.ndarray, n_true, n_pred) -> np.ndarray:
    """float64[10]: TP / (TP + FP + FN) per threshold; 1 where the image has no true and no predicted cell.

    Broadcasts: ``tp`` int[n, 10] with ``n_true``, ``n_pred`` int[n, 1] gives float64[n, 10].
    """
    tp = np.asarray(tp, dtype=np.int64)
    denominator = n_true + n_pred - tp  # TP + FP + FN with FP = n_pred - TP, FN = n_true - TP
    return np.where(denominator > 0, tp / np.maximum(denominator, 1), 1.0)


# ---------------------------------------------------------------- private helpers


def _evaluate(solution: pd.DataFrame, submission: pd.DataFrame, shape: tuple[int, int]):
    """Per image of the solution (sorted by id): ids, precisions [n,10], tp [n,10], (n_true, n_pred) [n,2]."""
    _require_columns(solution, ("id", "annotation"), "solution")
    _require_columns(submission, ("id", "predicted"), "submission")
    sol_ids = solution["id"].astype(str).to_numpy()
    sub_ids = submission["id"].astype(str).to_numpy()
    ids = np.unique(sol_ids)
    unknown = np.setdiff1d(np.unique(sub_ids), ids)
    if len(unknown):
        raise ValueError(f"submission holds {len(unknown)} id(s) not in the solution, e.g. {unknown[:5].tolist()}; "
                         "a submission may only hold the solution's images")
    true_groups = _grouped_runs(sol_ids, solution["annotation"], ids, shape, "solution")
    pred_groups = _grouped_runs(sub_ids, submission["predicted"], ids, shape, "submission")
    tp = np.zeros((len(ids), len(THRESHOLDS)), np.int64)
    counts = np.zeros((len(ids), 2), np.int64)
    for i in range(len(ids)):
        overlaps = run_overlaps(true_groups(i), pred_groups(i))
        tp[i] = true_positives(overlaps)
        counts[i] = len(overlaps.true_area), len(overlaps.pred_area)
    precisions = precisions_at(tp, counts[:, :1], counts[:, 1:])  # every image at once
    return ids.tolist(), precisions, tp, counts


def _grouped_runs(row_ids: np.ndarray, column: pd.Series, ids: np.ndarray, shape, what: str):
    """Parse every non-empty RLE of a frame at once; return ``image index -> RunTable`` of that image."""
    texts = column.to_numpy(dtype=object)
    keep = np.array([rle.holds_mask(t) for t in texts], dtype=bool)
    rows = np.flatnonzero(keep)
    order = rows[np.argsort(row_ids[rows], kind="stable")]
    try:
        table = rle.decode_many(texts[order].tolist(), shape)
    except rle.RLEError as err:
        row = int(order[err.row])
        raise ValueError(f"{what} row {row} (image {row_ids[row]}): {err}") from None
    bounds = np.searchsorted(row_ids[order], ids, side="left"), np.searchsorted(row_ids[order], ids, side="right")

    def image_runs(i: int) -> RunTable:
        lo, hi = bounds[0][i], bounds[1][i]
        offsets = table.offsets[lo:hi + 1]
        a, b = offsets[0], offsets[-1]
        return RunTable(table.starts[a:b], table.lengths[a:b], offsets - a)

    return image_runs


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; it has {list(frame.columns)}")


def _no_images() -> float:
    raise ValueError("the solution holds no image: nothing to score")


def _check_run_table(table: RunTable, name: str) -> None:
    offsets = np.asarray(table.offsets)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(table.starts) \
            or np.any(np.diff(offsets) < 0) or len(table.starts) != len(table.lengths):
        raise ValueError(f"{name} RunTable is inconsistent: build it with kit.rle.decode_many")


def _check_labels(labels: np.ndarray, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}: expected a 2-D integer label image, got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{what}: labels must be >= 0 (0 is background), found {labels.min()}")
    return np.ascontiguousarray(labels)


def _compact_labels(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixel labels, lookup label -> cell index or -1, int64 area of each cell); cells in ascending label order.

    Labels are used as indices into the lookup; values far above the pixel count are first
    replaced by their rank so that the lookup stays small.
    """
    if int(flat.max(initial=0)) > 4 * flat.size:
        values, inverse = np.unique(flat, return_inverse=True)
        flat = inverse.reshape(-1) + (1 if values[0] != 0 else 0)  # keep 0 as background
    counts = np.bincount(flat)
    present = np.flatnonzero(counts[1:]) + 1
    lookup = np.full(len(counts), -1, np.int64)
    lookup[present] = np.arange(len(present))
    return flat, lookup, counts[present].astype(np.int64)


def _matching_size(ti: np.ndarray, pj: np.ndarray) -> int:
    """Largest one-to-one matching among hit pairs: isolated pairs count directly, the rest via assignment."""
    _, t_inv, t_deg = np.unique(ti, return_inverse=True, return_counts=True)
    _, p_inv, p_deg = np.unique(pj, return_inverse=True, return_counts=True)
    isolated = (t_deg[t_inv] == 1) & (p_deg[p_inv] == 1)
    rows, r = np.unique(ti[~isolated], return_inverse=True)
    cols, c = np.unique(pj[~isolated], return_inverse=True)
    graph = np.zeros((len(rows), len(cols)), bool)
    graph[r, c] = True
    assigned = linear_sum_assignment(graph, maximize=True)
    return int(isolated.sum()) + int(graph[assigned].sum())


# ---------------------------------------------------------------- compiled kernels


@numba.njit(cache=True)
def _grow(a):
    out = np.empty(2 * len(a) + 16, a.dtype)
    out[:len(a)] = a
    return out


@numba.njit(cache=True)
def _run_overlaps(t_start, t_end, t_owner, t_order, p_start, p_end, p_owner, p_order, n_true, n_pred):
    """Sweep both run sets in start order; each overlapping run pair is met once, when the later one starts.

    Active lists hold the runs that may still overlap later runs (end > current start); they stay as
    short as the deepest overlap of the masks. Pair sums are then aggregated per (true, pred) cell.
    """
    t_active = np.empty(16, np.int64)
    p_active = np.empty(16, np.int64)
    n_ta, n_pa, it, ip, k = 0, 0, 0, 0, 0
    pair_t = np.empty(len(t_start) + len(p_start) + 16, np.int64)
    pair_p = np.empty_like(pair_t)
    sums = np.empty_like(pair_t)
    while it < len(t_order) or ip < len(p_order):
        take_true = ip >= len(p_order) or (it < len(t_order) and t_start[t_order[it]] <= p_start[p_order[ip]])
        r = t_order[it] if take_true else p_order[ip]
        s = t_start[r] if take_true else p_start[r]
        e = t_end[r] if take_true else p_end[r]
        n_ta = _prune(t_active, n_ta, t_end, s)
        n_pa = _prune(p_active, n_pa, p_end, s)
        n_other = n_pa if take_true else n_ta
        for q in range(n_other):
            o = p_active[q] if take_true else t_active[q]
            other_end = p_end[o] if take_true else t_end[o]
            if k == len(sums):
                pair_t, pair_p, sums = _grow(pair_t), _grow(pair_p), _grow(sums)
            tr, pr = (r, o) if take_true else (o, r)
            pair_t[k], pair_p[k] = t_owner[tr], p_owner[pr]
            sums[k] = min(e, other_end) - s
            k += 1
        if take_true:
            if n_ta == len(t_active):
                t_active = _grow(t_active)
            t_active[n_ta] = r
            n_ta, it = n_ta + 1, it + 1
        else:
            if n_pa == len(p_active):
                p_active = _grow(p_active)
            p_active[n_pa] = r
            n_pa, ip = n_pa + 1, ip + 1
    return _sum_pairs(pair_t[:k], pair_p[:k], sums[:k], n_true, n_pred)


@numba.njit(cache=True)
def _prune(active, n, ends, s):
    """Drop runs ending at or before ``s`` (no later run can overlap them); returns the new count."""
    q = 0
    while q < n:
        if ends[active[q]] <= s:
            n -= 1
            active[q] = active[n]
        else:
            q += 1
    return n


@numba.njit(cache=True)
def _sum_pairs(pair_t, pair_p, sums, n_true, n_pred):
    """Total each (true, pred) pair: a counting sort by true cell, then a dense counter per true cell."""
    first = np.zeros(n_true + 1, np.int64)
    for q in range(len(pair_t)):
        first[pair_t[q] + 1] += 1
    for i in range(n_true):
        first[i + 1] += first[i]
    order = np.empty(len(pair_t), np.int64)
    cursor = first.copy()
    for q in range(len(pair_t)):
        order[cursor[pair_t[q]]] = q
        cursor[pair_t[q]] += 1
    counts = np.zeros(n_pred, np.int64)
    touched = np.empty(n_pred, np.int64)
    ti = np.empty(len(pair_t), np.int64)
    pj = np.empty(len(pair_t), np.int64)
    inter = np.empty(len(pair_t), np.int64)
    k = 0
    for i in range(n_true):
        n_touched = 0
        for q in order[first[i]:first[i + 1]]:
            j = pair_p[q]
            if counts[j] == 0:
                touched[n_touched] = j
                n_touched += 1
            counts[j] += sums[q]
        for q in range(n_touched):
            j = touched[q]
            ti[k], pj[k], inter[k] = i, j, counts[j]
            counts[j] = 0
            k += 1
    return ti[:k], pj[:k], inter[:k]


@numba.njit(cache=True)
def _label_overlaps(starts, lengths, offsets, flat, lookup, n_pred):
    """Count, for each true cell, the predicted labels under its pixels (a dense counter reset per cell)."""
    counts = np.zeros(n_pred, np.int64)
    touched = np.empty(n_pred, np.int64)
    ti = np.empty(16, np.int64)
    pj = np.empty(16, np.int64)
    inter = np.empty(16, np.int64)
    k = 0
    for i in range(len(offsets) - 1):
        n_touched = 0
        for r in range(offsets[i], offsets[i + 1]):
            for p in range(starts[r], starts[r] + lengths[r]):
                j = lookup[flat[p]]
                if j >= 0:
                    if counts[j] == 0:
                        touched[n_touched] = j
                        n_touched += 1
                    counts[j] += 1
        for q in range(n_touched):
            if k == len(ti):
                ti, pj, inter = _grow(ti), _grow(pj), _grow(inter)
            j = touched[q]
            ti[k], pj[k], inter[k] = i, j, counts[j]
            counts[j] = 0
            k += 1
    return ti[:k], pj[:k], inter[:k]
