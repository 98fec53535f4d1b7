"""From a predicted cell probability to non-overlapping instances (the mask variants).

The method paper's post-processing, made fast enough to run on every test image:
1. threshold the probability, then a morphological closing;
2. boundary tuning: a classic classifier (SVM with a degree-3 polynomial kernel, or Gaussian naive
   Bayes, whichever is more accurate) re-decides the pixels in a thin band around the predicted
   mask's boundary from two features, the pixel intensity and its Sobel gradient magnitude. Both
   features are quantised to 0..255, so the fitted classifier is tabulated once as a 256 x 256
   lookup table and applying it costs one table read per band pixel;
3. a closing again; then instances: a distance-transform watershed (touching cells) or connected
   components, and instances smaller than the cell type's minimum size are dropped.

The table is fitted by ``kit.boundary_table`` (``python -m kit.boundary_table fit``); this module
holds what runs at inference: applying it, saving and loading it.
"""
from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import cv2
import numba
import numpy as np

from kit import flows
from kit.competition import CELL_TYPES
from kit.files import atomic_output, read_npz

SOBEL_STEP = 2.0  # Sobel magnitude units per code: 255 codes reach 510, above the 99.8th percentile here
BAND_RADIUS = 2  # pixels on each side of a boundary that boundary tuning re-decides
LUT_FORMAT = "kit-boundary-lut-v1"
# Smallest instance kept, per cell type: about the 1st percentile of the annotated cell areas of the
# shared training images (astro 106, cort 75, shsy5y 48 pixels; medians 707, 219, 193), so that
# at most about 1 % of true cells could fall below it while fragments and specks go.
MIN_SIZE_BY_TYPE = types.MappingProxyType({"cort": 75, "astro": 100, "shsy5y": 50})
CELL_MASK_THRESHOLD = 0.5  # flow variant: cell probability above which a pixel is followed
CELL_PROB = types.MappingProxyType(dict.fromkeys(CELL_TYPES, CELL_MASK_THRESHOLD))
FLOW_THRESHOLD_BY_TYPE = types.MappingProxyType(dict.fromkeys(CELL_TYPES, flows.FLOW_THRESHOLD))
TUNABLE = ("cell_prob", "flow_threshold", "min_size")  # the flow extraction's per-type settings
# Instance extraction: a distance-transform watershed for every type, because touching cells form
# one connected component of the mask and the watershed splits them at their narrow necks; the seed
# window and depth per type follow each type's cell size (large astrocytes need a wide window so one
# cell gets one seed). Even a perfect union mask leaves touching cells hard to split, which is why
# the flow variant exists.
INSTANCES = types.MappingProxyType({"cort": "watershed", "astro": "watershed", "shsy5y": "watershed"})
PEAK_DISTANCE = types.MappingProxyType({"cort": 4, "astro": 16, "shsy5y": 6})  # seed window half width
MIN_PEAK = types.MappingProxyType({"cort": 4.0, "astro": 6.0, "shsy5y": 4.0})  # seed depth (pixels)
_LEVELS_PER_PIXEL = 4  # watershed flooding order: distance rounded up to quarter pixels
_CLOSING_SHAPES = {"ellipse": cv2.MORPH_ELLIPSE, "rect": cv2.MORPH_RECT, "cross": cv2.MORPH_CROSS}


@dataclass(frozen=True)
class BoundaryLUT:
    """A boundary classifier tabulated over the quantised features.

    ``table[intensity, sobel_code]`` is True where the classifier says "inside a cell".
    """

    table: np.ndarray  # bool[256, 256]
    classifier: str  # one of kit.inference.boundary_fit.CLASSIFIERS: the one tabulated
    accuracies: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # per classifier, per split
    n_pixels: int = 0  # training pixels
    band_radius: int = BAND_RADIUS


