"""kit.pseudo: pseudo-labels of train_semi_supervised/ in train.csv's form, and --extra-data's reader."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from kit import flows, metrics, pseudo, rle
from kit.data import pseudo_labels, sartorius
from kit.inference import ensemble, pseudo_labelling
from kit.model import checkpoints, network
from kit.model.variants import get_variant

LOW = 0.6  # the oracle's probability inside every third cell: below the test's --min-confidence


@pytest.fixture()
def flow_weights(tmp_path):
    path = tmp_path / "hot-flow-unet.pt"
    variant = get_variant("hot-flow-unet")
    checkpoints.save_checkpoint(path, network.build_model(variant), variant)
    return path


def _truth(shared_dir) -> dict[str, np.ndarray]:
    df = sartorius.read_train_csv(sartorius.find_competition(shared_dir).train_csv)
    return {image_id: rle.decode_labels(rows["annotation"].tolist()) for image_id, rows in df.groupby("id")}


@pytest.fixture()
def oracle(monkeypatch, shared_dir):
    """kit.inference.ensemble.predict replaced by the true cells: probability 1 inside a cell (LOW inside every
    third one), flows from the true instances, so that the extraction finds the annotations."""
    truth = _truth(shared_dir)

    def predict(ensemble, images, cell_types, device, tta=False, ids=None):
        labels = np.stack([truth[image_id.split("_", 1)[1]] for image_id in ids])
        prob = (labels > 0).astype(np.float32)
        prob[(labels % 3 == 0) & (labels > 0)] = LOW
        return prob, np.stack([flows.masks_to_flows(item) for item in labels])

    monkeypatch.setattr(ensemble, "predict", predict)
    return truth


def test_names_give_the_cell_type():
    assert pseudo_labels.cell_type_of("astros[hippo]_E10-4_Vessel-714_Ph_1.png") == "astro"
    assert pseudo_labels.cell_type_of("cort[pre-treat]_A1_Ph_3.png") == "cort"
    assert pseudo_labels.cell_type_of("shsy5y[diff]_E10-4_Vessel-714_Ph_3.png") == "shsy5y"
    with pytest.raises(ValueError, match=r"train_semi_supervised/hela\[x\]_1.png: the name does not start"):
        pseudo_labels.cell_type_of("hela[x]_1.png")
    with pytest.raises(ValueError, match="train_semi_supervised/0030fd0e6378.png"):
        pseudo_labels.cell_type_of("0030fd0e6378.png")


def test_the_folder_is_read_from_the_competition_layout(extras_dir, tmp_path):
    images = pseudo_labels.semi_supervised_images(extras_dir)
    assert sorted(images) == list(images) and len(images) == 6
    assert sorted(t for _, t in images.values()) == ["astro", "astro", "cort", "cort", "shsy5y", "shsy5y"]
    assert all(path.parent.name == "train_semi_supervised" for path, _ in images.values())
    with pytest.raises(FileNotFoundError, match=f"no train_semi_supervised/ in {tmp_path}"):
        pseudo_labels.semi_supervised_images(tmp_path)


def test_confidence_is_the_mean_probability_inside_each_cell():
    labels = np.array([[1, 1, 0], [2, 2, 2], [0, 3, 0]])
    prob = np.array([[0.9, 0.7, 0.1], [0.6, 0.6, 0.9], [0.2, 0.55, 0.3]])
    np.testing.assert_allclose(pseudo_labelling.cell_confidence(labels, prob), [0.8, 0.7, 0.55])
    np.testing.assert_array_equal(pseudo_labelling.confident_labels(labels, np.array([0.8, 0.7, 0.55]), 0.7),
                                  [[1, 1, 0], [2, 2, 2], [0, 0, 0]])
    assert pseudo_labelling.cell_confidence(np.zeros((2, 2), int), np.ones((2, 2))).shape == (0,)


def test_pseudo_labels_keep_the_confident_cells_in_train_csv_form(extras_dir, flow_weights, oracle, tmp_path, capsys):
    out = tmp_path / "pseudo.csv"
    args = pseudo.get_args_parser().parse_args(["--data", str(extras_dir), "--weights", str(flow_weights), "--out",
                                                str(out), "--min-confidence", "0.8", "--device", "cpu"])
    pseudo.main(args)
    df = sartorius.read_train_csv(out)  # the train.csv checks: columns, sizes, cell types, RLEs
    assert list(df.columns) == [*sartorius.TRAIN_CSV_COLUMNS, "confidence"]
    images = pseudo_labels.semi_supervised_images(extras_dir)
    assert set(df["id"]) == set(images)
    assert all(df.loc[df.id == i, "cell_type"].eq(t).all() for i, (_, t) in images.items())
    assert (df["confidence"].astype(float) >= 0.8).all()
    for image_id, rows in df.groupby("id"):
        truth = oracle[image_id.split("_", 1)[1]]
        confident = [rle.encode(truth == k) for k in range(1, truth.max() + 1) if k % 3]
        score = metrics.score_labels([confident], [rle.decode_labels(rows["annotation"].tolist())])[0]
        assert score > 0.8, (image_id, score)  # the oracle's cells, those of LOW probability left out
        assert len(rows) <= len(confident) + 5
    printed = capsys.readouterr().out
    assert "cells kept in 6 of 6 images" in printed


def test_a_lower_confidence_keeps_every_cell_and_a_bad_one_is_refused(extras_dir, flow_weights, oracle, tmp_path):
    out = tmp_path / "all.csv"
    common = ["--data", str(extras_dir), "--weights", str(flow_weights), "--device", "cpu", "--max-images", "2"]
    pseudo.main(pseudo.get_args_parser().parse_args([*common, "--out", str(out), "--min-confidence", str(LOW - 0.01)]))
    df = sartorius.read_train_csv(out)
    assert df["id"].nunique() == 2 and (df["confidence"].astype(float) < 0.8).any()
    with pytest.raises(SystemExit, match="--min-confidence must be in \\[0, 1\\]"):
        pseudo.main(pseudo.get_args_parser().parse_args([*common, "--out", str(out), "--min-confidence", "1.5"]))


def test_extra_samples_are_the_unannotated_images_with_their_pseudo_labels(extras_dir, shared_dir, tmp_path):
    images = pseudo_labels.semi_supervised_images(extras_dir)
    truth = _truth(shared_dir)
    rows = [row for image_id, (_, cell_type) in images.items()
            for row in pseudo_labels.pseudo_rows(image_id, cell_type, truth[image_id.split("_", 1)[1]],
                                          np.ones(truth[image_id.split("_", 1)[1]].max()))]
    csv = tmp_path / "pseudo.csv"
    csv.write_text(pseudo_labels.rows_to_csv(rows))
    samples = pseudo_labels.load_extra_samples(extras_dir, csv)
    assert [s.id for s in samples] == sorted(images)
    for sample in samples:
        np.testing.assert_array_equal(sample.labels, truth[sample.id.split("_", 1)[1]])
        np.testing.assert_array_equal(sample.image, sartorius.load_image(images[sample.id][0]))
        assert sample.cell_type == images[sample.id][1]
    train_id = next(iter(truth))
    with pytest.raises(FileNotFoundError, match="line 2: image 0123456789ab is not in .*train_semi_supervised"):
        pseudo_labels.load_extra_samples(extras_dir, _with_id(csv, tmp_path, "0123456789ab"))
    with pytest.raises(ValueError, match=f"line 2: image {train_id} is an annotated training image \\(in train.csv\\), "
                                         "not a pseudo-label of train_semi_supervised/"):
        pseudo_labels.load_extra_samples(extras_dir, _with_id(csv, tmp_path, train_id), known_ids=list(truth))
    first = sorted(images)[0]
    with pytest.raises(ValueError, match=f"line 2: image {first.replace('[', '.').replace(']', '.')} is an annotated"):
        pseudo_labels.load_extra_samples(extras_dir, csv, known_ids=[first])
    frame = pd.read_csv(csv, dtype=str, na_filter=False)
    frame.loc[frame.id == first, "cell_type"] = "shsy5y" if images[first][1] != "shsy5y" else "cort"
    frame.to_csv(tmp_path / "mislabelled.csv", index=False)
    with pytest.raises(ValueError, match="is labelled .* but its name says"):
        pseudo_labels.load_extra_samples(extras_dir, tmp_path / "mislabelled.csv")


def _with_id(csv, tmp_path, image_id):
    frame = pd.read_csv(csv, dtype=str, na_filter=False)
    frame.loc[0, "id"] = image_id
    path = tmp_path / "renamed.csv"
    frame.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------- checked before the first prediction

def _no_prediction(*args, **kwargs):
    raise AssertionError("predicted although the fault was detectable from names and headers")


def _pseudo(extras, weights, out, *extra):
    args = ["--data", str(extras), "--weights", str(weights), "--out", str(out), "--device", "cpu", *extra]
    return pseudo.main(pseudo.get_args_parser().parse_args(args))


@pytest.fixture()
def own_extras(extras_dir, tmp_path):
    """A copy of the extras folder whose train_semi_supervised/ images a test may break."""
    return shutil.copytree(extras_dir, tmp_path / "competition", symlinks=True)


def test_a_bad_image_header_is_found_before_the_first_prediction(own_extras, flow_weights, monkeypatch, tmp_path):
    monkeypatch.setattr(ensemble, "predict", _no_prediction)
    last = list(pseudo_labels.semi_supervised_images(own_extras).values())[-1][0]
    cv2.imwrite(str(last), np.zeros((520, 700), np.uint8))
    out = tmp_path / "new" / "pseudo.csv"
    with pytest.raises(SystemExit, match=f"kit.pseudo: error: image {_escaped(last)}: expected 520x704 "
                                         "\\(height x width\\), the header says 520x700: restore the original"):
        _pseudo(own_extras, flow_weights, out)
    cv2.imwrite(str(last), np.zeros((520, 704, 3), np.uint8))
    with pytest.raises(SystemExit, match="expected 8-bit grayscale, the header says 8-bit colour type 2"):
        _pseudo(own_extras, flow_weights, out)
    last.write_bytes(b"not a png")
    with pytest.raises(SystemExit, match="is not a PNG"):
        _pseudo(own_extras, flow_weights, out)
    assert not out.parent.exists()  # no empty --out folder left behind


def test_a_failure_part_way_writes_the_images_already_predicted(own_extras, flow_weights, oracle, tmp_path):
    images = pseudo_labels.semi_supervised_images(own_extras)
    last = list(images.values())[-1][0]
    whole = last.read_bytes()
    last.write_bytes(whole[: len(whole) // 2])  # its header is whole: only decoding finds it
    out = tmp_path / "pseudo.csv"
    with pytest.raises(SystemExit) as excinfo:
        _pseudo(own_extras, flow_weights, out, "--batch-size", "2")
    message = excinfo.value.code
    assert message.startswith(f"kit.pseudo: error: cannot read image {last}") and "\n" not in message
    assert f"; wrote {out} with the 4 of 6 images predicted before this stop" in message
    assert sorted(sartorius.read_train_csv(out)["id"].unique()) == list(images)[:4]


def test_a_sigterm_part_way_writes_the_images_already_predicted(extras_dir, flow_weights, oracle, monkeypatch,
                                                                tmp_path, capsys):
    answer, calls = ensemble.predict, []

    def stopped(*args, **kwargs):  # the notebook's time-out arrives during the third batch
        calls.append(1)
        if len(calls) == 3:
            raise SystemExit(143)
        return answer(*args, **kwargs)

    monkeypatch.setattr(ensemble, "predict", stopped)
    out = tmp_path / "pseudo.csv"
    with pytest.raises(SystemExit) as excinfo:
        _pseudo(extras_dir, flow_weights, out, "--batch-size", "2")
    assert excinfo.value.code == 143
    assert f"wrote {out} with the 4 of 6 images predicted before this stop" in capsys.readouterr().out
    assert sartorius.read_train_csv(out)["id"].nunique() == 4


def test_mask_weights_are_refused_before_any_work(extras_dir, monkeypatch, tmp_path):
    monkeypatch.setattr(ensemble, "predict", _no_prediction)
    path = tmp_path / "unet.pt"
    checkpoints.save_checkpoint(path, network.build_model(get_variant("unet")), get_variant("unet"))
    with pytest.raises(SystemExit, match=f"kit.pseudo: error: {path} holds weights of unet, a mask variant; "
                                         "kit.pseudo needs a flow variant's weights"):
        _pseudo(extras_dir, path, tmp_path / "out" / "pseudo.csv")
    assert not (tmp_path / "out").exists()


def test_a_pseudo_label_file_without_a_cell_is_refused(extras_dir, tmp_path):
    csv = tmp_path / "empty.csv"
    csv.write_text(pseudo_labels.rows_to_csv([]))
    with pytest.raises(ValueError, match=f"{csv} holds no pseudo-labelled cell .* lower --min-confidence"):
        pseudo_labels.load_extra_samples(extras_dir, csv)


def _escaped(path) -> str:
    return str(path).replace("[", "\\[").replace("]", "\\]")
