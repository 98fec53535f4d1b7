"""kit.data.sartorius on the shared slice and on broken copies of it."""
import shutil

import cv2
import numpy as np
import pytest

from kit import competition, rle
from kit.data import sartorius
from kit.split import split_train_val


def test_finds_the_layout_below_a_deeper_root(shared_dir, tmp_path):
    mount = tmp_path / "input" / "some-user" / "sartorius-cell-instance-segmentation"
    mount.parent.mkdir(parents=True)
    mount.symlink_to(shared_dir, target_is_directory=True)
    (tmp_path / "input" / "weights-dataset").mkdir()
    layout = sartorius.find_competition(tmp_path / "input")
    assert layout.root == mount
    assert layout.train_csv == mount / "train.csv" and layout.test_dir == mount / "test"


def test_missing_layout_and_two_copies_are_clear_errors(shared_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="kaggle competitions download"):
        sartorius.find_competition(tmp_path)
    for name in ("a", "b"):
        (tmp_path / name).symlink_to(shared_dir, target_is_directory=True)
    with pytest.raises(ValueError, match="several copies"):
        sartorius.find_competition(tmp_path)


def test_inference_only_layout_needs_no_train_csv(tmp_path):
    (tmp_path / "comp" / "test").mkdir(parents=True)
    layout = sartorius.find_competition(tmp_path, need_train=False)
    assert layout.train_csv is None and layout.test_dir == tmp_path / "comp" / "test"
    with pytest.raises(FileNotFoundError, match="no .png"):
        sartorius.test_image_paths(layout)


def test_read_train_csv(shared_dir):
    df = sartorius.read_train_csv(shared_dir / "train.csv")
    assert len(df) == 17101
    assert df["width"].eq(704).all() and df["height"].eq(520).all()
    table = sartorius.image_table(df)
    assert len(table) == 120
    assert table.groupby("cell_type")["n_cells"].sum().to_dict() == {"astro": 3140, "cort": 1443, "shsy5y": 12518}
    assert (df.loc[df["id"] == "0030fd0e6378", "plate_time"] != "").all()


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("annotation", "1 2 3", "line 4 .*odd number of values"),
        ("annotation", "", "line 4 .*empty annotation"),
        ("annotation", "  ", "line 4 .*empty annotation"),
        ("width", "70x", "line 4 .*width '70x' is not an integer"),
        ("height", "512", "line 4 .*image size"),
        ("cell_type", "neuron", "line 4 .*cell_type not one of"),
    ],
)
def test_bad_train_csv_rows_name_the_line(shared_dir, tmp_path, column, value, message):
    lines = (shared_dir / "train.csv").read_text().splitlines()[:5]
    header = lines[0].split(",")
    cells = lines[3].split(",")
    cells[header.index(column)] = value
    lines[3] = ",".join(cells)
    broken = tmp_path / "train.csv"
    broken.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        sartorius.read_train_csv(broken)


def test_missing_column_is_named(tmp_path):
    (tmp_path / "train.csv").write_text("id,annotation\nabc,1 2\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['width', 'height', 'cell_type'\]"):
        sartorius.read_train_csv(tmp_path / "train.csv")


def test_load_image_checks_size_and_type(shared_dir, tmp_path):
    image = sartorius.load_image(shared_dir / "train" / "0030fd0e6378.png")
    assert image.dtype == np.uint8 and image.shape == (520, 704)
    cv2.imwrite(str(tmp_path / "small.png"), image[:512, :512])
    with pytest.raises(ValueError, match="small.png: expected 520x704"):
        sartorius.load_image(tmp_path / "small.png")
    cv2.imwrite(str(tmp_path / "color.png"), np.dstack([image] * 3))
    with pytest.raises(ValueError, match="color.png: expected 8-bit grayscale"):
        sartorius.load_image(tmp_path / "color.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*junk.png"):
        sartorius.load_image(tmp_path / "junk.png")


def test_split_is_stratified_deterministic_and_order_free(shared_dir):
    table = sartorius.image_table(sartorius.read_train_csv(shared_dir / "train.csv"))
    train, val = split_train_val(table)
    assert (len(train), len(val)) == (96, 24)
    assert not set(train) & set(val)
    assert table.set_index("id").loc[val, "cell_type"].value_counts().to_dict() == {"cort": 8, "astro": 8, "shsy5y": 8}
    assert split_train_val(table.sample(frac=1, random_state=3)) == (train, val)
    assert split_train_val(table, seed=1) != (train, val)


def test_samples_hold_image_labels_and_original_annotations(shared_dir):
    layout = sartorius.find_competition(shared_dir)
    (sample,) = sartorius.load_samples(layout, ["0030fd0e6378"])
    assert sample.cell_type == "shsy5y"
    assert sample.labels.dtype == np.int32 and sample.labels.max() == len(sample.annotations) == 395
    union = np.zeros(competition.IMAGE_SHAPE, bool)
    for a in sample.annotations:
        union |= rle.decode(a)
    np.testing.assert_array_equal(sample.labels > 0, union)
    with pytest.raises(KeyError, match="no annotations"):
        sartorius.load_samples(layout, ["000000000000"])


def test_test_image_paths(shared_dir, tmp_path):
    paths = sartorius.test_image_paths(sartorius.find_competition(shared_dir))
    assert list(paths) == ["7ae19de7bc2a", "d48ec7815252", "d8bfd1dafdc4"]
    shutil.copytree(shared_dir / "test", tmp_path / "comp" / "test")
    assert list(sartorius.test_image_paths(sartorius.find_competition(tmp_path, need_train=False))) == list(paths)
