"""LIVECell, as the competition's input ships it: COCO polygons -> the kit's training samples.

Layout (inside the competition folder)::

    LIVECell_dataset_2021/
      annotations/LIVECell/livecell_coco_{train,val,test}.json                      all 8 lines, "annotations" a list
      annotations/LIVECell_single_cells/<line>/livecell_<line>_{train,val,test}.json  one line, "annotations" a dict by id
      images/livecell_train_val_images/<PREFIX>/<PREFIX>_Phase_..._N.tif            train and val images
      images/livecell_test_images/<PREFIX>/<PREFIX>_Phase_..._N.tif                 test images

File names are flat (``SHSY5Y_Phase_A10_1_00d04h00m_1.tif``); the image's subfolder and its cell
line are the name's prefix before the first ``_``. The images are 8-bit grayscale 704 wide x 520
high, the competition's own size.

Each annotation's polygon(s) are drawn into a label image where, as for ``train.csv``
(``kit.rle.decode_labels``), an overlapped pixel belongs to the first-listed cell; a
``kit.data.Sample`` then takes the same path as a competition image (flow targets, crops,
rescaling in ``kit.batches``). The rasteriser is ``skimage.draw.polygon`` (a pixel belongs to the
cell when its centre lies inside), not pycocotools and not ``cv2.fillPoly``: scikit-image is on
Kaggle's image and in the kit's requirements, pycocotools is neither (a kernel installs nothing),
and it draws the cells pycocotools draws (mean IoU 0.98, the same area), where ``cv2.fillPoly``
also fills every pixel the outline touches (cells 14 % larger, mean IoU 0.86 against pycocotools),
which on LIVECell's small cells would teach the network fat outlines (``benchmarks.bench_livecell``
measures the three side by side, and the time per 1,000 annotations).

Bad input raises ``LivecellError`` naming the file and the annotation id: a json of another shape,
a missing image, a polygon with fewer than 3 distinct points or no area, a self-crossing polygon.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numba
import numpy as np
import skimage.draw

from kit import data, rle
from kit.competition import IMAGE_SHAPE, LIVECELL_CELL_LINES

LIVECELL_DIR = "LIVECell_dataset_2021"
SPLITS = ("train", "val", "test")
PRETRAIN_SPLITS = ("train", "val")  # the kit validates on the competition's own split, so LIVECell's val trains
_HINT = ("the competition's input ships LIVECell_dataset_2021/ beside train.csv (kaggle competitions download "
         "-c sartorius-cell-instance-segmentation); drop --pretrain to train without it")


class LivecellError(ValueError):
    """A LIVECell file that cannot be read as the competition ships it; the message names file and annotation."""


@dataclass(frozen=True)
class ImageAnnotations:
    """One LIVECell image of an annotation file and its cells' polygons, in the file's order."""

    file_name: str
    cell_line: str  # one of LIVECELL_CELL_LINES
    annotation_ids: tuple[int | str, ...]
    polygons: tuple[tuple[np.ndarray, ...], ...]  # per annotation, its parts as float64[n, 2] (x, y)


def find_livecell(competition_root: str | Path) -> Path:
    """``competition_root/LIVECell_dataset_2021``, or an error saying where it was looked for."""
    folder = Path(competition_root) / LIVECELL_DIR
    if not (folder / "annotations").is_dir() or not (folder / "images").is_dir():
        raise FileNotFoundError(f"no LIVECell in {competition_root}: expected {folder}/annotations and "
                                f"{folder}/images; {_HINT}")
    return folder


def annotation_files(livecell_root: str | Path, cell_lines: Sequence[str] | None, split: str) -> list[Path]:
    """The annotation files of ``split``: the COCO file of all lines (``cell_lines`` None), else one
    single-cells file per line. A missing file is an error naming it."""
    if split not in SPLITS:
        raise ValueError(f"LIVECell split {split!r} unknown; valid: {', '.join(SPLITS)}")
    base = Path(livecell_root) / "annotations"
    if cell_lines is None:
        files = [base / "LIVECell" / f"livecell_coco_{split}.json"]
    else:
        files = [base / "LIVECell_single_cells" / line / f"livecell_{line}_{split}.json" for line in cell_lines]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"LIVECell annotation file {path} is missing; {_HINT}")
    return files


def read_annotations(path: str | Path) -> list[ImageAnnotations]:
    """The annotated images of one LIVECell json (either shape), sorted by file name; every
    polygon checked (``check_polygon``). Images without annotations are left out."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError) as err:
        raise LivecellError(f"{path}: not readable as json ({err})") from None
    images, annotations = _images_and_annotations(document, path)
    cells: dict[int | str, list] = {image_id: [] for image_id in images}
    for key, annotation in annotations:
        annotation_id = annotation.get("id", key)
        image_id = annotation.get("image_id")
        if image_id not in cells:
            raise LivecellError(f"{path}: annotation {annotation_id}: image_id {image_id!r} is not in 'images'")
        parts = _polygon_parts(annotation.get("segmentation"), path, annotation_id)
        cells[image_id].append((annotation_id, tuple(check_polygon(p, path, annotation_id) for p in parts)))
    found = [ImageAnnotations(name, cell_line(name, path), tuple(a for a, _ in cells[i]), tuple(p for _, p in cells[i]))
             for i, name in images.items() if cells[i]]
    return sorted(found, key=lambda image: image.file_name)


