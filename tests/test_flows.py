"""kit.flows: kernels against plain-numpy twins, hand-worked flows, and the oracle round trip."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from benchmarks.numpy_twins import numpy_masks_to_flows
from kit import competition, flows, metrics


# ---------------------------------------------------------------- plain-numpy twins of the kernels

def numpy_diffuse(cell: np.ndarray, cy: int, cx: int, n_iter: int) -> np.ndarray:
    """Heat after n_iter Jacobi steps on every pixel of ``cell`` (bool, zero border), in the
    kernel's order of additions; returned flattened like the kernel's buffer."""
    ly, lx = np.nonzero(cell)
    heat = np.zeros(cell.shape)
    for _ in range(n_iter):
        heat[cy, cx] += 1
        heat[ly, lx] = sum(heat[ly + dy, lx + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0
    return heat.ravel()


def numpy_errors(labels: np.ndarray, fl: np.ndarray, diffusion: float) -> np.ndarray:
    squared = ((numpy_masks_to_flows(labels, diffusion) - fl) ** 2).sum(axis=0)
    return np.array([squared[labels == k].mean() for k in range(1, labels.max() + 1)])


def numpy_follow(fl: np.ndarray, ys, xs, n_steps: int, check_every: int, stall: float) -> np.ndarray:
    """All points advance together in float32; a point stops at a check where it moved < stall."""
    h, w = fl.shape[1:]
    y, x = ys.astype(np.float32), xs.astype(np.float32)
    mark_y, mark_x = y.copy(), x.copy()
    active = np.ones(y.size, bool)
    one = np.float32(1)
    for t in range(1, n_steps + 1):
        idx = np.flatnonzero(active)
        py, px = y[idx], x[idx]
        y0, x0 = np.minimum(py.astype(np.int64), h - 1), np.minimum(px.astype(np.int64), w - 1)
        y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
        ty, tx = py - y0.astype(np.float32), px - x0.astype(np.float32)
        a, b, c, d = (one - ty) * (one - tx), (one - ty) * tx, ty * (one - tx), ty * tx
        step = [a * f[y0, x0] + b * f[y0, x1] + c * f[y1, x0] + d * f[y1, x1] for f in fl]
        y[idx] = np.minimum(np.maximum(py + step[0], np.float32(0)), np.float32(h - 1))
        x[idx] = np.minimum(np.maximum(px + step[1], np.float32(0)), np.float32(w - 1))
        if check_every and t % check_every == 0:
            stalled = (y[idx] - mark_y[idx]) ** 2 + (x[idx] - mark_x[idx]) ** 2 < np.float32(stall) ** 2
            mark_y[idx], mark_x[idx] = y[idx], x[idx]
            active[idx[stalled]] = False
    return np.stack([y, x], axis=1)


def numpy_seeds(counts: np.ndarray) -> set[tuple[int, int]]:
    peak = ndimage.maximum_filter(counts, size=5, mode="constant", cval=0)
    return set(zip(*np.nonzero((counts == peak) & (counts > flows.MIN_SEED_COUNT))))


def numpy_grow(counts: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Geodesic dilation (8-neighbours, 5 rounds) of each seed through well-visited free pixels."""
    clusters = np.zeros(counts.shape, np.int32)
    for y, x in seeds:
        if clusters[y, x]:
            continue
        region = np.zeros(counts.shape, bool)
        region[y, x] = True
        allowed = (counts >= 3) & (clusters == 0)
        allowed[y, x] = True
        region = ndimage.binary_dilation(region, np.ones((3, 3)), iterations=5, mask=allowed)
        clusters[region] = clusters.max() + 1
    return clusters


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def crops(samples):
    """One 130 x 170 crop of each cell type's first image (cells cut by the crop stay, cut)."""
    picked = [next(s for s in samples if s.cell_type == t) for t in competition.CELL_TYPES]
    return [s.labels[150:280, 200:370].copy() for s in picked]


# ---------------------------------------------------------------- masks_to_flows

def test_masks_to_flows_hand_worked_bar_and_square():
    labels = np.zeros((6, 7), np.int32)
    labels[1, 1:4] = 5  # 1 x 3 bar: ends point at the middle pixel, the middle has no gradient
    labels[2:5, 4:7] = 9  # 3 x 3 square touching the right border: everything points at its middle
    f = flows.masks_to_flows(labels)
    assert f.dtype == np.float32 and f.shape == (2, 6, 7)
    np.testing.assert_allclose(f[:, 1, 1], [0, 1], atol=1e-6)
    np.testing.assert_allclose(f[:, 1, 3], [0, -1], atol=1e-6)
    np.testing.assert_allclose(f[:, 1, 2], [0, 0], atol=1e-6)
    r = 1 / np.sqrt(2)
    np.testing.assert_allclose(f[:, 2, 4], [r, r], atol=1e-6)
    np.testing.assert_allclose(f[:, 4, 6], [-r, -r], atol=1e-6)
    np.testing.assert_allclose(f[:, 2, 5], [1, 0], atol=1e-6)
    np.testing.assert_allclose(f[:, 3, 5], [0, 0], atol=1e-6)
    assert not f[:, labels == 0].any()


