"""The cell-type classifier (``kit.cell_type_classifier``'s library): a logistic regression on an
image's radial power spectrum and intensity percentiles, fitted on annotated images, saved and loaded
as plain arrays, predicting in plain numpy."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kit.competition import CELL_TYPES
from kit.data import sartorius
from kit.files import atomic_output, check_writable_dir, read_npz
from kit.progress import module_logger

logger = module_logger(__name__)

FILE_NAME = "cell-types.npz"  # beside the weights, where kit.infer looks for it by default
FORMAT = "kit-cell-types-v1"
IMAGES_PER_TYPE = 100  # training images per cell type the classifier is fitted on
_SPECTRUM_BANDS = np.geomspace(2e-3, 0.71, 17)  # radial frequency band edges (cycles per pixel)
_ARRAYS = ("classes", "mean", "scale", "coef", "intercept", "spectrum_bands")


@dataclass(frozen=True)
class CellTypeClassifier:
    """A fitted standardiser + logistic regression as arrays: ``classes[argmax(z @ coef.T + intercept)]``
    with ``z = (features - mean) / scale``."""

    classes: tuple[str, ...]
    mean: np.ndarray  # float64[F]
    scale: np.ndarray  # float64[F]
    coef: np.ndarray  # float64[C, F]: one row per class
    intercept: np.ndarray  # float64[C]

    def predict(self, features: np.ndarray) -> list[str]:
        """The cell type of each row of ``features`` (float[n, F], from ``image_features``)."""
        scores = (np.asarray(features, np.float64) - self.mean) / self.scale @ self.coef.T + self.intercept
        return [self.classes[k] for k in np.argmax(scores, axis=1)]

    def predict_images(self, image_paths: Sequence[Path]) -> list[str]:
        """The cell type of each image file."""
        if not image_paths:
            return []
        return self.predict(np.stack([image_features(sartorius.load_image(path)) for path in image_paths]))


def make_model():
    """The unfitted scikit-learn pipeline ``from_fitted`` turns into a ``CellTypeClassifier``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))


def from_fitted(model) -> CellTypeClassifier:
    """The arrays of a fitted ``make_model()`` pipeline, predicting exactly as its ``predict``."""
    scaler, regression = model[0], model[-1]
    coef, intercept = regression.coef_, regression.intercept_
    if len(regression.classes_) == 2:
        # sklearn keeps one row for two classes and picks classes_[1] where its score is > 0:
        # a zero row for classes_[0] gives the same argmax (ties go to classes_[0] in both).
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros_like(intercept), intercept])
    return CellTypeClassifier(tuple(str(c) for c in regression.classes_), np.asarray(scaler.mean_, np.float64),
                              np.asarray(scaler.scale_, np.float64), np.asarray(coef, np.float64),
                              np.asarray(intercept, np.float64))


def fit_classifier(layout: sartorius.CompetitionLayout, train_df: pd.DataFrame, seed: int = 0) -> CellTypeClassifier:
    """Fitted on up to ``IMAGES_PER_TYPE`` annotated images per cell type of ``train_df`` (drawn with ``seed``)."""
    table = sartorius.image_table(train_df)
    rng = np.random.default_rng(seed)
    fit_ids, fit_types = [], []
    for cell_type, group in table.groupby("cell_type"):
        ids = sorted(group["id"])
        if len(ids) > IMAGES_PER_TYPE:
            ids = sorted(rng.choice(ids, size=IMAGES_PER_TYPE, replace=False))
        fit_ids += ids
        fit_types += [cell_type] * len(ids)
    features = np.stack([image_features(sartorius.load_image(layout.train_dir / f"{i}.png")) for i in fit_ids])
    return from_fitted(make_model().fit(features, fit_types))


def predict_cell_types(layout: sartorius.CompetitionLayout, train_df: pd.DataFrame,
                       image_paths: Sequence[Path], seed: int = 0) -> list[str]:
    """The cell type of each image, from a classifier fitted here on the annotated training images."""
    return fit_classifier(layout, train_df, seed).predict_images(image_paths)


