"""kit.kaggle.notebook, what the built notebooks run: the time split, child commands, finding weights, training."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kit.data import pseudo_labels
from kit.inference import type_classifier
from kit.kaggle import notebook
from kit.training.stage_options import StageOptions

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def kit_importable(monkeypatch):
    """Child processes import this checkout's kit, wherever pytest was started."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))


def test_time_share_splits_what_is_left_among_the_variants_still_to_train():
    assert notebook.time_share(3 * 3600, 3, 300) == (3600, 55)  # an hour each, 5 minutes kept for the save
    assert notebook.time_share(3000, 1, 300) == (3000, 45)  # the last variant gets all that is left
    assert notebook.time_share(1000, 2, 300) == (500, 3)
    assert notebook.time_share(600, 2, 300)[1] == 0  # too little: train_variants refuses to start it


def test_run_kit_echoes_the_command_and_its_output(kit_importable, capsys):
    notebook.run_kit("kit.cell_type_classifier", "--help")
    printed = capsys.readouterr().out
    assert printed.startswith(f"$ {sys.executable} -m kit.cell_type_classifier --help\n")
    assert "usage: python -m kit.cell_type_classifier" in printed


def test_run_kit_raises_on_failure_and_stops_at_its_timeout(kit_importable):
    with pytest.raises(RuntimeError, match="kit.boundary_table failed with exit status 2; its output is above"):
        notebook.run_kit("kit.boundary_table")  # no sub-command: argparse exits 2
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="timeit did not finish within its 1 s and was stopped"):
        notebook.run_kit("timeit", "-n", "1", "-r", "1", "import time; time.sleep(60)", timeout=1)
    assert time.monotonic() - started < 30


def test_extra_args_split_like_a_shell(monkeypatch):
    monkeypatch.setenv("KIT_TEST_ARGS", "--epochs 1 --crop '64x64'")
    assert notebook.extra_args("KIT_TEST_ARGS") == ["--epochs", "1", "--crop", "64x64"]
    monkeypatch.delenv("KIT_TEST_ARGS")
    assert notebook.extra_args("KIT_TEST_ARGS") == []


def test_find_weights_skips_the_competition_folder_and_names_the_kernels_to_attach(tmp_path):
    competition = tmp_path / "sartorius" / "train"
    competition.mkdir(parents=True)
    (competition / "unet.pt").write_bytes(b"")  # inside the skipped folder: not a kernel output
    kernel = tmp_path / "sartorius-kit-train-unet"
    kernel.mkdir()
    (kernel / "unet.pt").write_bytes(b"")
    skip = (tmp_path / "sartorius").resolve()
    assert notebook.find_weights(tmp_path, "unet.pt", skip, ["u/k"]) == kernel / "unet.pt"
    with pytest.raises(FileNotFoundError, match=r"no hot-unet\.pt below .*attach the output of u/k as an input"):
        notebook.find_weights(tmp_path, "hot-unet.pt", skip, ["u/k"])
    with pytest.raises(FileNotFoundError, match=r"attach the output of one of u/k, u/j as"):
        notebook.find_weights(tmp_path, "hot-unet.pt", skip, ["u/k", "u/j"])
    # Newer sessions mount an attached notebook's output at notebooks/<user>/<slug>/ too: the same bytes count once
    mounted_again = tmp_path / "notebooks" / "u" / "sartorius-kit-train-unet"
    mounted_again.mkdir(parents=True)
    (mounted_again / "unet.pt").write_bytes(b"")
    assert notebook.find_weights(tmp_path, "unet.pt", skip, ["u/k"]) == mounted_again / "unet.pt"
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "unet.pt").write_bytes(b"other weights")
    with pytest.raises(FileNotFoundError, match=r"2 different \(.*\) unet\.pt below .*remove the other copies"):
        notebook.find_weights(tmp_path, "unet.pt", skip, ["u/k"])


FLOW_WEIGHTS = ["hot-flow-unet.pt", "hot-flow-unet-plus.pt"]
FLOW_SOURCES = {name: f"u/sartorius-kit-train-{name[:-3]}" for name in FLOW_WEIGHTS}