def check_polygon(flat: Sequence[float], path: Path, annotation_id) -> np.ndarray:
    """float64[n, 2] (x, y) vertices of a COCO polygon ``[x0, y0, x1, y1, ...]``, repeated
    consecutive points dropped; an error naming ``path`` and ``annotation_id`` if it has an odd or
    non-numeric coordinate list, fewer than 3 distinct points, crosses itself, or has no area
    (a polygon that does not cross itself has none only when its points are collinear)."""
    where = f"{path}: annotation {annotation_id}"
    try:
        points = np.asarray(flat, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise LivecellError(f"{where}: a polygon must be a flat list of x, y numbers (an even count)") from None
    if not np.isfinite(points).all():
        raise LivecellError(f"{where}: the polygon holds a non-finite coordinate")
    points = _without_repeats(points)
    distinct = _distinct_points(points)
    if distinct < 3:
        raise LivecellError(f"{where}: empty polygon ({distinct} distinct point(s), a cell needs at least 3); "
                            "remove the annotation from the file")
    if _crosses(points):
        raise LivecellError(f"{where}: the polygon crosses itself, so its inside is ambiguous; redraw or "
                            "remove the annotation")
    if _twice_area(points) == 0.0:
        raise LivecellError(f"{where}: empty polygon (its {len(points)} points are collinear: no area); "
                            "remove the annotation from the file")
    return points


def polygon_area(points: np.ndarray) -> float:
    """Absolute shoelace area of a closed polygon float[n, 2]."""
    return float(_twice_area(np.ascontiguousarray(points, dtype=np.float64))) / 2.0


def self_crossing(points: np.ndarray) -> bool:
    """Whether two non-adjacent edges of the closed polygon float[n, 2] cross properly (touching
    is no crossing). Compiled: the n (n - 3) / 2 edge pairs of each of LIVECell's 1.6 million
    polygons would cost minutes in numpy."""
    points = np.ascontiguousarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"self_crossing expects float[n, 2] points, got shape {points.shape}")
    return bool(_crosses(points))


@numba.njit(cache=True)
def _without_repeats(points):
    """The points without those equal to their predecessor (the last compared with the first)."""
    n = len(points)
    keep = np.ones(n, np.bool_)
    for i in range(n):
        j = i - 1 if i > 0 else n - 1
        if n > 1 and points[i, 0] == points[j, 0] and points[i, 1] == points[j, 1]:
            keep[i] = False
    if not keep.any():
        keep[0] = True
    return points[keep]


@numba.njit(cache=True)
def _distinct_points(points):
    count = 0
    for i in range(len(points)):
        seen = False
        for j in range(i):
            if points[i, 0] == points[j, 0] and points[i, 1] == points[j, 1]:
                seen = True
                break
        count += not seen
    return count


@numba.njit(cache=True, inline="always")
def _turn(ax, ay, bx, by, cx, cy):
    cross = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    return 1 if cross > 0 else (-1 if cross < 0 else 0)


@numba.njit(cache=True)
def _crosses(points):
    n = len(points)
    for i in range(n):
        ax, ay = points[i, 0], points[i, 1]
        bx, by = points[(i + 1) % n, 0], points[(i + 1) % n, 1]
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue  # the last edge meets the first
            cx, cy = points[j, 0], points[j, 1]
            dx, dy = points[(j + 1) % n, 0], points[(j + 1) % n, 1]
            if (_turn(ax, ay, bx, by, cx, cy) * _turn(ax, ay, bx, by, dx, dy) < 0
                    and _turn(cx, cy, dx, dy, ax, ay) * _turn(cx, cy, dx, dy, bx, by) < 0):
                return True
    return False


@numba.njit(cache=True)
def _twice_area(points):
    total = 0.0
    n = len(points)
    for i in range(n):
        total += points[i, 0] * points[(i + 1) % n, 1] - points[i, 1] * points[(i + 1) % n, 0]
    return abs(total)


