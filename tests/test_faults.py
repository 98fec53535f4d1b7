"""Faults and bad input tried as a new user would: each case asserts the message, the exit status
and that no earlier output was lost. Training here is tiny (4 images, 64x64 crops, 1 epoch, CPU)."""
from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from kit import build_kernel, files, infer, progress, rle, train, validate
from kit.data import sartorius
from kit.inference import submit
from kit.kaggle import kernels
from kit.model import checkpoints, network, variants
from kit.split import split_train_val
from kit.submission import write_submission
from kit.training import loop, run_folder, setup

REPO = Path(__file__).resolve().parent.parent
RUN_FILES = ["unet.pt", "unet-last.pt", "unet-metrics.csv", "unet-curves.png"]
ANNOTATED_ID = "053d61766edb"  # a cort image of the shared slice


def _train_args(shared_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--variant", "unet", "--data", str(shared_dir), "--out", str(out), "--max-images", "4",
            "--crop", "64x64", "--epochs", "1", "--device", "cpu", *extra]


def _train(*argv: str) -> str:
    """``python -m kit.train ARGV`` in this process; returns what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train.main(train.get_args_parser().parse_args(list(argv)))
    return printed.getvalue()


def _user_error(excinfo, prog: str) -> str:
    """The message of a CLI's SystemExit, checked to be the one-line ``PROG: error: ...`` (exit status 1)."""
    message = excinfo.value.code
    assert isinstance(message, str) and message.startswith(f"{prog}: error: "), message
    assert "\n" not in message and "Traceback" not in message
    return message


