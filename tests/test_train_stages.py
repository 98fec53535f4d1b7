"""kit.train's stages on the LIVECell and train_semi_supervised fixtures: pretraining then fine-tuning
in one checkpoint, --resume in either stage, --extra-data beside the annotations and as a new round."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from kit import rle, train
from kit.data import pseudo_labels, sartorius
from kit.inference import tuning
from kit.model import encoding
from kit.model.variants import get_variant
from kit.training import run, stages

pytestmark = pytest.mark.slow

TINY = ["--max-images", "4", "--crop", "64x64", "--device", "cpu"]


def _args(extras_dir, out, *extra):
    return train.get_args_parser().parse_args(
        ["--variant", "hot-flow-unet", "--data", str(extras_dir), "--out", str(out), *TINY, *extra])


def _history(out):
    return torch.load(out / "hot-flow-unet-last.pt", weights_only=True)["history"]


def test_pretraining_then_fine_tuning_fill_one_checkpoint(extras_dir, tmp_path, capsys):
    out = tmp_path / "run"
    train.main(_args(extras_dir, out, "--pretrain", "livecell:shsy5y,a172", "--pretrain-epochs", "2", "--epochs", "1"))
    printed = capsys.readouterr().out
    assert "stage pretrain (new): 3 images of LIVECell (livecell:shsy5y,a172), epochs 1-2" in printed
    assert "stage finetune (from the previous stage's weights): 4 images of the competition's training split, " \
           "epochs 3-3" in printed
    assert "pretrain epoch 1/2 " in printed and "\nepoch 3/3 " in printed
    for name in ("hot-flow-unet.pt", "hot-flow-unet-last.pt"):
        checkpoint = torch.load(out / name, weights_only=True)
        assert [s["name"] for s in checkpoint["stages"]] == ["pretrain", "finetune"]
        assert [(s["first_epoch"], s["epochs"], s["data"]) for s in checkpoint["stages"]] == [
            (1, 2, "livecell:shsy5y,a172"), (3, 1, "competition")]
    assert [(row["epoch"], row["stage"]) for row in _history(out)] == [(1, "pretrain"), (2, "pretrain"), (3, "finetune")]
    header, *rows = (out / "hot-flow-unet-metrics.csv").read_text().splitlines()
    column = header.split(",").index("stage")
    assert [row.split(",")[column] for row in rows] == ["pretrain", "pretrain", "finetune"]
    read = checkpoint["stages"][0]["livecell_read"]  # each file's summary line (kit.data.livecell)
    assert len(read) == 4 and read[0].startswith("livecell_shsy5y_train.json: ") and "skipped 0" in read[0]
    tuning.save_tuned(out / "hot-flow-unet.pt", out / "tuned.pt", {})  # kit.tune rewrites the weights: stages stay
    assert torch.load(out / "tuned.pt", weights_only=True)["stages"] == checkpoint["stages"]


def test_resume_continues_pretraining_as_an_unbroken_run_then_fine_tunes(extras_dir, tmp_path, capsys):
    options = ("--pretrain", "livecell", "--pretrain-epochs", "2", "--epochs", "1", "--pretrain-max-images", "3")
    unbroken = tmp_path / "unbroken"
    train.main(_args(extras_dir, unbroken, *options))
    broken = tmp_path / "broken"
    config = train.run_config(_args(extras_dir, broken, *options))
    first = stages.next_stage(config.stages, config.variant.epochs, config.time_limit, None)
    # the first session stops after one pretraining epoch (a time limit of 0:00 still runs one)
    run.train_stage(dataclasses.replace(config, stage=first, time_limit=0))
    assert [row["stage"] for row in _history(broken)] == ["pretrain"]
    capsys.readouterr()
    train.main(_args(extras_dir, broken, *options, "--resume"))
    assert "stage pretrain (continued): 3 images of LIVECell (livecell), epochs 1-2" in capsys.readouterr().out
    resumed, whole = _history(broken), _history(unbroken)
    assert [row["stage"] for row in resumed] == ["pretrain", "pretrain", "finetune"]
    np.testing.assert_allclose([row["train_loss"] for row in resumed], [row["train_loss"] for row in whole], rtol=1e-5)
    train.main(_args(extras_dir, broken, "--resume", "--epochs", "2"))  # fine-tuning goes on: --epochs raised
    assert "stage finetune (continued)" in capsys.readouterr().out
    assert [row["stage"] for row in _history(broken)] == ["pretrain", "pretrain", "finetune", "finetune"]
    train.main(_args(extras_dir, broken, "--resume", "--epochs", "2"))
    assert "already holds 4 epochs; raise --epochs to go on" in capsys.readouterr().out


def _pseudo_csv(extras_dir, shared_dir, path):
    """Pseudo-labels that are the true cells of the fixture's unannotated copies."""
    df = sartorius.read_train_csv(sartorius.find_competition(shared_dir).train_csv)
    rows = []
    for image_id, (_, cell_type) in pseudo_labels.semi_supervised_images(extras_dir).items():
        labels = rle.decode_labels(df.loc[df.id == image_id.split("_", 1)[1], "annotation"].tolist())
        rows += pseudo_labels.pseudo_rows(image_id, cell_type, labels, np.ones(labels.max()))
    path.write_text(pseudo_labels.rows_to_csv(rows))
    return path


