"""benchmarks.bench_quality: one scorer for every entry, kit runs through the real command line,
a peer's saved validation masks scored like the kit's."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from benchmarks import bench_quality
from kit import competition, rle
from kit.data import sartorius
from kit.split import split_train_val


@pytest.fixture(scope="module")
def val_truth(shared_dir):
    layout = sartorius.find_competition(shared_dir, need_test=False)
    df = sartorius.read_train_csv(layout.train_csv)
    table = sartorius.image_table(df)
    val_ids = split_train_val(table)[1]
    annotations = df.groupby("id")["annotation"].apply(list)
    types = dict(zip(table["id"], table["cell_type"]))
    return {i: annotations[i] for i in val_ids}, {i: types[i] for i in val_ids}


def test_score_instances_reports_overall_per_type_and_the_types_mean(val_truth):
    truth, types = val_truth
    labels = {i: rle.decode_labels(truth[i]) for i in truth}  # the annotations as a valid submission
    scores = bench_quality.score_instances(labels, truth, types)
    per_type = [scores[t] for t in competition.CELL_TYPES]
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


def _parse(*argv):
    return bench_quality.get_args_parser().parse_args(["--data", "unused", *argv])


def _config(*argv):
    return bench_quality.quality_config(_parse(*argv))


def test_levers_are_the_base_variant_with_extra_train_args_after_the_shared_ones(tmp_path):
    config = _config("--out", str(tmp_path), "--variants", "unet", "--lever", "native-scale=--cell-diameter 0",
                     "sgd=--optimizer sgd --lr 0.2", "--peer", "cellpose", "--", "--max-images", "4")
    entries = bench_quality.plan_entries(config)
    assert [(e.name, e.variant) for e in entries] == [
        ("unet", "unet"), ("native-scale", bench_quality.RECIPE), ("sgd", bench_quality.RECIPE), ("cellpose", None)]
    command = bench_quality._command(entries[2], config, tmp_path / "sgd")
    assert command[command.index("--variant") + 1] == bench_quality.RECIPE
    assert command[-6:] == ["--max-images", "4", "--optimizer", "sgd", "--lr", "0.2"]  # the lever's win
    assert "--crop" not in command  # the recipe has its own crop size


def test_bad_plans_fail_before_any_training_and_say_what_to_change(tmp_path):
    with pytest.raises(SystemExit):
        _parse("--lever", "no-equals-sign")
    with pytest.raises(ValueError, match="entry name.* unet given twice"):
        bench_quality.plan_entries(_config("--variants", "unet", "--lever", "unet=--lr 0.1"))
    with pytest.raises(ValueError, match="--tta hot-unet: not an entry of this run"):
        bench_quality.plan_entries(_config("--variants", "unet", "--tta", "hot-unet"))
    with pytest.raises(ValueError, match="nothing to measure"):
        bench_quality.plan_entries(_config("--variants"))
    with pytest.raises(FileNotFoundError, match="boundary table .*missing.npz does not exist"):
        bench_quality.main(_parse("--variants", "unet", "--boundary-lut", str(tmp_path / "missing.npz")))


@pytest.mark.parametrize("cores", [["0"], ["0", "0"]])
def test_parallel_runs_never_more_entries_at_once_than_cores(tmp_path, monkeypatch, cores):
    def sleeper(entry, config, folder):  # each entry notes when it ran
        script = (f"import time, pathlib; a = time.time(); time.sleep(0.4); "
                  f"pathlib.Path({str(folder / 'span')!r}).write_text(f'{{a}} {{time.time()}}')")
        return [bench_quality.sys.executable, "-c", script]

    monkeypatch.setattr(bench_quality, "_command", sleeper)
    config = _config("--out", str(tmp_path), "--variants", "unet", "hot-unet", "hot-unet-weighted", "--parallel",
                     "--cores", *cores)
    bench_quality.train_entries(bench_quality.plan_entries(config), config)
    spans = sorted(tuple(map(float, (tmp_path / name / "span").read_text().split()))
                   for name in ("unet", "hot-unet", "hot-unet-weighted"))
    at_once = max(sum(start <= begin < end for start, end in spans) for begin, _ in spans)
    assert at_once == len(cores)  # 3 entries on 2 slots: 2 at once, then the third
    assert all((tmp_path / name / "wall.json").is_file() for name in ("unet", "hot-unet", "hot-unet-weighted"))


def test_options_that_add_no_row_to_an_entry_leave_its_kept_rows_valid(tmp_path):
    lut = tmp_path / "lut.npz"
    lut.write_bytes(b"table")
    entries = {"flow": bench_quality.Entry("hot-flow-unet", "hot-flow-unet"),
               "mask": bench_quality.Entry("unet", "unet"), "peer": bench_quality.Entry("cellpose", None)}
    for entry in entries.values():
        (tmp_path / entry.name).mkdir()
        (tmp_path / entry.name / ("val-labels.npz" if entry.variant is None else f"{entry.variant}.pt")).write_bytes(b"w")

    def keys(*argv):
        config = _config("--out", str(tmp_path), *argv)
        return {kind: bench_quality._score_key(entry, config) for kind, entry in entries.items()}

    plain, more = keys(), keys("--boundary-lut", str(lut), "--tune")
    assert more["flow"] != plain["flow"]  # a tuned row more
    assert more["mask"] != plain["mask"]  # a boundary-tuning row more
    assert more["peer"] == plain["peer"]
    lut_only, tune_only = keys("--boundary-lut", str(lut)), keys("--tune")
    assert lut_only["flow"] == plain["flow"] and tune_only["mask"] == plain["mask"]
    assert keys("--tta")["peer"] == plain["peer"] != keys("--tta")["mask"]


def test_an_entry_scored_before_from_the_same_files_is_read_back_not_scored_again(shared_dir, tmp_path,
                                                                                  val_truth, monkeypatch):
    truth, _ = val_truth
    ids = sorted(truth)[:2]
    peer = tmp_path / "cellpose"
    peer.mkdir()
    masks = {i: rle.decode_labels(truth[i]) for i in ids}
    np.savez_compressed(peer / "val-labels.npz", **masks)
    (peer / "run.json").write_text(json.dumps({"train_images_per_s": 3.0, "wall_s": 60.0, "weights": "w"}))
    args = _parse("--out", str(tmp_path), "--variants", "--peer", "cellpose", "--max-val-images", "2",
                  "--table-only")
    args.data = shared_dir
    first = bench_quality.main(args)
    calls = []
    real = bench_quality.score_entry
    monkeypatch.setattr(bench_quality, "score_entry", lambda *a: calls.append(1) or real(*a))
    assert bench_quality.main(args) == first and not calls
    np.savez_compressed(peer / "val-labels.npz", **{i: np.zeros_like(m) for i, m in masks.items()})
    rescored = bench_quality.main(args)  # other masks: scored anew
    assert calls == [1] and "| cellpose | 0.0000 |" in rescored and rescored != first
    args.max_val_images = 1  # other rows asked for: scored anew
    bench_quality.main(args)
    assert calls == [1, 1]