def label_image(polygons: Sequence[Sequence[np.ndarray]], shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """int32[H, W]: cell k + 1 where polygon k covers a pixel's centre; an overlapped pixel goes to
    the first-listed cell, as ``kit.rle.decode_labels`` resolves ``train.csv``'s overlaps.

    Vertices are COCO's (x, y), where pixel i spans [i, i + 1): pixel (r, c) is inside when
    (c + 0.5, r + 0.5) is. Painted last to first, so the first-listed cell is painted over nothing.
    """
    labels = np.zeros(shape, np.int32)
    for k in range(len(polygons) - 1, -1, -1):
        for part in polygons[k]:
            rows, cols = skimage.draw.polygon(part[:, 1] - 0.5, part[:, 0] - 0.5, shape)
            labels[rows, cols] = k + 1
    return labels


def cell_line(file_name: str, path: Path | None = None) -> str:
    """The cell line of a LIVECell file name: its prefix before the first ``_``, lower case."""
    line = file_name.split("_", 1)[0].lower()
    if line not in LIVECELL_CELL_LINES:
        where = f"{path}: " if path else ""
        raise LivecellError(f"{where}image {file_name!r}: prefix {file_name.split('_', 1)[0]!r} is none of LIVECell's "
                            f"cell lines ({', '.join(LIVECELL_CELL_LINES)})")
    return line


def image_path(livecell_root: str | Path, file_name: str, split: str) -> Path:
    """Where the competition's copy keeps a LIVECell image: its split's folder, then its name's prefix."""
    folder = "livecell_test_images" if split == "test" else "livecell_train_val_images"
    return Path(livecell_root) / "images" / folder / file_name.split("_", 1)[0] / file_name


def load_samples(livecell_root: str | Path, cell_lines: Sequence[str] | None = None,
                 splits: Iterable[str] = PRETRAIN_SPLITS, max_images: int | None = None) -> list[data.Sample]:
    """LIVECell images of ``cell_lines`` (None: all, from the COCO files) as ``kit.data.Sample``s
    whose cell type is their line (``LIVECELL_CELL_LINES``). ``max_images`` keeps that many, taken
    in turn from each line so that every line stays. Errors name the file and the annotation."""
    chosen = [(image, split) for split in splits for path in annotation_files(livecell_root, cell_lines, split)
              for image in read_annotations(path)]
    if max_images is not None:
        chosen = _round_robin(chosen, max_images)
    samples = []
    for image, split in chosen:
        path = image_path(livecell_root, image.file_name, split)
        if not path.is_file():
            raise LivecellError(f"LIVECell image {path} is missing (annotation {image.annotation_ids[0]} and "
                                f"{len(image.annotation_ids) - 1} more refer to it); {_HINT}")
        labels = label_image(image.polygons)
        samples.append(data.Sample(Path(image.file_name).stem, image.cell_line, data.load_image(path), labels,
                                   [run for run in rle.encode_labels(labels) if run]))
    return samples


def _round_robin(chosen: list, max_images: int) -> list:
    """At most ``max_images`` of ``chosen``, one line after another, in file-name order within a line."""
    if max_images < 1:
        raise ValueError(f"LIVECell max images must be >= 1, got {max_images}")
    by_line: dict[str, list] = {}
    for item in sorted(chosen, key=lambda item: item[0].file_name):
        by_line.setdefault(item[0].cell_line, []).append(item)
    order = [line[k] for k in range(max(map(len, by_line.values()), default=0))
             for line in by_line.values() if k < len(line)]
    return order[:max_images]


def _images_and_annotations(document, path: Path) -> tuple[dict, list]:
    """``({image id: file name}, [(key, annotation dict)])`` of both json shapes: ``annotations`` a
    list (the COCO files) or a dict keyed by id (the single-cells files)."""
    if not isinstance(document, dict) or "images" not in document or "annotations" not in document:
        found = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise LivecellError(f"{path}: not a LIVECell annotation file: expected a json object with 'images' and "
                            f"'annotations', found {found}")
    raw_images, raw = document["images"], document["annotations"]
    if isinstance(raw_images, dict):
        raw_images = list(raw_images.values())
    if not isinstance(raw_images, list) or not all(isinstance(i, dict) and "id" in i and "file_name" in i
                                                   for i in raw_images):
        raise LivecellError(f"{path}: 'images' must be a list of objects with 'id' and 'file_name'")
    if isinstance(raw, list):
        annotations = list(enumerate(raw))
    elif isinstance(raw, dict):
        annotations = list(raw.items())
    else:
        raise LivecellError(f"{path}: 'annotations' must be a list (COCO files) or an object keyed by id "
                            f"(single-cells files), found {type(raw).__name__}")
    for key, annotation in annotations:
        if not isinstance(annotation, dict):
            raise LivecellError(f"{path}: annotation {key}: expected an object, found {type(annotation).__name__}")
    return {image["id"]: image["file_name"] for image in raw_images}, annotations


def _polygon_parts(segmentation, path: Path, annotation_id) -> list:
    """The polygon(s) of one annotation's ``segmentation``: ``[[x0, y0, ...], ...]``."""
    if isinstance(segmentation, list) and segmentation and all(isinstance(p, list) for p in segmentation):
        return segmentation
    if isinstance(segmentation, list) and not segmentation:
        raise LivecellError(f"{path}: annotation {annotation_id}: empty polygon (segmentation []); "
                            "remove the annotation from the file")
    kind = "an RLE (crowd) mask" if isinstance(segmentation, dict) else type(segmentation).__name__
    raise LivecellError(f"{path}: annotation {annotation_id}: segmentation is {kind}, not a list of polygons")