def image_features(image: np.ndarray) -> np.ndarray:
    """float64[19]: log power of the standardised image in 16 radial frequency bands, and the
    1st, 50th and 99th intensity percentiles (cell size and texture tell the types apart)."""
    pixels = image.astype(np.float32)
    pixels = (pixels - pixels.mean()) / (pixels.std() + 1e-6)
    power = np.abs(np.fft.rfft2(pixels)) ** 2
    band, counts = _spectrum_bands(image.shape)
    totals = np.bincount(band, weights=power.ravel(), minlength=len(_SPECTRUM_BANDS) + 1)[1:-1]
    return np.concatenate([np.log(totals / counts + 1e-12), np.percentile(image, [1, 50, 99])])


@functools.lru_cache(maxsize=4)
def _spectrum_bands(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(band index of every rfft2 coefficient, coefficients per inner band) of an image ``shape``:
    the same for every image of one size, so computed once."""
    radius = np.hypot(np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :])
    band = np.digitize(radius, _SPECTRUM_BANDS).ravel()
    counts = np.maximum(np.bincount(band, minlength=len(_SPECTRUM_BANDS) + 1)[1:-1], 1)
    band.flags.writeable = counts.flags.writeable = False
    return band, counts


def save_classifier(path: str | Path, classifier: CellTypeClassifier) -> Path:
    """Write ``classifier`` as an .npz of plain arrays, atomically (a reader never sees half a file)."""
    arrays = {"format": np.array(FORMAT), "classes": np.array(classifier.classes, dtype=str),
              "mean": classifier.mean, "scale": classifier.scale, "coef": classifier.coef,
              "intercept": classifier.intercept, "spectrum_bands": _SPECTRUM_BANDS}
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return Path(path)


def load_classifier(path: str | Path) -> CellTypeClassifier:
    """A classifier written by ``save_classifier``; a clear error naming the file otherwise."""
    path = Path(path)
    make = f"python -m kit.cell_type_classifier fit --data DIR --out {path}"
    refit = f"fit it again with `{make}`"
    fields = read_npz(path, "cell-type classifier", make)
    if str(fields.get("format")) != FORMAT or any(key not in fields for key in _ARRAYS):
        raise ValueError(f"{path} is not a cell-type classifier of this kit (format {FORMAT!r} with "
                         f"{', '.join(_ARRAYS)} expected); {refit}")
    problem = _classifier_problem(fields)
    if problem:
        raise ValueError(f"cell-type classifier {path}: {problem}; {refit}")
    return CellTypeClassifier(tuple(str(c) for c in fields["classes"]), *(
        fields[key].astype(np.float64) for key in ("mean", "scale", "coef", "intercept")))


def _classifier_problem(fields: dict[str, np.ndarray]) -> str | None:
    """What is wrong with a stored classifier's arrays, or None."""
    classes, mean, scale, coef, intercept = (fields[key] for key in _ARRAYS[:5])
    n_features = len(_SPECTRUM_BANDS) - 1 + 3
    if not np.array_equal(fields["spectrum_bands"], _SPECTRUM_BANDS):
        return "it was fitted on other image features than this kit computes"
    if classes.ndim != 1 or classes.dtype.kind != "U" or not set(classes.tolist()) <= set(CELL_TYPES):
        return f"classes {classes.tolist()} are not cell types of {', '.join(CELL_TYPES)}"
    shapes = [mean.shape, scale.shape, coef.shape, intercept.shape]
    if shapes != [(n_features,), (n_features,), (len(classes), n_features), (len(classes),)]:
        return f"array shapes {shapes} do not fit {len(classes)} classes of {n_features} features"
    numbers = [mean, scale, coef, intercept]
    if any(a.dtype.kind != "f" or not np.isfinite(a).all() for a in numbers) or not (scale > 0).all():
        return "it holds non-numeric, non-finite or non-positive-scale values"
    return None


def fit_and_save(data_root: str | Path | None, out: str | Path, seed: int = 0) -> Path:
    """Fit on every annotated image type found below ``data_root`` and save to ``out``; say what was done."""
    check_writable_dir(Path(out).parent)  # before the fit, not after it
    layout = sartorius.find_competition(data_root, need_test=False)
    classifier = fit_classifier(layout, sartorius.read_train_csv(layout.train_csv), seed)
    save_classifier(out, classifier)
    logger.info(f"cell-type classifier ({', '.join(classifier.classes)}) fitted on the training images of "
                f"{layout.root}; wrote {out}")
    return Path(out)
