"""Copies of competition images in the formats of the competition's two other inputs, for the tests
and the benchmarks: a LIVECell tree (``LIVECell_dataset_2021/``, both json shapes, .tif images) and a
``train_semi_supervised/`` folder. Nothing here is committed as data: every call writes from the
shared slice (``../shared/sartorius``) into a folder the caller gives.

    python -m benchmarks.fixture_data --data DIR --out DIR [--semi-supervised N]

writes a competition folder (the data's files linked) whose LIVECell tree is a copy of the kit's
training split (its validation images left out, so that pretraining on it never sees them), for
``kit.train --pretrain livecell`` plumbing runs (``benchmarks.gpu_check --pretrain``,
``benchmarks.bench_quality --lever``).

The LIVECell copy stands in for LIVECell's format, not its content: each competition image becomes a
LIVECell-named .tif of one line (cort -> A172, astro -> BV2, shsy5y -> SHSY5Y by default), each of
its annotations a polygon, the outer contour of its mask (``cv2.findContours``), moved by half a
pixel to COCO's corner-based coordinates, kept as traced (a contour of fewer than 3 points too: the
reader skips and counts it). Real LIVECell polygons cross themselves now and then (about 0.45 %, tiny
twists), so every ``TWIST_EVERY``-th polygon here is given such a twist (two neighbouring vertices
swapped), for the reader to draw as it is.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import pandas as pd

from benchmarks import run_cli
from benchmarks.numpy_twins import polygon_area
from kit import cli, rle
from kit.competition import IMAGE_SHAPE
from kit.data import livecell, sartorius
from kit.split import split_train_val

DEFAULT_LINES = {"cort": "A172", "astro": "BV2", "shsy5y": "SHSY5Y"}
TWIST_EVERY = 20  # more often than LIVECell's 1 in 220, so that every fixture image has some
SEMI_SUPERVISED_PREFIX = {"astro": "astros[hippo]", "cort": "cort[pre-treat]", "shsy5y": "shsy5y[diff]"}


def mask_polygon(annotation: str, twist: bool = False) -> list[float] | None:
    """The COCO polygon ``[x0, y0, x1, y1, ...]`` of an RLE mask's largest outer contour (None for an
    empty mask); with ``twist``, two neighbouring vertices swapped where that makes it cross itself."""
    mask = rle.decode(annotation, IMAGE_SHAPE)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    points = max(contours, key=cv2.contourArea)[:, 0, :].astype(np.float64) + 0.5
    if twist:
        points = twisted(points)
    return [round(float(v), 2) for v in points.ravel()]


def twisted(points: np.ndarray) -> np.ndarray:
    """``points`` with the first pair of neighbouring vertices whose swap makes the polygon cross
    itself swapped (a twist like LIVECell's), or unchanged where no swap does."""
    for k in range(len(points) - 1):
        candidate = points.copy()
        candidate[[k, k + 1]] = candidate[[k + 1, k]]
        if livecell.self_crossing(candidate):
            return candidate
    return points


def livecell_name(image_id: str, prefix: str) -> str:
    """A LIVECell-style flat file name whose prefix is the line's folder."""
    return f"{prefix}_Phase_{image_id}_1_00d00h00m_1.tif"


def write_livecell_copy(layout: sartorius.CompetitionLayout, splits: Mapping[str, Sequence[str]], dest: Path,
                        lines: Mapping[str, str] = DEFAULT_LINES, df: pd.DataFrame | None = None) -> Path:
    """``dest/LIVECell_dataset_2021`` holding ``splits`` (``{"train": ids, "val": ids, "test": ids}``) of
    the competition's annotated images: the COCO files (annotations a list), the single-cells files
    of each line used (annotations a dict keyed by id) and the .tif images. Returns the LIVECell root."""
    df = sartorius.read_train_csv(layout.train_csv) if df is None else df
    by_id = {image_id: rows for image_id, rows in df.groupby("id", sort=False)}
    root = Path(dest) / livecell.LIVECELL_DIR
    used = sorted({lines[by_id[i]["cell_type"].iloc[0]].lower() for ids in splits.values() for i in ids})
    next_annotation = 1
    for split, ids in splits.items():  # as in LIVECell, each line used has a file for every split
        coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}
        per_line = {line: {"images": [], "annotations": {}} for line in used}
        for image_number, image_id in enumerate(ids, start=1):
            rows = by_id[image_id]
            prefix = lines[rows["cell_type"].iloc[0]]
            name = livecell_name(image_id, prefix)
            target = livecell.image_path(root, name, split)
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), sartorius.load_image(layout.train_dir / f"{image_id}.png"))
            image = {"id": image_number, "file_name": name, "width": IMAGE_SHAPE[1], "height": IMAGE_SHAPE[0]}
            line = per_line[prefix.lower()]
            coco["images"].append(image)
            line["images"].append(image)
            for annotation in rows["annotation"]:
                polygon = mask_polygon(annotation, twist=next_annotation % TWIST_EVERY == 0)
                if polygon is None:
                    continue
                record = {"id": next_annotation, "image_id": image_number, "segmentation": [polygon],
                          "area": float(polygon_area(np.reshape(polygon, (-1, 2)))),
                          "iscrowd": 0, "category_id": 1}
                coco["annotations"].append(record)
                line["annotations"][str(next_annotation)] = record
                next_annotation += 1
        _write_json(root / "annotations" / "LIVECell" / f"livecell_coco_{split}.json", coco)
        for line, document in per_line.items():
            _write_json(root / "annotations" / "LIVECell_single_cells" / line / f"livecell_{line}_{split}.json",
                        document)
    return root


