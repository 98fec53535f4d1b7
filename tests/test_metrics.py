"""kit.metrics: hand-built cases worked out by hand, the sparse kernels against dense numpy twins,
and the real train.csv scored against itself and against perturbed predictions."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linear_sum_assignment

from kit import metrics, rle
from kit.metrics import THRESHOLDS

SHAPE = (6, 10)  # small images keep the hand-built cases readable


def box(r0: int, r1: int, c0: int, c1: int, shape=SHAPE) -> str:
    """RLE of rows r0..r1-1, columns c0..c1-1."""
    mask = np.zeros(shape, bool)
    mask[r0:r1, c0:c1] = True
    return rle.encode(mask)


def pixels(first: int, last: int) -> str:
    """RLE of flat pixels first..last (inclusive) of a one-row image."""
    return f"{first + 1} {last - first + 1}"


def frames(truth: dict[str, list[str]], pred: dict[str, list[str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    solution = pd.DataFrame([(i, a) for i, rles in truth.items() for a in rles], columns=["id", "annotation"])
    submission = pd.DataFrame([(i, p) for i, rles in pred.items() for p in rles], columns=["id", "predicted"])
    return solution, submission


def score_of(truth, pred, shape=SHAPE) -> float:
    return metrics.score(*frames(truth, pred), shape=shape)


# ---------------------------------------------------------------- hand-built cases


def test_thresholds_are_exact_decimals():
    assert THRESHOLDS.tolist() == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


def test_perfect_prediction_scores_one():
    cells = [box(0, 2, 0, 3), box(3, 6, 4, 9)]
    assert score_of({"a": cells}, {"a": cells[::-1]}) == 1.0


def test_empty_prediction_scores_zero():
    # TP 0, FN 2 -> 0 / 2 at every threshold; an empty `predicted` is no cell
    assert score_of({"a": [box(0, 2, 0, 3), box(3, 6, 4, 9)]}, {"a": [""]}) == 0.0
    solution, submission = frames({"a": [box(0, 2, 0, 3)]}, {"a": [np.nan]})
    assert metrics.score(solution, submission, shape=SHAPE) == 0.0


def test_image_without_truth():
    # no truth, no prediction: 1 by the module's convention; no truth, one prediction: FP 1 -> 0
    assert score_of({"a": [""]}, {"a": [""]}) == 1.0
    assert score_of({"a": [""]}, {"a": [box(0, 1, 0, 1)]}) == 0.0


def test_shifted_cell():
    # truth 4x4 = 16 px; prediction shifted one column: inter 4x3 = 12, union 20, IoU 0.6 exactly.
    # Hits at 0.50, 0.55 only (0.6 > 0.6 is false): precision 1, 1, then TP 0 FP 1 FN 1 -> 0.
    # Score (1 + 1) / 10 = 0.2
    assert score_of({"a": [box(0, 4, 0, 4)]}, {"a": [box(0, 4, 1, 5)]}) == pytest.approx(0.2, abs=1e-12)


def test_merged_cells():
    # truth A = 4x4 (16 px), B = 4x2 (8 px) side by side; one prediction covering both (24 px).
    # IoU(A) = 16/24 = 0.667 hits at 0.50..0.65 (4 thresholds): TP 1, FP 0, FN 1 -> 1/2.
    # IoU(B) = 8/24 never hits; at 0.70..0.95: TP 0, FP 1, FN 2 -> 0. Score 4 * 0.5 / 10 = 0.2
    truth = [box(0, 4, 0, 4), box(0, 4, 4, 6)]
    assert score_of({"a": truth}, {"a": [box(0, 4, 0, 6)]}) == pytest.approx(0.2, abs=1e-12)


def test_split_cell():
    # truth 4x6 (24 px); predictions 4x4 (16 px) and 4x2 (8 px): IoU 2/3 and 1/3.
    # 0.50..0.65: TP 1, FP 1, FN 0 -> 1/2; 0.70..0.95: TP 0, FP 2, FN 1 -> 0. Score 0.2
    pred = [box(0, 4, 0, 4), box(0, 4, 4, 6)]
    assert score_of({"a": [box(0, 4, 0, 6)]}, {"a": pred}) == pytest.approx(0.2, abs=1e-12)


def test_extra_and_missing_cells():
    a, b, c = box(0, 2, 0, 3), box(3, 6, 0, 3), box(3, 6, 5, 9)
    # extra: TP 2, FP 1 -> 2/3 at every threshold
    assert score_of({"i": [a, b]}, {"i": [a, b, c]}) == pytest.approx(2 / 3, abs=1e-12)
    # missing: TP 2, FN 1 -> 2/3
    assert score_of({"i": [a, b, c]}, {"i": [a, c]}) == pytest.approx(2 / 3, abs=1e-12)


def test_iou_exactly_three_quarters_is_not_a_hit_at_075():
    # truth 4x4 = 16 px, prediction its left 4x3 = 12 px: IoU = 12/16 = 3/4 exactly.
    # Hits at 0.50, 0.55, 0.60, 0.65, 0.70 (5 thresholds), not at 0.75: score 5/10
    assert score_of({"a": [box(0, 4, 0, 4)]}, {"a": [box(0, 4, 0, 3)]}) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("index", range(len(THRESHOLDS) + 1))
def test_iou_exactly_at_each_threshold(index):
    # truth: 20 px of a 1x20 image; prediction: its first 20*t px, so IoU = t exactly (t = 0.50 .. 1.00).
    # The hit counts only at the `index` thresholds strictly below t: score index / 10.
    covered = 10 + index  # 20 * t pixels
    truth, pred = {"a": [pixels(0, 19)]}, {"a": [pixels(0, covered - 1)]}
    assert score_of(truth, pred, shape=(1, 20)) == pytest.approx(index / 10, abs=1e-12)


def test_image_missing_from_submission_scores_as_empty():
    # image a perfect (1), image b absent from the submission (TP 0, FN 1 -> 0): mean 0.5
    cell = box(0, 2, 0, 2)
    assert score_of({"a": [cell], "b": [cell]}, {"a": [cell]}) == 0.5


def test_mean_over_images_not_pooled():
    # a: 1 of 1 found (1.0); b: 0 of 3 found (0.0). Per-image mean 0.5; pooled TP/(TP+FP+FN) would be 1/4.
    cells = [box(0, 2, 0, 2), box(3, 5, 0, 2), box(3, 5, 5, 8)]
    assert score_of({"a": cells[:1], "b": cells}, {"a": cells[:1]}) == 0.5


def test_unknown_submission_id_is_an_error():
    with pytest.raises(ValueError, match="not in the solution.*zzz"):
        score_of({"a": [box(0, 2, 0, 2)]}, {"zzz": [box(0, 2, 0, 2)]})


def test_malformed_prediction_names_the_image():
    with pytest.raises(ValueError, match="image a"):
        score_of({"a": [box(0, 2, 0, 2)]}, {"a": ["5 3 1"]})


def test_duplicate_true_masks_match_one_to_one():
    # two identical true cells, one identical prediction: it hits both, but matches one.
    # TP 1, FP 0, FN 1 -> 1/2 at every threshold (counting pairs would give TP 2, precision 1).
    cell = box(0, 3, 0, 3)
    assert score_of({"a": [cell, cell]}, {"a": [cell]}) == 0.5


def test_conflicting_matches_use_a_maximum_matching():
    # 1x20 image. T1 = px 0-9 (10), T2 = px 0-11 (12) overlap; P1 = px 0-10 (11), P2 = px 1-9 (9).
    # IoU: P1-T1 10/11 = .909, P1-T2 11/12 = .917, P2-T1 9/10 = .9, P2-T2 9/12 = .75.
    # 0.50..0.85 (8 thresholds): P1-T2 + P2-T1 -> TP 2, precision 1.
    # 0.90: P2-T1 (= 0.9) fails, only P1 can match -> TP 1, FP 1, FN 1 -> 1/3. 0.95: TP 0 -> 0.
    # Score (8 + 1/3) / 10
    truth = {"a": [pixels(0, 9), pixels(0, 11)]}
    pred = {"a": [pixels(0, 10), pixels(1, 9)]}
    assert score_of(truth, pred, shape=(1, 20)) == pytest.approx((8 + 1 / 3) / 10, abs=1e-12)


def test_score_labels_with_non_consecutive_labels():
    truth = [box(0, 2, 0, 3), box(3, 6, 4, 9), box(0, 2, 6, 9)]
    labels = np.zeros(SHAPE, np.int64)
    labels[0:2, 0:3] = 7
    labels[3:6, 4:9] = 1000
    # third cell shifted one row down: truth 2x3 = 6 px, pred rows 1-2 -> inter 3, union 9, IoU 1/3
    labels[1:3, 6:9] = 3
    # TP 2, FP 1, FN 1 -> 2/4 at every threshold
    assert metrics.score_labels([truth], [labels]).tolist() == [0.5]
    # a huge label value goes through the sorting path and gives the same answer
    huge = np.where(labels == 1000, 10**12, labels)
    assert metrics.score_labels([truth], [huge]).tolist() == [0.5]
    # empty truth and an empty label image: 1 (convention); empty truth, one label: 0
    assert metrics.score_labels([[], []], [np.zeros(SHAPE, int), labels == 7]).tolist() == [1.0, 0.0]


def test_score_labels_rejects_bad_input():
    with pytest.raises(ValueError, match="2 truth lists but 1"):
        metrics.score_labels([[], []], [np.zeros(SHAPE, int)])
    with pytest.raises(ValueError, match="labels must be >= 0"):
        metrics.score_labels([[]], [np.full(SHAPE, -1)])
    with pytest.raises(ValueError, match="integer label image"):
        metrics.score_labels([[]], [np.zeros(SHAPE, float)])


def test_score_report_breakdowns():
    a, b = box(0, 4, 0, 4), box(0, 4, 1, 5)  # shifted: image score 0.2 (see test_shifted_cell)
    solution, submission = frames({"x": [a], "y": [a], "z": [a]}, {"x": [a], "y": [b]})
    report = metrics.score_report(solution, submission, cell_types={"x": "cort", "y": "cort", "z": "astro"},
                                  shape=SHAPE)
    assert report.per_image["score"].tolist() == pytest.approx([1.0, 0.2, 0.0])
    assert report.score == pytest.approx(1.2 / 3)
    types = report.per_cell_type.set_index("cell_type")
    assert types.loc["cort", "score"] == pytest.approx(0.6) and types.loc["cort", "n_images"] == 2
    assert types.loc["astro", "score"] == 0.0
    per_t = report.per_threshold
    # x hits everywhere, y at 0.50 and 0.55 only, z never
    assert per_t["tp"].tolist() == [2, 2] + [1] * 8
    assert per_t["fp"].tolist() == [0, 0] + [1] * 8
    assert per_t["fn"].tolist() == [1, 1] + [2] * 8
    assert per_t["precision"].mean() == pytest.approx(report.score)


def test_pixel_metrics():
    truth = np.zeros((4, 5), bool)
    truth[:2] = True  # 10 px
    pred = np.zeros((4, 5), bool)
    pred[1:3] = True  # 10 px, 5 shared: IoU 5/15, Dice 10/20, accuracy (5 + 5 background) / 20
    m = metrics.pixel_metrics(truth, pred)
    assert m == pytest.approx({"dice": 0.5, "iou": 1 / 3, "accuracy": 0.5})
    assert m["dice"] == pytest.approx(2 * m["iou"] / (1 + m["iou"]))
    assert metrics.pixel_metrics(~truth & truth, ~truth & truth) == {"dice": 1.0, "iou": 1.0, "accuracy": 1.0}
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.pixel_metrics(truth, pred[:2])


# ---------------------------------------------------------------- kernels against dense twins


def random_masks(rng, n: int, shape) -> np.ndarray:
    """n random blobs (unions of rectangles) that overlap each other often."""
    masks = np.zeros((n, *shape), bool)
    for mask in masks:
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
            mask[r:r + rng.integers(1, 8), c:c + rng.integers(1, 12)] = True
    return masks


def dense_overlaps(true_masks: np.ndarray, pred_masks: np.ndarray) -> dict[tuple[int, int], int]:
    inter = true_masks.reshape(len(true_masks), -1).astype(np.int64) @ \
        pred_masks.reshape(len(pred_masks), -1).astype(np.int64).T
    return {(int(i), int(j)): int(inter[i, j]) for i, j in zip(*np.nonzero(inter))}


def as_dict(overlaps: metrics.Overlaps) -> dict[tuple[int, int], int]:
    pairs = list(zip(overlaps.true_index.tolist(), overlaps.pred_index.tolist()))
    assert len(set(pairs)) == len(pairs), "a pair occurs twice"
    return dict(zip(pairs, overlaps.intersection.tolist()))


@pytest.mark.parametrize("seed", range(6))
def test_run_overlaps_matches_dense_twin(seed):
    rng = np.random.default_rng(seed)
    shape = (13, 17)  # runs wrap across rows of this narrow image
    true_masks, pred_masks = random_masks(rng, 9, shape), random_masks(rng, 7, shape)
    true_masks[3] = False  # an empty cell keeps its index and area 0
    overlaps = metrics.run_overlaps(rle.decode_many([rle.encode(m) for m in true_masks], shape),
                                    rle.decode_many([rle.encode(m) for m in pred_masks], shape))
    assert as_dict(overlaps) == dense_overlaps(true_masks, pred_masks)
    assert overlaps.true_area.tolist() == true_masks.sum(axis=(1, 2)).tolist()
    assert overlaps.pred_area.tolist() == pred_masks.sum(axis=(1, 2)).tolist()


@pytest.mark.parametrize("seed", range(6))
def test_label_overlaps_matches_dense_twin(seed):
    rng = np.random.default_rng(seed)
    shape = (13, 17)
    true_masks = random_masks(rng, 9, shape)
    labels = np.zeros(shape, np.int32)
    values = rng.choice(np.arange(1, 500), size=8, replace=False)  # non-consecutive labels
    for value, mask in zip(values, random_masks(rng, 8, shape)):
        labels[mask] = value  # later labels cover earlier ones: some labels may vanish
    present = np.unique(labels[labels > 0])
    pred_masks = labels[None] == present[:, None, None]
    overlaps = metrics.label_overlaps(rle.decode_many([rle.encode(m) for m in true_masks], shape), labels)
    assert as_dict(overlaps) == dense_overlaps(true_masks, pred_masks)
    assert overlaps.pred_area.tolist() == pred_masks.sum(axis=(1, 2)).tolist()


def test_kernels_reject_inconsistent_input():
    table = rle.decode_many([box(0, 2, 0, 2)], SHAPE)
    broken = rle.RunTable(table.starts, table.lengths, np.array([0, 5]))
    with pytest.raises(ValueError, match="inconsistent"):
        metrics.run_overlaps(broken, table)
    with pytest.raises(ValueError, match="past the"):
        metrics.label_overlaps(rle.decode_many([box(0, 6, 0, 10)], SHAPE), np.zeros((2, 10), int))


# ---------------------------------------------------------------- real data


def dense_image_score(true_rles: list[str], pred_rles: list[str]) -> float:
    """The metric from full-size mask stacks: IoU compared as exact integers, one-to-one by assignment."""
    true_masks = np.stack([rle.decode(r) for r in true_rles]).reshape(len(true_rles), -1)
    pred_masks = np.stack([rle.decode(r) for r in pred_rles]).reshape(len(pred_rles), -1)
    inter = true_masks.astype(np.float32) @ pred_masks.astype(np.float32).T  # exact below 2**24
    inter = inter.astype(np.int64)
    union = true_masks.sum(1)[:, None] + pred_masks.sum(1)[None, :] - inter
    precisions = []
    for t in THRESHOLDS:
        hits = 100 * inter > round(100 * t) * union
        rows, cols = linear_sum_assignment(hits, maximize=True)
        tp = int(hits[rows, cols].sum())
        precisions.append(tp / (len(true_rles) + len(pred_rles) - tp))
    return float(np.mean(precisions))


def perturb(labels: np.ndarray, rng) -> np.ndarray:
    """Shift the label image, drop some cells and add a spurious one: a plausible imperfect prediction."""
    dy, dx = rng.integers(-3, 4, size=2)
    moved = np.roll(labels, (dy, dx), axis=(0, 1))
    present = np.unique(moved[moved > 0])
    dropped = rng.choice(present, size=len(present) // 10, replace=False)
    moved[np.isin(moved, dropped)] = 0
    moved[10:30, 10:40] = moved.max() + 5
    return moved


@pytest.fixture(scope="module")
def train(shared_dir) -> pd.DataFrame:
    return pd.read_csv(shared_dir / "train.csv", dtype=str, na_filter=False)


def test_train_csv_against_itself_scores_one(train):
    submission = train[["id", "annotation"]].rename(columns={"annotation": "predicted"})
    report = metrics.score_report(train, submission)
    assert report.score == 1.0
    assert len(report.per_image) == 120
    assert report.per_cell_type["n_images"].tolist() == [40, 40, 40]


def test_perturbed_predictions_match_dense_computation(train):
    rng = np.random.default_rng(0)
    ids = ["b861811eaff6", "bee779e5729d", "8a60bdad42ff"]  # the smallest image of each cell type
    truth = {i: train.loc[train["id"] == i, "annotation"].tolist() for i in ids}
    predictions = {i: perturb(rle.decode_labels(truth[i]), rng) for i in ids}
    rows = [(i, p) for i in ids for p in rle.encode_labels(predictions[i]) if p]
    submission = pd.DataFrame(rows, columns=["id", "predicted"])
    solution = train[train["id"].isin(ids)]
    report = metrics.score_report(solution, submission)
    dense = {i: dense_image_score(truth[i], [p for j, p in rows if j == i]) for i in ids}
    assert dict(zip(report.per_image["id"], report.per_image["score"])) == pytest.approx(dense, abs=1e-12)
    assert 0.05 < report.score < 0.95  # the perturbation is neither perfect nor hopeless
    by_labels = metrics.score_labels([truth[i] for i in ids], [predictions[i] for i in ids])
    assert by_labels.tolist() == pytest.approx([dense[i] for i in ids], abs=1e-12)
