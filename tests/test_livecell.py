"""kit.livecell on a LIVECell tree in the competition's own layout (built from the shared slice)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from kit import competition, data, livecell, rle


@pytest.fixture()
def tree(extras_dir, tmp_path) -> Path:
    """A private copy of the fixture's LIVECell tree, for tests that damage it."""
    copy = tmp_path / livecell.LIVECELL_DIR
    shutil.copytree(extras_dir / livecell.LIVECELL_DIR, copy)
    return copy


def _coco(root: Path, split: str = "train") -> Path:
    return root / "annotations" / "LIVECell" / f"livecell_coco_{split}.json"


def _single(root: Path, line: str, split: str = "train") -> Path:
    return root / "annotations" / "LIVECell_single_cells" / line / f"livecell_{line}_{split}.json"


def _edit(path: Path, change) -> dict:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    return document


def test_both_json_shapes_give_the_same_images_and_annotations(extras_dir):
    root = livecell.find_livecell(extras_dir)
    assert isinstance(json.loads(_coco(root).read_text())["annotations"], list)
    assert isinstance(json.loads(_single(root, "shsy5y").read_text())["annotations"], dict)
    coco = livecell.read_annotations(_coco(root))
    single = [image for line in ("a172", "shsy5y") for image in livecell.read_annotations(_single(root, line))]
    assert sorted(i.file_name for i in coco) == sorted(i.file_name for i in single)
    by_name = {i.file_name: i for i in single}
    for image in coco:
        assert image.annotation_ids == by_name[image.file_name].annotation_ids
        assert all(np.array_equal(a, b) for p, q in zip(image.polygons, by_name[image.file_name].polygons)
                   for a, b in zip(p, q))
    assert {i.cell_line for i in coco} == {"a172", "shsy5y"}


def test_samples_are_the_competition_images_with_their_cells(extras_dir, shared_dir):
    layout = data.find_competition(shared_dir)
    df = data.read_train_csv(layout.train_csv)
    samples = livecell.load_samples(livecell.find_livecell(extras_dir))  # train + val: 3 + 1 images
    assert sorted(s.cell_type for s in samples) == ["a172", "bv2", "shsy5y", "shsy5y"]
    for sample in samples:
        image_id = sample.id.split("_")[2]
        assert sample.id.startswith(sample.cell_type.upper()) and sample.id.endswith("_1")
        np.testing.assert_array_equal(sample.image, data.load_image(layout.train_dir / f"{image_id}.png"))
        truth = rle.decode_labels(df.loc[df.id == image_id, "annotation"].tolist())
        union = ((truth > 0) & (sample.labels > 0)).sum() / ((truth > 0) | (sample.labels > 0)).sum()
        assert union > 0.97, (sample.id, union)
        assert sample.labels.dtype == np.int32 and len(sample.annotations) == sample.labels.max()
        assert abs(int(sample.labels.max()) - int(truth.max())) <= 0.05 * truth.max()


def test_cell_lines_pick_the_single_cells_files_and_max_images_keeps_every_line(extras_dir):
    root = livecell.find_livecell(extras_dir)
    assert [s.cell_type for s in livecell.load_samples(root, ("shsy5y",))] == ["shsy5y", "shsy5y"]
    assert [s.cell_type for s in livecell.load_samples(root, ("shsy5y",), splits=("test",))] == ["shsy5y"]
    assert sorted(s.cell_type for s in livecell.load_samples(root, max_images=3)) == ["a172", "bv2", "shsy5y"]
    assert competition.parse_pretrain("livecell:SHSY5Y, a172") == ("shsy5y", "a172")
    assert competition.parse_pretrain("LIVECell") is None
    with pytest.raises(ValueError, match="'hela'.*valid: a172, bt474"):
        competition.parse_pretrain("livecell:shsy5y,hela")
    with pytest.raises(ValueError, match="the source is 'livecell' or 'livecell:LINE,LINE'"):
        competition.parse_pretrain("coco")


def test_a_polygon_covers_the_pixels_whose_centres_it_holds_and_the_first_listed_cell_wins():
    square = np.array([[10.0, 10.0], [20.0, 10.0], [20.0, 20.0], [10.0, 20.0]])  # COCO: pixels 10..19
    labels = livecell.label_image([[square], [square + 5.0]])
    first = np.zeros_like(labels, dtype=bool)
    first[10:20, 10:20] = True
    np.testing.assert_array_equal(labels == 1, first)
    second = np.zeros_like(first)
    second[15:25, 15:25] = True
    np.testing.assert_array_equal(labels == 2, second & ~first)  # overlap given to the first-listed cell
    assert livecell.polygon_area(square) == 100.0


def _crossing_twin(points: np.ndarray) -> bool:
    """Every pair of non-adjacent edges tested one at a time."""
    n = len(points)

    def turn(a, b, c):
        return np.sign((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))

    for i in range(n):
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue
            a, b, c, d = points[i], points[(i + 1) % n], points[j], points[(j + 1) % n]
            if turn(a, b, c) * turn(a, b, d) < 0 and turn(c, d, a) * turn(c, d, b) < 0:
                return True
    return False