def _command(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every visible file's bytes (temporaries start with a dot)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def _no_training(*args, **kwargs):
    raise AssertionError("training started although the fault was detectable before work")


@pytest.fixture(scope="module")
def first_run(shared_dir, tmp_path_factory) -> Path:
    """A finished one-epoch unet run; tests copy it before touching it."""
    out = tmp_path_factory.mktemp("first")
    _train(*_train_args(shared_dir, out))
    return out


@pytest.fixture
def earlier_run(first_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(first_run, out, ignore=shutil.ignore_patterns("cache"))
    return out


@pytest.fixture(scope="module")
def empty_weights(tmp_path_factory) -> Path:
    """Weights of a unet that finds no cell anywhere (every logit -30)."""
    variant = variants.get_variant("unet")
    model = network.build_model(variant)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(-30.0)
    path = tmp_path_factory.mktemp("weights") / "unet.pt"
    checkpoints.save_checkpoint(path, model, variant)
    return path


# ---------------------------------------------------------------- 1. a second run into the same folder

def test_a_second_run_into_the_same_folder_is_refused_and_keeps_the_weights(shared_dir, earlier_run, monkeypatch):
    before = _snapshot(earlier_run)
    monkeypatch.setattr(loop, "train_epoch", _no_training)
    with pytest.raises(SystemExit) as excinfo:
        _train(*_train_args(shared_dir, earlier_run))
    message = _user_error(excinfo, "kit.train")
    assert f"{earlier_run} already holds a run (unet.pt, unet-last.pt, unet-metrics.csv, unet-curves.png)" in message
    assert "pass --resume to continue it, --restart to start afresh" in message
    assert _snapshot(earlier_run) == before
    with pytest.raises(SystemExit) as excinfo:
        _train(*_train_args(shared_dir, earlier_run, "--resume", "--restart"))
    assert "pass one of them" in _user_error(excinfo, "kit.train")


def test_restart_moves_the_earlier_run_aside_instead_of_overwriting_it(shared_dir, earlier_run):
    before = _snapshot(earlier_run)
    printed = _train(*_train_args(shared_dir, earlier_run, "--restart"))
    (kept,) = (earlier_run / "previous").iterdir()
    assert f"--restart: the earlier unet run's files were moved to {kept}" in printed
    assert _snapshot(kept) == {name: before[name] for name in RUN_FILES}
    assert all((earlier_run / name).is_file() for name in RUN_FILES)  # the new run's


# ---------------------------------------------------------------- 2. a device that does not exist

def test_a_missing_gpu_is_named_not_reported_as_a_corrupt_checkpoint(shared_dir, empty_weights, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["--data", str(shared_dir), "--weights", str(empty_weights), "--out", str(tmp_path / "s.csv")]
    with pytest.raises(SystemExit) as excinfo:
        infer.main(infer.get_args_parser().parse_args([*argv, "--device", "cuda"]))
    message = _user_error(excinfo, "kit.infer")
    assert "--device cuda: no CUDA GPU is visible" in message and "use --device cpu" in message
    assert "corrupt" not in message and "delete" not in message
    with pytest.raises(SystemExit) as excinfo:
        infer.main(infer.get_args_parser().parse_args([*argv, "--device", "gpu"]))
    message = _user_error(excinfo, "kit.infer")
    assert "--device 'gpu' is not a device this kit runs on: use cuda, cuda:N or cpu" in message
    assert not (tmp_path / "s.csv").exists()


def test_train_on_a_missing_gpu_and_no_silent_cpu_fallback(shared_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loop, "train_epoch", _no_training)
    argv = ["--variant", "unet", "--data", str(shared_dir), "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as excinfo:
        _train(*argv, "--device", "cuda")
    assert "--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False); use --device cpu" \
        in _user_error(excinfo, "kit.train")
    with pytest.raises(SystemExit) as excinfo:  # the README's GPU command, on a machine without one
        _train(*argv)
    assert "no CUDA GPU is visible, and a full training run on the CPU takes days: pass --device cpu" \
        in _user_error(excinfo, "kit.train")
    assert not list(tmp_path.iterdir())


def test_bench_train_on_a_missing_gpu_is_one_line():
    done = _command("benchmarks.bench_train", "--device", "cuda", env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 1
    assert done.stderr.strip() == ("python -m benchmarks.bench_train: error: --device cuda: no CUDA GPU is visible "
                                   "(torch.cuda.is_available() is False); use --device cpu, or run on a machine "
                                   "with a GPU")


# ---------------------------------------------------------------- 3. a submission missing images

def test_validate_scores_missing_images_as_zero(shared_dir, tmp_path, capsys):
    layout = sartorius.find_competition(shared_dir, need_test=False)
    frame = sartorius.read_train_csv(layout.train_csv)
    val_ids = split_train_val(sartorius.image_table(frame))[1]
    labels = {i: rle.decode_labels(frame.loc[frame["id"] == i, "annotation"].tolist()) for i in val_ids}
    for image_id in val_ids[::2]:  # imperfect predictions: every other image loses its odd labels
        labels[image_id] = np.where(labels[image_id] % 2 == 1, 0, labels[image_id])

    def score(submission: Path) -> validate.metrics.ScoreReport:
        args = ["--data", str(shared_dir), "--submission", str(submission), "--overlays", "0"]
        return validate.main(validate.get_args_parser().parse_args(args))

    full = score(write_submission(labels, tmp_path / "full.csv"))
    worst = full.per_image.sort_values("score")["id"].head(2).tolist()
    partial = score(write_submission({i: labels[i] for i in val_ids if i not in worst}, tmp_path / "partial.csv"))
    assert len(partial.per_image) == len(val_ids) == 24  # the validation split, not the submission's ids
    kept = full.per_image[~full.per_image["id"].isin(worst)]["score"].sum()
    assert partial.score == pytest.approx(kept / 24) and partial.score < full.score
    assert partial.per_image.set_index("id").loc[worst, "score"].tolist() == [0.0, 0.0]
    printed = capsys.readouterr().out
    assert (f"MISSING from the submission (2 image(s), each scores 0 as on the leaderboard): {' '.join(sorted(worst))}"
            in printed)


# ---------------------------------------------------------------- 4. kit.train errors are one line

def test_train_data_errors_are_one_line_without_traceback(tmp_path):
    (tmp_path / "data.zip").write_bytes(b"PK")
    done = _command("kit.train", "--variant", "unet", "--data", str(tmp_path / "data.zip"), "--out",
                    str(tmp_path / "runs"), "--device", "cpu")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"kit.train: error: data folder {tmp_path / 'data.zip'} is a file, not a "
                                   "folder: pass --data the folder holding train.csv, train/ and test/ "
                                   "(or a folder above it)")


def test_resume_errors_are_one_line_and_found_before_loading_images(shared_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(setup, "load_split", _no_training)
    with pytest.raises(SystemExit) as excinfo:
        _train(*_train_args(shared_dir, tmp_path, "--resume"))
    assert f"--resume: no checkpoint {tmp_path / 'unet-last.pt'}; run without --resume" \
        in _user_error(excinfo, "kit.train")


def test_a_run_stopped_in_its_first_epoch_says_to_restart(shared_dir, earlier_run, monkeypatch):
    """SIGTERM before the first epoch's resumable checkpoint: the best weights and the cache are there,
    NAME-last.pt is not. Both --resume and a plain run name --restart, which then works."""
    (earlier_run / "unet-last.pt").unlink()
    for name in ("unet-metrics.csv", "unet-curves.png"):
        (earlier_run / name).unlink()
    with monkeypatch.context() as patched:
        patched.setattr(setup, "load_split", _no_training)
        for extra, instead in ((("--resume",), " of --resume"), ((), "")):
            with pytest.raises(SystemExit) as excinfo:
                _train(*_train_args(shared_dir, earlier_run, *extra))
            assert _user_error(excinfo, "kit.train") == (
                f"kit.train: error: {earlier_run} holds a unet run that finished no epoch (unet.pt, no "
                f"unet-last.pt), so it cannot be resumed: run again with --restart instead{instead} (its files "
                f"are moved to {earlier_run / 'previous'}/), or pass another --out")
    _train(*_train_args(shared_dir, earlier_run, "--restart"))
    assert (earlier_run / "unet-last.pt").is_file()


# ---------------------------------------------------------------- 4b. argument combinations before any data

def test_fp16_on_the_cpu_is_refused_before_any_data_and_leaves_no_out_folder(shared_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(setup, "load_split", _no_training)
    monkeypatch.setattr(setup.sartorius, "find_competition", _no_training)
    out = tmp_path / "runs" / "a"
    for extra, expected in (
            (("--precision", "fp16"), "--precision fp16 needs a CUDA GPU (--device cuda); on the CPU use "
                                      "--precision auto, bf16 or fp32"),
            (("--keep-steps", "0"), "--keep-steps counts optimiser steps from 1; got 0"),
            (("--precision", "fp16", "--pretrain", "livecell"), "--precision fp16 needs a CUDA GPU")):
        with pytest.raises(SystemExit) as excinfo:
            _train(*_train_args(shared_dir, out, *extra))
        assert expected in _user_error(excinfo, "kit.train")
        assert not (tmp_path / "runs").exists()  # the run made runs/a; it leaves neither behind


def test_an_early_failure_keeps_an_out_folder_the_user_made_or_wrote_in(shared_dir, tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    with pytest.raises(SystemExit):
        _train(*_train_args(shared_dir, tmp_path / "mine", "--precision", "fp16"))
    assert (tmp_path / "mine").is_dir()
    with pytest.raises(SystemExit):  # found after --out was made and checked: still removed
        _train(*_train_args(tmp_path / "no-data", tmp_path / "new"))
    assert not (tmp_path / "new").exists()

    def cache_then_fail(samples, variant, device, cache_dir, *args, **kwargs):
        cache_dir.mkdir(parents=True)
        (cache_dir / "flows.npy").write_bytes(b"work already done")
        raise ValueError("an image fails after the cache was written")

    monkeypatch.setattr(setup, "split_from_samples", cache_then_fail)
    with pytest.raises(SystemExit):
        _train(*_train_args(shared_dir, tmp_path / "kept"))
    assert (tmp_path / "kept" / "cache" / "flows.npy").is_file()


def test_train_takes_cuda_n_as_the_other_commands_do(shared_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(setup, "load_split", _no_training)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SystemExit) as excinfo:  # accepted by argparse, then resolved by hardware.resolve_device
        _train(*_train_args(shared_dir, tmp_path / "out", "--device", "cuda:1"))
    assert "--device cuda:1: this machine has 1 CUDA GPU(s), numbered from 0" in _user_error(excinfo, "kit.train")
    with pytest.raises(SystemExit) as excinfo:
        _train(*_train_args(shared_dir, tmp_path / "out", "--device", "gpu"))
    assert "--device 'gpu' is not a device this kit runs on: use cuda, cuda:N or cpu" \
        in _user_error(excinfo, "kit.train")
    monkeypatch.setenv("RANK", "0")  # under torchrun each rank trains on its LOCAL_RANK's GPU
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SystemExit) as excinfo:
        _train(*_train_args(shared_dir, tmp_path / "out", "--device", "cuda:1"))
    assert ("--device cuda:1 under torchrun: each process trains on the GPU of its LOCAL_RANK (cuda:0, cuda:1, "
            "...); pass --device cuda, and choose the GPUs with CUDA_VISIBLE_DEVICES") \
        in _user_error(excinfo, "kit.train")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 5. a full disk

def test_a_full_disk_is_found_before_training(shared_dir, earlier_run, monkeypatch):
    before = _snapshot(earlier_run)
    monkeypatch.setattr(loop, "train_epoch", _no_training)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, used=10**9, free=10**6))
    with pytest.raises(SystemExit) as excinfo:
        _train(*_train_args(shared_dir, earlier_run, "--resume", "--epochs", "2"))
    message = _user_error(excinfo, "kit.train")
    assert (f"{earlier_run} has 1 MB free, but the checkpoints unet.pt and unet-last.pt and the temporary copy a "
            "save writes beside them need about") in message
    assert "free some space or pass another --out" in message
    assert _snapshot(earlier_run) == before


def test_a_disk_that_fills_during_a_checkpoint_save_names_the_file(shared_dir, earlier_run, monkeypatch):
    before = _snapshot(earlier_run)

    def full_disk_save(obj, path):  # what torch.save raises when the disk fills (seen on a 64 kB tmpfs)
        Path(path).write_bytes(b"\0" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 53504 vs 53400")

    monkeypatch.setattr(checkpoints.torch, "save", full_disk_save)
    with pytest.raises(SystemExit) as excinfo:
        _train(*_train_args(shared_dir, earlier_run, "--resume", "--epochs", "2"))
    message = _user_error(excinfo, "kit.train")
    assert f"could not write {earlier_run}/unet" in message and "most likely a full disk" in message
    assert "free on its disk. Free some space or write elsewhere;" in message
    assert "keeps its previous content" in message
    after = _snapshot(earlier_run)
    assert {name: after[name] for name in ("unet.pt", "unet-last.pt")} == \
        {name: before[name] for name in ("unet.pt", "unet-last.pt")}
    assert not list(earlier_run.glob(".*.tmp"))


def test_the_free_space_check_counts_a_saves_temporary_copy(tmp_path):
    variant = variants.get_variant("unet")
    size = checkpoints.checkpoint_bytes(variant)
    assert run_folder.checkpoint_space(tmp_path, variant) == 3 * size  # best + last + the temporary of last
    (tmp_path / "unet.pt").write_bytes(b"\0" * (size // 3))
    (tmp_path / "unet-last.pt").write_bytes(b"\0" * size)  # a resumed run: both are replaced in turn
    assert run_folder.checkpoint_space(tmp_path, variant) == 3 * size - size // 3 - size


def test_enospc_from_a_plain_write_names_the_file_and_keeps_the_old_one(tmp_path):
    path = files.write_text_atomic(tmp_path / "submission.csv", "id,predicted\n")
    with pytest.raises(files.OutputError, match=f"could not write {path}: No space left on device; .* free on its "
                                                f"disk. Free some space or write elsewhere; {path} keeps its"):
        with files.atomic_output(path):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert path.read_text() == "id,predicted\n" and not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------- 6. an unwritable --out

@pytest.fixture
def read_only(unwritable_dir) -> Path:
    return unwritable_dir


def test_train_into_an_unwritable_out_fails_before_the_first_epoch(shared_dir, read_only, monkeypatch):
    monkeypatch.setattr(loop, "train_epoch", _no_training)
    with pytest.raises(SystemExit) as excinfo:
        _train(*_train_args(shared_dir, read_only))
    assert (f"cannot write to {read_only} (Permission denied); pass a folder you can write to with --out"
            in _user_error(excinfo, "kit.train"))


def test_infer_into_an_unwritable_out_fails_before_predicting(shared_dir, empty_weights, read_only, monkeypatch):
    monkeypatch.setattr(submit, "predict_labels", _no_training)
    argv = ["--data", str(shared_dir), "--weights", str(empty_weights), "--out", str(read_only / "s.csv"),
            "--device", "cpu"]
    with pytest.raises(SystemExit) as excinfo:
        infer.main(infer.get_args_parser().parse_args(argv))
    assert f"cannot write to {read_only} (Permission denied)" in _user_error(excinfo, "kit.infer")


def test_the_other_commands_name_an_unwritable_output_in_one_line(shared_dir, read_only, monkeypatch):
    from kit import boundary_table

    monkeypatch.setattr(boundary_table, "fit_from_folder", _no_training)
    with pytest.raises(SystemExit) as excinfo:
        boundary_table.main(boundary_table.get_args_parser().parse_args(["fit", "--out", str(read_only / "b.npz")]))
    assert f"cannot write to {read_only} (Permission denied)" in _user_error(excinfo, "kit.boundary_table")
    with pytest.raises(SystemExit) as excinfo:
        build_kernel.main(build_kernel.get_args_parser().parse_args(["--user", "someone", "--out", str(read_only)]))
    assert f"cannot write {read_only}/sartorius-kit-" in _user_error(excinfo, "kit.build_kernel")
    path = write_submission({ANNOTATED_ID: _truth_labels(shared_dir, ANNOTATED_ID)}, read_only.parent / "s.csv")
    args = ["--data", str(shared_dir), "--submission", str(path), "--ids", ANNOTATED_ID,
            "--overlay-dir", str(read_only)]
    with pytest.raises(SystemExit) as excinfo:
        validate.main(validate.get_args_parser().parse_args(args))
    assert f"cannot write to {read_only} (Permission denied); pass a folder you can write to with --overlay-dir" \
        in _user_error(excinfo, "kit.validate")


# ---------------------------------------------------------------- 7. kill -9 / SIGTERM during a write

_DYING_SAVE = """
import os, signal, sys
from kit import files
from kit.model import checkpoints, network, variants
files.exit_on_sigterm()
variant = variants.get_variant("unet")
model = network.build_model(variant)
def dying_save(obj, path):
    with open(path, "wb") as handle:
        handle.write(b"half a checkpoint")
    os.kill(os.getpid(), getattr(signal, sys.argv[2]))
checkpoints.torch.save = dying_save
checkpoints.save_checkpoint(sys.argv[1], model, variant)
"""


def test_kill_9_during_a_checkpoint_save_keeps_the_old_file_and_resume_cleans_up(shared_dir, earlier_run):
    before = _snapshot(earlier_run)
    done = subprocess.run([sys.executable, "-c", _DYING_SAVE, str(earlier_run / "unet-last.pt"), "SIGKILL"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL
    (partial,) = earlier_run.glob(".unet-last.pt.*.tmp")
    assert _snapshot(earlier_run) == before  # the old checkpoint is whole
    printed = _train(*_train_args(shared_dir, earlier_run, "--resume"))  # 1 epoch done: nothing to train
    assert f"removed {partial}: a partial file left by a save that was killed" in printed
    assert not partial.exists() and torch.load(earlier_run / "unet-last.pt", weights_only=True)["epoch"] == 1


def test_sigterm_during_a_checkpoint_save_leaves_no_partial_file(earlier_run):
    before = (earlier_run / "unet-last.pt").read_bytes()
    done = subprocess.run([sys.executable, "-c", _DYING_SAVE, str(earlier_run / "unet-last.pt"), "SIGTERM"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-2000:]
    assert not list(earlier_run.glob(".*.tmp")) and (earlier_run / "unet-last.pt").read_bytes() == before


_DYING_SUBMISSION = """
import os, signal, sys
import numpy as np
from kit import submission
def dying_validate(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
submission.validate = dying_validate
submission.write_submission({"a": np.zeros((520, 704), np.int32)}, sys.argv[1])
"""


def test_kill_9_during_a_submission_write_keeps_the_old_one_and_infer_cleans_up(shared_dir, empty_weights,
                                                                                tmp_path, capsys):
    out = tmp_path / "submission.csv"
    good = write_submission({ANNOTATED_ID: _truth_labels(shared_dir, ANNOTATED_ID)}, out).read_bytes()
    done = subprocess.run([sys.executable, "-c", _DYING_SUBMISSION, str(out)], cwd=REPO, capture_output=True,
                          timeout=120)
    assert done.returncode == -signal.SIGKILL and out.read_bytes() == good
    (partial,) = tmp_path.glob(".submission.csv.*.tmp")
    with pytest.raises(SystemExit):  # 8c below: the empty weights may not replace it
        infer.main(infer.get_args_parser().parse_args(_infer_args(shared_dir, empty_weights, out)))
    assert f"removed {partial}: a partial file left by a write that was killed" in capsys.readouterr().out
    assert not partial.exists() and out.read_bytes() == good


# ---------------------------------------------------------------- 8. forgiving in the wrong places

def _truth_labels(shared_dir: Path, image_id: str) -> np.ndarray:
    frame = pd.read_csv(shared_dir / "train.csv", dtype=str)
    return rle.decode_labels(frame.loc[frame["id"] == image_id, "annotation"].tolist())


def _infer_args(shared_dir: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(shared_dir), "--weights", str(weights), "--out", str(out), "--device", "cpu",
            "--split", "train", "--ids", ANNOTATED_ID, *extra]


def test_a_submission_without_cells_does_not_replace_one_with_cells(shared_dir, empty_weights, tmp_path, capsys):
    out = write_submission({ANNOTATED_ID: _truth_labels(shared_dir, ANNOTATED_ID)}, tmp_path / "submission.csv")
    good = out.read_bytes()
    with pytest.raises(SystemExit) as excinfo:
        infer.main(infer.get_args_parser().parse_args(_infer_args(shared_dir, empty_weights, out)))
    assert (f"no cell predicted in any of the 1 images (untrained or broken weights?), and {out} holds cells: "
            "it was kept. Pass --allow-empty to replace it anyway") in _user_error(excinfo, "kit.infer")
    assert out.read_bytes() == good
    infer.main(infer.get_args_parser().parse_args(_infer_args(shared_dir, empty_weights, out, "--allow-empty")))
    assert "kit.infer: warning: no cell predicted in any of the 1 images" in capsys.readouterr().err
    assert out.read_text() == f"id,predicted\n{ANNOTATED_ID},\n"


def test_the_readme_placeholder_username_is_refused(tmp_path):
    argv = ["--user", "YOUR_KAGGLE_USERNAME", "--out", str(tmp_path / "kernels")]
    with pytest.raises(SystemExit) as excinfo:
        build_kernel.main(build_kernel.get_args_parser().parse_args(argv))
    assert "--user YOUR_KAGGLE_USERNAME is the README's placeholder: pass your own Kaggle username" \
        in _user_error(excinfo, "kit.build_kernel")
    assert not (tmp_path / "kernels").exists()


# ---------------------------------------------------------------- 9. smaller

@pytest.mark.parametrize("content, expected", [
    (b"hello\n", "is not a readable checkpoint: corrupt, truncated, or not a torch file (KeyError)"),
    (b"abc", "is not a readable checkpoint: corrupt, truncated, or not a torch file (IndexError)"),
    (b"", "is not a readable checkpoint: corrupt, truncated, or not a torch file (EOFError)"),
    (b"PK\x03\x04garbage", "is not a readable checkpoint"),
])
def test_malformed_weights_files_are_named_as_unreadable(tmp_path, content, expected):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"{path} {expected}")):
        checkpoints.load_checkpoint(path)


def test_a_truncated_checkpoint_and_a_newer_format(first_run, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((first_run / "unet.pt").read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated.pt is not a readable checkpoint"):
        checkpoints.load_checkpoint(truncated)
    newer = tmp_path / "newer.pt"
    checkpoint = torch.load(first_run / "unet.pt", weights_only=True)
    torch.save({**checkpoint, "format": "kit-checkpoint-v3"}, newer)
    with pytest.raises(ValueError, match=r"newer.pt is a kit checkpoint of a newer format \('kit-checkpoint-v3'; "
                                         r"this kit reads 'kit-checkpoint-v2'\): update the kit"):
        checkpoints.load_checkpoint(newer)


def test_a_text_file_given_as_weights_is_one_line(shared_dir, tmp_path):
    weights = tmp_path / "hot-unet.pt"
    weights.write_text("hello\n")
    with pytest.raises(SystemExit) as excinfo:
        infer.main(infer.get_args_parser().parse_args(_infer_args(shared_dir, weights, tmp_path / "s.csv")))
    assert f"{weights} is not a readable checkpoint" in _user_error(excinfo, "kit.infer")


def test_an_rle_past_the_end_names_the_image_size_once():
    with pytest.raises(rle.RLEError) as excinfo:
        rle.decode("366080 2")
    assert "a run goes past the end of the 520x704 image (366080 pixels)" in str(excinfo.value)


def test_overlays_of_an_earlier_validation_are_removed(shared_dir, tmp_path):
    path = write_submission({ANNOTATED_ID: _truth_labels(shared_dir, ANNOTATED_ID)}, tmp_path / "s.csv")
    stale = tmp_path / "overlays" / "01_0.123_aaaaaaaaaaaa.png"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    notes = tmp_path / "overlays" / "notes.txt"
    notes.write_text("mine")
    args = ["--data", str(shared_dir), "--submission", str(path), "--ids", ANNOTATED_ID, "--overlays", "1"]
    validate.main(validate.get_args_parser().parse_args(args))
    names = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert len([n for n in names if n.endswith(".png")]) == 1 and not stale.exists() and "notes.txt" in names


def test_kernel_folders_of_an_earlier_build_are_removed(tmp_path, capsys):
    progress.show_progress()  # as python -m kit.build_kernel shows its lines
    kernels.build_kernels("someone", [("unet",), ("hot-unet",), ("hot-unet-weighted",)], tmp_path)
    kept_by_user = tmp_path / "sartorius-kit-train-hot-unet" / "my-notes.txt"
    kept_by_user.write_text("mine")
    kernels.build_kernels("someone", [("unet",)], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sartorius-kit-infer", "sartorius-kit-train-hot-unet", "sartorius-kit-train-unet"]
    assert kept_by_user.read_text() == "mine"
    printed = capsys.readouterr().out
    assert f"left {kept_by_user.parent}: a kernel of an earlier build, but it holds other files too" in printed
    assert f"removed {tmp_path / 'sartorius-kit-train-hot-unet-weighted'}: a kernel of an earlier build" in printed


def test_the_curves_show_lr_images_per_s_and_the_best_epoch(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *args, **kwargs: drawn.append(self))
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.0, "val_dice": 0.5, "val_iou": 0.4,
                "val_accuracy": 0.9, "val_score": score, "lr": 0.01 / e, "images_per_s": 3.0}
               for e, score in ((1, 0.1), (2, 0.3), (3, 0.2))]
    run_folder.plot_curves(tmp_path / "curves.png", history, "unet")
    (figure,) = drawn
    titles = [axes.get_title() for axes in figure.axes]
    assert titles == ["unet: loss", "unet: validation", "unet: learning rate", "unet: throughput"]
    for axes in figure.axes:
        labels = [line.get_label() for line in axes.get_lines()]
        assert "best epoch 2" in labels
    assert [line.get_label() for line in figure.axes[2].get_lines()][0] == "lr"
    assert [line.get_label() for line in figure.axes[3].get_lines()][0] == "images_per_s"
