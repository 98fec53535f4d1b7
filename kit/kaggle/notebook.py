"""What the Kaggle notebooks run, as tested code: their cells are short calls into this module.

The training notebook shares its time limit between the variants it trains and runs ``kit.train``
for each (through DDP where the session has several GPUs), after saving the cell-type classifier
beside the weights, and ``kit.tune`` after each flow variant; each variant's share is split evenly
(``time_share``) between its stages: LIVECell pretraining, fine-tuning and a pseudo-label round,
as ``kit.training.stage_options.StageOptions`` turns them on; the inference notebook finds the attached training kernels' weights, runs
``kit.infer`` and validates the submission. Every kit command runs as a child process
(``run_kit``), its output echoed into the notebook and stopped at its share of the time.
"""
from __future__ import annotations

import filecmp
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Mapping, Sequence

from kit import submission
from kit.cli import format_time_limit
from kit.data import pseudo_labels, sartorius
from kit.inference import type_classifier
from kit.model import variants
from kit.progress import show_progress
from kit.training.stage_options import StageOptions


def run_kit(*args, timeout=None):
    """Run `python -m args...`, echoing its output here; stop it after `timeout` seconds."""
    command = [sys.executable, "-m", *map(str, args)]
    module = next((arg for arg in args if str(arg).startswith("kit.")), args[0])
    print("$ " + " ".join(shlex.quote(part) for part in command), flush=True)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    stopped = threading.Event()

    def stop():
        stopped.set()
        process.terminate()

    timer = threading.Timer(timeout, stop) if timeout else None
    if timer:
        timer.start()
    for line in process.stdout:
        print(line, end="", flush=True)
    status = process.wait()
    if timer:
        timer.cancel()
    if stopped.is_set():
        raise RuntimeError(f"{module} did not finish within its {timeout:.0f} s and was stopped")
    if status != 0:
        raise RuntimeError(f"{module} failed with exit status {status}; its output is above")


def extra_args(variable):
    """Extra command-line arguments from an environment variable (the kit's tests use it)."""
    return shlex.split(os.environ.get(variable, ""))


def time_share(seconds_left: float, variants_left: int, save_margin_s: float) -> tuple[float, int]:
    """(hard stop in seconds, kit.train's limit in whole minutes) for the next of ``variants_left`` variants.

    What is left is shared evenly among the variants still to train, so a quick one leaves time to
    the next. kit.train stops before an epoch that would end past its limit; the margin covers its
    last validation and save, and the hard stop is only a safety net.
    """
    budget = seconds_left / variants_left
    return budget, int(budget - save_margin_s) // 60