def test_masks_to_flows_single_pixel_and_empty():
    labels = np.zeros((4, 4), np.int64)
    labels[2, 2] = 1
    assert not flows.masks_to_flows(labels).any()
    assert not flows.masks_to_flows(np.zeros((4, 4), np.int32)).any()


def test_masks_to_flows_matches_numpy_twin_on_real_crops(crops):
    for labels in crops:
        expected = numpy_masks_to_flows(labels)
        got = flows.masks_to_flows(labels)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        norms = np.hypot(*got)[labels > 0]
        assert np.mean(np.abs(norms - 1) < 1e-4) > 0.95  # unit flows except centres and cut-off fragments


def test_diffuse_kernel_matches_numpy_twin_bit_for_bit():
    """A U-shaped cell with its centre off-middle: rows split into several runs, and in the first
    steps only a window around the centre is updated; the result must be exactly the full Jacobi."""
    cell = np.zeros((12, 15), bool)
    cell[1:11, 1:4] = cell[1:11, 10:14] = cell[8:11, 1:14] = True
    cell[3, 12] = False  # a hole splits a row into three runs
    flat = np.flatnonzero(cell)
    for cy, cx, n_iter in [(9, 2, 5), (9, 2, 40), (2, 12, 17), (9, 7, 1)]:
        assert cell[cy, cx]
        got = flows._diffuse(flat, 15, 12, cy, cx, n_iter)
        np.testing.assert_array_equal(got, numpy_diffuse(cell, cy, cx, n_iter))


def test_masks_to_flows_rejects_bad_labels():
    with pytest.raises(ValueError, match="integer image"):
        flows.masks_to_flows(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="0..2"):
        flows.masks_to_flows(-np.ones((4, 4), np.int32))


# ---------------------------------------------------------------- following and clustering

@pytest.mark.parametrize("stop_when_stalled", [False, True])
def test_follow_flows_matches_numpy_twin(crops, stop_when_stalled):
    labels = crops[2]
    f = flows.masks_to_flows(labels)
    ys, xs = np.nonzero(labels)
    check = flows.STALL_CHECK_EVERY if stop_when_stalled else 0
    expected = numpy_follow(f, ys, xs, 120, check, flows.STALL_DISTANCE)
    got = flows.follow_flows(f, ys, xs, 120, stop_when_stalled=stop_when_stalled)
    # float32 rounding may differ in the last bit (contracted multiply-adds); it never grows past 1e-4 px
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_follow_flows_moves_along_a_constant_field_and_stops_at_the_border():
    f = np.zeros((2, 10, 20), np.float32)
    f[1] = 0.5  # half a pixel right per step
    ends = flows.follow_flows(f, np.array([3, 4]), np.array([2, 15]), n_steps=10, stop_when_stalled=False)
    np.testing.assert_allclose(ends, [[3, 7], [4, 19]])
    np.testing.assert_allclose(flows.follow_flows(f, np.array([3]), np.array([2]), n_steps=0), [[3, 2]])


def test_seed_and_cluster_kernels_match_numpy_twins(crops):
    for labels in crops:
        ys, xs = np.nonzero(labels)
        ends = flows.follow_flows(flows.masks_to_flows(labels), ys, xs)
        counts = np.zeros(labels.shape, np.int32)
        np.add.at(counts, (np.rint(ends[:, 0]).astype(int), np.rint(ends[:, 1]).astype(int)), 1)
        seeds = flows._find_seeds(counts)
        assert set(map(tuple, seeds.tolist())) == numpy_seeds(counts)
        order = np.argsort(-counts[seeds[:, 0], seeds[:, 1]], kind="stable")
        np.testing.assert_array_equal(flows._grow_seeds(counts, seeds[order]), numpy_grow(counts, seeds[order]))


# ---------------------------------------------------------------- flows_to_labels

def _disks(shape=(60, 90), centres=((30, 25), (30, 62)), radius=12):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    labels = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = k
    return labels


def test_flows_to_labels_recovers_touching_disks():
    labels = _disks(centres=((30, 25), (30, 48)))  # overlapping disks: the second keeps the overlap
    got = flows.flows_to_labels(flows.masks_to_flows(labels), labels > 0)
    assert got.dtype == np.int32 and got.max() == 2
    for k in (1, 2):
        best = np.bincount(got[labels == k]).argmax()
        iou = np.sum((got == best) & (labels == k)) / np.sum((got == best) | (labels == k))
        assert iou > 0.95