@dataclass(frozen=True)
class PostprocessConfig:
    """Settings of ``mask_to_labels`` and, per cell type, of the flow variant's extraction
    (``cell_prob``, ``flow_threshold``, ``min_size``; ``kit.tune`` fits them into a checkpoint);
    ``boundary`` None skips boundary tuning."""

    threshold: float = 0.5  # probability above which a pixel is cell
    closing_radius: int = 2  # 0 disables both closings
    closing_shape: str = "ellipse"  # ellipse | rect | cross
    boundary: BoundaryLUT | None = dataclasses.field(default=None, compare=False)
    instances: Mapping[str, str] = dataclasses.field(default_factory=lambda: INSTANCES)  # "watershed" | "components"
    min_size: Mapping[str, int] = dataclasses.field(default_factory=lambda: MIN_SIZE_BY_TYPE)  # smallest instance (pixels)
    peak_distance: Mapping[str, int] = dataclasses.field(default_factory=lambda: PEAK_DISTANCE)
    min_peak: Mapping[str, float] = dataclasses.field(default_factory=lambda: MIN_PEAK)
    cell_prob: Mapping[str, float] = dataclasses.field(default_factory=lambda: CELL_PROB)  # flow: pixels followed
    flow_threshold: Mapping[str, float] = dataclasses.field(default_factory=lambda: FLOW_THRESHOLD_BY_TYPE)

    def with_tuned(self, tuned: Mapping[str, Mapping[str, float]] | None) -> "PostprocessConfig":
        """A copy with per-type settings from a checkpoint (``{"cell_prob": {type: value}, ...}``);
        types a setting does not name keep this config's value."""
        changes = {}
        for name, per_type in (tuned or {}).items():
            if name not in TUNABLE:
                raise ValueError(f"unknown tuned setting {name!r}; known: {', '.join(TUNABLE)}")
            changes[name] = types.MappingProxyType({**getattr(self, name), **per_type})
        return dataclasses.replace(self, **changes)


def mask_to_labels(prob: np.ndarray, image: np.ndarray, cell_type: str,
                   config: PostprocessConfig = PostprocessConfig()) -> np.ndarray:
    """int32[H, W] instances (1..n, consecutive, never overlapping) from a cell probability.

    ``prob``: float[H, W] in [0, 1]; ``image``: the uint8[H, W] input image (boundary features);
    ``cell_type``: one of ``kit.competition.CELL_TYPES`` (instance method and minimum size).
    """
    prob, image = _checked_inputs(prob, image)
    if cell_type not in CELL_TYPES:
        raise ValueError(f"unknown cell type {cell_type!r}; valid: {', '.join(CELL_TYPES)}")
    mask = prob > config.threshold
    mask = closing(mask, config.closing_radius, config.closing_shape)
    if config.boundary is not None:
        mask = tune_boundary(mask, image, config.boundary)
        mask = closing(mask, config.closing_radius, config.closing_shape)
    method = config.instances[cell_type]
    if method == "watershed":
        labels = watershed_instances(mask, config.peak_distance[cell_type], config.min_peak[cell_type])
    elif method == "components":
        labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)[1]
    else:
        raise ValueError(f"instance method {method!r} for {cell_type}: use 'watershed' or 'components'")
    return flows.drop_small(labels, config.min_size[cell_type])


def output_to_labels(prob: np.ndarray, flow: np.ndarray | None, image: np.ndarray, cell_type: str,
                     config: PostprocessConfig = PostprocessConfig(),
                     flow_threshold: float | None = None) -> np.ndarray:
    """int32[H, W] non-overlapping instances from one image's decoded network output.

    ``prob``: float[H, W] cell probability; ``flow``: float[2, H, W] (dy, dx), or None for the mask
    variants (``mask_to_labels``). The flow variant follows the flows inside
    ``prob > config.cell_prob[cell_type]`` (``kit.flows.flows_to_labels``) with the type's flow-error
    threshold (``flow_threshold``, when given, overrides it for every type) and minimum size.
    Training validation and inference both come here, so the score a run reports is the score
    inference gets.
    """
    if flow is None:
        return mask_to_labels(prob, image, cell_type, config)
    if flow_threshold is None:
        flow_threshold = config.flow_threshold[cell_type]
    return flows.flows_to_labels(flow, prob > config.cell_prob[cell_type], flow_threshold=flow_threshold,
                                 min_size=config.min_size[cell_type])


