"""benchmarks.gpu_check: the GPU acceptance run's CPU mode, every step through its real command."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from benchmarks import gpu_check
from kit.model.variants import PAPER_VARIANTS, RECIPE


def test_the_gpu_mode_plans_the_issue_s_steps(tmp_path):
    steps = gpu_check.steps(tmp_path / "data", tmp_path / "out", cpu=False, epochs=50)
    titles = [title for _, title, _ in steps]
    assert titles[:4] == ["Trainer vs naive loop", "Trainer vs naive loop, --compile", "The paper's variants",
                          "The kit's recipe"]
    commands = {title: command for _, title, command in steps}
    assert "--compile" in commands["Trainer vs naive loop, --compile"]
    assert commands["The paper's variants"][-5:] == ["--", "--epochs", "50", "--device", "cuda"]
    assert all(f"Full-image validation score: {name}" in titles for name in (*PAPER_VARIANTS, RECIPE))
    assert titles[-1] == "Kernels in the sandbox"


@pytest.mark.slow
def test_the_cpu_mode_runs_every_step_and_writes_one_report(shared_dir, tmp_path):
    args = gpu_check.get_args_parser().parse_args(
        ["--out", str(tmp_path), "--data", str(shared_dir), "--cpu", "--skip", "kernels",
         "--variants", "hot-flow-unet", RECIPE])
    status = gpu_check.main(args)
    report = (tmp_path / "report.md").read_text()
    assert status == 0, report
    assert report.count("exit 0") == 5  # speed, the paper's variant, the recipe, their two scores
    assert "leaderboard score over 2 images" in report and "naive" in report
    assert (tmp_path / "variants" / f"{RECIPE}.pt").is_file()


def test_the_pretrain_flag_adds_the_pretrain_then_fine_tune_path(tmp_path):
    plain = gpu_check.get_args_parser().parse_args(["--out", str(tmp_path)])
    assert not plain.pretrain and "pretrain" in gpu_check.STEP_KEYS
    steps = gpu_check.pretrain_steps(tmp_path / "data", tmp_path / "out", cpu=False, epochs=10)
    assert [key for key, _, _ in steps] == ["pretrain"] * 3
    copy, training, score = (command for _, _, command in steps)
    assert copy[2] == "benchmarks.fixture_data" and copy[-1] == "--replace"
    assert training[training.index("--pretrain"):training.index("--device")] == [
        "--pretrain", "livecell", "--pretrain-epochs", "10", "--epochs", "10"]
    assert training[training.index("--data") + 1] == str(tmp_path / "out" / "pretrain-data")
    assert score[2] == "kit.infer" and score[score.index("--data") + 1] == str(tmp_path / "data")


@pytest.mark.slow
def test_the_cpu_mode_runs_the_pretrain_path(shared_dir, tmp_path):
    report = _cpu_mode_alone(shared_dir, tmp_path, "--pretrain")
    assert report.count("exit 0") == 3 and "LIVECell-format copy of the 96 training-split images" in report
    assert "stage pretrain (new)" in report and "leaderboard score over 2 images" in report
    stages = torch.load(tmp_path / "pretrain" / f"{gpu_check.PRETRAINED}-last.pt", weights_only=True)["stages"]
    assert [s["name"] for s in stages] == ["pretrain", "finetune"]


@pytest.mark.slow
def test_the_cpu_mode_runs_the_learning_curve(shared_dir, tmp_path):
    report = _cpu_mode_alone(shared_dir, tmp_path, "--curve")
    assert report.count("exit 0") == 2 and "kept " in report
    table = pd.read_csv(tmp_path / "curve" / "learning-curve.csv")
    assert table["steps"].tolist() == [1, 2] and (table["images"] == 3).all()
    assert table["image_equivalents"].tolist() == pytest.approx([2 * 96 * 128 / (520 * 704), 4 * 96 * 128 / (520 * 704)], abs=1e-4)  # 4 decimals in the CSV
    assert ((0 <= table["tuned_type_mean"]) & (table["tuned_type_mean"] <= 1)).all()
    assert (table["tuned_type_mean"] >= table["untuned_type_mean"] - 1e-9).all()  # the defaults are a grid point
    assert (tmp_path / "curve" / "learning-curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "Projection (an extrapolation, not a measurement)" in (tmp_path / "curve" / "learning-curve.md").read_text()


def _cpu_mode_alone(shared_dir, tmp_path, flag: str) -> str:
    """The CPU mode with only ``flag``'s optional steps (the others skipped); its report, once it passed."""
    args = gpu_check.get_args_parser().parse_args(
        ["--out", str(tmp_path), "--data", str(shared_dir), "--cpu", flag, "--skip", "speed", "variants", "scores",
         "kernels"])
    status = gpu_check.main(args)
    report = (tmp_path / "report.md").read_text()
    assert status == 0, report
    return report
