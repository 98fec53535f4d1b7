"""kit.infer end to end on the shared data, flip TTA, and the errors for bad inputs."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kit import infer, submission
from kit.data import sartorius
from kit.inference import ensemble as kit_ensemble
from kit.inference import tuning, type_classifier
from kit.model import checkpoints, hardware, network, variants

TEST_IDS = ["7ae19de7bc2a", "d48ec7815252", "d8bfd1dafdc4"]


def _checkpoint(path: Path, name: str, head_bias: float | None = None, nan: bool = False) -> Path:
    """An untrained network of variant ``name`` saved through kit.model; ``head_bias`` with zero
    head weights makes every output logit equal it (-30: a model that finds nothing)."""
    torch.manual_seed(0)
    variant = variants.get_variant(name)
    model = network.build_model(variant)
    with torch.no_grad():
        if head_bias is not None:
            model.head.weight.zero_()
            model.head.bias.fill_(head_bias)
        if nan:
            model.head.bias.fill_(float("nan"))
    checkpoints.save_checkpoint(path, model, variant)
    return path


def _run(*argv: str) -> Path:
    return infer.main(infer.get_args_parser().parse_args([str(a) for a in argv]))


@pytest.fixture(scope="module")
def empty_unet(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("weights") / "unet.pt", "unet", head_bias=-30.0)


def test_a_model_that_finds_nothing_gives_id_rows_for_the_three_test_images(shared_dir, empty_unet, tmp_path):
    out = _run("--data", shared_dir, "--weights", empty_unet, "--out", tmp_path / "sub" / "submission.csv",
               "--batch-size", "2")
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["id", "predicted"]
    assert frame["id"].tolist() == TEST_IDS and (frame["predicted"] == "").all()
    submission.validate(out, TEST_IDS)
    sample = pd.read_csv(shared_dir / "sample_submission.csv", dtype=str)
    assert sorted(sample["id"]) == TEST_IDS


def test_two_flow_checkpoints_on_an_annotated_image_with_evaluate(shared_dir, tmp_path, capsys):
    weights = _checkpoint(tmp_path / "flow.pt", "hot-flow-unet")
    out = _run("--data", shared_dir, "--weights", weights, weights, "--out", tmp_path / "val.csv",
               "--split", "train", "--ids", "053d61766edb", "--evaluate")
    printed = capsys.readouterr().out
    assert "leaderboard score over 1 images: 0.0000" in printed and "cort" in printed
    submission.validate(out, ["053d61766edb"])


def _tuned(path: Path, head_bias: float, type_mean: float, image_ids=("a", "b")) -> Path:
    """A flow checkpoint as kit.tune leaves it: tuned settings and its validation score."""
    _checkpoint(path, "hot-flow-unet", head_bias=head_bias)
    fit = tuning.Fit({"cell_prob": {"cort": 0.4}}, "", {"cort": type_mean})
    tuning.save_tuned(path, path, fit.settings, tuning.validation_record(fit, list(image_ids), "val", tta=False))
    return path


def test_select_best_uses_only_the_weights_with_the_best_validation_score(shared_dir, tmp_path, capsys):
    worse, better = _tuned(tmp_path / "worse.pt", 0.0, 0.21), _tuned(tmp_path / "better.pt", -30.0, 0.34)
    image = ["--data", shared_dir, "--split", "train", "--ids", "053d61766edb"]
    out = _run(*image, "--weights", worse, better, "--select-best", "--out", tmp_path / "best.csv")
    printed = capsys.readouterr().out
    assert f"{worse}: validation type mean 0.2100 over 2 val images\n" in printed
    assert f"{better}: validation type mean 0.3400 over 2 val images  <- used" in printed
    assert "1 weights file(s) of target 'flow'" in printed
    alone = _run(*image, "--weights", better, "--out", tmp_path / "alone.csv")
    assert out.read_text() == alone.read_text()


def test_select_best_refuses_weights_it_cannot_compare(shared_dir, tmp_path):
    untuned = _checkpoint(tmp_path / "untuned.pt", "hot-flow-unet")
    tuned = _tuned(tmp_path / "tuned.pt", 0.0, 0.2)
    other_images = _tuned(tmp_path / "other.pt", 0.0, 0.3, image_ids=("c",))
    image = ["--data", shared_dir, "--split", "train", "--ids", "053d61766edb", "--select-best"]
    with pytest.raises(SystemExit, match=f"{untuned} carries no validation score; run `python -m kit.tune"):
        _run(*image, "--weights", tuned, untuned, "--out", tmp_path / "x.csv")
    with pytest.raises(SystemExit, match="were tuned on different images"):
        _run(*image, "--weights", tuned, other_images, "--out", tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_predict_tta_undoes_flips_including_flow_signs():
    """A network computing image gradients is flip-equivariant up to the sign of the flipped axis'
    component, so flip TTA must reproduce the plain prediction exactly when un-flipping negates it."""

    class GradientNet(nn.Module):
        def forward(self, x):
            image = x[:, :1]
            padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
            dy = padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1]
            dx = padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2]
            return torch.cat([dy, dx, image * 3 - 1], dim=1)

    variant = variants.get_variant("hot-flow-unet")
    ensemble = [kit_ensemble.Member(GradientNet(), variant, Path("gradient.pt"))]
    images = np.random.default_rng(0).integers(0, 256, size=(2, 12, 16)).astype(np.uint8)
    plain_prob, plain_flow = kit_ensemble.predict(ensemble, images, ["cort", "astro"], torch.device("cpu"))
    tta_prob, tta_flow = kit_ensemble.predict(ensemble, images, ["cort", "astro"], torch.device("cpu"), tta=True)
    np.testing.assert_allclose(tta_flow, plain_flow, atol=1e-6)
    assert np.abs(plain_flow).max() > 0.1
    flat = images.reshape(len(images), -1).astype(np.float64)
    standardised = (images - flat.mean(1)[:, None, None]) / flat.std(1, ddof=1)[:, None, None]
    expected_prob = 1 / (1 + np.exp(-(standardised * 3 - 1)))
    np.testing.assert_allclose(plain_prob, expected_prob, atol=1e-6)
    np.testing.assert_allclose(tta_prob, expected_prob, atol=1e-6)


def test_predict_averages_the_ensemble():
    class Constant(nn.Module):
        def __init__(self, logit):
            super().__init__()
            self.logit = logit

        def forward(self, x):
            return torch.full_like(x[:, :1], self.logit)

    variant = variants.get_variant("unet")
    ensemble = [kit_ensemble.Member(Constant(0.0), variant, Path("a.pt")),
                kit_ensemble.Member(Constant(2.0), variant, Path("b.pt"))]
    images = np.zeros((3, 4, 5), np.uint8)
    prob, flow = kit_ensemble.predict(ensemble, images, ["cort"] * 3, torch.device("cpu"), tta=True)
    assert flow is None and prob.shape == (3, 4, 5)
    np.testing.assert_allclose(prob, (0.5 + 1 / (1 + np.exp(-2.0))) / 2, atol=1e-6)


def test_cpu_prediction_opens_no_autocast_that_older_torch_refuses(monkeypatch):
    """fp32 prediction must not enter ``torch.autocast("cpu", dtype=float32, enabled=False)``: torch
    2.1.2 raises "AutocastCPU only support Bfloat16" for it, disabled or not. The stand-in raises as
    that version does, so this holds on any installed torch."""

    class OldTorchAutocast(torch.autocast):
        def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
            if device_type == "cpu" and dtype not in (None, torch.bfloat16):
                raise RuntimeError("Currently, AutocastCPU only support Bfloat16 as the autocast_cpu_dtype")
            super().__init__(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

    class Constant(nn.Module):
        def forward(self, x):
            assert not torch.is_autocast_enabled("cpu")
            return torch.full_like(x[:, :1], 1.0)

    monkeypatch.setattr(torch, "autocast", OldTorchAutocast)
    monkeypatch.setattr(hardware, "_this_cpu_has_native_bf16", lambda: False)  # a CPU that predicts in fp32
    images = np.zeros((2, 4, 5), np.uint8)
    member = kit_ensemble.Member(Constant(), variants.get_variant("unet"), Path("a.pt"))
    prob, _ = kit_ensemble.predict([member], images, ["cort"] * 2, torch.device("cpu"), tta=True)
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-1.0)), atol=1e-6)


def test_nan_output_names_the_image_and_the_weights(shared_dir, tmp_path):
    weights = _checkpoint(tmp_path / "broken.pt", "unet", nan=True)
    with pytest.raises(SystemExit, match=r"broken\.pt.*NaN.*d48ec7815252"):
        _run("--data", shared_dir, "--weights", weights, "--out", tmp_path / "s.csv", "--ids", "d48ec7815252")
    assert not (tmp_path / "s.csv").exists()


def test_bad_weights_files(shared_dir, empty_unet, tmp_path):
    flow = _checkpoint(tmp_path / "flow.pt", "hot-flow-unet")
    with pytest.raises(SystemExit, match="different target types.*unet.pt.*flow.pt"):
        _run("--data", shared_dir, "--weights", empty_unet, flow, "--out", tmp_path / "s.csv")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(SystemExit, match="corrupt.pt"):
        _run("--data", shared_dir, "--weights", corrupt, "--out", tmp_path / "s.csv")
    mismatched = tmp_path / "mismatched.pt"  # a unet's weights under the hot-unet variant's name
    unet = network.build_model(variants.get_variant("unet"))
    checkpoints.save_checkpoint(mismatched, unet, variants.get_variant("hot-unet"))
    with pytest.raises(SystemExit, match="mismatched.pt.*hot-unet"):
        _run("--data", shared_dir, "--weights", mismatched, "--out", tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()


def _layout_with_test_folder(root: Path, shared_dir: Path) -> Path:
    """A competition folder linking the shared train data, with its own (empty) test folder."""
    root.mkdir()
    (root / "train.csv").symlink_to(shared_dir / "train.csv")
    (root / "train").symlink_to(shared_dir / "train", target_is_directory=True)
    (root / "test").mkdir()
    return root


def test_missing_test_folder_and_wrong_image_size(shared_dir, empty_unet, tmp_path):
    root = _layout_with_test_folder(tmp_path / "comp", shared_dir)
    (root / "test").rmdir()
    with pytest.raises(SystemExit, match="test"):
        _run("--data", root, "--weights", empty_unet, "--out", tmp_path / "s.csv")
    (root / "test").mkdir()
    cv2.imwrite(str(root / "test" / "small.png"), np.zeros((100, 120), np.uint8))
    with pytest.raises(SystemExit, match=r"small\.png.*520x704"):
        _run("--data", root, "--weights", empty_unet, "--out", tmp_path / "s.csv")


def test_argument_errors(shared_dir, empty_unet, tmp_path):
    with pytest.raises(SystemExit, match="--evaluate needs annotated images"):
        _run("--data", shared_dir, "--weights", empty_unet, "--out", tmp_path / "s.csv", "--evaluate")
    with pytest.raises(SystemExit, match="not test images"):
        _run("--data", shared_dir, "--weights", empty_unet, "--out", tmp_path / "s.csv", "--ids", "nope")


@pytest.fixture(scope="module")
def saved_classifier(shared_dir, tmp_path_factory) -> Path:
    """The cell-type classifier fitted on the shared images, as the training kernel saves it."""
    return type_classifier.fit_and_save(shared_dir, tmp_path_factory.mktemp("types") / "types.npz")


def test_a_saved_cell_type_classifier_spares_the_training_images(shared_dir, empty_unet, saved_classifier,
                                                                  tmp_path, capsys):
    root = tmp_path / "comp"
    root.mkdir()
    (root / "train.csv").symlink_to(shared_dir / "train.csv")
    (root / "train").mkdir()  # no training image: only a saved classifier can name the test images' types
    (root / "test").symlink_to(shared_dir / "test", target_is_directory=True)
    with pytest.raises(SystemExit, match=r"cannot read image .*train"):
        _run("--data", root, "--weights", empty_unet, "--out", tmp_path / "refit.csv")
    capsys.readouterr()
    out = _run("--data", root, "--weights", empty_unet, "--out", tmp_path / "s.csv",
               "--cell-type-model", saved_classifier)
    printed = capsys.readouterr().out
    assert f"cell types from the classifier in {saved_classifier}" in printed and "fitting one" not in printed
    layout = sartorius.find_competition(shared_dir)
    test_paths = sartorius.test_image_paths(layout)
    refitted = type_classifier.predict_cell_types(layout, sartorius.read_train_csv(layout.train_csv),
                                                       [test_paths[i] for i in TEST_IDS])
    for image_id, cell_type in zip(TEST_IDS, refitted):  # the same types as a classifier refitted at start-up
        assert f"  {image_id}: predicted cell type {cell_type}\n" in printed
    submission.validate(out, TEST_IDS)


def test_the_classifier_beside_the_first_weights_file_is_the_default(shared_dir, saved_classifier, tmp_path, capsys):
    weights = _checkpoint(tmp_path / "run" / "hot-unet.pt", "hot-unet", head_bias=-30.0)
    beside = shutil.copy(saved_classifier, weights.parent / type_classifier.FILE_NAME)
    _run("--data", shared_dir, "--weights", weights, "--out", tmp_path / "s.csv")
    printed = capsys.readouterr().out
    assert f"cell types from the classifier in {beside}" in printed and "fitting one" not in printed
    Path(beside).unlink()
    _run("--data", shared_dir, "--weights", weights, "--out", tmp_path / "s.csv")
    assert "no cell-type classifier file: fitting one on the training images" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"kit\.infer: error: cell-type classifier .*absent\.npz does not exist"):
        _run("--data", shared_dir, "--weights", weights, "--out", tmp_path / "s.csv",
             "--cell-type-model", tmp_path / "absent.npz")
