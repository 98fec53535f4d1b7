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

Reading (``read_livecell``) goes in the order that keeps a real-size read cheap: each json is parsed,
its polygons copied into flat float32 arrays as the parsed objects are freed one by one, and the
parsed json dropped; then the images are chosen (``max_images``, a DDP rank's share) from names
alone; then only the chosen images' polygons are checked, and their files' TIFF headers (size and
bit depth, no pixel decoded); only then is anything drawn (``LivecellSet.samples``).

LIVECell as it really is: about 0.45 % of its polygons cross themselves (tiny twists); they are drawn
as they are, as pycocotools draws them. What cannot become a cell (fewer than 3 distinct points, no
area, an RLE/crowd segmentation, no image entry, an image file missing) is skipped and counted, and
each file's read ends with one summary line (``ReadSummary.line``) in the progress output and in the
checkpoint's stage record. An image listed twice (same file name, another id, or in two files) is
read once. A file that cannot be parsed, of another shape, or with more than ``MAX_UNUSABLE_SHARE``
of its annotations or images unusable stops with a ``LivecellError`` naming it.

Each annotation's polygon(s) are drawn into a label image where, as for ``train.csv``
(``kit.rle.decode_labels``), an overlapped pixel belongs to the first-listed cell; a
``kit.data.sartorius.Sample`` then takes the same path as a competition image (flow targets, crops,
rescaling in ``kit.training.batches``). The rasteriser is ``skimage.draw.polygon`` (a pixel belongs to the
cell when its centre lies inside), not pycocotools and not ``cv2.fillPoly``: scikit-image is on
Kaggle's image and in the kit's requirements, pycocotools is neither (a kernel installs nothing),
and it draws the cells pycocotools draws (mean IoU 0.98, the same area), where ``cv2.fillPoly``
also fills every pixel the outline touches (cells 14 % larger, mean IoU 0.86 against pycocotools),
which on LIVECell's small cells would teach the network fat outlines (``benchmarks.bench_livecell``
measures the three side by side, and the time per 1,000 annotations).
"""
from __future__ import annotations

import ctypes
import functools
import json
import logging
import struct
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numba
import numpy as np
import skimage.draw

from kit import rle
from kit.competition import COMPETITION_SLUG, IMAGE_SHAPE, LIVECELL_CELL_LINES
from kit.data import sartorius

logger = logging.getLogger(__name__)

LIVECELL_DIR = "LIVECell_dataset_2021"
SPLITS = ("train", "val", "test")
PRETRAIN_SPLITS = ("train", "val")  # the kit validates on the competition's own split, so LIVECell's val trains
# Real LIVECell loses ~0 % (crossings are drawn); more than this share unusable means another file or a broken copy.
MAX_UNUSABLE_SHARE = 0.05
FIRST_IDS = 3  # ids the summary names per reason
SKIP_REASONS = {  # why an annotation cannot become a cell, in the summary's words
    "points": "fewer than 3 distinct points",
    "area": "no area (collinear points)",
    "crowd": "RLE/crowd segmentation",
    "malformed": "not a flat list of x, y numbers",
    "no_image": "image_id not in 'images'",
}
_HINT = ("the competition's input ships LIVECell_dataset_2021/ beside train.csv (kaggle competitions download "
         f"-c {COMPETITION_SLUG}); drop --pretrain to train without it")
_REPLACE = ("not LIVECell as the competition ships it: check that --data is the competition's input, or drop "
            "--pretrain (or pick other lines with --pretrain livecell:LINE,...)")


class LivecellError(ValueError):
    """A LIVECell file that cannot be read as the competition ships it; the message names the file."""


@dataclass(frozen=True)
class ImageAnnotations:
    """One LIVECell image and its usable cells, compact: every part's vertices in one float32 array.

    Part k is ``points[starts[k]:starts[k + 1]]`` and outlines cell ``part_cells[k]`` (an index into
    ``annotation_ids``, in the file's order)."""

    file_name: str
    cell_line: str  # one of LIVECELL_CELL_LINES
    annotation_ids: tuple[int | str, ...]
    points: np.ndarray  # float32[N, 2] (x, y)
    starts: np.ndarray  # int64[P + 1]
    part_cells: np.ndarray  # int32[P]
    split: str = "train"

    @classmethod
    def from_polygons(cls, file_name: str, annotation_ids: Sequence, polygons: Sequence[Sequence[np.ndarray]],
                      split: str = "train") -> "ImageAnnotations":
        """From per-cell lists of float[n, 2] parts (tests, benchmarks)."""
        parts = [(k, np.asarray(p, np.float32).reshape(-1, 2)) for k, cell in enumerate(polygons) for p in cell]
        starts = np.cumsum([0, *(len(p) for _, p in parts)]).astype(np.int64)
        points = np.concatenate([p for _, p in parts]) if parts else np.zeros((0, 2), np.float32)
        return cls(file_name, cell_line(file_name), tuple(annotation_ids), points, starts,
                   np.array([k for k, _ in parts], np.int32), split)

    @property
    def polygons(self) -> tuple[tuple[np.ndarray, ...], ...]:
        """Per cell, its parts as float64[n, 2] (x, y)."""
        cells: list[list[np.ndarray]] = [[] for _ in self.annotation_ids]
        for k, cell in enumerate(self.part_cells):
            cells[cell].append(self.points[self.starts[k]:self.starts[k + 1]].astype(np.float64))
        return tuple(tuple(parts) for parts in cells)

    def labels(self, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
        """int32[H, W] label image (``label_image``'s rule), drawn from the compact arrays."""
        labels = np.zeros(shape, np.int32)
        for k in range(len(self.part_cells) - 1, -1, -1):
            part = self.points[self.starts[k]:self.starts[k + 1]]
            rows, cols = skimage.draw.polygon(part[:, 1] - 0.5, part[:, 0] - 0.5, shape)
            labels[rows, cols] = self.part_cells[k] + 1
        return labels


@dataclass
class ReadSummary:
    """What one annotation file gave: cells kept, annotations skipped by reason (with the first ids)."""

    path: Path
    annotations: int = 0  # in the file
    images: int = 0  # distinct annotated images in the file
    chosen: int = 0  # of them, those this run reads (max_images, a DDP rank's share)
    kept: int = 0
    crossing: int = 0  # kept polygons that cross themselves, drawn as they are
    skipped: Counter = field(default_factory=Counter)
    first_ids: dict = field(default_factory=dict)
    duplicates: int = 0  # image entries read once: another id, or an earlier file, has the same file name
    missing_files: list = field(default_factory=list)

    def skip(self, reason: str, annotation_id, count: int = 1) -> None:
        self.skipped[reason] += count
        ids = self.first_ids.setdefault(reason, [])
        if len(ids) < FIRST_IDS:
            ids.append(annotation_id)

    def line(self) -> str:
        """The one progress line that ends the file's read."""
        which = "" if self.chosen == self.images else f" (the {self.chosen:,} chosen of {self.images:,})"
        skipped = "; ".join(f"{n:,} {SKIP_REASONS.get(r, r)} (ids {', '.join(map(str, self.first_ids[r]))}"
                            f"{', ...' if n > len(self.first_ids[r]) else ''})" for r, n in self.skipped.items())
        missing = (f"; {len(self.missing_files):,} image file(s) missing, their cells skipped "
                   f"({', '.join(self.missing_files[:FIRST_IDS])})" if self.missing_files else "")
        return (f"{self.path.name}: {self.annotations:,} annotations on {self.images:,} images{which}: "
                f"kept {self.kept:,} cells ({self.crossing:,} self-crossing, drawn as they are); "
                f"skipped {sum(self.skipped.values()):,}{': ' + skipped if skipped else ''}{missing}; "
                f"{self.duplicates:,} duplicate image entries read once")


@dataclass
class LivecellSet:
    """The chosen LIVECell images (checked: polygons, file present, TIFF header) and each file's summary."""

    root: Path
    images: list[ImageAnnotations]
    summaries: list[ReadSummary]

    def samples(self) -> list[sartorius.Sample]:
        """The images drawn as ``kit.data.sartorius.Sample``s whose cell type is their line."""
        samples = []
        for image in self.images:
            labels = image.labels()
            samples.append(sartorius.Sample(Path(image.file_name).stem, image.cell_line,
                                       sartorius.load_image(image_path(self.root, image.file_name, image.split)),
                                       labels, [run for run in rle.encode_labels(labels) if run]))
        return samples


@dataclass
class _ParsedFile:
    """One json, parsed and freed: its annotations' polygons flat (float32, unchecked), by image id slot."""

    path: Path
    split: str
    names: list[str]  # per image id slot, its file name
    owner: np.ndarray  # int64 per slot: the slot whose annotations stand for its file name (duplicates read once)
    int_ids: np.ndarray  # int64[A]: each annotation's id (where it is an int)
    other_ids: dict  # {annotation index: id} where it is not an int
    annotation_slot: np.ndarray  # int64[A]: image id slot, -1 where the image entry is missing
    problem: list  # per annotation, a SKIP_REASONS key found while parsing, or None
    part_ends: np.ndarray  # int64[A]: annotation a's parts are parts[part_ends[a - 1]:part_ends[a]]
    coord_ends: np.ndarray  # int64[P]: part k's coordinates are coords[coord_ends[k - 1]:coord_ends[k]]
    coords: np.ndarray  # float32[F], x0, y0, x1, y1, ... of every part

    @functools.cached_property
    def _by_slot(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.annotation_slot, kind="stable")
        return order, self.annotation_slot[order]

    def annotations_of(self, slot: int) -> np.ndarray:
        """The annotation indexes of image slot ``slot``, in the file's order."""
        order, slots = self._by_slot
        return order[np.searchsorted(slots, slot, "left"):np.searchsorted(slots, slot, "right")]

    def annotation_id(self, index: int) -> int | str:
        return self.other_ids.get(index, int(self.int_ids[index]))

    def annotated_slots(self) -> list[int]:
        """The owner slots that hold at least one annotation, in image-entry order."""
        counts = np.bincount(self.annotation_slot[self.annotation_slot >= 0], minlength=len(self.names))
        return [slot for slot in range(len(self.names)) if counts[slot] and self.owner[slot] == slot]


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


def read_livecell(livecell_root: str | Path, cell_lines: Sequence[str] | None = None,
                  splits: Iterable[str] = PRETRAIN_SPLITS, max_images: int | None = None,
                  rank: int = 0, world: int = 1) -> LivecellSet:
    """The LIVECell images of ``cell_lines`` (None: all, from the COCO files) in ``splits``, chosen and
    checked, nothing drawn yet. ``max_images`` keeps that many, taken in turn from each line so that
    every line stays; under DDP (``world`` > 1) rank ``rank`` gets every ``world``-th of them (an
    equal share: the last few may be left out), so no rank holds the whole set. Each file's summary
    line is logged; a ``LivecellError`` names a file that is not LIVECell as the competition ships it."""
    if max_images is not None and max_images < 1:
        raise ValueError(f"LIVECell max images must be >= 1, got {max_images}")
    root = Path(livecell_root)
    files = [(path, split) for split in splits for path in annotation_files(root, cell_lines, split)]
    parsed, summaries, candidates, seen = [], [], [], set()
    for path, split in files:
        one, summary = _parse(path, split)
        for slot in one.annotated_slots():
            if one.names[slot] in seen:  # LIVECell's train and val files share a few images
                summary.duplicates += 1
                continue
            seen.add(one.names[slot])
            candidates.append((one.names[slot], len(parsed), slot))
        summary.images = sum(1 for _, f, _ in candidates if f == len(parsed))
        parsed.append(one)
        summaries.append(summary)
    chosen = _round_robin(candidates, max_images) if max_images is not None else candidates
    if world > 1:
        chosen = chosen[rank::world][: len(chosen) // world]
    images = _checked_images(root, chosen, parsed, summaries)
    for summary in summaries:
        logger.info(f"LIVECell {summary.line()}")
    return LivecellSet(root, images, summaries)


def load_samples(livecell_root: str | Path, cell_lines: Sequence[str] | None = None,
                 splits: Iterable[str] = PRETRAIN_SPLITS, max_images: int | None = None) -> list[sartorius.Sample]:
    """``read_livecell``'s images drawn as ``kit.data.sartorius.Sample``s whose cell type is their line."""
    return read_livecell(livecell_root, cell_lines, splits, max_images).samples()


def read_annotations(path: str | Path, split: str = "train") -> list[ImageAnnotations]:
    """Every usable image of one LIVECell json (either shape), sorted by file name, its summary logged
    (image files are not looked at: ``read_livecell`` does that for the images it chooses)."""
    one, summary = _parse(Path(path), split)
    slots = sorted(one.annotated_slots(), key=lambda slot: one.names[slot])
    summary.images = summary.chosen = len(slots)
    images = [image for image in (_checked_polygons(one, slot, summary) for slot in slots) if image is not None]
    _refuse_unusable(summary)
    logger.info(f"LIVECell {summary.line()}")
    return images


def _checked_images(root: Path, chosen: list, parsed: list[_ParsedFile],
                    summaries: list[ReadSummary]) -> list[ImageAnnotations]:
    """The chosen images whose file is there (headers checked) and that keep a cell, before any is drawn."""
    present = []
    for name, file_index, slot in chosen:
        one, summary = parsed[file_index], summaries[file_index]
        summary.chosen += 1
        path = image_path(root, name, one.split)
        if not path.is_file():
            summary.missing_files.append(name)
            continue
        check_image_header(path)
        present.append((file_index, slot))
    for one, summary in zip(parsed, summaries):
        if summary.missing_files and len(summary.missing_files) > MAX_UNUSABLE_SHARE * summary.chosen:
            first = image_path(root, summary.missing_files[0], one.split)
            raise LivecellError(f"LIVECell image {first} is missing, and so are {len(summary.missing_files) - 1} "
                                f"more of the {summary.chosen} images chosen from {one.path}: {_REPLACE}")
    images = [_checked_polygons(parsed[f], slot, summaries[f]) for f, slot in present]
    for summary in summaries:
        _refuse_unusable(summary)
    return [image for image in images if image is not None]


def _checked_polygons(one: _ParsedFile, slot: int, summary: ReadSummary) -> ImageAnnotations | None:
    """The image of ``slot`` with its usable parts (repeated points dropped; crossings kept), its
    skipped annotations counted in ``summary``; None when no cell is left."""
    ids, parts, cells = [], [], []
    for a in one.annotations_of(slot):
        reason = one.problem.get(a)
        good = []
        if reason is None:
            for k in range(one.part_ends[a - 1] if a else 0, one.part_ends[a]):
                start = one.coord_ends[k - 1] if k else 0
                points, status = _clean_part(one.coords[start:one.coord_ends[k]].reshape(-1, 2))
                if status:
                    reason = reason or _PART_PROBLEMS[status]
                else:
                    good.append(points)
        if not good:
            summary.skip(reason, one.annotation_id(a))
            continue
        cells += [len(ids)] * len(good)
        parts += good
        ids.append(one.annotation_id(a))
        summary.kept += 1
        summary.crossing += any(self_crossing(points) for points in good)
    if not ids:
        return None
    starts = np.cumsum([0, *map(len, parts)]).astype(np.int64)
    return ImageAnnotations(one.names[slot], cell_line(one.names[slot]), tuple(ids),
                            np.concatenate(parts).astype(np.float32), starts, np.array(cells, np.int32), one.split)


def _refuse_unusable(summary: ReadSummary) -> None:
    skipped = sum(summary.skipped.values())
    if skipped > MAX_UNUSABLE_SHARE * max(summary.kept + skipped, 1):
        raise LivecellError(f"{summary.path}: {skipped:,} of {summary.kept + skipped:,} annotations read cannot "
                            f"become a cell ({summary.line()}); {_REPLACE}")


_PART_PROBLEMS = {1: "points", 2: "area", 3: "malformed"}


@numba.njit(cache=True)
def _clean_part(flat_points):
    """(float64[n, 2] without repeated consecutive points, status): 0 usable, 1 fewer than 3
    distinct points, 2 no area, 3 a non-finite coordinate."""
    points = flat_points.astype(np.float64)
    if not np.isfinite(points).all():
        return points, 3
    points = _without_repeats(points)
    if _distinct_points(points) < 3:
        return points, 1
    if _collinear(points):  # not the shoelace sum: a figure-eight's is 0, yet it is drawn with area
        return points, 2
    return points, 0


def _parse(path: Path, split: str) -> tuple[_ParsedFile, ReadSummary]:
    """One json parsed, its polygons copied flat (float32) while each parsed annotation is dropped,
    then the parsed json freed: a real train file's 1 M annotations held as Python objects cost
    gigabytes, as flat arrays a few hundred megabytes."""
    document = _load_json(path)
    ids_to_names, raw = _images_and_annotations(document, path)
    del document  # ``raw`` now holds the only reference to the annotations, dropped one by one below
    slots = {image_id: k for k, image_id in enumerate(ids_to_names)}
    names = list(ids_to_names.values())
    for name in set(names):
        cell_line(name, path)
    coords, coord_ends, part_ends, image_slots = array("f"), array("q"), array("q"), array("q")
    # ids as values, not the parsed int objects: 1 M of those, kept, would pin every block of the freed json
    int_ids, other_ids, problem = array("q"), {}, {}
    for key in (range(len(raw)) if isinstance(raw, list) else list(raw)):
        annotation, raw[key] = raw[key], None
        if not isinstance(annotation, dict):
            raise LivecellError(f"{path}: annotation {key}: expected an object, found {type(annotation).__name__}")
        annotation_id = annotation.get("id", key)
        if type(annotation_id) is int:
            int_ids.append(annotation_id)
        else:
            other_ids[len(int_ids)] = str(annotation_id)
            int_ids.append(0)
        image_id = annotation.get("image_id")
        image_slots.append(slots.get(image_id, -1) if isinstance(image_id, (int, str)) else -1)
        reason = "no_image" if image_slots[-1] < 0 else _copy_parts(annotation.get("segmentation"),
                                                                   annotation.get("iscrowd"), coords, coord_ends)
        if reason:
            problem[len(int_ids) - 1] = reason
        part_ends.append(len(coord_ends))
    del raw
    _return_freed_memory()
    one = _ParsedFile(path, split, names, np.arange(len(names)), np.frombuffer(int_ids, np.int64), other_ids,
                      np.frombuffer(image_slots, np.int64), problem, np.frombuffer(part_ends, np.int64), np.frombuffer(coord_ends, np.int64),
                      np.frombuffer(coords, np.float32))
    summary = ReadSummary(path, annotations=len(int_ids))
    for index, reason in problem.items():
        if reason == "no_image":
            summary.skip(reason, one.annotation_id(index))
    if summary.skipped["no_image"] > MAX_UNUSABLE_SHARE * max(len(int_ids), 1):
        raise LivecellError(f"{path}: {summary.skipped['no_image']:,} of {len(int_ids):,} annotations have "
                            f"an image_id not in 'images' (ids {summary.first_ids['no_image']}); {_REPLACE}")
    _read_duplicates_once(one, summary)
    return one, summary


def _copy_parts(segmentation, crowd, coords: array, coord_ends: array) -> str | None:
    """Append the parts of one ``segmentation`` to the flat arrays; a ``SKIP_REASONS`` key where it
    has no polygon (nothing appended then)."""
    if crowd or isinstance(segmentation, dict):
        return "crowd"
    if not isinstance(segmentation, list) or not all(isinstance(part, list) for part in segmentation):
        return "malformed"
    if not segmentation:
        return "points"
    n_coords, n_parts = len(coords), len(coord_ends)
    for part in segmentation:
        try:
            if len(part) % 2:
                raise TypeError("an odd count")
            coords.extend(part)
        except TypeError:  # not numbers (array('f') takes ints, floats and bools only)
            del coords[n_coords:], coord_ends[n_parts:]
            return "malformed"
        coord_ends.append(len(coords))
    return None


def _read_duplicates_once(one: _ParsedFile, summary: ReadSummary) -> None:
    """An image listed under several ids is read once, from the first of them that has annotations."""
    counts = np.bincount(one.annotation_slot[one.annotation_slot >= 0], minlength=len(one.names))
    first: dict[str, int] = {}
    for slot in np.argsort(counts == 0, kind="stable"):  # entries with annotations first, in file order
        first.setdefault(one.names[slot], int(slot))
    one.owner = np.array([first[name] for name in one.names], np.int64)
    summary.duplicates += int((one.owner != np.arange(len(one.names))).sum())


def check_image_header(path: Path, shape: tuple[int, int] = IMAGE_SHAPE) -> None:
    """Refuse a LIVECell image whose TIFF header is not 8-bit grayscale of ``shape``, naming it,
    before anything is drawn (no pixel is decoded)."""
    try:
        width, height, bits, channels = tiff_header(path)
    except (OSError, ValueError, struct.error) as err:
        raise LivecellError(f"LIVECell image {path}: not a readable TIFF ({err}); {_REPLACE}") from None
    if (height, width, bits, channels) != (*shape, 8, 1):
        raise LivecellError(f"LIVECell image {path}: its TIFF header says {width}x{height}, {bits}-bit, "
                            f"{channels} channel(s); LIVECell's are {shape[1]}x{shape[0]} 8-bit grayscale: {_REPLACE}")


def tiff_header(path: Path) -> tuple[int, int, int, int]:
    """(width, height, bits per sample, samples per pixel) from a classic TIFF's first directory."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or struct.unpack(order + "H", head[2:4])[0] != 42:
            raise ValueError("no TIFF signature")
        handle.seek(struct.unpack(order + "I", head[4:8])[0])
        (count,) = struct.unpack(order + "H", handle.read(2))
        entries = handle.read(12 * count)
    tags = {256: None, 257: None, 258: 1, 277: 1}  # baseline defaults: 1 bit, 1 sample
    for k in range(count):
        tag, kind, n, value = struct.unpack(order + "HHI4s", entries[12 * k:12 * k + 12])
        if tag in tags:  # SHORT or LONG; for BitsPerSample of several samples their first (all equal in practice)
            tags[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), value[:2 if kind == 3 else 4])[0] \
                if n * (2 if kind == 3 else 4) <= 4 else _first_short(path, order, value)
    if tags[256] is None or tags[257] is None:
        raise ValueError("no image width or length tag")
    return tags[256], tags[257], tags[258], tags[277]


def _first_short(path: Path, order: str, offset: bytes) -> int:
    with open(path, "rb") as handle:
        handle.seek(struct.unpack(order + "I", offset)[0])
        return struct.unpack(order + "H", handle.read(2))[0]


def _return_freed_memory() -> None:
    """glibc keeps much of a freed heap (the parsed json's) mapped; ``malloc_trim`` hands it back to
    the system, so that what a read leaves is what it keeps. Nothing where there is no glibc."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


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


@numba.njit(cache=True)
def _collinear(points):
    """Whether every point lies on the line through the first two distinct ones."""
    ax, ay = points[0, 0], points[0, 1]
    k = 1
    while k < len(points) and points[k, 0] == ax and points[k, 1] == ay:
        k += 1
    if k == len(points):
        return True
    for i in range(k + 1, len(points)):
        if (points[k, 0] - ax) * (points[i, 1] - ay) != (points[k, 1] - ay) * (points[i, 0] - ax):
            return False
    return True


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


def label_image(polygons: Sequence[Sequence[np.ndarray]], shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """int32[H, W]: cell k + 1 where polygon k covers a pixel's centre; an overlapped pixel goes to
    the first-listed cell, as ``kit.rle.decode_labels`` resolves ``train.csv``'s overlaps. A
    self-crossing polygon is drawn as it is (even-odd, as pycocotools draws it).

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


def _round_robin(chosen: list, max_images: int) -> list:
    """At most ``max_images`` of ``chosen`` ((file name, ...) tuples), one line after another, in
    file-name order within a line."""
    by_line: dict[str, list] = {}
    for item in sorted(chosen, key=lambda item: item[0]):
        by_line.setdefault(cell_line(item[0]), []).append(item)
    order = [line[k] for k in range(max(map(len, by_line.values()), default=0))
             for line in by_line.values() if k < len(line)]
    return order[:max_images]


def _load_json(path: Path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        raise LivecellError(f"{path}: not readable as json ({err}); {_REPLACE}") from None


def _images_and_annotations(document, path: Path) -> tuple[dict, list | dict]:
    """``({image id: file name}, annotations)`` of both json shapes: ``annotations`` a list (the
    COCO files) or a dict keyed by id (the single-cells files)."""
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
    if not isinstance(raw, (list, dict)):
        raise LivecellError(f"{path}: 'annotations' must be a list (COCO files) or an object keyed by id "
                            f"(single-cells files), found {type(raw).__name__}")
    return {image["id"]: image["file_name"] for image in raw_images}, raw
