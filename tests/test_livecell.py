"""kit.data.livecell on a LIVECell tree in the competition's own layout (built from the shared slice)."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.draw

from benchmarks.numpy_twins import polygon_area
from kit import cli, rle
from kit.data import livecell, sartorius


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
    layout = sartorius.find_competition(shared_dir)
    df = sartorius.read_train_csv(layout.train_csv)
    samples = livecell.load_samples(livecell.find_livecell(extras_dir))  # train + val: 3 + 1 images
    assert sorted(s.cell_type for s in samples) == ["a172", "bv2", "shsy5y", "shsy5y"]
    for sample in samples:
        image_id = sample.id.split("_")[2]
        assert sample.id.startswith(sample.cell_type.upper()) and sample.id.endswith("_1")
        np.testing.assert_array_equal(sample.image, sartorius.load_image(layout.train_dir / f"{image_id}.png"))
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
    assert cli.parse_pretrain("livecell:SHSY5Y, a172") == ("shsy5y", "a172")
    assert cli.parse_pretrain("LIVECell") is None
    with pytest.raises(ValueError, match="'hela'.*valid: a172, bt474"):
        cli.parse_pretrain("livecell:shsy5y,hela")
    with pytest.raises(ValueError, match="the source is 'livecell' or 'livecell:LINE,LINE'"):
        cli.parse_pretrain("coco")


def test_a_polygon_covers_the_pixels_whose_centres_it_holds_and_the_first_listed_cell_wins():
    square = np.array([[10.0, 10.0], [20.0, 10.0], [20.0, 20.0], [10.0, 20.0]])  # COCO: pixels 10..19
    labels = livecell.label_image([[square], [square + 5.0]])
    first = np.zeros_like(labels, dtype=bool)
    first[10:20, 10:20] = True
    np.testing.assert_array_equal(labels == 1, first)
    second = np.zeros_like(first)
    second[15:25, 15:25] = True
    np.testing.assert_array_equal(labels == 2, second & ~first)  # overlap given to the first-listed cell
    assert polygon_area(square) == 100.0  # the fixtures' COCO area (benchmarks.numpy_twins)


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


def _summary(tree, lines=("shsy5y",), splits=("train",), **options) -> livecell.ReadSummary:
    return livecell.read_livecell(tree, lines, splits, **options).summaries[0]


@pytest.mark.parametrize("segmentation, reason", [
    ([[5.0, 5.0, 9.0, 9.0]], "fewer than 3 distinct points"),
    ([[5.0, 5.0, 9.0, 9.0, 5.0, 5.0, 9.0, 9.0]], "fewer than 3 distinct points"),
    ([], "fewer than 3 distinct points"),
    ([[0.0, 0.0, 5.0, 5.0, 10.0, 10.0]], "no area \\(collinear points\\)"),
    ([[1.0, 2.0, 3.0]], "not a flat list of x, y numbers"),
    ([[1.0, "2", 3.0, 4.0, 5.0, 1.0]], "not a flat list of x, y numbers"),
    ([[1.0, 2.0, float("nan"), 4.0, 5.0, 1.0]], "not a flat list of x, y numbers"),
    ({"counts": "abc", "size": [520, 704]}, "RLE/crowd segmentation"),
])
def test_what_cannot_become_a_cell_is_skipped_counted_and_named_in_the_summary(tree, segmentation, reason, caplog):
    path = _single(tree, "shsy5y")
    before = livecell.read_annotations(path)
    document = _edit(path, lambda d: d["annotations"][next(iter(d["annotations"]))].update(segmentation=segmentation))
    first, n = next(iter(document["annotations"])), len(document["annotations"])
    caplog.set_level("INFO", logger="kit.data.livecell")
    summary = _summary(tree)
    assert (summary.annotations, summary.kept, dict(summary.skipped)) == (n, n - 1, {summary.skipped.most_common(1)[0][0]: 1})
    assert re.search(f"skipped 1: 1 {reason} \\(ids {first}\\)", summary.line())
    assert summary.line() in caplog.text  # the progress output
    after = livecell.read_annotations(path)
    assert sum(len(i.annotation_ids) for i in after) == sum(len(i.annotation_ids) for i in before) - 1


def test_a_self_crossing_polygon_is_drawn_as_it_is(tree):
    bowtie = [0.0, 0.0, 10.0, 10.0, 10.0, 0.0, 0.0, 10.0]  # shoelace 0, yet two triangles are drawn
    path = _single(tree, "shsy5y")
    document = _edit(path, lambda d: d["annotations"][next(iter(d["annotations"]))].update(segmentation=[bowtie]))
    summary = _summary(tree)
    assert summary.kept == len(document["annotations"]) and not summary.skipped and summary.crossing >= 1
    drawn = livecell.label_image([[np.reshape(bowtie, (-1, 2))]]) > 0
    rows, cols = skimage.draw.polygon(np.array(bowtie[1::2]) - 0.5, np.array(bowtie[0::2]) - 0.5, (520, 704))
    assert drawn.sum() == len(rows) > 0 and drawn[rows, cols].all()


def test_fixture_polygons_cross_themselves_as_real_ones_do(extras_dir):
    summary = _summary(livecell.find_livecell(extras_dir), None, ("train",))
    assert summary.crossing >= 3 and summary.kept > 500
    assert sum(summary.skipped.values()) <= 0.01 * summary.annotations


def test_too_many_unusable_annotations_stop_with_one_line_naming_the_file(tree):
    path = _coco(tree)
    _edit(path, lambda d: [a.update(segmentation=[[1.0, 1.0, 2.0, 2.0]]) for a in d["annotations"][::10]])
    with pytest.raises(livecell.LivecellError, match=f"^{path}: \\d+ of \\d+ annotations read cannot become a "
                                                     "cell .* check that --data is the competition's input") as raised:
        livecell.load_samples(tree)
    assert "\n" not in str(raised.value) and "remove" not in str(raised.value) and "edit" not in str(raised.value)


def test_duplicate_image_entries_are_read_once(tree):
    path = _coco(tree)
    document = json.loads(path.read_text())
    first = document["images"][0]
    twin = {**first, "id": 999}
    cells = [a for a in document["annotations"] if a["image_id"] == first["id"]]
    document["images"].append(twin)
    document["annotations"] += [{**a, "id": 10_000 + k, "image_id": 999} for k, a in enumerate(cells)]
    path.write_text(json.dumps(document))
    images = livecell.read_annotations(path)
    assert [i.file_name for i in images].count(first["file_name"]) == 1
    assert next(i for i in images if i.file_name == first["file_name"]).annotation_ids == tuple(a["id"] for a in cells)
    chosen = livecell.read_livecell(tree)  # train + val: the val file's image listed in train too
    val = json.loads(_coco(tree, "val").read_text())
    _edit(_coco(tree, "val"), lambda d: d["images"].append({**first, "id": 4242}) or d["annotations"].append(
        {**cells[0], "id": 77_777, "image_id": 4242}))
    again = livecell.read_livecell(tree)
    assert len(again.images) == len(chosen.images) and again.summaries[0].duplicates == 1
    assert again.summaries[1].duplicates == 1 and len(val["images"]) == 1
    assert "1 duplicate image entries read once" in again.summaries[1].line()


@pytest.mark.parametrize("change, problem", [
    (lambda d: d.clear(), "expected a json object with 'images' and 'annotations', found \\[\\]"),
    (lambda d: d.update(annotations="cells"), "'annotations' must be a list \\(COCO files\\) or an object keyed by id"),
    (lambda d: d.update(images=[{"file": "x.tif"}]), "'images' must be a list of objects with 'id' and 'file_name'"),
    (lambda d: d["annotations"].append(7), "annotation \\d+: expected an object, found int"),
    (lambda d: [a.update(image_id=999) for a in d["annotations"]], "annotations have an image_id not in 'images'"),
    (lambda d: d["images"][0].update(file_name="HELA_Phase_x_1.tif"), "prefix 'HELA' is none of LIVECell's"),
])
def test_a_json_of_another_shape_is_named(tree, change, problem):
    path = _coco(tree)
    _edit(path, change)
    with pytest.raises(livecell.LivecellError, match=problem) as raised:
        livecell.read_annotations(path)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)
    path.write_text("{not json")
    with pytest.raises(livecell.LivecellError, match="not readable as json"):
        livecell.read_annotations(path)


def test_an_annotation_without_its_image_entry_is_skipped(tree):
    document = _edit(_coco(tree), lambda d: d["annotations"][0].update(image_id=999))
    summary = livecell.read_livecell(tree, splits=("train",)).summaries[0]
    assert summary.skipped == {"no_image": 1} and summary.first_ids["no_image"] == [document["annotations"][0]["id"]]
    assert summary.kept == len(document["annotations"]) - 1


def _refuse_drawing(monkeypatch):
    def drawn(self, shape=None):
        raise AssertionError(f"{self.file_name} drawn before every chosen image was checked")
    monkeypatch.setattr(livecell.ImageAnnotations, "labels", drawn)


def test_a_bad_polygon_in_an_image_the_run_does_not_use_does_not_matter(tree, monkeypatch):
    path = _coco(tree)
    document = json.loads(path.read_text())
    last = sorted(document["images"], key=lambda i: i["file_name"])[-1]
    _edit(path, lambda d: [a.update(segmentation=[[1.0, 1.0]]) for a in d["annotations"] if a["image_id"] == last["id"]])
    with pytest.raises(livecell.LivecellError, match="annotations read cannot become a cell"):
        livecell.read_livecell(tree, splits=("train",))
    capped = livecell.read_livecell(tree, splits=("train",), max_images=2)
    assert last["file_name"] not in [i.file_name for i in capped.images] and len(capped.images) == 2
    assert not capped.summaries[0].skipped and "(the 2 chosen of 3)" in capped.summaries[0].line()


def test_missing_or_wrong_size_images_are_found_from_names_and_headers_before_drawing(tree, monkeypatch):
    names = sorted(i["file_name"] for i in json.loads(_coco(tree).read_text())["images"])
    _refuse_drawing(monkeypatch)
    wrong = livecell.image_path(tree, names[1], "train")
    cv2.imwrite(str(wrong), np.zeros((520, 700), np.uint16))
    with pytest.raises(livecell.LivecellError, match=f"LIVECell image {wrong}: its TIFF header says 700x520, 16-bit, "
                                                     "1 channel\\(s\\); LIVECell's are 704x520 8-bit grayscale"):
        livecell.read_livecell(tree, splits=("train",))
    wrong.unlink()
    with pytest.raises(livecell.LivecellError, match=f"LIVECell image {wrong} is missing, and so are 0 more of the 3 "
                                                     f"images chosen from {_coco(tree)}"):
        livecell.read_livecell(tree, splits=("train",))
    monkeypatch.setattr(livecell, "MAX_UNUSABLE_SHARE", 0.5)  # one image of three: skipped and counted
    summary = livecell.read_livecell(tree, splits=("train",)).summaries[0]
    assert summary.missing_files == [names[1]] and f"1 image file(s) missing, their cells skipped ({names[1]})" \
        in summary.line()


def test_the_tiff_header_agrees_with_the_decoded_image(tree):
    for path in sorted(tree.rglob("*.tif")):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert livecell.tiff_header(path) == (image.shape[1], image.shape[0], 8 * image.itemsize, 1)


def test_ddp_ranks_each_read_an_equal_disjoint_share(tree):
    whole = [i.file_name for i in livecell.read_livecell(tree).images]
    shares = [[i.file_name for i in livecell.read_livecell(tree, rank=r, world=2).images] for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == len(whole) // 2 and not set(shares[0]) & set(shares[1])
    assert set(shares[0]) | set(shares[1]) <= set(whole)


def test_a_missing_file_or_tree_is_named(tree, tmp_path):
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