def test_flows_to_labels_min_size_and_empty_mask():
    labels = _disks(centres=((30, 25), (30, 62)))
    labels[5:8, 5:8] = 3  # a 9-pixel cell
    f = flows.masks_to_flows(labels)
    assert set(np.unique(flows.flows_to_labels(f, labels > 0, min_size=10))) == {0, 1, 2}
    assert not flows.flows_to_labels(f, np.zeros(labels.shape, bool)).any()
    with pytest.raises(ValueError, match="cell_mask"):
        flows.flows_to_labels(f, (labels > 0).astype(np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        flows.flows_to_labels(np.full_like(f, np.nan), labels > 0)
    with pytest.raises(ValueError, match=r"\[2, H, W\]"):
        flows.flows_to_labels(f[0], labels > 0)


def flow_errors(labels: np.ndarray, flow: np.ndarray, diffusion: float = 1.0) -> np.ndarray:
    """float64[labels.max()]: the flow error ``kit.flows.flows_to_labels`` drops instances by (its
    compiled ``_flow_errors``), per instance 1..n of ``labels`` (numbered without gaps)."""
    return flows._flow_errors(labels.astype(np.int32), int(labels.max()), flow.astype(np.float32), float(diffusion))


def test_flow_errors_zero_for_own_flows_and_four_for_reversed():
    labels = _disks()
    own = flows.masks_to_flows(labels)
    np.testing.assert_allclose(flow_errors(labels, own), 0, atol=1e-12)
    moving = np.hypot(*own) > 0.5
    expected = [4 * moving[labels == k].mean() for k in (1, 2)]
    np.testing.assert_allclose(flow_errors(labels, -own), expected, rtol=1e-6)


def test_flow_errors_with_shorter_diffusion_match_numpy_twin(crops):
    rng = np.random.default_rng(0)
    for labels in crops:
        labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)  # 1..n
        own = flows.masks_to_flows(labels)
        noisy = (own + rng.normal(0, 0.3, own.shape).astype(np.float32)) * (labels > 0)
        for diffusion in (1.0, flows.ERROR_DIFFUSION):
            np.testing.assert_allclose(flow_errors(labels, noisy, diffusion),
                                       numpy_errors(labels, noisy, diffusion), rtol=1e-5, atol=1e-6)
        # the shorter diffusion the check uses stays far below the threshold for true cells
        short = flow_errors(labels, own, flows.ERROR_DIFFUSION)
        assert short.max() < 0.1 * flows.FLOW_THRESHOLD and short.max() > 0


def test_interleave_kernel_matches_numpy_twin(crops):
    labels = crops[1]
    f = flows.masks_to_flows(labels)
    mask = labels % 3 != 0
    np.testing.assert_array_equal(flows._interleave(f, mask), np.where(mask, f, 0).transpose(1, 2, 0))


def test_drop_small_with_keep():
    labels = np.array([[1, 1, 2, 3], [3, 3, 0, 4]], np.int32)
    keep = np.array([True, True, True, False, True])
    np.testing.assert_array_equal(flows.drop_small(labels, 2, keep), [[1, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(flows.drop_small(labels, 1, keep), [[1, 1, 2, 0], [0, 0, 0, 3]])
    with pytest.raises(ValueError, match="keep"):
        flows.drop_small(labels, 1, keep[:3])


def test_flow_threshold_drops_an_instance_whose_flows_do_not_fit_its_shape():
    labels = _disks(centres=((30, 30),), radius=12)
    yy, xx = np.mgrid[:60, :90]
    to_edge = np.stack([30 - yy, 20 - xx]).astype(np.float32)  # everything runs to (30, 20), near the rim
    f = np.where(labels > 0, to_edge / np.maximum(np.hypot(*to_edge), 1e-6), 0).astype(np.float32)
    kept = flows.flows_to_labels(f, labels > 0, flow_threshold=None)
    assert kept.max() == 1 and (kept > 0).sum() > 0.9 * (labels > 0).sum()
    assert flow_errors(kept, f)[0] > flows.FLOW_THRESHOLD
    assert not flows.flows_to_labels(f, labels > 0).any()


# ---------------------------------------------------------------- oracle: true flows round trip

def test_oracle_round_trip_scores_at_least_0_9(samples):
    """Flows computed from the true instances and followed back give instances that score >= 0.9
    against the original (overlapping) annotations: 12 images, 4 per cell type."""
    predictions = []
    for s in samples:
        got = flows.flows_to_labels(flows.masks_to_flows(s.labels), s.labels > 0)
        assert got.max() == len(np.unique(got)) - 1  # consecutive labels
        predictions.append(got)
    scores = metrics.score_labels([s.annotations for s in samples], predictions)
    assert len(scores) == 12
    assert scores.mean() >= 0.9, scores