def closing(mask: np.ndarray, radius: int = 2, shape: str = "ellipse") -> np.ndarray:
    """bool[H, W]: morphological closing with a (2 radius + 1)^2 structuring element of ``shape``.

    Pixels beyond the image border count as background, so no cell grows into the border.
    """
    if shape not in _CLOSING_SHAPES:
        raise ValueError(f"closing shape {shape!r}: use one of {', '.join(_CLOSING_SHAPES)}")
    if radius < 0:
        raise ValueError(f"closing radius must be >= 0, got {radius}")
    mask = np.ascontiguousarray(mask, dtype=bool)
    if radius == 0:
        return mask.copy()
    kernel = cv2.getStructuringElement(_CLOSING_SHAPES[shape], (2 * radius + 1, 2 * radius + 1))
    # A background margin: the erosion then treats a cell cut by the border like any other edge.
    padded = cv2.copyMakeBorder(mask.view(np.uint8), radius, radius, radius, radius, cv2.BORDER_CONSTANT, value=0)
    closed = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return closed[radius:-radius, radius:-radius].astype(bool)


def quantised_features(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intensity uint8[H, W], Sobel code uint8[H, W]): the boundary classifier's two features.

    The code is round(|Sobel gradient| / SOBEL_STEP) capped at 255 (3x3 Sobel, reflected border).
    """
    image = _checked_image(image)
    as_float = image.astype(np.float32)
    gy = cv2.Sobel(as_float, cv2.CV_32F, 0, 1, ksize=3)
    gx = cv2.Sobel(as_float, cv2.CV_32F, 1, 0, ksize=3)
    codes = np.minimum(cv2.magnitude(gx, gy) * np.float32(1.0 / SOBEL_STEP) + np.float32(0.5), 255)
    return image, codes.astype(np.uint8)


def boundary_band(mask: np.ndarray, radius: int = BAND_RADIUS) -> np.ndarray:
    """bool[H, W]: pixels within ``radius`` (square window) of the boundary, on either side."""
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    as_uint8 = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    grown = cv2.dilate(as_uint8, kernel)
    shrunk = cv2.erode(as_uint8, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return (grown != shrunk)


def tune_boundary(mask: np.ndarray, image: np.ndarray, lut: BoundaryLUT) -> np.ndarray:
    """bool[H, W]: ``mask`` with the pixels of its boundary band re-decided by the table."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    if mask.shape != np.shape(image):
        raise ValueError(f"mask {mask.shape} and image {np.shape(image)} differ in size")
    _check_table(lut.table, "in use")
    band = boundary_band(mask, lut.band_radius)
    intensity, sobel = quantised_features(image)
    return _tune(mask, band, intensity, sobel, lut.table)


