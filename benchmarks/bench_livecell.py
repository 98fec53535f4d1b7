"""Reading and rasterising LIVECell: kit.data.livecell beside pycocotools (frPyObjects + decode), side by side.

    pip install -r benchmarks/requirements-livecell.txt      # pycocotools: this benchmark only
    python -m benchmarks.bench_livecell [--data ../shared/sartorius] [--livecell DIR] [--repeat 3]

Without ``--livecell`` the benchmark writes a LIVECell-format copy of the competition slice's images
and annotations (``benchmarks.fixture_data``: one polygon per annotation) into a temporary folder and
reads its COCO training file; with it, any ``livecell_coco_*.json`` (or single-cells file) of a real
tree, e.g. ``--livecell ../shared/livecell-real/LIVECell_dataset_2021/annotations/LIVECell/livecell_coco_val.json``
(the real slice: self-crossing polygons are read and drawn as they are). Times per 1,000 annotations: kit's json reading with its checks (both sides read the same json,
so pycocotools is timed from the parsed polygons on), kit's rasterising of every image's label image,
and pycocotools' ``frPyObjects`` + ``decode`` of the same polygons into masks. Also how well the two
agree: the mean IoU of each cell's two masks over a sample of cells, and their total areas, for those
polygons and for random star-shaped ones with fractional vertices (those also drawn by
``cv2.fillPoly``, the rasteriser kit.data.livecell does not use). The copy's polygons run through
pixel centres (traced outlines), where the two rasterisers break ties differently: kit counts a
centre on the outline as inside, pycocotools about half of them.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks import fixture_data, run_cli
from kit import cli
from kit.competition import IMAGE_SHAPE
from kit.data import livecell, sartorius


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m benchmarks.bench_livecell", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder holding the competition layout (for the copy)")
    parser.add_argument("--livecell", type=Path, default=None, metavar="JSON",
                        help="a real LIVECell annotation file instead of the copy of the competition slice")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    parser.add_argument("--agreement-cells", type=int, default=1000, help="cells compared mask by mask")
    return parser


def main(args: argparse.Namespace) -> dict:
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        raise SystemExit("python -m benchmarks.bench_livecell: error: pycocotools is not installed; it is the "
                         "baseline of this benchmark only: pip install -r benchmarks/requirements-livecell.txt") from None
    with tempfile.TemporaryDirectory(prefix="kit-livecell-") as scratch:
        path = args.livecell or _copy_of_the_slice(args.data, Path(scratch))
        read_s = _best(lambda: livecell.read_annotations(path), args.repeat)
        images = livecell.read_annotations(path)
    n = sum(len(image.annotation_ids) for image in images)
    kit_s = _best(lambda: [image.labels() for image in images], args.repeat)
    coco_s = _best(lambda: [_coco_masks(coco_mask, image) for image in images], args.repeat)
    ious, kit_area, coco_area = _agreement(coco_mask, images, args.agreement_cells)
    stars = _star_images(args.agreement_cells)
    star_ious, star_kit, star_coco = _agreement(coco_mask, stars, args.agreement_cells)
    fill_ious, fill_area, _ = _agreement(coco_mask, stars, args.agreement_cells, _fill_poly)
    per_k = 1000.0 / n
    print(f"{path}: {len(images)} images, {n} annotations; per 1,000 annotations (best of {args.repeat}):")
    print(f"  kit.data.livecell.read_annotations (json + checks)          {read_s * per_k * 1e3:8.1f} ms")
    print(f"  kit.data.livecell ImageAnnotations.labels (skimage.draw)    {kit_s * per_k * 1e3:8.1f} ms")
    print(f"  pycocotools frPyObjects + decode                       {coco_s * per_k * 1e3:8.1f} ms")
    print(f"  rasterising: pycocotools / kit                         {coco_s / kit_s:8.2f}x")
    print(f"  read + rasterise, kit                                  {(read_s + kit_s) * per_k * 1e3:8.1f} ms")
    print(f"agreement over {len(ious)} cells: mean IoU {np.mean(ious):.3f} (min {np.min(ious):.3f}), "
          f"area kit / pycocotools {kit_area / coco_area:.4f}")
    print(f"agreement over {len(star_ious)} random star-shaped cells (fractional vertices): mean IoU "
          f"{np.mean(star_ious):.3f} (min {np.min(star_ious):.3f}), area kit / pycocotools {star_kit / star_coco:.4f}")
    print(f"  the same cells by cv2.fillPoly (the rasteriser not chosen): mean IoU {np.mean(fill_ious):.3f} "
          f"against pycocotools, area cv2 / pycocotools {fill_area / star_coco:.4f}")
    return {"annotations": n, "read_s": read_s, "kit_s": kit_s, "coco_s": coco_s, "mean_iou": float(np.mean(ious))}


def _copy_of_the_slice(data_dir, scratch: Path) -> Path:
    layout = sartorius.find_competition(data_dir, need_test=False)
    df = sartorius.read_train_csv(layout.train_csv)
    root = fixture_data.write_livecell_copy(layout, {"train": sorted(df["id"].unique())}, scratch, df=df)
    return root / "annotations" / "LIVECell" / "livecell_coco_train.json"


def _coco_masks(coco_mask, image: livecell.ImageAnnotations) -> np.ndarray:
    """uint8[H, W, n]: pycocotools' mask of every polygon of one image (one part each)."""
    polygons = [part.ravel().tolist() for parts in image.polygons for part in parts]
    return coco_mask.decode(coco_mask.frPyObjects(polygons, *IMAGE_SHAPE))


