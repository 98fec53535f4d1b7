"""kit.data.livecell on real LIVECell (../shared/livecell-real, see its README.md): both json shapes read,
drawn and held against each polygon's own area, the real counts, and kit.train pretraining on it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.numpy_twins import polygon_area
from kit import train
from kit.data import livecell

VAL = Path("LIVECell_dataset_2021/annotations/LIVECell/livecell_coco_val.json")
SINGLE = {"huh7": (73, 0), "bt474": (351, 2), "mcf7": (819, 6)}  # val annotations, self-crossing ones


def _perimeter(points: np.ndarray) -> float:
    return float(np.hypot(*np.diff(np.vstack([points, points[:1]]), axis=0).T).sum())


def test_the_real_val_sample_is_read_whole_and_drawn_to_each_polygons_own_area(livecell_real_dir, tmp_path):
    path = livecell_real_dir / VAL
    tree = _competition_like(livecell_real_dir, tmp_path) / livecell.LIVECELL_DIR
    summary = livecell.read_livecell(tree, splits=("val",)).summaries[0]
    assert (summary.annotations, summary.images, summary.kept, summary.crossing) == (1243, 5, 1243, 8)
    assert not summary.skipped and not summary.missing_files
    assert "1,243 annotations on 5 images: kept 1,243 cells (8 self-crossing, drawn as they are); skipped 0" \
        in summary.line()
    stated = {a["id"]: a["area"] for a in json.loads(path.read_text())["annotations"]}
    drawn_total = own_total = 0.0
    for image in livecell.read_annotations(path, "val"):
        labels = image.labels()
        assert labels.max() == len(image.annotation_ids)
        for annotation_id, parts in zip(image.annotation_ids, image.polygons):
            own = polygon_area(parts[0])
            assert own == pytest.approx(stated[annotation_id], rel=1e-3, abs=0.5)  # the file's area is the shoelace's
            drawn = int((livecell.label_image([parts]) > 0).sum())  # alone: overlaps go to the first-listed cell
            assert abs(drawn - own) <= 0.5 * _perimeter(parts[0]) + 1.0, annotation_id
            drawn_total, own_total = drawn_total + drawn, own_total + own
    assert drawn_total / own_total == pytest.approx(1.0, abs=0.005)


def test_the_single_cells_files_hold_the_same_real_polygons(livecell_real_dir):
    coco = {i.file_name: i for i in livecell.read_annotations(livecell_real_dir / VAL, "val")}
    for line, (count, crossing) in SINGLE.items():
        path = livecell_real_dir / "derived" / "LIVECell_single_cells" / line / f"livecell_{line}_val.json"
        assert isinstance(json.loads(path.read_text())["annotations"], dict)
        images = livecell.read_annotations(path, "val")
        assert sum(len(i.annotation_ids) for i in images) == count and {i.cell_line for i in images} == {line}
        assert sum(livecell.self_crossing(parts[0]) for i in images for parts in i.polygons) == crossing
        for image in images:
            twin = coco[image.file_name]
            assert [str(a) for a in image.annotation_ids] == [str(a) for a in twin.annotation_ids]
            np.testing.assert_array_equal(image.points, twin.points)


def test_the_first_real_train_annotations_keep_their_two_crossings(livecell_real_dir, tmp_path):
    bare = livecell_real_dir / "extra" / "livecell_coco_train_first1000_annotations.json"
    with pytest.raises(livecell.LivecellError, match=f"{bare}: not a LIVECell annotation file: expected a json "
                                                     "object with 'images' and 'annotations', found list"):
        livecell.read_annotations(bare)
    annotations = json.loads(bare.read_text())
    ids = sorted({a["image_id"] for a in annotations})  # only image 1's name is known: the others get stand-ins
    names = {i: "BT474_Phase_A3_2_00d04h00m_3.tif" if i == 1 else f"BT474_Phase_unknown_{i}.tif" for i in ids}
    wrapped = tmp_path / "livecell_coco_train.json"
    wrapped.write_text(json.dumps({"images": [{"id": i, "file_name": names[i]} for i in ids], "annotations": annotations}))
    images = livecell.read_annotations(wrapped)
    assert sum(len(i.annotation_ids) for i in images) == 1000 and len(images) == 6
    crossing = {a for i in images for a, parts in zip(i.annotation_ids, i.polygons) if livecell.self_crossing(parts[0])}
    assert crossing == {564, 881}
    derived = livecell.read_annotations(livecell_real_dir / "derived" / "livecell_coco_train_image1.json")
    assert [len(i.annotation_ids) for i in derived] == [130] and derived[0].file_name == names[1]


def _competition_like(livecell_real_dir: Path, root: Path, shared: Path | None = None) -> Path:
    """A competition folder of links: the real slice's images and val files where the competition's copy
    keeps them, and empty train files (the slice has none of the train files' images)."""
    tree = root / livecell.LIVECELL_DIR
    if tree.exists():
        return root
    (tree / "annotations" / "LIVECell").mkdir(parents=True)
    (tree / "images").symlink_to((livecell_real_dir / livecell.LIVECELL_DIR / "images").resolve())
    (tree / "annotations" / "LIVECell" / VAL.name).symlink_to((livecell_real_dir / VAL).resolve())
    empty = json.dumps({"images": [], "annotations": []})
    (tree / "annotations" / "LIVECell" / "livecell_coco_train.json").write_text(empty)
    for line in SINGLE:
        folder = tree / "annotations" / "LIVECell_single_cells" / line
        folder.mkdir(parents=True)
        (folder / f"livecell_{line}_val.json").symlink_to(
            (livecell_real_dir / "derived" / "LIVECell_single_cells" / line / f"livecell_{line}_val.json").resolve())
        (folder / f"livecell_{line}_train.json").write_text(empty)
    for name in ("train.csv", "train", "test", "sample_submission.csv"):
        if shared is not None and (shared / name).exists():
            (root / name).symlink_to((shared / name).resolve())
    return root


@pytest.mark.slow
@pytest.mark.parametrize("source, kept, crossing", [("livecell", 1243, 8), ("livecell:mcf7", 819, 6)])
def test_kit_train_pretrains_on_real_livecell_and_records_the_summary(livecell_real_dir, shared_dir, tmp_path,
                                                                      capsys, source, kept, crossing):
    root = _competition_like(livecell_real_dir, tmp_path / "competition", shared_dir)
    out = tmp_path / "run"
    train.main(train.get_args_parser().parse_args([
        "--variant", "hot-flow-unet", "--data", str(root), "--out", str(out), "--device", "cpu", "--epochs", "1",
        "--max-images", "4", "--crop", "256x256", "--pretrain", source, "--pretrain-epochs", "1",
        "--pretrain-max-images", "100"]))
    printed = capsys.readouterr().out
    summary = f"kept {kept:,} cells ({crossing} self-crossing, drawn as they are); skipped 0"
    assert summary in printed and "pretrain epoch 1/1 " in printed and "\nepoch 2/2 " in printed
    record = torch.load(out / "hot-flow-unet-last.pt", weights_only=True)["stages"][0]
    assert record["name"] == "pretrain" and record["data"] == source
    assert any(summary in line for line in record["livecell_read"])