def test_extra_data_trains_beside_the_annotations_and_new_labels_start_a_round(extras_dir, shared_dir, tmp_path,
                                                                               capsys):
    labels = _pseudo_csv(extras_dir, shared_dir, tmp_path / "pseudo.csv")
    out = tmp_path / "run"
    train.main(_args(extras_dir, out, "--epochs", "1", "--extra-data", str(labels)))
    printed = capsys.readouterr().out
    assert "stage finetune (new): 10 images of the competition's training split + pseudo.csv" in printed
    assert "hot-flow-unet: 10 train / 1 val images" in printed  # 4 of the split, the 6 pseudo-labelled
    again = _pseudo_csv(extras_dir, shared_dir, tmp_path / "round-2.csv")
    train.main(_args(extras_dir, out, "--resume", "--epochs", "1", "--extra-data", str(again)))
    assert "stage pseudo-1 (from the previous stage's weights): 10 images" in capsys.readouterr().out
    checkpoint = torch.load(out / "hot-flow-unet-last.pt", weights_only=True)
    assert [(s["name"], s["extra_data"]) for s in checkpoint["stages"]] == [
        ("finetune", ["pseudo.csv"]), ("pseudo-1", ["round-2.csv"])]
    with pytest.raises(SystemExit, match="stage pseudo-1 trains on \\['round-2.csv'\\] too; pass them again"):
        train.main(_args(extras_dir, out, "--resume", "--epochs", "2"))


def test_livecell_lines_get_their_competition_plane_or_none():
    variant = get_variant("hot-flow-unet")
    images = torch.full((3, 8, 8), 7, dtype=torch.uint8)
    planes = encoding.model_input(images, ["shsy5y", "a172", "cort"], variant)[:, 1:, 0, 0]
    np.testing.assert_array_equal(planes.numpy(), [[0, 0, 1], [0, 0, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="unknown cell type\\(s\\) \\['hela'\\]"):
        encoding.model_input(images, ["hela", "a172", "cort"], variant)


def test_bad_stage_options_are_refused(extras_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _args(extras_dir, tmp_path, "--pretrain", "livecell:hela")
    assert "LIVECell line(s) ['hela'] unknown" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--pretrain-epochs must be >= 1"):
        train.main(_args(extras_dir, tmp_path / "a", "--pretrain", "livecell", "--pretrain-epochs", "0"))
    with pytest.raises(SystemExit, match=f"no LIVECell in {shared_root(extras_dir)}"):
        train.main(_args(shared_root(extras_dir), tmp_path / "b", "--pretrain", "livecell"))


def shared_root(extras_dir):
    """The shared slice itself (linked from the fixture folder): a competition folder without LIVECell."""
    return (extras_dir / "train.csv").resolve().parent


def test_extra_data_without_a_cell_or_with_annotated_ids_is_refused_before_training(extras_dir, shared_dir, tmp_path,
                                                                                     monkeypatch):
    from kit.training import loop

    def no_training(*args, **kwargs):
        raise AssertionError("a stage started on pseudo-labels that cannot be trained on")

    monkeypatch.setattr(loop, "train_epoch", no_training)
    empty = tmp_path / "empty.csv"
    empty.write_text(pseudo_labels.rows_to_csv([]))
    with pytest.raises(SystemExit, match=f"kit.train: error: {empty} holds no pseudo-labelled cell"):
        train.main(_args(extras_dir, tmp_path / "a", "--epochs", "1", "--extra-data", str(empty)))
    labels = _pseudo_csv(extras_dir, shared_dir, tmp_path / "pseudo.csv")
    frame = sartorius.read_train_csv(labels)
    annotated = sorted(sartorius.read_train_csv(sartorius.find_competition(shared_dir).train_csv)["id"])[0]
    frame.loc[0, "id"] = annotated
    frame.to_csv(tmp_path / "mixed.csv", index=False)
    with pytest.raises(SystemExit, match=f"line 2: image {annotated} is an annotated training image \\(in train.csv\\), "
                                         "not a pseudo-label of train_semi_supervised/"):
        train.main(_args(extras_dir, tmp_path / "b", "--epochs", "1", "--extra-data", str(tmp_path / "mixed.csv")))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