def _fill_poly(parts) -> np.ndarray:
    """A cell drawn by ``cv2.fillPoly`` (vertices moved to pixel centres, kept to 1/16 pixel)."""
    mask = np.zeros(IMAGE_SHAPE, np.uint8)
    cv2.fillPoly(mask, [np.round((part - 0.5) * 16).astype(np.int32) for part in parts], 1, shift=4)
    return mask > 0


def _agreement(coco_mask, images, n_cells: int, draw=None) -> tuple[list[float], int, int]:
    """Per-cell IoU of a rasteriser (``draw``, default kit's) and pycocotools' over the first
    ``n_cells`` single-part cells, and their areas."""
    draw = draw or (lambda parts: livecell.label_image([parts]) > 0)
    ious, kit_area, coco_area = [], 0, 0
    for image in images:
        for parts in image.polygons:
            if len(ious) >= n_cells:
                return ious, kit_area, coco_area
            ours = draw(parts)
            theirs = coco_mask.decode(coco_mask.frPyObjects([parts[0].ravel().tolist()], *IMAGE_SHAPE))[:, :, 0] > 0
            ious.append(float((ours & theirs).sum() / max((ours | theirs).sum(), 1)))
            kit_area, coco_area = kit_area + int(ours.sum()), coco_area + int(theirs.sum())
    return ious, kit_area, coco_area


def _star_images(n_cells: int, seed: int = 0) -> list[livecell.ImageAnnotations]:
    """Cells of LIVECell's size (radius 5 to 15 pixels, 12 to 40 vertices), one image each."""
    rng = np.random.default_rng(seed)
    images = []
    for k in range(n_cells):
        n = int(rng.integers(12, 40))
        angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, n))
        radii = rng.uniform(5.0, 15.0) * (1.0 + 0.2 * rng.standard_normal(n)).clip(0.5)
        centre = rng.uniform(30.0, 480.0, 2)
        points = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], axis=1)
        images.append(livecell.ImageAnnotations.from_polygons(f"A172_star_{k}.tif", (k,), ((points,),)))
    return images


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(max(repeat, 1)):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


if __name__ == "__main__":
    run_cli("python -m benchmarks.bench_livecell", main, get_args_parser().parse_args())
