"""The competition's data: find its layout, read ``train.csv``, load images and instances (the split: ``kit.split``).

Layout (as Kaggle ships it): ``train.csv``, ``train/<id>.png``, ``test/<id>.png``,
``sample_submission.csv`` in one folder, mounted at varying depths below the input root.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import pandas as pd

from kit import paths, rle
from kit.competition import CELL_TYPES, COMPETITION_SLUG, IMAGE_SHAPE

# train.csv's columns as Kaggle ships them: the kit reads the first five; the metadata may be blank.
TRAIN_CSV_COLUMNS = ("id", "annotation", "width", "height", "cell_type", "plate_time", "sample_date",
                     "sample_id", "elapsed_timedelta")
REQUIRED_COLUMNS = TRAIN_CSV_COLUMNS[:5]
_SEARCH_DEPTH = 4  # Kaggle has mounted competition data at /kaggle/input/<slug>[/<...>]
_DOWNLOAD_HINT = f"download it with `kaggle competitions download -c {COMPETITION_SLUG}` and unzip it"


@dataclass(frozen=True)
class CompetitionLayout:
    """Paths of one copy of the competition data; a part not asked for may be ``None``."""

    root: Path
    train_csv: Path | None
    train_dir: Path | None
    test_dir: Path | None
    sample_submission: Path | None


@dataclass
class Sample:
    """One annotated training image."""

    id: str
    cell_type: str
    image: np.ndarray  # uint8[H, W]
    labels: np.ndarray  # int32[H, W], overlaps resolved by kit.rle.decode_labels' rule
    annotations: list[str]  # the original, possibly overlapping RLE strings


def find_competition(root: str | Path | None = None, *, need_train: bool = True,
                     need_test: bool = True) -> CompetitionLayout:
    """The shallowest folder below ``root`` (default ``kit.paths.input_root()``) holding the layout.

    ``need_train`` asks for ``train.csv`` + ``train/``; ``need_test`` for ``test/`` (with
    ``sample_submission.csv`` when present). Ambiguity (two copies at the same depth) is an error.
    """
    root = Path(root) if root is not None else paths.input_root()
    if root.exists() and not root.is_dir():
        raise FileNotFoundError(f"data folder {root} is a file, not a folder: pass --data the folder holding "
                                "train.csv, train/ and test/ (or a folder above it)")
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist; {_DOWNLOAD_HINT}, or pass --data")
    wanted = (["train.csv", "train"] if need_train else []) + (["test"] if need_test else [])
    found = _shallowest(root, lambda d: all((d / name).exists() for name in wanted))
    if not found:
        raise FileNotFoundError(
            f"no competition data below {root}: expected a folder holding {', '.join(wanted)} "
            f"(searched {_SEARCH_DEPTH} levels down); {_DOWNLOAD_HINT}"
        )
    if len(found) > 1:
        listed = ", ".join(str(d) for d in found)
        raise ValueError(f"several copies of the competition data below {root}: {listed}; pass one with --data")
    base = found[0]
    parts = [base / name if (base / name).exists() else None
             for name in ("train.csv", "train", "test", "sample_submission.csv")]
    return CompetitionLayout(base, *parts)


def read_train_csv(path: str | Path) -> pd.DataFrame:
    """``train.csv`` as strings (metadata columns may be blank), width/height as int, RLEs validated.

    Errors name the file, the CSV line and the image id.
    """
    path = Path(path)
    df = pd.read_csv(path, dtype=str, na_filter=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    for column in ("width", "height"):
        bad = ~df[column].str.fullmatch(r"\d+")
        if bad.any():
            raise ValueError(f"{path} line {_line(df, bad)}: {column} {df[column][bad].iloc[0]!r} is not an integer")
        df[column] = df[column].astype(np.int64)
    _check_rows(path, df)
    return df


def image_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per image of a train.csv frame: ``id, cell_type, n_cells``, sorted by id."""
    grouped = df.groupby("id", sort=True)
    table = grouped.agg(cell_type=("cell_type", "first"), n_cells=("annotation", "size")).reset_index()
    mixed = grouped["cell_type"].nunique()
    if (mixed > 1).any():
        raise ValueError(f"image {mixed[mixed > 1].index[0]} has annotations of several cell types")
    return table


def load_image(path: str | Path, shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """An 8-bit grayscale image as uint8[H, W]; the error names the file when it is unreadable or mis-sized."""
    path = Path(path)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot read image {path}: missing, not an image, or corrupt")
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"image {path}: expected 8-bit grayscale, got dtype {image.dtype} shape {image.shape}")
    if image.shape != tuple(shape):
        raise ValueError(f"image {path}: expected {shape[0]}x{shape[1]} (height x width), got "
                         f"{image.shape[0]}x{image.shape[1]}")
    return image


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_GRAY = 0  # IHDR colour type of a grayscale image without alpha


