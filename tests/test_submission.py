"""kit.submission: the written file's exact text, and every rejection naming its id and line."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kit import competition, rle
from kit.submission import HEADER, SubmissionError, read_submission, validate, write_submission

SHAPE = (4, 5)  # 20 pixels, numbered 1..20 row-major


def labels_a() -> np.ndarray:
    labels = np.zeros(SHAPE, np.int32)
    labels[0, 0:2] = 3  # pixels 1-2
    labels[1:3, 4] = 9  # pixels 10 and 15
    return labels


def write_csv(tmp_path, text: str):
    path = tmp_path / "submission.csv"
    path.write_text(text)
    return path


def test_write_submission_text(tmp_path):
    path = tmp_path / "out" / "submission.csv"
    written = write_submission({"b": np.zeros(SHAPE, np.int64), "a": labels_a()}, path,
                               expected_ids=["a", "b"], shape=SHAPE)
    assert written == path
    # rows follow expected_ids; one row per cell (labels 3 and 9, not consecutive); `b,` for no cells
    assert path.read_text() == "id,predicted\na,1 2\na,10 1 15 1\nb,\n"
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_write_submission_real_size_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.zeros(competition.IMAGE_SHAPE, np.int32)
    for k in range(1, 30):
        r, c = rng.integers(0, 500), rng.integers(0, 680)
        labels[r:r + 20, c:c + 24] = k  # later cells cover earlier ones: no overlap in the output
    path = write_submission({"x": labels}, tmp_path / "s.csv")
    frame = pd.read_csv(path, dtype=str, na_filter=False)
    assert (rle.decode_labels(frame["predicted"].tolist()) > 0).sum() == (labels > 0).sum()
    for code in frame["predicted"]:
        assert len(np.unique(labels[rle.decode(code)])) == 1  # every row is exactly one cell


def test_write_submission_id_mismatch_writes_nothing(tmp_path):
    path = tmp_path / "submission.csv"
    with pytest.raises(SubmissionError, match=r"no prediction for 1 expected image\(s\), e.g. \['c'\]"):
        write_submission({"a": labels_a()}, path, expected_ids=["a", "c"], shape=SHAPE)
    with pytest.raises(SubmissionError, match=r"not expected, e.g. \['a'\]"):
        write_submission({"a": labels_a(), "c": labels_a()}, path, expected_ids=["c"], shape=SHAPE)
    assert not path.exists()


@pytest.mark.parametrize("labels, problem", [
    (np.zeros((3, 5), np.int32), "shape"),
    (np.zeros(SHAPE, np.float32), "dtype float32"),
    (np.full(SHAPE, -1), "negative labels"),
])
def test_write_submission_rejects_bad_label_images(tmp_path, labels, problem):
    with pytest.raises(SubmissionError, match=f"image q: .*{problem}"):
        write_submission({"q": labels}, tmp_path / "s.csv", shape=SHAPE)


def test_write_submission_rejects_unwritable_id(tmp_path):
    with pytest.raises(SubmissionError, match="commas"):
        write_submission({"a,b": labels_a()}, tmp_path / "s.csv", shape=SHAPE)


def test_write_submission_keeps_old_file_on_error(tmp_path):
    path = write_csv(tmp_path, "old\n")
    with pytest.raises(SubmissionError):
        write_submission({"q": np.zeros((3, 5), np.int32)}, path, shape=SHAPE)
    assert path.read_text() == "old\n"


def test_validate_accepts_good_file_and_frame(tmp_path):
    path = write_csv(tmp_path, "id,predicted\na,1 2\na,3 2 8 1\nb,\n")
    assert validate(path, ["a", "b"], SHAPE) is None  # accepted: no SubmissionError
    masks = [rle.decode(text, SHAPE) for text in read_submission(path)["predicted"] if rle.holds_mask(text)]
    assert [int(m.sum()) for m in masks] == [2, 3] and not (masks[0] & masks[1]).any()  # a's two cells, apart
    frame = pd.DataFrame({"id": ["a", "b"], "predicted": ["1 2", np.nan]})  # NaN: image b without cells
    assert validate(frame, ["a", "b"], SHAPE) is None
    with pytest.raises(SubmissionError, match="missing"):  # what makes it good: b has its row
        validate(frame.iloc[:1], ["a", "b"], SHAPE)


@pytest.mark.parametrize("text, message", [
    ("id,annotation\na,1 2\n", "line 1: header is 'id,annotation'; expected 'id,predicted'"),
    ("", "line 1: header is ''"),
    ("id,predicted\na,1 2\nz,3 1\n", "line 3: unknown image id 'z'"),
    ("id,predicted\na,1 2\n", r"1 expected image\(s\) missing, e.g. \['b'\]"),
    ("id,predicted\na,1 2\nb,\nb,0 2\n", r"line 4 \(image b\): .*start is < 1"),
    ("id,predicted\na,1 2\nb,3\n", r"line 3 \(image b\): .*odd number"),
    ("id,predicted\na,1 x\nb,\n", r"line 2 \(image a\): .*not a non-negative integer"),
    ("id,predicted\na,19 3\nb,\n", r"line 2 \(image a\): .*past the end of the \d+x\d+ image \("),
    ("id,predicted\na,5 2 1 2\nb,\n", r"line 2 \(image a\): .*not ascending"),
    ("id,predicted\na,1 2 4 1\nb,1 3\na,2 1\n",
     r"line 4 \(image a\): its mask overlaps the mask of .* line 2 at pixel 2"),
    ("id,predicted\na,3 2\nb,\na,3 2\n", r"line 4 \(image a\): .*overlaps .* line 2 at pixel 3"),
    ("id,predicted\n,1 2\n", "line 2: empty id"),
    ("id,predicted\na,1 2,7\n", "line 2: 3 field\\(s\\), expected 2"),
    ("id,predicted\na\n", "line 2: 1 field\\(s\\), expected 2"),
    ("id,predicted\n\n", "line 2: 0 field"),
])
def test_validate_rejects_with_id_and_line(tmp_path, text, message):
    path = write_csv(tmp_path, text)
    with pytest.raises(SubmissionError, match=message):
        validate(path, ["a", "b"], SHAPE)


def test_masks_of_different_images_may_share_pixels(tmp_path):
    path = write_csv(tmp_path, "id,predicted\na,1 5\nb,1 5\n")
    assert validate(path, ["a", "b"], SHAPE) is None  # the same pixels in two images: accepted
    with pytest.raises(SubmissionError, match="overlaps"):  # the same two masks in one image: refused
        validate(write_csv(tmp_path, "id,predicted\na,1 5\na,1 5\nb,\n"), ["a", "b"], SHAPE)


def test_validate_frame_errors_name_the_row():
    frame = pd.DataFrame({"id": ["a", "b", "b"], "predicted": ["1 2", "4 4", "6 1"]})
    with pytest.raises(SubmissionError, match=r"submission row 2 \(image b\): its mask overlaps .* row 1"):
        validate(frame, ["a", "b"], SHAPE)
    with pytest.raises(SubmissionError, match="columns"):
        validate(frame.rename(columns={"predicted": "annotation"}), ["a", "b"], SHAPE)


def test_submission_error_is_a_value_error():
    assert issubclass(SubmissionError, ValueError)
    assert HEADER == "id,predicted"


def test_validate_on_real_sample_submission(shared_dir):
    sample = pd.read_csv(shared_dir / "sample_submission.csv", dtype=str, na_filter=False)
    validate(shared_dir / "sample_submission.csv", sample["id"].tolist())
    with pytest.raises(SubmissionError, match="missing"):
        validate(shared_dir / "sample_submission.csv", sample["id"].tolist() + ["extra_image"])
