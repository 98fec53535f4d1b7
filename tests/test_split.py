"""kit.split: the validation split recorded in the weights, and every command tuning and scoring a
run on its own validation images (issue 21: a run trained with --seed 1 is never scored on images it
trained on)."""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch

from kit import infer, train, tune, validate
from kit.data import sartorius
from kit.inference import boundary_fit, pseudo_labelling
from kit.model import checkpoints, network, variants
from kit.split import DEFAULT_SEED, DEFAULT_VAL_FRACTION, Split, of_weights, split_train_val


@pytest.fixture(scope="module")
def images(shared_dir) -> pd.DataFrame:
    return sartorius.image_table(sartorius.read_train_csv(shared_dir / "train.csv"))


@pytest.fixture(scope="module")
def seed_1_run(shared_dir, tmp_path_factory) -> Path:
    """A tiny CPU run of a flow variant trained with --seed 1 (and --val-fraction 0.1, to keep the
    commands below at 12 validation images): its best weights."""
    out = tmp_path_factory.mktemp("seed1")
    with contextlib.redirect_stdout(io.StringIO()):
        train.main(train.get_args_parser().parse_args(
            ["--variant", "hot-flow-unet", "--data", str(shared_dir), "--out", str(out), "--max-images", "2",
             "--device", "cpu", "--seed", "1", "--val-fraction", "0.1", "--crop", "96x128", "--epochs", "1"]))
    return out / "hot-flow-unet.pt"


def _recorded(weights: Path) -> Split:
    return Split.from_dict(torch.load(weights, weights_only=True)["inference"]["split"])


def test_the_checkpoint_records_the_split_it_was_trained_with(seed_1_run, images):
    recorded = _recorded(seed_1_run)
    assert (recorded.seed, recorded.val_fraction) == (1, 0.1)
    assert list(recorded.val_ids) == split_train_val(images, 0.1, seed=1)[1]
    assert len(recorded.val_ids) == 12  # 4 of each type's 40
    default = Split.compute(images)
    assert (default.seed, default.val_fraction) == (DEFAULT_SEED, DEFAULT_VAL_FRACTION)
    assert set(recorded.val_ids) - set(default.val_ids)  # the default split would score training images
    record = recorded.to_dict()
    assert record["val_ids_sha256"] == recorded.sha256 and Split.from_dict(record) == recorded
    with pytest.raises(ValueError, match="do not match their digest"):
        Split.from_dict({**record, "val_ids": record["val_ids"][1:]})


def test_tune_infer_and_validate_use_only_the_runs_own_validation_images(seed_1_run, shared_dir, tmp_path, capsys):
    val_ids = list(_recorded(seed_1_run).val_ids)
    tuned = tmp_path / "tuned.pt"
    tune.main(tune.get_args_parser().parse_args(["--data", str(shared_dir), "--weights", str(seed_1_run),
                                                 "--device", "cpu", "--out", str(tuned)]))
    record = checkpoints.InferenceSettings.of(torch.load(tuned, weights_only=True), tuned)
    assert record.validation["images"] == len(val_ids)
    assert record.validation["image_ids_sha256"] == _recorded(seed_1_run).sha256  # exactly those ids
    assert record.split == _recorded(seed_1_run).to_dict()  # kit.tune keeps the split in the file it writes

    out = tmp_path / "val.csv"
    infer.main(infer.get_args_parser().parse_args(["--data", str(shared_dir), "--weights", str(tuned), "--split",
                                                   "val", "--evaluate", "--device", "cpu", "--out", str(out)]))
    printed = capsys.readouterr().out
    assert f"{len(val_ids)} images (val: seed 1, val-fraction 0.1)" in printed
    assert f"leaderboard score over {len(val_ids)} images" in printed
    assert sorted(pd.read_csv(out, dtype=str)["id"].unique()) == val_ids

    report = validate.main(validate.get_args_parser().parse_args(
        ["--data", str(shared_dir), "--submission", str(out), "--weights", str(tuned), "--overlays", "0"]))
    assert sorted(report.per_image["id"]) == val_ids
    assert "the validation split of" in capsys.readouterr().out


def test_validate_without_weights_scores_the_default_split_and_says_so(seed_1_run, shared_dir, images, tmp_path,
                                                                       capsys):
    default_val = list(Split.compute(images).val_ids)
    submission = tmp_path / "sub.csv"
    submission.write_text("id,predicted\n" + "".join(f"{i},\n" for i in default_val))
    report = validate.main(validate.get_args_parser().parse_args(
        ["--data", str(shared_dir), "--submission", str(submission), "--overlays", "0"]))
    assert sorted(report.per_image["id"]) == default_val
    assert "note: no --weights: scoring the default validation split (seed 0, val-fraction 0.2)" in \
        capsys.readouterr().out
    # The same submission with the seed-1 run's weights: the images they trained on are named.
    validate.main(validate.get_args_parser().parse_args(
        ["--data", str(shared_dir), "--submission", str(submission), "--weights", str(seed_1_run),
         "--ids", *default_val, "--overlays", "0"]))
    trained = sorted(set(default_val) - set(_recorded(seed_1_run).val_ids))
    warning = capsys.readouterr().err
    assert f"warning: --ids: {len(trained)} image(s) lie outside the weights' validation split (seed 1, " \
           "val-fraction 0.1)" in warning
    assert trained[0] in warning


