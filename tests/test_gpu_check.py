"""benchmarks.gpu_check: the GPU acceptance run's CPU mode, every step through its real command."""
from __future__ import annotations

import pytest

from benchmarks import gpu_check
from kit.variants import PAPER_VARIANTS, RECIPE


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
