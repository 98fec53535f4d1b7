"""python -m kit.validate end to end on the shared competition slice."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from kit import competition, metrics, rle
from kit.inference.validation import PRED_COLOUR, TRUTH_COLOUR
from kit.submission import write_submission
from kit.validate import get_args_parser, main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def train(shared_dir) -> pd.DataFrame:
    return pd.read_csv(shared_dir / "train.csv", dtype=str, na_filter=False)


@pytest.fixture(scope="module")
def truth_labels(train) -> dict[str, np.ndarray]:
    return {i: rle.decode_labels(g["annotation"].tolist()) for i, g in train.groupby("id")}


def disjoint_ids(train, truth_labels) -> list[str]:
    """Images whose annotations do not overlap: their label image is exactly the truth.

    (Most training images have overlapping annotations, which no valid submission can reproduce.)
    """
    return [image_id for image_id, rows in train.groupby("id")
            if rle.decode_many(rows["annotation"].tolist()).areas().sum() == np.count_nonzero(truth_labels[image_id])]


def run(data: Path, submission: Path, overlays: int, overlay_dir: Path | None = None,
        ids: list[str] | None = None) -> metrics.ScoreReport:
    argv = ["--data", str(data), "--submission", str(submission), "--overlays", str(overlays)]
    if ids is not None:
        argv += ["--ids", *ids]
    if overlay_dir is not None:
        argv += ["--overlay-dir", str(overlay_dir)]
    return main(get_args_parser().parse_args(argv))


def test_submission_from_truth_scores_one(shared_dir, train, truth_labels, tmp_path):
    ids = disjoint_ids(train, truth_labels)
    assert len(ids) == 3  # three cort images of the shared slice
    path = write_submission({i: truth_labels[i] for i in ids}, tmp_path / "submission.csv")
    # the module run as a user runs it; --data one level above the layout: it is found below
    result = subprocess.run([sys.executable, "-m", "kit.validate", "--data", str(shared_dir.parent),
                             "--submission", str(path), "--overlays", "1", "--ids", *ids],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "score (mean over images of the mean precision over IoU thresholds): 1.000000" in result.stdout
    assert f"scored 3 image(s), --ids of {shared_dir / 'train.csv'} (cort 3): {' '.join(ids)}" \
        in result.stdout
    overlays = sorted((tmp_path / "overlays").glob("*.png"))
    assert len(overlays) == 1 and overlays[0].name.startswith("01_1.000_")


def test_perturbed_submission(shared_dir, train, truth_labels, tmp_path, capsys):
    ids = sorted(train.groupby("cell_type")["id"].min())  # one image of each type
    rng = np.random.default_rng(1)
    predictions = {}
    for image_id in ids:
        labels = np.roll(truth_labels[image_id], tuple(rng.integers(-4, 5, size=2)), axis=(0, 1))
        labels[np.isin(labels, rng.choice(labels.max(), size=labels.max() // 5) + 1)] = 0
        predictions[image_id] = labels
    path = write_submission(predictions, tmp_path / "sub" / "submission.csv")
    report = run(shared_dir, path, overlays=2, ids=ids)
    # the label co-occurrence path scores the same label images independently of the CLI's run sweep
    truth = [train.loc[train["id"] == i, "annotation"].tolist() for i in ids]
    expected = metrics.score_labels(truth, [predictions[i] for i in ids])
    assert report.per_image["score"].tolist() == pytest.approx(expected.tolist(), abs=1e-12)
    assert 0.05 < report.score < 0.95
    out = capsys.readouterr().out
    assert f"{report.score:.6f}" in out and "per cell type" in out and "per IoU threshold" in out
    scores = pd.read_csv(tmp_path / "sub" / "overlays" / "scores.csv", dtype={"id": str})
    assert scores["id"].tolist() == ids
    worst = report.per_image.sort_values("score").head(2)
    names = sorted(p.name for p in (tmp_path / "sub" / "overlays").glob("*.png"))
    assert names == [f"{rank:02d}_{s:.3f}_{i}.png" for rank, (i, s) in
                     enumerate(zip(worst["id"], worst["score"]), start=1)]
    overlay = cv2.imread(str(tmp_path / "sub" / "overlays" / names[0]))
    assert overlay.shape[1:] == (704, 3) and overlay.shape[0] > 520
    for colour in (TRUTH_COLOUR, PRED_COLOUR):
        assert np.all(overlay == colour, axis=2).sum() > 100  # both sets of outlines are drawn


def test_unscored_ids_are_listed(shared_dir, train, truth_labels, tmp_path, capsys):
    image_id = train["id"].iloc[0]
    empty = np.zeros(competition.IMAGE_SHAPE, np.int32)
    path = write_submission({image_id: truth_labels[image_id], "notatrainid": empty}, tmp_path / "s.csv")
    report = run(shared_dir, path, overlays=0, overlay_dir=tmp_path / "ov", ids=[image_id])
    assert report.per_image["id"].tolist() == [image_id]
    assert "NOT scored (1 id(s) of the submission outside the scored images): notatrainid" in capsys.readouterr().out
    assert not list((tmp_path / "ov").glob("*.png"))


def test_a_blank_prediction_row_is_an_image_without_cells_in_the_overlay(shared_dir, train, tmp_path):
    image_id = train["id"].iloc[0]
    path = tmp_path / "s.csv"
    path.write_text(f"id,predicted\n{image_id}, \n")
    report = run(shared_dir, path, overlays=1, ids=[image_id])
    assert report.per_image["n_pred"].tolist() == [0] and report.score == 0.0
    assert len(list((tmp_path / "overlays").glob("01_0.000_*.png"))) == 1


def test_test_set_submission_is_an_error(shared_dir):
    with pytest.raises(SystemExit, match="shares no image id with the validation split of .*train.csv.*"
                                         "Test annotations are hidden"):
        run(shared_dir, shared_dir / "sample_submission.csv", overlays=0)


def test_overlapping_submission_is_an_error(shared_dir, train, tmp_path):
    image_id = train["id"].iloc[0]
    first = train.loc[train["id"] == image_id, "annotation"].iloc[0]
    path = tmp_path / "s.csv"
    path.write_text(f"id,predicted\n{image_id},{first}\n{image_id},{first}\n")
    with pytest.raises(SystemExit, match=f"line 3 \\(image {image_id}\\): its mask overlaps"):
        run(shared_dir, path, overlays=0)


def test_missing_data_is_an_error(tmp_path):
    (tmp_path / "s.csv").write_text("id,predicted\na,\n")
    with pytest.raises(SystemExit, match="no competition data below"):
        run(tmp_path, tmp_path / "s.csv", overlays=0)
