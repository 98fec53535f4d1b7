"""benchmarks.bench_variants: trains variants through the real command line and tabulates their metrics."""
from __future__ import annotations

import pandas as pd
import pytest

from benchmarks import bench_variants

TINY = ["--epochs", "2", "--max-images", "4", "--crop", "96x128", "--device", "cpu", "--seed", "1"]


def _args(*argv: str):
    return bench_variants.get_args_parser().parse_args(list(argv))


@pytest.mark.slow
def test_trains_each_variant_in_its_own_process_and_tabulates_the_best_epoch(shared_dir, tmp_path, capsys):
    table = bench_variants.main(_args("--data", str(shared_dir), "--out", str(tmp_path),
                                      "--variants", "unet", "hot-flow-unet", "--", *TINY))
    lines = table.splitlines()
    assert lines[0] == "| " + " | ".join(bench_variants.COLUMNS) + " |" and len(lines) == 6
    assert lines[-1] == bench_variants.PAPER_NOTE
    assert (tmp_path / "variants.md").read_text() == table + "\n"
    assert "training hot-flow-unet" in capsys.readouterr().out
    for name, line in zip(("unet", "hot-flow-unet"), lines[2:]):
        assert "epoch 2/2" in (tmp_path / f"{name}-train.log").read_text()
        metrics = pd.read_csv(tmp_path / f"{name}-metrics.csv")
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        best = metrics.sort_values(["val_score", "val_loss"], ascending=[False, True]).iloc[0]
        assert cells[0] == name and cells[5] == str(int(best["epoch"])) and cells[6] == "2"
        assert float(cells[1]) == pytest.approx(best["val_score"], abs=5e-4)
        assert float(cells[2]) == pytest.approx(best["val_dice"], abs=5e-4)
        assert float(cells[7]) == pytest.approx(metrics["images_per_s"].median(), abs=0.05)
    # --table-only reads the same CSVs again without training.
    assert bench_variants.main(_args("--out", str(tmp_path), "--variants", "unet", "hot-flow-unet",
                                     "--table-only")) == table


def test_best_epoch_is_the_one_kit_train_keeps(tmp_path):
    rows = {"epoch": [1, 2, 3], "train_loss": [1.0, 0.9, 0.8], "val_loss": [0.7, 0.5, 0.6],
            "val_dice": [0.5, 0.6, 0.7], "val_iou": [0.3, 0.4, 0.5], "val_accuracy": [0.8, 0.8, 0.9],
            "val_score": [0.1, 0.2, 0.2], "lr": [0.01] * 3, "images_per_s": [5.0, 9.0, 10.0],
            "epoch_s": [60.0, 60.0, 61.0], "elapsed_s": [60.0, 120.0, 3781.0]}
    pd.DataFrame(rows).to_csv(tmp_path / "unet-metrics.csv", index=False)
    row = bench_variants.variant_summary(tmp_path, "unet")
    assert row["best epoch"] == 2  # the same score as epoch 3, with the lower validation loss
    assert (row["val score"], row["Dice"], row["images/s"], row["epochs"]) == (0.2, 0.6, 9.0, 3)
    table = bench_variants.format_table([row])
    assert "| unet | 0.200 | 0.600 | 0.400 | 0.800 | 2 | 3 | 9.0 | 1:03:01 | 0.528 | 0.068 | 0.94 |" in table
    assert "Dice = 2·IoU / (1 + IoU)" in table.splitlines()[-1]


def test_missing_runs_and_failed_training_are_clear_errors(shared_dir, tmp_path):
    with pytest.raises(SystemExit, match=r"unet-metrics.csv not found: train unet first"):
        bench_variants.main(_args("--out", str(tmp_path), "--variants", "unet", "--table-only"))
    with pytest.raises(SystemExit, match=r"kit.train failed for unet \(exit 2\); see .*unet-train.log"):
        bench_variants.main(_args("--data", str(shared_dir), "--out", str(tmp_path), "--variants", "unet",
                                  "--", "--epochs", "zero"))