def write_semi_supervised(layout: sartorius.CompetitionLayout, ids: Sequence[str], dest: Path,
                          df: pd.DataFrame | None = None) -> Path:
    """``dest/train_semi_supervised`` with the competition images ``ids`` under the names the
    competition gives its unannotated images (cell type before ``[``, astro as ``astros``)."""
    df = sartorius.read_train_csv(layout.train_csv) if df is None else df
    types = dict(zip(*sartorius.image_table(df)[["id", "cell_type"]].to_numpy().T))
    folder = Path(dest) / "train_semi_supervised"
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        shutil.copyfile(layout.train_dir / f"{image_id}.png",
                        folder / f"{SEMI_SUPERVISED_PREFIX[types[image_id]]}_{image_id}.png")
    return folder


def competition_with_extras(shared: Path, dest: Path, livecell_splits: Mapping[str, Sequence[str]],
                            semi_supervised: Sequence[str]) -> Path:
    """``dest``: the shared slice's files (linked, not copied) beside a LIVECell copy and a
    ``train_semi_supervised/`` folder, as the competition's input folder holds all three."""
    layout = sartorius.find_competition(shared, need_test=False)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("train.csv", "train", "test", "sample_submission.csv"):
        if (layout.root / name).exists():
            os.symlink((layout.root / name).resolve(), dest / name)
    df = sartorius.read_train_csv(layout.train_csv)
    write_livecell_copy(layout, livecell_splits, dest, df=df)
    write_semi_supervised(layout, semi_supervised, dest, df=df)
    return dest


def _write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document), encoding="utf-8")


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m benchmarks.fixture_data", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="folder holding the competition layout (default: kit.paths.input_root())")
    parser.add_argument("--out", type=Path, required=True, help="the competition folder to write (must not exist)")
    parser.add_argument("--replace", action="store_true", help="delete --out first if it exists (a copy written here)")
    parser.add_argument("--semi-supervised", type=int, default=0, metavar="N",
                        help="also copy the first N training images into train_semi_supervised/ (default 0)")
    return parser


def main(args: argparse.Namespace) -> Path:
    if args.out.exists() and args.replace:
        shutil.rmtree(args.out)
    if args.out.exists():
        raise ValueError(f"--out {args.out} exists; pass a new folder, or --replace to write it again")
    layout = sartorius.find_competition(args.data, need_test=False)
    train_ids, _ = split_train_val(sartorius.image_table(sartorius.read_train_csv(layout.train_csv)))
    folder = competition_with_extras(layout.root, args.out, {"train": train_ids, "val": [], "test": []},
                                     train_ids[: args.semi_supervised])
    print(f"wrote {folder}: LIVECell-format copy of the {len(train_ids)} training-split images, "
          f"{args.semi_supervised} in train_semi_supervised/")
    return folder


if __name__ == "__main__":
    run_cli("python -m benchmarks.fixture_data", main, get_args_parser().parse_args())
