"""benchmarks.bench_quality: one scorer for every entry, kit runs through the real command line,
a peer's saved validation masks scored like the kit's."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from benchmarks import bench_quality
from kit import data, rle


@pytest.fixture(scope="module")
def val_truth(shared_dir):
    layout = data.find_competition(shared_dir, need_test=False)
    df = data.read_train_csv(layout.train_csv)
    table = data.image_table(df)
    val_ids = data.split_train_val(table)[1]
    annotations = df.groupby("id")["annotation"].apply(list)
    types = dict(zip(table["id"], table["cell_type"]))
    return {i: annotations[i] for i in val_ids}, {i: types[i] for i in val_ids}


def test_score_instances_reports_overall_per_type_and_the_types_mean(val_truth):
    truth, types = val_truth
    labels = {i: rle.decode_labels(truth[i]) for i in truth}  # the annotations as a valid submission
    scores = bench_quality.score_instances(labels, truth, types)
    per_type = [scores[t] for t in data.CELL_TYPES]
    assert scores["type mean"] == pytest.approx(np.mean(per_type))
    assert 0.9 < scores["val score"] < 1.0  # overlaps resolved: the ceiling of any valid submission
    assert scores["Dice"] == scores["IoU"] == scores["accuracy"] == 1.0  # same union of pixels
    empty = {i: np.zeros_like(labels[i]) for i in labels}
    assert bench_quality.score_instances(empty, truth, types)["val score"] == 0.0
    with pytest.raises(ValueError, match="no prediction for 1 validation image"):
        bench_quality.score_instances({i: labels[i] for i in list(labels)[1:]}, truth, types)


@pytest.mark.slow
def test_trains_a_kit_entry_and_scores_it_beside_a_peers_saved_masks(shared_dir, tmp_path, val_truth, capsys):
    truth, _ = val_truth
    ids = sorted(truth)[:2]
    peer = tmp_path / "cellpose"
    peer.mkdir()
    np.savez_compressed(peer / "val-labels.npz", **{i: rle.decode_labels(truth[i]) for i in ids})
    (peer / "run.json").write_text(json.dumps({"train_images_per_s": 3.0, "wall_s": 60.0,
                                               "weights": str(peer / "cellpose-weights")}))
    args = bench_quality.get_args_parser().parse_args([
        "--data", str(shared_dir), "--out", str(tmp_path), "--budget", "1", "--variants", "unet",
        "--peer", "cellpose", "--max-val-images", "2", "--",
        "--epochs", "1", "--max-images", "4", "--crop", "96x128", "--seed", "1"])
    table = bench_quality.main(args)
    assert "cellpose: already trained" in capsys.readouterr().out
    assert (tmp_path / "unet" / "unet.pt").is_file() and (tmp_path / "unet" / "wall.json").is_file()
    assert (tmp_path / "quality.md").read_text() == table + "\n"
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in table.splitlines() if line.startswith("| ") and not line.startswith("| entry")}
    oracle = bench_quality.score_instances({i: rle.decode_labels(truth[i]) for i in ids},
                                           {i: truth[i] for i in ids}, {i: val_truth[1][i] for i in ids})
    assert float(rows["cellpose"][1]) == pytest.approx(oracle["val score"], abs=5e-5)
    assert rows["cellpose"][9] == "3.00" and rows["cellpose"][10] == "0:01"
    assert 0.0 <= float(rows["unet"][1]) <= 1.0
    assert rows["unet"][11] == f"`{os.path.relpath(tmp_path / 'unet' / 'unet.pt', bench_quality.REPO)}`"