def test_infer_split_train_names_the_images_the_weights_trained_on(seed_1_run, shared_dir, tmp_path, capsys):
    held = set(_recorded(seed_1_run).val_ids)
    inside, outside = sorted(held)[0], next(i for i in sorted(_ids(shared_dir)) if i not in held)
    infer.main(infer.get_args_parser().parse_args(
        ["--data", str(shared_dir), "--weights", str(seed_1_run), "--split", "train", "--ids", inside, outside,
         "--device", "cpu", "--out", str(tmp_path / "train.csv")]))
    warning = capsys.readouterr().err
    assert "warning: --split train --ids: 1 image(s) lie outside the weights' validation split" in warning
    assert outside in warning and inside not in warning
    with pytest.raises(SystemExit, match=r"--ids \['%s'\] are not val images" % outside):
        infer.main(infer.get_args_parser().parse_args(
            ["--data", str(shared_dir), "--weights", str(seed_1_run), "--split", "val", "--ids", outside,
             "--device", "cpu", "--out", str(tmp_path / "x.csv")]))


def _ids(shared_dir: Path) -> list[str]:
    return sorted(sartorius.image_table(sartorius.read_train_csv(shared_dir / "train.csv"))["id"])


def test_resume_with_another_seed_is_refused_naming_the_validation_images(seed_1_run, shared_dir):
    args = ["--variant", "hot-flow-unet", "--data", str(shared_dir), "--out", str(seed_1_run.parent),
            "--max-images", "2", "--device", "cpu", "--crop", "96x128", "--epochs", "2", "--resume"]
    with pytest.raises(SystemExit, match=r"--resume: .*hot-flow-unet-last.pt was trained with the split of seed 1, "
                                         r"val-fraction 0.1; this run asks for seed 0, val-fraction 0.2, which would "
                                         r"train on \d+ of its validation images \(\w+ .*\): pass --seed 1 "
                                         r"--val-fraction 0.1, or --restart"):
        train.main(train.get_args_parser().parse_args(args))


def test_older_weights_get_the_default_split_with_a_note(images, tmp_path, caplog):
    variant = variants.get_variant("hot-flow-unet")
    older = tmp_path / "older.pt"
    checkpoints.save_checkpoint(older, network.build_model(variant), variant)  # no split recorded, as before
    assert checkpoints.InferenceSettings.of(torch.load(older, weights_only=True), older).split is None
    with caplog.at_level(logging.INFO, logger="kit"):
        split = of_weights([(str(older), None)], images)
    assert split.val_ids == Split.compute(images).val_ids and not split.recorded
    assert [r.getMessage() for r in caplog.records] == [
        f"note: {older} records no validation split (written before the kit recorded it): its split is assumed "
        "to be the default (seed 0, val-fraction 0.2)"]


def test_weights_of_different_splits_are_scored_only_where_all_held_out(images, caplog):
    first, second = Split.compute(images, seed=0), Split.compute(images, seed=1)
    with caplog.at_level(logging.INFO, logger="kit"):
        common = of_weights([("a.pt", first.to_dict()), ("b.pt", second.to_dict())], images)
    assert set(common.val_ids) == set(first.val_ids) & set(second.val_ids) and common.seed is None
    assert "the union of their training images is not scored" in caplog.text
    assert of_weights([("a.pt", first.to_dict()), ("c.pt", first.to_dict())], images) == first
    with pytest.raises(ValueError, match="no annotated image is held out by all of them"):
        of_weights([("a.pt", first.to_dict()), ("d.pt", Split(("x",), 5, 0.1).to_dict())], images)


def test_boundary_table_leaves_out_the_weights_validation_split(seed_1_run, images):
    ids = boundary_fit.training_ids(images, [seed_1_run])
    assert set(ids) == set(images["id"]) - set(_recorded(seed_1_run).val_ids)


def test_pseudo_names_the_split_its_labels_keep_unseen(seed_1_run, shared_dir, caplog):
    members = [pseudo_labelling.ensemble.Member(None, variants.get_variant("hot-flow-unet"), seed_1_run,
                                      checkpoints.InferenceSettings(split=_recorded(seed_1_run).to_dict()))]
    with caplog.at_level(logging.INFO, logger="kit"):
        pseudo_labelling.report_teacher_split(members, sartorius.find_competition(shared_dir, need_test=False))
    assert "the weights held out the validation split (seed 1, val-fraction 0.1, 12 images): train on these " \
           "pseudo-labels with the same --seed and --val-fraction" in caplog.text