def train_variants(names: Sequence[str], deadline: float, *, data_root: Path, working: Path,
                   use_all_gpus: bool = True, save_margin_s: float = 300, train_args: Sequence[str] = (),
                   stages: StageOptions = StageOptions()) -> None:
    """The training notebook: the cell-type classifier, then ``kit.train`` for each variant until
    ``deadline`` (a ``time.monotonic()`` time), in ``stages``; outputs in ``working``, the flow cache dropped."""
    show_progress()  # the kit's lines in the notebook's output, as its commands print them
    layout = sartorius.find_competition(data_root)
    # Saved first and beside the weights: the inference kernel finds it there even if training runs out of time.
    type_classifier.fit_and_save(layout.root, working / type_classifier.FILE_NAME)
    gpus = training_gpus(use_all_gpus)
    # Several GPUs (Kaggle's T4 x2) train one model through DDP; --batch-size is then per GPU.
    launcher = ["torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "-m"] if gpus > 1 else []
    for done, name in enumerate(names):
        budget, minutes = time_share(deadline - time.monotonic(), len(names) - done, save_margin_s)
        if minutes < 1:
            raise RuntimeError(f"only {budget:.0f} s left for {name}; raise --time-limit or train fewer variants")
        print(f"--- training {name} on {f'{gpus} GPU(s)' if gpus else 'the CPU'}, {minutes} min at most, "
              f"stages {' -> '.join(stages.names())}", flush=True)
        variant_deadline = time.monotonic() + budget
        common = [*launcher, "kit.train", "--variant", name, "--data", layout.root, "--out", working]
        arguments, hard_stop = _first_stages(stages, variant_deadline, save_margin_s)
        run_kit(*common, *arguments, *train_args, timeout=hard_stop)
        _tune(name, layout.root, working, save_margin_s)
        if stages.pseudo_round:
            _pseudo_round(name, common, layout.root, working, stages, variant_deadline, save_margin_s, train_args)
    # The flow targets cached during training would add about 1 GB to this kernel's output: not kept.
    shutil.rmtree(working / "cache", ignore_errors=True)
    for path in sorted(working.rglob("*")):
        if path.is_file():
            print(f"{path.relative_to(working)}  {path.stat().st_size:,} bytes")


def _first_stages(stages: StageOptions, deadline: float, save_margin_s: float) -> tuple[list[str], float]:
    """(kit.train's stage arguments, its hard stop in seconds) for the call that pretrains (if asked)
    then fine-tunes: each stage gets an even share of the variant's time left (``time_share``); a
    pseudo-label round keeps its share for after."""
    left, arguments, hard_stop = stages.names(), [], 0.0
    seconds_left = deadline - time.monotonic()
    if stages.pretrain is not None:
        budget, minutes = time_share(seconds_left, len(left), save_margin_s)
        _check_minutes(minutes, "pretraining")
        arguments += ["--pretrain", stages.pretrain, "--pretrain-epochs", str(stages.pretrain_epochs),
                      "--pretrain-time-limit", _minutes(minutes)]
        arguments += ["--pretrain-max-images", str(stages.pretrain_max_images)] if stages.pretrain_max_images else []
        seconds_left, hard_stop, left = seconds_left - budget, budget, left[1:]
    budget, minutes = time_share(seconds_left, len(left), save_margin_s)
    _check_minutes(minutes, "fine-tuning")
    return [*arguments, "--time-limit", _minutes(minutes)], hard_stop + budget


def _pseudo_round(name: str, common: Sequence, root: Path, working: Path, stages: StageOptions, deadline: float,
                  save_margin_s: float, train_args: Sequence[str]) -> None:
    """Pseudo-labels of ``train_semi_supervised/`` from the fine-tuned weights, then one more stage
    trained on them beside the split (``kit.train --resume --extra-data``) in the time left. Where the
    network kept no cell, the round is skipped and says so: the fine-tuned, tuned weights stand."""
    labels = working / f"{name}-pseudo-labels.csv"
    run_kit("kit.pseudo", "--data", root, "--weights", working / f"{name}.pt", "--out", labels,
            "--min-confidence", stages.min_confidence, timeout=max(deadline - time.monotonic() - save_margin_s, 1))
    if not pseudo_labels.holds_cells(labels):
        print(f"--- no pseudo-labelled cell at --min-confidence {stages.min_confidence:g}: the pseudo-label round of "
              f"{name} is skipped; its fine-tuned weights stand", flush=True)
        return
    _, minutes = time_share(deadline - time.monotonic(), 1, save_margin_s)
    _check_minutes(minutes, "the pseudo-label round")
    run_kit(*common, "--resume", "--extra-data", labels, "--time-limit", _minutes(minutes), *train_args,
            timeout=max(deadline - time.monotonic(), 1))
    _tune(name, root, working, save_margin_s)


def _tune(name: str, root: Path, working: Path, save_margin_s: float) -> None:
    if variants.get_variant(name).target == "flow":  # per-type extraction settings into the weights
        run_kit("kit.tune", "--data", root, "--weights", working / f"{name}.pt", timeout=save_margin_s)


def _check_minutes(minutes: int, what: str) -> None:
    if minutes < 1:
        raise RuntimeError(f"under a minute left for {what}; raise --time-limit or turn a stage off")


def _minutes(minutes: int) -> str:
    return format_time_limit(60 * minutes)


def training_gpus(use_all_gpus: bool) -> int:
    """GPUs to train on: all the session has, or at most one."""
    import torch  # here, not at the top: the inference notebook's own process never needs torch

    count = torch.cuda.device_count()
    return count if use_all_gpus else min(count, 1)


def weight_copies(root: Path, name: str, skip: Path) -> list[Path]:
    """Every file called ``name`` below ``root`` (kernel outputs are mounted there), ``skip`` not
    searched; copies with the same bytes count once (a session may mount one kernel's output both at
    ``<root>/<slug>/`` and at ``<root>/notebooks/<user>/<slug>/``)."""
    found = []
    for folder, subfolders, file_names in os.walk(root, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if Path(folder, d).resolve() != skip)
        path = Path(folder, name)
        if name in file_names and not any(filecmp.cmp(path, seen, shallow=False) for seen in found):
            found.append(path)
    return found


def find_weights(root: Path, name: str, skip: Path, kernels: Sequence[str]) -> Path:
    """The one file called `name` below `root` (``weight_copies``); an error names the ``kernels``
    whose output to attach: the kernel that trains it."""
    found = weight_copies(root, name, skip)
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} different ({', '.join(map(str, found))})"
        raise FileNotFoundError(f"{what} {name} below {root}: attach the output of {_either(kernels)} as an input "
                                "(Add Input -> Your Work), after its run has finished"
                                + ("; remove the other copies" if found else ""))
    return found[0]