def attach(input_root: Path, *names: str) -> None:
    """The output of the kernel training each of ``names``, mounted below ``input_root`` as Kaggle does."""
    for name in names:
        folder = input_root / FLOW_SOURCES[name].split("/")[1]
        folder.mkdir(parents=True)
        (folder / name).write_bytes(name.encode())


@pytest.fixture
def infer_calls(monkeypatch):
    """kit.infer's arguments, as write_submission would run it (the submission check skipped)."""
    calls = []
    monkeypatch.setattr(notebook, "run_kit", lambda *args, timeout=None: calls.append(args))
    monkeypatch.setattr(notebook.submission, "validate", lambda path, ids: None)
    return calls


def submit(input_root: Path, working: Path, options=("--select-best",)):
    return notebook.write_submission(FLOW_WEIGHTS, list(FLOW_SOURCES.values()), input_root=input_root,
                                     working=working, infer_options=list(options), weight_sources=FLOW_SOURCES)


@pytest.fixture
def input_root(shared_dir, tmp_path):
    """A Kaggle input root holding the competition data (mounted under its slug) and no kernel output yet."""
    root = tmp_path / "input"
    root.mkdir()
    (root / "sartorius-cell-instance-segmentation").symlink_to(shared_dir, target_is_directory=True)
    return root


def test_select_best_uses_the_flow_weights_attached_and_names_the_kernel_of_those_missing(input_root, tmp_path,
                                                                                          infer_calls, capsys):
    attach(input_root, "hot-flow-unet.pt")
    submit(input_root, tmp_path / "working")
    (arguments,) = infer_calls
    weights = arguments[arguments.index("--weights") + 1:arguments.index("--out")]
    assert weights == (input_root / "sartorius-kit-train-hot-flow-unet" / "hot-flow-unet.pt",)
    assert "--select-best" not in arguments  # one attached: nothing to choose between
    assert ("--select-best chooses among the attached weights only: hot-flow-unet-plus.pt not found below "
            f"{input_root}; to compare them too, attach the output of u/sartorius-kit-train-hot-flow-unet-plus "
            "(for hot-flow-unet-plus.pt)") in capsys.readouterr().out
    attach(input_root, "hot-flow-unet-plus.pt")
    submit(input_root, tmp_path / "working")
    assert infer_calls[1][-1] == "--select-best" and len(infer_calls[1]) == len(arguments) + 2


def test_with_no_weights_attached_the_error_names_exactly_the_kernels_to_attach(input_root, tmp_path, infer_calls):
    with pytest.raises(FileNotFoundError) as error:
        submit(input_root, tmp_path / "working")
    assert str(error.value) == (
        f"no hot-flow-unet.pt or hot-flow-unet-plus.pt below {input_root}: attach the output of at least one of "
        "u/sartorius-kit-train-hot-flow-unet (for hot-flow-unet.pt), u/sartorius-kit-train-hot-flow-unet-plus "
        "(for hot-flow-unet-plus.pt) as an input (Add Input -> Your Work), after its run has finished")
    attach(input_root, "hot-flow-unet-plus.pt")
    with pytest.raises(FileNotFoundError, match=r"^no hot-flow-unet\.pt below .*: attach the output of "
                                                r"u/sartorius-kit-train-hot-flow-unet \(for hot-flow-unet\.pt\)"):
        submit(input_root, tmp_path / "working", options=())  # averaging needs every file
    assert infer_calls == []