def test_self_crossing_agrees_with_a_pairwise_loop_on_random_polygons():
    rng = np.random.default_rng(0)
    results = []
    for _ in range(300):
        points = rng.uniform(0, 50, (int(rng.integers(4, 12)), 2))
        results.append(livecell.self_crossing(points))
        assert results[-1] == _crossing_twin(points)
    assert any(results) and not all(results)
    star = np.array([[np.cos(a) * (10 + 5 * (k % 2)), np.sin(a) * (10 + 5 * (k % 2))]
                     for k, a in enumerate(np.linspace(0, 2 * np.pi, 20, endpoint=False))])
    assert not livecell.self_crossing(star)


@pytest.mark.parametrize("segmentation, problem", [
    ([[5.0, 5.0, 9.0, 9.0]], "empty polygon \\(2 distinct point"),
    ([[5.0, 5.0, 9.0, 9.0, 5.0, 5.0, 9.0, 9.0]], "empty polygon \\(2 distinct point"),
    ([[0.0, 0.0, 5.0, 5.0, 10.0, 10.0]], "empty polygon \\(its 3 points are collinear: no area\\)"),
    ([], "empty polygon \\(segmentation \\[\\]\\)"),
    ([[0.0, 0.0, 10.0, 10.0, 10.0, 0.0, 0.0, 10.0]], "the polygon crosses itself"),
    ([[1.0, 2.0, 3.0]], "a polygon must be a flat list of x, y numbers \\(an even count\\)"),
    ({"counts": "abc", "size": [520, 704]}, "segmentation is an RLE \\(crowd\\) mask, not a list of polygons"),
])
def test_a_bad_polygon_names_the_file_and_the_annotation(tree, segmentation, problem):
    path = _single(tree, "shsy5y")
    document = _edit(path, lambda d: d["annotations"][next(iter(d["annotations"]))].update(segmentation=segmentation))
    first = next(iter(document["annotations"]))
    with pytest.raises(livecell.LivecellError, match=f"{path}: annotation {first}: {problem}"):
        livecell.read_annotations(path)
    coco = _coco(tree)
    document = _edit(coco, lambda d: d["annotations"][3].update(segmentation=segmentation))
    with pytest.raises(livecell.LivecellError, match=f"{coco}: annotation {document['annotations'][3]['id']}: {problem}"):
        livecell.load_samples(tree)


@pytest.mark.parametrize("change, problem", [
    (lambda d: d.clear(), "expected a json object with 'images' and 'annotations', found \\[\\]"),
    (lambda d: d.update(annotations="cells"), "'annotations' must be a list \\(COCO files\\) or an object keyed by id"),
    (lambda d: d.update(images=[{"file": "x.tif"}]), "'images' must be a list of objects with 'id' and 'file_name'"),
    (lambda d: d["annotations"][0].update(image_id=999), "annotation \\d+: image_id 999 is not in 'images'"),
    (lambda d: d["images"][0].update(file_name="HELA_Phase_x_1.tif"), "prefix 'HELA' is none of LIVECell's"),
])
def test_a_json_of_another_shape_is_named(tree, change, problem):
    path = _coco(tree)
    _edit(path, change)
    with pytest.raises(livecell.LivecellError, match=problem) as raised:
        livecell.read_annotations(path)
    assert str(path) in str(raised.value)
    path.write_text("{not json")
    with pytest.raises(livecell.LivecellError, match="not readable as json"):
        livecell.read_annotations(path)


def test_a_missing_image_or_file_or_tree_is_named(tree, tmp_path):
    image = json.loads(_coco(tree, "val").read_text())["images"][0]
    first_annotation = json.loads(_coco(tree, "val").read_text())["annotations"][0]["id"]
    missing = livecell.image_path(tree, image["file_name"], "val")
    assert missing.parent.name == "BV2" and missing.parent.parent.name == "livecell_train_val_images"
    missing.unlink()
    with pytest.raises(livecell.LivecellError, match=f"LIVECell image {missing} is missing \\(annotation "
                                                     f"{first_annotation} and \\d+ more refer to it\\)"):
        livecell.load_samples(tree)
    _single(tree, "a172").unlink()
    with pytest.raises(FileNotFoundError, match=f"annotation file {_single(tree, 'a172')} is missing"):
        livecell.load_samples(tree, ("a172",))
    with pytest.raises(FileNotFoundError, match=f"no LIVECell in {tmp_path / 'nowhere'}"):
        livecell.find_livecell(tmp_path / "nowhere")


def test_the_benchmark_says_when_its_baseline_is_missing(monkeypatch, tmp_path):
    from benchmarks import bench_livecell

    monkeypatch.setitem(sys.modules, "pycocotools", None)  # import fails, as where it is not installed
    args = bench_livecell.get_args_parser().parse_args(["--livecell", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="pycocotools is not installed.*pip install -r benchmarks/requirements-livecell.txt"):
        bench_livecell.main(args)