def check_image_header(path: str | Path, shape: tuple[int, int] = IMAGE_SHAPE) -> None:
    """What ``load_image`` would refuse, found from the PNG header alone (33 bytes, no decoding): a missing
    file, not a PNG, another size, or not 8-bit grayscale; the error names the file."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(33)
    except OSError as err:
        raise ValueError(f"cannot read image {path} ({err.strerror}): restore the file or remove it") from None
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError(f"image {path} is not a PNG (or is truncated before its header): restore the file or "
                         "remove it")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    if (depth, colour) != (8, _PNG_GRAY):
        raise ValueError(f"image {path}: expected 8-bit grayscale, the header says {depth}-bit colour type "
                         f"{colour}: convert it to 8-bit grayscale or remove it")
    if (height, width) != tuple(shape):
        raise ValueError(f"image {path}: expected {shape[0]}x{shape[1]} (height x width), the header says "
                         f"{height}x{width}: restore the original or remove it")


def cell_diameters(df: pd.DataFrame, ids: Iterable[str] | None = None) -> dict[str, float]:
    """``{cell type: median cell diameter in pixels}`` over the annotations of ``ids`` (all when None),
    each cell's area the sum of its run lengths (the annotation as drawn, overlaps included). On the
    305-image slice: astro 29.9, cort 16.2, shsy5y 15.7.
    """
    rows = df if ids is None else df[df["id"].isin(set(ids))]
    if rows.empty:
        raise ValueError("cell_diameters: no annotations for the given images")
    runs = rle.decode_many(rows["annotation"].tolist(), IMAGE_SHAPE)
    owners = np.repeat(np.arange(len(rows)), np.diff(runs.offsets))
    areas = np.bincount(owners, weights=runs.lengths, minlength=len(rows))
    return median_diameters(rows["cell_type"].to_numpy(), areas)


def sample_diameters(samples: Sequence[Sample]) -> dict[str, float]:
    """``{cell type or line: median cell diameter}`` of samples' label images (LIVECell's lines,
    pretraining a rescaling variant), each cell's area its label's pixels."""
    types, areas = [], []
    for sample in samples:
        counts = np.bincount(sample.labels.ravel())[1:]
        counts = counts[counts > 0]
        types += [sample.cell_type] * len(counts)
        areas.append(counts)
    return median_diameters(np.asarray(types, dtype=object), np.concatenate(areas) if areas else np.zeros(0))


def median_diameters(cell_types: np.ndarray, areas: np.ndarray) -> dict[str, float]:
    """``{cell type: median diameter}`` of cells of ``areas`` (pixels) and ``cell_types`` (one each),
    sorted by type: a cell's diameter is that of the disc of its area, 2 sqrt(area / pi)."""
    diameters = 2.0 * np.sqrt(np.asarray(areas, np.float64) / np.pi)
    by_type = pd.Series(diameters, index=cell_types).groupby(level=0).median()
    return {str(cell_type): float(value) for cell_type, value in sorted(by_type.items())}


def load_samples(layout: CompetitionLayout, ids: Iterable[str] | None = None,
                 df: pd.DataFrame | None = None) -> list[Sample]:
    """Annotated training images (all, or ``ids`` in that order) with their label images."""
    if layout.train_csv is None or layout.train_dir is None:
        raise FileNotFoundError(f"{layout.root} holds no train.csv / train/ folder; {_DOWNLOAD_HINT}")
    df = read_train_csv(layout.train_csv) if df is None else df
    by_id = {image_id: group for image_id, group in df.groupby("id", sort=False)}
    samples = []
    for image_id in (sorted(by_id) if ids is None else ids):
        if image_id not in by_id:
            raise KeyError(f"image {image_id!r} has no annotations in {layout.train_csv}")
        rows = by_id[image_id]
        image = load_image(layout.train_dir / f"{image_id}.png")
        annotations = rows["annotation"].tolist()
        samples.append(Sample(image_id, rows["cell_type"].iloc[0], image,
                              rle.decode_labels(annotations, image.shape), annotations))
    return samples


def test_image_paths(layout: CompetitionLayout) -> dict[str, Path]:
    """``{image id: path}`` of the test images, sorted by id."""
    if layout.test_dir is None or not layout.test_dir.is_dir():
        raise FileNotFoundError(f"{layout.root} holds no test/ folder; {_DOWNLOAD_HINT}")
    found = {p.stem: p for p in sorted(layout.test_dir.glob("*.png"))}
    if not found:
        raise FileNotFoundError(f"test folder {layout.test_dir} holds no .png images")
    return found


def _shallowest(root: Path, is_match) -> list[Path]:
    """Breadth-first search; returns every match at the smallest depth (image folders are not entered)."""
    level, depth = [root], 0
    while level and depth <= _SEARCH_DEPTH:
        matches = [d for d in level if is_match(d)]
        if matches:
            return sorted(matches)
        level = [c for d in level for c in sorted(_subdirs(d)) if c.name not in ("train", "test")]
        depth += 1
    return []


def _subdirs(folder: Path) -> list[Path]:
    try:
        return [c for c in folder.iterdir() if c.is_dir()]
    except PermissionError:
        return []


def _line(df: pd.DataFrame, bad: pd.Series) -> str:
    """CSV line number (header is line 1) and image id of the first flagged row."""
    i = int(np.flatnonzero(bad.to_numpy())[0])
    return f"{i + 2} (image {df['id'].iloc[i]})"


def _check_rows(path: Path, df: pd.DataFrame) -> None:
    checks = [
        (df["id"] == "", "empty id"),
        (df["annotation"].str.strip() == "", "empty annotation"),
        (~df["cell_type"].isin(CELL_TYPES), f"cell_type not one of {', '.join(CELL_TYPES)}"),
        ((df["height"] != IMAGE_SHAPE[0]) | (df["width"] != IMAGE_SHAPE[1]),
         f"image size is not {IMAGE_SHAPE[1]} wide x {IMAGE_SHAPE[0]} high"),
    ]
    for bad, problem in checks:
        if bad.any():
            raise ValueError(f"{path} line {_line(df, bad)}: {problem}")
    try:
        rle.decode_many(df["annotation"].tolist(), IMAGE_SHAPE)
    except rle.RLEError as err:
        raise ValueError(f"{path} line {err.row + 2} (image {df['id'].iloc[err.row]}): {err}") from None