def test_train_variants_saves_the_classifier_first_then_trains_each_in_its_share(shared_dir, tmp_path,
                                                                                 monkeypatch, capsys):
    commands = []
    monkeypatch.setattr(notebook, "run_kit", lambda *args, timeout=None: commands.append((args, timeout)))
    monkeypatch.setattr(notebook, "training_gpus", lambda use_all_gpus: 2 if use_all_gpus else 1)
    (tmp_path / "cache").mkdir()
    # Two hours and two minutes: with the classifier fitted in under two minutes, each variant's
    # share is just over an hour, so kit.train gets 55 minutes (5 kept back for its last save).
    deadline = time.monotonic() + 2 * 3600 + 120
    notebook.train_variants(["unet", "hot-unet"], deadline, data_root=shared_dir, working=tmp_path,
                            train_args=["--epochs", "1"])
    assert type_classifier.load_classifier(tmp_path / type_classifier.FILE_NAME).classes == (
        "astro", "cort", "shsy5y")
    (first, first_timeout), (second, _) = commands
    assert first[:4] == ("torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m")
    assert first[4:7] == ("kit.train", "--variant", "unet") and second[6] == "hot-unet"
    assert first[-4:] == ("--time-limit", "0:55", "--epochs", "1")
    assert 3600 < first_timeout <= 3660
    assert not (tmp_path / "cache").exists()  # the flow cache is not kept in the output
    assert f"{type_classifier.FILE_NAME}  " in capsys.readouterr().out
    commands.clear()
    with pytest.raises(RuntimeError, match="only .* s left for unet; raise --time-limit"):
        notebook.train_variants(["unet"], time.monotonic() + 200, data_root=shared_dir, working=tmp_path,
                                use_all_gpus=False)
    assert commands == []


def _recording(commands: list, cells: int):
    """A ``run_kit`` that records each call; its ``kit.pseudo`` writes a label file of ``cells`` cells."""
    def run_kit(*args, timeout=None):
        commands.append((args, timeout))
        if args[0] == "kit.pseudo":
            rows = [pseudo_labels.pseudo_rows("img", "astro", np.ones((520, 704), np.int32), [0.9])] * cells
            Path(args[args.index("--out") + 1]).write_text(pseudo_labels.rows_to_csv([r for row in rows for r in row]))
    return run_kit


def test_a_pseudo_round_without_a_kept_cell_is_skipped_and_said(shared_dir, tmp_path, monkeypatch, capsys):
    commands = []
    monkeypatch.setattr(notebook, "run_kit", _recording(commands, cells=0))
    monkeypatch.setattr(notebook, "training_gpus", lambda use_all_gpus: 0)
    notebook.train_variants(["hot-flow-unet"], time.monotonic() + 3 * 3600, data_root=shared_dir, working=tmp_path,
                            stages=StageOptions(pseudo_round=True, min_confidence=0.7))
    assert [args[0] for args, _ in commands] == ["kit.train", "kit.tune", "kit.pseudo"]
    assert ("no pseudo-labelled cell at --min-confidence 0.7: the pseudo-label round of hot-flow-unet is skipped"
            in capsys.readouterr().out)


def test_train_variants_shares_a_variant_s_time_between_pretraining_fine_tuning_and_a_pseudo_round(
        shared_dir, tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(notebook, "run_kit", _recording(commands, cells=1))
    monkeypatch.setattr(notebook, "training_gpus", lambda use_all_gpus: 0)
    stages = StageOptions(pretrain="livecell:shsy5y", pretrain_epochs=5, pretrain_max_images=100, pseudo_round=True,
                          min_confidence=0.7)
    # Three hours and two minutes for one variant: an hour for each of its three stages.
    notebook.train_variants(["hot-flow-unet"], time.monotonic() + 3 * 3600 + 120, data_root=shared_dir,
                            working=tmp_path, stages=stages)
    assert [args[0] for args, _ in commands] == ["kit.train", "kit.tune", "kit.pseudo", "kit.train", "kit.tune"]
    (first, first_timeout), _, (labels, _), (round_, _), _ = commands
    assert first[-10:] == ("--pretrain", "livecell:shsy5y", "--pretrain-epochs", "5", "--pretrain-time-limit",
                           "0:55", "--pretrain-max-images", "100", "--time-limit", "0:55")
    assert 2 * 3600 < first_timeout <= 2 * 3600 + 120  # both stages' shares: the call runs both
    assert labels[labels.index("--weights") + 1] == tmp_path / "hot-flow-unet.pt"
    csv = tmp_path / "hot-flow-unet-pseudo-labels.csv"
    assert labels[labels.index("--out") + 1] == csv and labels[-2:] == ("--min-confidence", 0.7)
    assert round_[round_.index("--resume"):round_.index("--time-limit")] == ("--resume", "--extra-data", csv)
    # the mocked stages took no time, so the round gets all that is left: about three hours
    assert round_[round_.index("--time-limit") + 1].startswith("2:5")
