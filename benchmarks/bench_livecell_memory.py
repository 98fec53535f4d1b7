"""Reading LIVECell at its real size: json.load alone against kit.data.livecell, wall time and peak RSS.

    python -m benchmarks.bench_livecell_memory [--livecell-real ../shared/livecell-real]
                                               [--annotations 1000000] [--max-images 2000]

Writes, into a temporary folder it deletes, a LIVECell tree whose ``livecell_coco_train.json`` is of
the real train file's size (1 M annotations on 3,300 images, eight lines): the real polygons of
``../shared/livecell-real`` (its val sample and its first 1,000 train annotations) repeated and
shifted by a few pixels, written as the real file writes them (id, image_id, segmentation, area,
bbox, iscrowd, category_id); each image a link to one of the slice's real .tif files. Then measures,
each in a fresh process (peak RSS from ``VmHWM``, what stays from ``VmRSS`` once the case returns):

1. ``json.load`` of the file alone (the floor: the parsed json of 1 M annotations);
2. ``kit.data.livecell.read_annotations``: the whole file read and every polygon checked;
3. the kit choosing ``--pretrain-max-images`` images from it (``read_livecell`` + ``samples()``):
   only the chosen images are checked and drawn.

Goal (issue 21): case 2's peak at most case 1's + 1 GB, the parsed json's memory handed back once
read (case 2's RSS after it), and case 3 drawing only the chosen images.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import run_cli
from kit import cli

LINES = ("A172", "BT474", "BV2", "Huh7", "MCF7", "SHSY5Y", "SKBR3", "SKOV3")
IMAGES = 3_300  # the real train file has 3,253 image entries
CASES = {"json": "json.load alone", "read": "kit.data.livecell.read_annotations (whole file)",
         "capped": "kit --pretrain-max-images {n} (read + draw)"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m benchmarks.bench_livecell_memory",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--livecell-real", type=Path, default=Path(__file__).resolve().parents[2] / "shared" /
                        "livecell-real", help="the real LIVECell slice (default ../shared/livecell-real)")
    parser.add_argument("--annotations", type=int, default=1_000_000, help="annotations in the file (default 1 M)")
    parser.add_argument("--max-images", type=int, default=2000, help="the capped read's --pretrain-max-images")
    parser.add_argument("--measure", choices=sorted(CASES), help=argparse.SUPPRESS)  # one case, in a child process
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    return parser


def main(args: argparse.Namespace) -> dict:
    if args.measure:
        return _measure(args.measure, args.root, args.max_images)
    with tempfile.TemporaryDirectory(prefix="kit-livecell-memory-") as scratch:
        started = time.perf_counter()
        path = write_tree(args.livecell_real, Path(scratch), args.annotations)
        print(f"wrote {path.stat().st_size / 1e6:,.0f} MB, {args.annotations:,} annotations on {IMAGES:,} images "
              f"in {time.perf_counter() - started:.0f} s", flush=True)
        results = {case: _child(case, Path(scratch), args.max_images) for case in CASES}
    print(f"{'case':<52}{'wall s':>8}{'peak RSS GB':>13}{'RSS after GB':>14}")
    for case, result in results.items():
        print(f"{CASES[case].format(n=args.max_images):<52}{result['wall_s']:8.1f}{result['peak_gb']:13.2f}"
              f"{result['after_gb']:14.2f}")
    over = results["read"]["peak_gb"] - results["json"]["peak_gb"]
    capped = results["capped"]
    print(f"whole read: peak {over:+.2f} GB against json.load alone (goal: at most +1 GB); "
          f"{results['read']['after_gb']:.2f} GB held after it (the compact polygons and the interpreter)")
    print(f"capped read: drew {capped['drawn']:,} images; their samples hold {capped['samples_gb']:.2f} GB "
          f"({capped['samples_gb'] * 1e3 / max(capped['drawn'], 1):.2f} MB per image); a process starts at "
          f"{capped['start_gb']:.2f} GB")
    return results


def write_tree(real: Path, scratch: Path, n_annotations: int) -> Path:
    """The LIVECell tree of the benchmark: its train json (streamed, never held whole) and image links."""
    from kit.data import livecell

    polygons = _real_polygons(real)
    tifs = sorted((real / livecell.LIVECELL_DIR / "images").rglob("*.tif"))
    path = scratch / livecell.LIVECELL_DIR / "annotations" / "LIVECell" / "livecell_coco_train.json"
    path.parent.mkdir(parents=True)
    per_image = math.ceil(n_annotations / IMAGES)
    names = [f"{LINES[k % len(LINES)]}_Phase_Z{k}_1_00d00h00m_1.tif" for k in range(IMAGES)]
    for k, name in enumerate(names):
        link = livecell.image_path(scratch / livecell.LIVECELL_DIR, name, "train")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(tifs[k % len(tifs)].resolve())
    with open(path, "w", encoding="utf-8") as handle:
        images = [{"id": k + 1, "width": 704, "height": 520, "file_name": name, "original_filename":
                   name.replace(".tif", ".png"), "url": f"https://example.invalid/{k + 1}"} for k, name in enumerate(names)]
        handle.write('{"info": {}, "licenses": [], "categories": [{"id": 1, "name": "cell"}], "images": ')
        handle.write(json.dumps(images) + ', "annotations": [')
        for a in range(n_annotations):
            shift = np.array([(a // per_image) % 11 - 5, (a // per_image) % 7 - 3], np.float64)  # per image
            points = polygons[a % len(polygons)] + shift
            handle.write(("," if a else "") + json.dumps(_annotation(a + 2, a // per_image + 1, points)))
        handle.write("]}")
    return path


def _annotation(annotation_id: int, image_id: int, points: np.ndarray) -> dict:
    low, high = points.min(axis=0), points.max(axis=0)
    area = 0.5 * abs(float(np.dot(points[:, 0], np.roll(points[:, 1], -1)) - np.dot(points[:, 1], np.roll(points[:, 0], -1))))
    return {"id": annotation_id, "image_id": image_id, "category_id": 1,
            "segmentation": [[round(float(v), 2) for v in points.ravel()]], "area": round(area, 2),
            "bbox": [round(float(v), 2) for v in (*low, *(high - low))], "iscrowd": 0}


def _real_polygons(real: Path) -> list[np.ndarray]:
    """The slice's real polygons: the val sample's and the first 1,000 of the train file."""
    val = json.loads((real / "LIVECell_dataset_2021/annotations/LIVECell/livecell_coco_val.json").read_text())
    first = json.loads((real / "extra/livecell_coco_train_first1000_annotations.json").read_text())
    return [np.reshape(part, (-1, 2)) for a in [*val["annotations"], *first] for part in a["segmentation"]]


def _child(case: str, root: Path, max_images: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.bench_livecell_memory", "--measure", case, "--root", str(root),
               "--max-images", str(max_images)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure(case: str, root: Path, max_images: int) -> dict:
    """One case in this (fresh) process; prints its numbers as one json line."""
    from kit.data import livecell

    tree = root / livecell.LIVECELL_DIR
    path = tree / "annotations" / "LIVECell" / "livecell_coco_train.json"
    start_gb = _status_gb("VmRSS")
    started = time.perf_counter()
    result: dict = {"drawn": 0, "samples_gb": 0.0}
    if case == "json":
        with open(path, encoding="utf-8") as handle:
            kept = json.load(handle)
    elif case == "read":
        kept = livecell.read_annotations(path)
    else:
        kept = livecell.read_livecell(tree, splits=("train",), max_images=max_images).samples()
        result = {"drawn": len(kept), "samples_gb": sum(s.image.nbytes + s.labels.nbytes for s in kept) / 1e9}
    result.update(wall_s=time.perf_counter() - started, peak_gb=_status_gb("VmHWM"), after_gb=_status_gb("VmRSS"),
                  start_gb=start_gb, held=len(kept))
    print(json.dumps(result))
    return result


def _status_gb(key: str) -> float:
    """A ``/proc/self/status`` memory line (kB) in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError(f"no {key} in /proc/self/status (Linux only)")


if __name__ == "__main__":
    run_cli("python -m benchmarks.bench_livecell_memory", main, get_args_parser().parse_args())
