"""kit.rle against hand-worked strings, a plain-numpy twin, and every annotation of the shared slice."""
import numpy as np
import pandas as pd
import pytest

from kit import competition, rle


def numpy_encode(mask: np.ndarray) -> str:
    """Plain-numpy twin: pad, find changes, pair them up."""
    pixels = np.concatenate([[0], mask.reshape(-1).astype(np.int8), [0]])
    changes = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    changes[1::2] -= changes[::2]
    return " ".join(map(str, changes))


def test_encode_is_row_major_and_one_indexed():
    mask = np.zeros((4, 5), bool)
    mask[0, 1:3] = True  # pixels 1, 2 -> "2 2"
    mask[1, 4] = True  # pixel 9, joins pixel 10 (row 2, col 0) -> "10 2"
    mask[2, 0] = True
    assert rle.encode(mask) == "2 2 10 2"
    assert rle.encode(np.zeros((3, 3), bool)) == ""
    assert rle.encode(np.ones((2, 3), bool)) == "1 6"


def test_decode_inverts_encode_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random((13, 17)) < rng.random()
        text = rle.encode(mask)
        assert text == numpy_encode(mask)
        np.testing.assert_array_equal(rle.decode(text, mask.shape), mask)


def test_encode_labels_matches_per_label_encode():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, size=(21, 19))
    labels[labels == 4] = 0  # an absent label gives ""
    encoded = rle.encode_labels(labels)
    assert len(encoded) == 5
    assert encoded[3] == ""
    for k in range(1, 6):
        assert encoded[k - 1] == numpy_encode(labels == k)
    assert rle.encode_labels(np.zeros((3, 4), np.int32)) == []


def test_decode_labels_keeps_first_listed_mask_where_masks_overlap():
    labels = rle.decode_labels(["1 3", "2 3", "9 1"], (3, 3))
    # "2 3" covers pixels 1..3 (0-indexed); 1 and 2 already belong to the first mask.
    np.testing.assert_array_equal(labels, [[1, 1, 1], [2, 0, 0], [0, 0, 3]])


def test_decode_many_offsets_and_areas():
    table = rle.decode_many(["1 2 5 1", "", "3 4"], (3, 3))
    assert table.offsets.tolist() == [0, 2, 2, 3]
    assert table.starts.tolist() == [0, 4, 2]
    assert table.areas().tolist() == [3, 0, 4]
    starts, lengths = table.row(2)
    assert starts.tolist() == [2] and lengths.tolist() == [4]
    assert len(rle.decode_many([], (3, 3))) == 0


@pytest.mark.parametrize(
    "text, problem",
    [
        ("1 2 3", "odd number of values"),
        ("1 2.5", "not a non-negative integer"),
        ("1 x", "not a non-negative integer"),
        ("-1 2", "not a non-negative integer"),
        ("0 2", "start is < 1"),
        ("3 0", "run length is < 1"),
        ("19 3", r"a run goes past the end of the \d+x\d+ image \("),
        ("99999999999999999999999 1", r"a run goes past the end of the \d+x\d+ image \("),
        ("10 2 4 1", "not ascending or overlap"),
        ("1 5 3 1", "not ascending or overlap"),
    ],
)
def test_malformed_rle_raises_a_clear_error(text, problem):
    with pytest.raises(ValueError, match=problem):
        rle.decode(text, (4, 5))


def test_malformed_row_is_named_in_a_batch():
    with pytest.raises(rle.RLEError, match="row 2") as caught:
        rle.decode_many(["1 1", "3 1", "5"], (4, 5))
    assert caught.value.row == 2


def test_encode_rejects_wrong_input():
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="integer labels"):
        rle.encode_labels(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=">= 0"):
        rle.encode_labels(np.array([[0, -1]]))


def test_round_trip_every_annotation_of_the_shared_slice(shared_dir):
    df = pd.read_csv(shared_dir / "train.csv", dtype=str, na_filter=False)
    annotations = df["annotation"].tolist()
    table = rle.decode_many(annotations)
    flat = np.zeros(competition.IMAGE_SHAPE[0] * competition.IMAGE_SHAPE[1], bool)
    for i, original in enumerate(annotations):
        starts, lengths = table.row(i)
        flat[:] = False
        for s, n in zip(starts, lengths):
            flat[s : s + n] = True
        assert rle.encode(flat.reshape(competition.IMAGE_SHAPE)) == original, f"row {i}"


def test_encode_labels_agrees_with_per_mask_encode_on_shared_images(shared_dir):
    df = pd.read_csv(shared_dir / "train.csv", dtype=str, na_filter=False)
    for image_id, rows in df.groupby("id"):
        annotations = rows["annotation"].tolist()
        labels = rle.decode_labels(annotations)
        encoded = rle.encode_labels(labels)
        for k, text in enumerate(encoded, start=1):
            assert text == rle.encode(labels == k), f"image {image_id} label {k}"
        # Where masks do not overlap, the label image gives back the original annotation.
        overlap_free = [k for k, a in enumerate(annotations, 1) if (rle.decode(a) == (labels == k)).all()]
        assert all(encoded[k - 1] == annotations[k - 1] for k in overlap_free)