def attached_weights(weight_files: Sequence[str], sources: Mapping[str, str], root: Path, skip: Path,
                     select_best: bool) -> list[Path]:
    """The weights of ``weight_files`` attached below ``root`` (``sources``: the kernel that trains
    each). All are needed to average them; with ``select_best`` (choose one by its validation
    score), those attached are enough, the missing are named, and only none attached is an error."""
    copies = {name: weight_copies(root, name, skip) for name in weight_files}
    for name, found in copies.items():
        if len(found) > 1:
            find_weights(root, name, skip, [sources[name]])  # raises, naming the copies
    missing = [name for name, found in copies.items() if not found]
    attach = ", ".join(f"{sources[name]} (for {name})" for name in missing)
    if missing and (not select_best or len(missing) == len(weight_files)):
        which = "at least one of " if select_best and len(missing) > 1 else ""
        raise FileNotFoundError(f"no {' or '.join(missing) if select_best else ', '.join(missing)} below {root}: "
                                f"attach the output of {which}{attach} as an input (Add Input -> Your Work), "
                                "after its run has finished")
    if missing:
        print(f"--select-best chooses among the attached weights only: {', '.join(missing)} not found below "
              f"{root}; to compare them too, attach the output of {attach}", flush=True)
    return [found[0] for found in copies.values() if found]


def write_submission(weight_files: Sequence[str], weight_kernels: Sequence[str], *, input_root: Path,
                     working: Path, infer_options: Sequence[str] = (),
                     weight_sources: Mapping[str, str] | None = None) -> Path:
    """The inference notebook: ``kit.infer`` on the test images with the weights found below
    ``input_root`` (its default cell-type classifier lies beside the first); the submission validated.

    ``weight_sources``: the kernel that trains each of ``weight_files`` (default: any of
    ``weight_kernels``). With ``--select-best`` in ``infer_options`` the attached weights are enough
    (``attached_weights``); where only one is, it is used as it is.
    """
    layout = sartorius.find_competition(input_root, need_train=False)
    sources = dict(weight_sources or {name: _either(weight_kernels) for name in weight_files})
    select_best = "--select-best" in infer_options
    weights = attached_weights(weight_files, sources, input_root, layout.root.resolve(), select_best)
    if select_best and len(weights) == 1:  # nothing to choose between
        infer_options = [option for option in infer_options if option != "--select-best"]
    target = working / "submission.csv"
    run_kit("kit.infer", "--data", layout.root, "--weights", *weights, "--out", target, *infer_options)
    test_ids = list(sartorius.test_image_paths(layout))
    submission.validate(target, test_ids)
    print(f"{target} is valid: {len(test_ids)} test image(s)")
    return target


def _either(kernels: Sequence[str] | str) -> str:
    """``a``, or ``one of a, b``: the kernels one of whose outputs to attach."""
    if isinstance(kernels, str):
        return kernels
    return kernels[0] if len(kernels) == 1 else "one of " + ", ".join(kernels)
