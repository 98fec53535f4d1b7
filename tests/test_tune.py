"""kit.tune: per-type extraction settings fitted by the leaderboard metric, stored in the checkpoint,
and used by kit.infer's post-processing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kit import flows, postprocess, rle, tune
from kit.inference import tuning
from kit.model import checkpoints, network
from kit.model.variants import VARIANTS


def _cells(shift: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[:80, :120]
    labels = np.zeros((80, 120), np.int32)
    labels[(yy - 30) ** 2 + (xx - 30 - shift) ** 2 < 14 ** 2] = 1
    labels[(yy - 45) ** 2 + (xx - 80 + shift) ** 2 < 18 ** 2] = 2
    return labels


def _outputs(labels: np.ndarray, inside: float) -> tuple[np.ndarray, np.ndarray]:
    """Perfect flows, and a cell probability of ``inside`` in the cells (0 elsewhere)."""
    return np.where(labels > 0, inside, 0.0).astype(np.float32), flows.masks_to_flows(labels)


def test_the_fit_finds_the_threshold_a_timid_network_needs_and_keeps_defaults_elsewhere():
    ids = {"c1": ("cort", _cells(0), 0.45), "c2": ("cort", _cells(3), 0.45), "a1": ("astro", _cells(1), 0.9)}
    outputs = {i: _outputs(labels, p) for i, (_, labels, p) in ids.items()}
    truth = {i: [r for r in rle.encode_labels(labels) if r] for i, (_, labels, _) in ids.items()}
    types = {i: t for i, (t, _, _) in ids.items()}
    fit = tuning.fit_settings(outputs, truth, types)
    tuned, report = fit.settings, fit.report
    assert fit.scores == {"astro": 1.0, "cort": 1.0}  # each type's score at its tuned settings
    record = tuning.validation_record(fit, list(types), "val", tta=False)
    assert record["type_mean"] == 1.0 and record["images"] == 3
    assert record["image_ids_sha256"] == tuning.validation_record(fit, ["c2", "a1", "c1"], "val", False)["image_ids_sha256"]
    assert tuned["cell_prob"]["cort"] < 0.45  # at the default 0.5 the cort cells vanish
    assert tuned["cell_prob"]["astro"] == 0.5  # every threshold scores 1.0 there: a tie keeps the default
    assert set(tuned) == set(postprocess.TUNABLE)
    cort_line = next(line for line in report.splitlines() if line.startswith("cort"))
    default_score, tuned_score = map(float, cort_line.split()[2:4])
    assert default_score == 0.0 and tuned_score == 1.0
    config = postprocess.PostprocessConfig().with_tuned(tuned)
    prob, flow = outputs["c1"]
    found = postprocess.output_to_labels(prob, flow, np.zeros((80, 120), np.uint8), "cort", config)
    assert found.max() == 2
    assert postprocess.output_to_labels(prob, flow, np.zeros((80, 120), np.uint8), "cort").max() == 0


def test_tuned_settings_are_written_into_a_copy_of_the_checkpoint(tmp_path):
    variant = VARIANTS["hot-flow-unet"]
    torch.manual_seed(0)
    model = network.build_model(variant)
    weights = tmp_path / "w.pt"
    checkpoints.save_checkpoint(weights, model, variant, inference=checkpoints.InferenceSettings(scales={"cort": 1.5}))
    tuned = {"cell_prob": {"cort": 0.3}, "flow_threshold": {"cort": 0.6}, "min_size": {"cort": 38}}
    validation = {"type_mean": 0.3, "images": 2}
    tuning.save_tuned(weights, tmp_path / "tuned.pt", tuned, validation)
    _, _, checkpoint = checkpoints.load_checkpoint(tmp_path / "tuned.pt")
    assert checkpoints.InferenceSettings.of(checkpoint, "tuned.pt") == checkpoints.InferenceSettings(
        scales={"cort": 1.5}, postprocess=tuned, validation=validation)
    original = checkpoints.read_checkpoint(weights)
    assert not checkpoints.InferenceSettings.of(original, weights).postprocess
    assert all(torch.equal(checkpoint["model"][k], original["model"][k]) for k in original["model"])


def test_unknown_tuned_settings_are_refused():
    with pytest.raises(ValueError, match="unknown tuned setting 'closing'"):
        postprocess.PostprocessConfig().with_tuned({"closing": {"cort": 1}})


def test_an_unwritable_out_is_one_line_before_any_prediction(unwritable_dir, tmp_path):
    args = tune.get_args_parser().parse_args(["--weights", str(tmp_path / "never-read.pt"), "--out",
                                              str(unwritable_dir / "tuned.pt"), "--device", "cpu"])
    with pytest.raises(SystemExit) as exit_:
        tune.main(args)
    assert str(exit_.value.code) == (f"kit.tune: error: cannot write to {unwritable_dir} (Permission denied); pass a "
                                     "folder you can write to with --out, or fix its permissions")


def test_the_command_turns_sigterm_into_a_clean_exit():
    from conftest import sigterm_handler_of

    assert sigterm_handler_of("kit.tune") == "exit_on_sigterm.<locals>.stop"
