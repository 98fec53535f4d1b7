"""kit.postprocess: closing, boundary features and table, watershed, mask_to_labels; kit.boundary_table: fitting."""
from __future__ import annotations

import dataclasses
from collections import deque

import cv2
import numpy as np
import pytest
from scipy import ndimage

from kit import boundary_table as bt, competition, metrics, postprocess as pp
from kit.inference import boundary_fit


def python_flood(levels: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Twin of the flooding kernel: one FIFO queue per level, highest level first, 8-neighbours."""
    h, w = levels.shape
    labels = seeds.copy()
    queues = [deque() for _ in range(levels.max() + 1)]
    for y, x in zip(*np.nonzero(seeds > 0)):
        queues[levels[y, x]].append((y, x))
    for level in range(levels.max(), 0, -1):
        while queues[level]:
            y, x = queues[level].popleft()
            for yy in range(max(y - 1, 0), min(y + 2, h)):
                for xx in range(max(x - 1, 0), min(x + 2, w)):
                    if labels[yy, xx] == 0 and levels[yy, xx] > 0:
                        labels[yy, xx] = labels[y, x]
                        queues[min(levels[yy, xx], level)].append((yy, xx))
    return labels


def _disk_pair(gap: int) -> np.ndarray:
    yy, xx = np.mgrid[:60, :100]
    return ((yy - 30) ** 2 + (xx - 30) ** 2 <= 225) | ((yy - 30) ** 2 + (xx - 60 - gap) ** 2 <= 225)


# ---------------------------------------------------------------- closing, features, band

def test_closing_fills_a_one_pixel_gap_and_does_not_grow_into_the_border():
    mask = np.zeros((12, 14), bool)
    mask[3:9, 0:5] = True
    mask[3:9, 6:11] = True  # one background column between two blocks
    closed = pp.closing(mask, radius=1, shape="rect")
    assert closed[3:9, 5].all() and closed.sum() == mask.sum() + 6
    assert not pp.closing(mask, radius=1, shape="rect")[:3].any()
    np.testing.assert_array_equal(pp.closing(mask, radius=0), mask)
    cross = pp.closing(mask, radius=1, shape="cross")  # the cross cannot reach the gap's end pixels
    np.testing.assert_array_equal(cross[3:9, 5], [False, True, True, True, True, False])
    with pytest.raises(ValueError, match="closing shape"):
        pp.closing(mask, 1, "hexagon")


def test_quantised_features_on_a_step_edge():
    image = np.zeros((7, 8), np.uint8)
    image[:, 4:] = 100
    intensity, sobel = pp.quantised_features(image)
    np.testing.assert_array_equal(intensity, image)
    # 3x3 Sobel across a 100-step: (1 + 2 + 1) * 100 = 400 on both columns beside the edge -> code 200
    np.testing.assert_array_equal(sobel[3, [2, 3, 4, 5]], [0, 200, 200, 0])
    image[:, 4:] = 255  # 1020 / 2 is past the last code
    assert pp.quantised_features(image)[1][3, 3] == 255


def test_boundary_band_matches_scipy_twin():
    mask = _disk_pair(gap=-4)
    mask[0:5, 90:100] = True  # touches the image border
    for radius in (1, 2, 3):
        square = np.ones((2 * radius + 1,) * 2, bool)
        expected = ndimage.binary_dilation(mask, square) & ~ndimage.binary_erosion(mask, square, border_value=0)
        np.testing.assert_array_equal(pp.boundary_band(mask, radius), expected)


# ---------------------------------------------------------------- boundary table

@pytest.fixture(scope="module")
def boundary_pixels(samples):
    return boundary_fit.sample_boundary_pixels(samples, pixels_per_image=30, seed=1)


def test_sample_boundary_pixels_come_from_the_band(samples, boundary_pixels):
    features, inside = boundary_pixels
    assert features.shape == (12 * 30, 2) and features.dtype == np.uint8 and inside.dtype == bool
    assert 0.3 < inside.mean() < 0.7  # the band straddles the boundary
    first = samples[0]
    intensity, sobel = pp.quantised_features(first.image)
    band = pp.boundary_band(first.labels > 0)
    pairs = set(zip(intensity[band].tolist(), sobel[band].tolist()))
    assert all(tuple(f) in pairs for f in features[:30].tolist())


def test_table_equals_the_classifier_on_the_whole_grid(boundary_pixels):
    features, inside = boundary_pixels
    lut = boundary_fit.fit_boundary_lut(features, inside, n_splits=3)
    assert lut.classifier in boundary_fit.CLASSIFIERS and lut.n_pixels == len(inside)
    assert set(lut.accuracies) == set(boundary_fit.CLASSIFIERS)
    assert all(len(acc) == 3 and np.all((acc >= 0) & (acc <= 1)) for acc in lut.accuracies.values())
    best_mean = max(acc.mean() for acc in lut.accuracies.values())
    assert lut.accuracies[lut.classifier].mean() == best_mean
    model = boundary_fit.make_classifier(lut.classifier).fit(features, inside)
    ii, ss = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    grid = np.stack([ii.ravel(), ss.ravel()], axis=1)
    np.testing.assert_array_equal(lut.table, model.predict(grid).reshape(256, 256))


@pytest.mark.parametrize("name", boundary_fit.CLASSIFIERS)
def test_tune_boundary_equals_predict_on_band_pixels(samples, boundary_pixels, name):
    features, inside = boundary_pixels
    model = boundary_fit.make_classifier(name).fit(features, inside)
    lut = pp.BoundaryLUT(boundary_fit.classifier_table(model), name)
    sample = samples[5]
    mask = ndimage.binary_erosion(sample.labels > 0, iterations=2)
    band = pp.boundary_band(mask)
    intensity, sobel = pp.quantised_features(sample.image)
    expected = mask.copy()
    expected[band] = model.predict(np.stack([intensity[band], sobel[band]], axis=1))
    np.testing.assert_array_equal(pp.tune_boundary(mask, sample.image, lut), expected)


def test_separable_features_give_a_threshold_table():
    rng = np.random.default_rng(0)
    features = rng.integers(0, 256, size=(400, 2)).astype(np.uint8)
    inside = features[:, 0] > 128
    lut = boundary_fit.fit_boundary_lut(features, inside, n_splits=4)
    assert all(acc.mean() > 0.95 for acc in lut.accuracies.values())
    assert lut.table[200:, :].mean() > 0.95 and lut.table[:60, :].mean() < 0.05


def test_lut_save_load_round_trip_and_bad_files(tmp_path):
    table = np.zeros((256, 256), bool)
    table[100:, 30:] = True
    lut = pp.BoundaryLUT(table, "svm", {"svm": np.array([0.6, 0.7]), "naive-bayes": np.array([0.5, 0.55])}, 40)
    path = pp.save_boundary_lut(tmp_path / "lut.npz", lut)
    assert [p.name for p in tmp_path.iterdir()] == ["lut.npz"]  # no temporary left behind
    back = pp.load_boundary_lut(path)
    np.testing.assert_array_equal(back.table, table)
    assert back.classifier == "svm" and back.n_pixels == 40 and back.band_radius == pp.BAND_RADIUS
    np.testing.assert_allclose(back.accuracies["naive-bayes"], [0.5, 0.55])
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="bad.npz"):
        pp.load_boundary_lut(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", table=table)
    with pytest.raises(ValueError, match="not a boundary table"):
        pp.load_boundary_lut(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="kit.boundary_table fit"):
        pp.load_boundary_lut(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match=r"bool\[256, 256\]"):
        pp.save_boundary_lut(tmp_path / "x.npz", dataclasses.replace(lut, table=table[:10]))


def test_fit_cli_writes_a_table(shared_dir, tmp_path, capsys):
    args = bt.get_args_parser().parse_args(["fit", "--data", str(shared_dir), "--out", str(tmp_path / "lut.npz"),
                                            "--max-images", "6", "--pixels-per-image", "20", "--seed", "0"])
    lut = bt.main(args)
    printed = capsys.readouterr().out
    assert "note: no --weights: the table leaves out the default validation split (seed 0" in printed
    assert "boundary pixels: 120 from 6 images" in printed
    assert "svm" in printed and "naive-bayes" in printed and "10 random 80/20 splits" in printed
    np.testing.assert_array_equal(pp.load_boundary_lut(tmp_path / "lut.npz").table, lut.table)


# ---------------------------------------------------------------- instances

def test_flood_kernel_matches_python_twin(samples):
    for s in samples[::4]:
        mask = (s.labels[100:300, 150:400] > 0).astype(np.uint8)
        padded = np.pad(mask, 1)
        dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_5)[1:-1, 1:-1]
        peaks = (dist >= cv2.dilate(dist, np.ones((9, 9), np.uint8))) & (dist >= 2)
        seeds = cv2.connectedComponents(peaks.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)[1]
        levels = np.ceil(dist * 4).astype(np.int32)
        np.testing.assert_array_equal(pp._flood(levels, seeds, int(levels.max()) + 1), python_flood(levels, seeds))


def test_watershed_splits_touching_disks_and_keeps_seedless_specks():
    mask = _disk_pair(gap=-3)  # two radius-15 disks overlapping by a few pixels
    mask[2:4, 2:4] = True  # a speck too thin to hold a seed
    labels = pp.watershed_instances(mask, peak_distance=5, min_peak=3)
    assert labels.max() == 3
    assert set(np.unique(labels[mask])) == {1, 2, 3} and not labels[~mask].any()
    assert len(np.unique(labels[2:4, 2:4])) == 1
    assert labels[30, 30] != labels[30, 57]


def test_mask_to_labels_no_overlap_min_size_and_subset(samples):
    for s in samples[::3]:
        prob = ndimage.gaussian_filter((s.labels > 0).astype(np.float32), 1.5)
        labels = pp.mask_to_labels(prob, s.image, s.cell_type)
        assert labels.dtype == np.int32 and labels.shape == s.image.shape
        ids, sizes = np.unique(labels, return_counts=True)
        assert ids.tolist() == list(range(len(ids)))  # consecutive 0..n: one label per pixel
        assert sizes[1:].min() >= pp.MIN_SIZE_BY_TYPE[s.cell_type]
        closed = pp.closing(prob > 0.5)
        assert not (labels > 0)[~closed].any()


def test_watershed_beats_connected_components_on_true_shsy5y_masks(samples):
    shsy5y = [s for s in samples if s.cell_type == "shsy5y"]
    components = pp.PostprocessConfig(instances={t: "components" for t in competition.CELL_TYPES})
    scores = {}
    for name, config in (("watershed", pp.PostprocessConfig()), ("components", components)):
        predictions = [pp.mask_to_labels((s.labels > 0).astype(np.float32), s.image, s.cell_type, config)
                       for s in shsy5y]
        scores[name] = metrics.score_labels([s.annotations for s in shsy5y], predictions).mean()
    assert scores["watershed"] > scores["components"] + 0.05, scores


def test_mask_to_labels_with_a_table_and_bad_inputs(samples):
    s = samples[0]
    prob = (s.labels > 0).astype(np.float32)
    everything = pp.BoundaryLUT(np.ones((256, 256), bool), "svm")
    plain = pp.mask_to_labels(prob, s.image, s.cell_type)
    grown = pp.mask_to_labels(prob, s.image, s.cell_type, pp.PostprocessConfig(boundary=everything))
    assert (grown > 0).sum() > (plain > 0).sum()  # an all-inside table grows every cell by its band
    with pytest.raises(ValueError, match="NaN"):
        pp.mask_to_labels(np.full_like(prob, np.nan), s.image, s.cell_type)
    with pytest.raises(ValueError, match="differ in size"):
        pp.mask_to_labels(prob[:-1], s.image, s.cell_type)
    with pytest.raises(ValueError, match="unknown cell type"):
        pp.mask_to_labels(prob, s.image, "neuron")
    with pytest.raises(ValueError, match="uint8"):
        pp.mask_to_labels(prob, s.image.astype(np.float32), s.cell_type)