def watershed_instances(mask: np.ndarray, peak_distance: int = 4, min_peak: float = 2.0) -> np.ndarray:
    """int32[H, W]: ``mask`` split into instances by a watershed of its distance transform.

    Seeds are the maxima of the distance to the background (beyond the image border too) over a
    (2 peak_distance + 1)^2 window lying at least ``min_peak`` pixels inside (a plateau is one
    seed). Basins grow from the seeds
    over 8-connected mask pixels, deepest first (distance in quarter pixels, first come first
    served within a level); a mask component holding no seed becomes one instance of its own.
    """
    mask8 = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    if peak_distance < 1:
        raise ValueError(f"peak_distance must be >= 1, got {peak_distance}")
    # Outside the image counts as background: a mask covering the whole image gets finite distances.
    padded = cv2.copyMakeBorder(mask8, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_5)[1:-1, 1:-1]
    window = np.ones((2 * peak_distance + 1, 2 * peak_distance + 1), np.uint8)
    peaks = (dist >= cv2.dilate(dist, window)) & (dist >= max(min_peak, 1e-3))
    n_seeds, seeds = cv2.connectedComponents(peaks.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    levels = np.ceil(dist * _LEVELS_PER_PIXEL).astype(np.int32)  # >= 1 exactly on the mask
    labels = _flood(levels, seeds, int(levels.max()) + 1)
    orphans = (labels == 0) & (mask8 == 1)
    if orphans.any():
        orphan_ids = cv2.connectedComponents(orphans.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)[1]
        labels[orphans] = orphan_ids[orphans] + (n_seeds - 1)
    return labels


def save_boundary_lut(path: str | Path, lut: BoundaryLUT) -> Path:
    """Write ``lut`` as an .npz file atomically (a reader never sees half a file)."""
    _check_table(lut.table, path)
    arrays = {"format": np.array(LUT_FORMAT), "table": lut.table.astype(bool),
              "classifier": np.array(lut.classifier), "n_pixels": np.array(lut.n_pixels),
              "band_radius": np.array(lut.band_radius), "sobel_step": np.array(SOBEL_STEP)}
    arrays.update({f"accuracy_{name}": np.asarray(acc, float) for name, acc in lut.accuracies.items()})
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return Path(path)


def load_boundary_lut(path: str | Path) -> BoundaryLUT:
    """A table written by ``save_boundary_lut``; a clear error naming the file otherwise."""
    fields = read_npz(path, "boundary table", f"python -m kit.boundary_table fit --data DIR --out {path}")
    if str(fields.get("format")) != LUT_FORMAT:
        raise ValueError(f"{path} is not a boundary table of this kit (format {LUT_FORMAT!r} expected)")
    if float(fields["sobel_step"]) != SOBEL_STEP:
        raise ValueError(f"{path} was fitted with Sobel step {float(fields['sobel_step'])}, this kit uses "
                         f"{SOBEL_STEP}; fit the table again")
    _check_table(fields["table"], path)
    accuracies = {key[len("accuracy_"):]: value for key, value in fields.items() if key.startswith("accuracy_")}
    return BoundaryLUT(fields["table"].astype(bool), str(fields["classifier"]), types.MappingProxyType(accuracies),
                       int(fields["n_pixels"]), int(fields["band_radius"]))


def _check_table(table: np.ndarray, path) -> None:
    if np.shape(table) != (256, 256) or np.asarray(table).dtype != bool:
        raise ValueError(f"boundary table {path}: expected bool[256, 256], got {np.asarray(table).dtype} "
                         f"{np.shape(table)}")


def _checked_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"image must be uint8 [H, W], got dtype {image.dtype} shape {image.shape}")
    return np.ascontiguousarray(image)


def _checked_inputs(prob: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prob = np.asarray(prob)
    image = _checked_image(image)
    if prob.ndim != 2 or not np.issubdtype(prob.dtype, np.floating):
        raise ValueError(f"prob must be float [H, W], got dtype {prob.dtype} shape {prob.shape}")
    if prob.shape != image.shape:
        raise ValueError(f"prob {prob.shape} and image {image.shape} differ in size")
    if not np.isfinite(prob).all():
        raise ValueError("prob holds NaN or infinite values")
    return prob, image


@numba.njit(cache=True)
def _tune(mask, band, intensity, sobel, table):
    tuned = mask.copy()
    h, w = mask.shape
    for y in range(h):
        for x in range(w):
            if band[y, x]:
                tuned[y, x] = table[intensity[y, x], sobel[y, x]]
    return tuned


@numba.njit(cache=True)
def _flood(levels, seeds, n_levels):
    """Hierarchical-queue flooding: pixels with level > 0 join the basin of the seed that reaches
    them first, highest level first; FIFO queues per level as linked lists over the pixels."""
    h, w = levels.shape
    labels = seeds.copy().ravel()
    flat = levels.ravel()
    head = np.full(n_levels, -1, np.int64)
    tail = np.full(n_levels, -1, np.int64)
    after = np.full(flat.size, -1, np.int64)
    for p in range(flat.size):
        if labels[p] > 0:
            _enqueue(head, tail, after, flat[p], p)
    for level in range(n_levels - 1, 0, -1):
        while head[level] >= 0:
            p = head[level]
            head[level] = after[p]
            if head[level] < 0:
                tail[level] = -1
            y, x = p // w, p % w
            for yy in range(max(y - 1, 0), min(y + 2, h)):
                for xx in range(max(x - 1, 0), min(x + 2, w)):
                    q = yy * w + xx
                    if labels[q] == 0 and flat[q] > 0:
                        labels[q] = labels[p]
                        _enqueue(head, tail, after, min(flat[q], level), q)
    return labels.reshape(h, w)


@numba.njit(cache=True, inline="always")
def _enqueue(head, tail, after, level, p):
    if tail[level] < 0:
        head[level] = p
    else:
        after[tail[level]] = p
    tail[level] = p

