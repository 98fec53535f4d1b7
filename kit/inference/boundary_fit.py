"""The boundary-tuning table (``kit.boundary_table``'s library): boundary pixels sampled from annotated
images, the paper's two classifiers fitted and scored on them, the better one tabulated as the
256 x 256 ``kit.postprocess.BoundaryLUT`` that inference applies (scikit-learn is needed here only,
never at inference)."""
from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from kit.data import sartorius
from kit.inference.ensemble import split_records
from kit.postprocess import (BAND_RADIUS, BoundaryLUT, boundary_band, quantised_features,
                             save_boundary_lut)
from kit.progress import module_logger
from kit.split import DEFAULT_SEED, DEFAULT_VAL_FRACTION, of_weights

logger = module_logger(__name__)

PIXELS_PER_IMAGE = 50  # boundary pixels sampled per training image (the paper's 200 x 50)
MAX_IMAGES = 200
CLASSIFIERS = ("svm", "naive-bayes")


@dataclass(frozen=True)
class FitConfig:
    """One ``fit`` as the command line asks for it, built once by ``fit_config``."""

    out: Path
    data: Path | None = None
    split: str = "train"  # "train" (the training split) or "all"
    max_images: int = MAX_IMAGES
    pixels_per_image: int = PIXELS_PER_IMAGE
    seed: int = 0
    weights: tuple[Path, ...] = ()  # the weights the table goes with: their validation split stays unseen


def sample_boundary_pixels(samples: Sequence[sartorius.Sample], pixels_per_image: int = PIXELS_PER_IMAGE,
                           band_radius: int = BAND_RADIUS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Training pixels for the boundary classifier: (features uint8[n, 2], inside bool[n]).

    From each image, ``pixels_per_image`` pixels drawn uniformly without replacement from the band
    around the true cells' union boundary; features are (intensity, Sobel code); ``inside`` says
    whether the pixel belongs to a true cell.
    """
    rng = np.random.default_rng(seed)
    features, inside = [], []
    for sample in samples:
        truth = sample.labels > 0
        candidates = np.flatnonzero(boundary_band(truth, band_radius))
        if candidates.size == 0:
            continue
        chosen = rng.choice(candidates, size=min(pixels_per_image, candidates.size), replace=False)
        intensity, sobel = quantised_features(sample.image)
        features.append(np.stack([intensity.ravel()[chosen], sobel.ravel()[chosen]], axis=1))
        inside.append(truth.ravel()[chosen])
    if not features:
        raise ValueError("no boundary pixels: the samples hold no annotated cells")
    return np.concatenate(features), np.concatenate(inside)


def fit_boundary_lut(features: np.ndarray, inside: np.ndarray, n_splits: int = 10,
                     test_fraction: float = 0.2, seed: int = 0) -> BoundaryLUT:
    """Fit both classifiers, score them on ``n_splits`` random train/test splits, and tabulate
    the more accurate one (refitted on all pixels) over the 256 x 256 feature grid."""
    features = np.asarray(features)
    inside = np.asarray(inside, dtype=bool)
    if features.ndim != 2 or features.shape[1] != 2 or features.shape[0] != inside.shape[0]:
        raise ValueError(f"features must be [n, 2] with n labels, got {features.shape} and {inside.shape}")
    if np.unique(inside).size < 2:
        raise ValueError("boundary pixels of one class only: need pixels both inside and outside cells")
    rng = np.random.default_rng(seed)
    accuracies = {name: np.empty(n_splits) for name in CLASSIFIERS}
    n_test = max(1, round(test_fraction * len(inside)))
    for split in range(n_splits):
        order = rng.permutation(len(inside))
        test, train = order[:n_test], order[n_test:]
        for name in CLASSIFIERS:
            model = make_classifier(name).fit(features[train], inside[train])
            accuracies[name][split] = np.mean(model.predict(features[test]) == inside[test])
    best = max(CLASSIFIERS, key=lambda name: accuracies[name].mean())
    table = classifier_table(make_classifier(best).fit(features, inside))
    return BoundaryLUT(table, best, types.MappingProxyType(accuracies), int(len(inside)))


def make_classifier(name: str):
    """An unfitted scikit-learn classifier over (intensity, Sobel code) features.

    "svm": standardised features, SVC with a degree-3 polynomial kernel (coef0 = 1, so the kernel
    keeps the lower-order terms); "naive-bayes": Gaussian naive Bayes.
    """
    from sklearn.naive_bayes import GaussianNB
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if name == "svm":
        return make_pipeline(StandardScaler(), SVC(kernel="poly", degree=3, coef0=1.0, cache_size=500))
    if name == "naive-bayes":
        return GaussianNB()
    raise ValueError(f"unknown boundary classifier {name!r}; valid: {', '.join(CLASSIFIERS)}")


def classifier_table(model) -> np.ndarray:
    """bool[256, 256]: ``model.predict`` at every (intensity, Sobel code) pair of the grid."""
    intensity, sobel = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    grid = np.stack([intensity.ravel(), sobel.ravel()], axis=1).astype(np.uint8)
    return np.asarray(model.predict(grid), dtype=bool).reshape(256, 256)


def fit_from_folder(config: FitConfig) -> BoundaryLUT:
    """Sample boundary pixels of the chosen annotated images, fit, report, save."""
    layout = sartorius.find_competition(config.data, need_test=False)
    df = sartorius.read_train_csv(layout.train_csv)
    images = sartorius.image_table(df)
    ids = training_ids(images, config.weights) if config.split == "train" else sorted(images["id"])
    if len(ids) > config.max_images:
        ids = sorted(np.random.default_rng(config.seed).choice(ids, size=config.max_images, replace=False))
    features, inside = sample_boundary_pixels(sartorius.load_samples(layout, ids, df), config.pixels_per_image,
                                              seed=config.seed)
    logger.info(f"boundary pixels: {len(inside)} from {len(ids)} images ({config.split} split), "
                f"{inside.mean():.1%} inside cells")
    lut = fit_boundary_lut(features, inside, seed=config.seed)
    for name, acc in lut.accuracies.items():
        logger.info(f"  {name:12s} accuracy over {len(acc)} random 80/20 splits: {acc.mean():.4f} "
                    f"+- {acc.std():.4f}")
    save_boundary_lut(config.out, lut)
    logger.info(f"chose {lut.classifier}; wrote {config.out}")
    return lut


def training_ids(images, weights: Sequence[Path]) -> list[str]:
    """The annotated images outside the validation split of ``weights`` (the default split without)."""
    if not weights:
        logger.info(f"note: no --weights: the table leaves out the default validation split (seed {DEFAULT_SEED}, "
                    f"val-fraction {DEFAULT_VAL_FRACTION:g}); pass --weights FILE to leave out the split those "
                    "weights were trained with")
    return of_weights(split_records(weights), images).train_ids(images)
