"""Losses and the trainer: batches, augmentation, validation, and the command line on real images (CPU)."""
from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from kit import cli, flows, rle, train
from kit.data import sartorius
from kit.model.checkpoints import load_checkpoint, save_checkpoint
from kit.model.encoding import model_input
from kit.model.losses import build_loss, flow_loss, FlowLoss, mask_loss, MaskLoss
from kit.model.network import build_model
from kit.model.variants import VARIANTS
from kit.split import split_train_val
from kit.training import batches, config, loop, run_folder, setup

CROP = ["--crop", "96x128"]  # small enough for CPU, large enough to hold cells
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- losses

def _bce(logit: np.ndarray, y: np.ndarray, pos_weight: float = 1.0) -> float:
    p = 1.0 / (1.0 + np.exp(-logit))
    return float(np.mean(-(pos_weight * y * np.log(p) + (1 - y) * np.log(1 - p))))


def test_mask_loss_is_weighted_binary_cross_entropy():
    logits = np.array([[-2.0, 0.5], [1.5, 3.0]])
    target = np.array([[0.0, 1.0], [1.0, 0.0]])
    as_tensor = lambda a: torch.tensor(a, dtype=torch.float32)[None, None]  # noqa: E731
    for pos_weight in (1.0, 3.0):
        got = mask_loss(as_tensor(logits), as_tensor(target), pos_weight).item()
        assert got == pytest.approx(_bce(logits, target, pos_weight), rel=1e-6)
    assert MaskLoss(3.0)(as_tensor(logits), as_tensor(target)).item() == pytest.approx(_bce(logits, target, 3.0))


def test_flow_loss_is_half_mse_on_scaled_flows_plus_bce_on_the_cell_logit():
    rng = np.random.default_rng(0)
    output = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    target = np.concatenate([rng.uniform(-1, 1, (2, 2, 4, 5)), rng.integers(0, 2, (2, 1, 4, 5))], 1).astype(np.float32)
    expected = 0.5 * np.mean((output[:, :2] - 5 * target[:, :2]) ** 2) + _bce(output[:, 2], target[:, 2])
    got = flow_loss(torch.from_numpy(output), torch.from_numpy(target), flow_scale=5.0).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert FlowLoss(5.0)(torch.from_numpy(output), torch.from_numpy(target)).item() == pytest.approx(got)


def test_build_loss_follows_the_variant_and_checks_shapes():
    assert isinstance(build_loss(VARIANTS["hot-flow-unet"]), FlowLoss)
    weighted = build_loss(VARIANTS["hot-unet-weighted"])
    assert isinstance(weighted, MaskLoss) and weighted.pos_weight == 3.0
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        flow_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), flow_scale=5.0)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        mask_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))


# ---------------------------------------------------------------- batches and augmentation

def test_parse_time_limit_and_crop():
    assert cli.parse_time_limit("8:30") == 8.5 * 3600
    assert cli.parse_time_limit("0:05") == 300
    for bad in ("830", "1:75", "1:5", "-1:00"):
        with pytest.raises(Exception, match="is not H:MM"):
            cli.parse_time_limit(bad)
    parser = train.get_args_parser()
    assert parser.parse_args(["--crop", "64x96"]).crop == (64, 96)
    assert parser.parse_args(["--crop", "128"]).crop == (128, 128)
    assert parser.parse_args([]).time_limit == 8.5 * 3600


def _disc_split(n: int = 2, height: int = 64, width: int = 128) -> batches.TrainData:
    """Synthetic images: one bright disc per image (image = 255 x mask)."""
    yy, xx = np.mgrid[:height, :width]
    masks = np.stack([(yy - height / 2) ** 2 + (xx - width / 2 - 10 * i) ** 2 < 20 ** 2 for i in range(n)])
    images = torch.from_numpy(masks.astype(np.uint8) * 255)
    return batches.TrainData([f"im{i}" for i in range(n)], ["astro"] * n, images,
                           torch.from_numpy(masks[:, None].astype(np.uint8)),
                           [[rle.encode(m)] for m in masks])


def _image_channel(mask_target: torch.Tensor) -> torch.Tensor:
    """The network's image channel for images equal to 255 x ``mask_target`` (float[B, 1, H, W])."""
    images = (mask_target[:, 0] * 255).to(torch.uint8)
    return model_input(images, ["astro"] * len(images), VARIANTS["unet"])[:, 0]


def test_make_batch_crops_image_and_target_together():
    split = _disc_split()
    variant = VARIANTS["hot-unet"]
    x, target = batches.make_batch(split, torch.tensor([1, 0]), variant, crop=(32, 40))
    assert x.shape == (2, 4, 32, 40) and target.shape == (2, 1, 32, 40) and target.dtype == torch.float32
    assert torch.equal(x[:, 0], _image_channel(target))  # image = 255 x mask here: the crops coincide
    assert torch.equal(target[1, 0], split.targets[0, 0, 16:48, 44:84].float())  # centred without a generator
    assert torch.equal(batches.batch_images(split, torch.tensor([1])), split.images[1:])
    x, target = batches.make_batch(split, torch.tensor([0, 1]), variant, crop=(32, 40),
                                 generator=torch.Generator().manual_seed(1))
    assert torch.equal(x[:, 0], _image_channel(target))
    with pytest.raises(ValueError, match="larger than the 64x128 images"):
        batches.make_batch(split, torch.tensor([0]), variant, crop=(65, 40))


def test_augmentation_moves_image_and_mask_together_and_keeps_the_one_hot_planes():
    split = _disc_split(8)
    x, target = batches.make_batch(split, torch.arange(8), VARIANTS["hot-drop-unet"])
    ax, atarget = batches.augment_batch(x, target, torch.Generator().manual_seed(0))
    assert ax.shape == x.shape and atarget.shape == target.shape
    assert torch.equal(ax[:, 1:], x[:, 1:])
    assert not torch.equal(ax[:, 0], x[:, 0])
    agree = ((ax[:, 0] > 0) == (atarget[:, 0] > 0.5)).float().mean().item()  # standardised: disc > 0
    assert agree > 0.99  # bilinear image vs nearest mask differ only along the disc edges
    assert set(atarget.unique().tolist()) <= {0.0, 1.0}


def test_flips_alone_give_exact_mirror_images(monkeypatch):
    monkeypatch.setattr(batches, "MAX_ROTATION_DEG", 0.0)
    monkeypatch.setattr(batches, "SCALE_RANGE", (1.0, 1.0))
    monkeypatch.setattr(batches, "MAX_TRANSLATE", 0.0)
    image = torch.rand(16, 1, 6, 10)
    out, _ = batches.augment_batch(image, (image > 0.5).float(), torch.Generator().manual_seed(0))
    seen = set()
    for before, after in zip(image, out):
        matches = [dims for dims in ((), (-1,), (-2,), (-2, -1))
                   if torch.allclose(after, before.flip(dims) if dims else before, atol=1e-5)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 4  # 16 draws: every flip combination occurs


def test_rotation_keeps_a_disc_round_on_a_wide_image(monkeypatch):
    # A rotation written naively in [-1, 1] grid coordinates would turn this disc into an ellipse.
    monkeypatch.setattr(batches, "SCALE_RANGE", (1.0, 1.0))
    monkeypatch.setattr(batches, "MAX_TRANSLATE", 0.0)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(192.0), indexing="ij")
    disc = (((yy - 31.5) ** 2 + (xx - 95.5) ** 2) < 20 ** 2).float()[None, None].repeat(6, 1, 1, 1)
    _, rotated = batches.augment_batch(disc, disc, torch.Generator().manual_seed(3))
    for mask in rotated[:, 0]:
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        assert rows.max() - rows.min() + 1 == pytest.approx(40, abs=2)
        assert cols.max() - cols.min() + 1 == pytest.approx(40, abs=2)
        assert mask.sum().item() == pytest.approx(disc[0].sum().item(), rel=0.03)


# ---------------------------------------------------------------- validation and instances

class _Fixed(nn.Module):
    """A stand-in network that always answers the same output."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output

    def forward(self, x):
        return self.output


def _two_cells(height: int = 64, width: int = 96) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    labels = np.zeros((height, width), np.int32)
    labels[(yy - 30) ** 2 + (xx - 25) ** 2 < 12 ** 2] = 1
    labels[(yy - 30) ** 2 + (xx - 65) ** 2 < 15 ** 2] = 2
    return labels


def test_evaluate_gives_perfect_scores_to_a_perfect_mask_prediction():
    labels = _two_cells()
    split = batches.TrainData(["a"], ["cort"], torch.from_numpy((labels > 0).astype(np.uint8) * 200)[None],
                            torch.from_numpy((labels > 0).astype(np.uint8))[None, None],
                            [[rle.encode(labels == k) for k in (1, 2)]])
    logits = torch.from_numpy(np.where(labels > 0, 20.0, -20.0).astype(np.float32))[None, None]
    variant = VARIANTS["hot-unet"]
    scores = loop.evaluate(_Fixed(logits), split, variant, build_loss(variant))
    assert scores["val_loss"] < 1e-6
    assert (scores["val_dice"], scores["val_iou"], scores["val_accuracy"]) == (1.0, 1.0, 1.0)
    assert scores["val_score"] >= 0.9


def test_flow_outputs_decode_into_the_true_instances():
    labels = _two_cells()
    truth = flows.masks_to_flows(labels)
    target = np.concatenate([truth, (labels > 0)[None]]).astype(np.float16)
    split = batches.TrainData(["a"], ["shsy5y"], torch.zeros(1, *labels.shape, dtype=torch.uint8),
                            torch.from_numpy(target)[None], [[rle.encode(labels == k) for k in (1, 2)]])
    variant = VARIANTS["hot-flow-unet"]
    output = torch.from_numpy(np.concatenate([5.0 * truth, np.where(labels > 0, 20.0, -20.0)[None]]))
    scores = loop.evaluate(_Fixed(output[None].float()), split, variant, build_loss(variant))
    assert scores["val_score"] == 1.0 and scores["val_dice"] == 1.0
    assert scores["val_loss"] < 1e-3  # flows stored in float16


# ---------------------------------------------------------------- real images

@pytest.fixture(scope="module")
def layout(shared_dir):
    return sartorius.find_competition(shared_dir, need_test=False)


@pytest.fixture(scope="module")
def four_ids(layout):
    train_ids, _ = split_train_val(sartorius.image_table(sartorius.read_train_csv(layout.train_csv)))
    return train_ids[:4]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_learns_a_fixed_batch(name, layout, four_ids):
    variant = VARIANTS[name]
    split = batches.load_split(layout, four_ids, variant, torch.device("cpu"))
    x, target = batches.make_batch(split, torch.arange(4), variant, crop=(64, 96),
                                 generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, variant.in_channels, 64, 96) and target.shape == (4, variant.out_channels, 64, 96)
    torch.manual_seed(0)
    model = build_model(variant)
    optimizer = setup.build_optimizer(model, variant)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    criterion = build_loss(variant)
    model.train()
    losses = [loop.train_step(model, x, target, criterion, optimizer, scaler, None).item() for _ in range(6)]
    assert all(math.isfinite(loss) for loss in losses)
    assert np.mean(losses[-2:]) < 0.95 * losses[0], losses


def test_flow_targets_are_cached_and_reused(layout, four_ids, tmp_path, monkeypatch):
    variant = VARIANTS["hot-flow-unet"]
    first = batches.load_split(layout, four_ids[:2], variant, torch.device("cpu"), tmp_path)
    assert len(list(tmp_path.glob(f"{four_ids[0]}-*.npy"))) == 1
    sample = sartorius.load_samples(layout, four_ids[:1])[0]
    expected = flows.masks_to_flows(sample.labels)
    assert np.allclose(first.targets[0, :2].float().numpy(), expected, atol=1e-3)
    assert torch.equal(first.targets[0, 2], torch.from_numpy(sample.labels > 0).half())

    def no_recompute(labels):
        raise AssertionError("flows recomputed despite the cache")

    monkeypatch.setattr(batches.flows, "masks_to_flows", no_recompute)
    again = batches.load_split(layout, four_ids[:2], variant, torch.device("cpu"), tmp_path)
    assert torch.equal(again.targets, first.targets)


# ---------------------------------------------------------------- the command line

def _run(*argv: str) -> str:
    """``python -m kit.train ARGV`` in this process; returns what it printed."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        train.main(train.get_args_parser().parse_args(list(argv)))
    return buffer.getvalue()


def _cli(shared_dir: Path, out: Path, variant: str, *extra: str) -> list[str]:
    # Seed 1: its first validation image (shsy5y) has 11 cells in the centre crop, so the validation
    # scores are not those of an empty crop.
    return ["--variant", variant, "--data", str(shared_dir), "--out", str(out), "--max-images", "4",
            "--device", "cpu", "--seed", "1", *CROP, *extra]


@pytest.fixture(scope="module")
def smoke_run(shared_dir, tmp_path_factory):
    """An uninterrupted two-epoch hot-unet run: (output folder, printed log)."""
    out = tmp_path_factory.mktemp("smoke")
    return out, _run(*_cli(shared_dir, out, "hot-unet", "--epochs", "2", "--keep-steps", "3"))


def test_list_prints_the_variant_table():
    printed = _run("--list")
    assert all(name in printed for name in VARIANTS)


def test_the_eta_is_the_time_limits_end_when_that_comes_before_the_last_epoch():
    row = {"epoch": 1, "train_loss": 0.5, "val_loss": 0.4, "val_dice": 0.6, "val_iou": 0.4, "val_accuracy": 0.9,
           "val_score": 0.1, "lr": 1e-3, "images_per_s": 0.5, "epoch_s": 600.0}
    # 199 epochs of 10 minutes left (33 h), but the budget ends in 5 minutes: the run stops then.
    assert run_folder.progress_line(row, 200, [600.0], budget_left=300.0).endswith("ETA 0:05 (time limit)")
    assert run_folder.progress_line(row, 200, [600.0]).endswith("ETA 33:10")
    assert run_folder.progress_line(row, 3, [600.0], budget_left=7200.0).endswith("ETA 0:20")


def test_smoke_run_writes_weights_metrics_and_curves(smoke_run):
    out, printed = smoke_run
    assert "hot-unet: 4 train / 1 val images on cpu" in printed
    epochs = [line for line in printed.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and all("img/s" in line and "ETA" in line and "score" in line for line in epochs)
    metrics = pd.read_csv(out / "hot-unet-metrics.csv")
    assert list(metrics.columns) == list(run_folder.METRIC_COLUMNS)
    assert metrics["epoch"].tolist() == [1, 2] and np.isfinite(metrics.drop(columns="stage").to_numpy()).all()
    assert metrics["stage"].tolist() == ["finetune", "finetune"]  # one stage: no --pretrain, no --extra-data
    assert metrics["steps"].tolist() == [2, 4]  # 4 images at batch 2
    kept = torch.load(out / "hot-unet-step3.pt", weights_only=True)  # --keep-steps 3: mid-way through epoch 2
    assert kept["epoch"] == 2 and len(kept["history"]) == 1 and "optimizer" not in kept
    assert sorted(p.name for p in out.glob("hot-unet-step*.pt")) == ["hot-unet-step3.pt"]
    assert (metrics["val_dice"] >= metrics["val_iou"]).all() and (metrics["val_score"] < 1).all()
    assert (out / "hot-unet-curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    weights = torch.load(out / "hot-unet.pt", weights_only=True)
    assert weights["variant"]["name"] == "hot-unet" and weights["variant"]["epochs"] == 2
    assert "optimizer" not in weights  # the best-weights file is weights + settings only
    model, variant, _ = load_checkpoint(out / "hot-unet.pt", expected_variant="hot-unet")
    last = torch.load(out / "hot-unet-last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["scheduler"]["last_epoch"] == 2 and len(last["history"]) == 2


def test_resume_after_an_interrupted_run_continues_from_the_saved_epoch(shared_dir, tmp_path, smoke_run,
                                                                        monkeypatch):
    real_epoch, calls = loop.train_epoch, []

    def interrupted_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", interrupted_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        _run(*_cli(shared_dir, tmp_path, "hot-unet", "--epochs", "2"))
    assert torch.load(tmp_path / "hot-unet-last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(loop, "train_epoch", real_epoch)
    printed = _run(*_cli(shared_dir, tmp_path, "hot-unet", "--epochs", "2", "--resume"))
    assert "epochs 2-2" in printed and "epoch 1/2" not in printed and "epoch 2/2" in printed
    resumed = pd.read_csv(tmp_path / "hot-unet-metrics.csv")
    unbroken = pd.read_csv(smoke_run[0] / "hot-unet-metrics.csv")
    assert resumed["epoch"].tolist() == [1, 2]
    # Seeds are fixed per epoch: the resumed run trains exactly as the unbroken one did.
    for column in ("train_loss", "val_loss", "val_dice", "lr"):
        assert resumed[column].tolist() == pytest.approx(unbroken[column].tolist(), rel=1e-4), column


def test_the_time_limit_stops_cleanly_with_the_weights_saved(shared_dir, tmp_path):
    printed = _run(*_cli(shared_dir, tmp_path, "unet", "--epochs", "3", "--time-limit", "0:00"))
    assert "stopping before epoch 2: it would end past the time limit" in printed
    assert pd.read_csv(tmp_path / "unet-metrics.csv")["epoch"].tolist() == [1]
    assert torch.load(tmp_path / "unet.pt", weights_only=True)["epoch"] == 1
    assert "--resume continues" in printed


def test_resume_refuses_missing_foreign_and_corrupt_checkpoints(shared_dir, tmp_path, smoke_run):
    args = _cli(shared_dir, tmp_path, "unet", "--epochs", "2", "--resume")
    with pytest.raises(SystemExit, match="kit.train: error: --resume: no checkpoint .*unet-last.pt; run without"):
        _run(*args)
    shutil.copy(smoke_run[0] / "hot-unet-last.pt", tmp_path / "unet-last.pt")
    with pytest.raises(SystemExit, match="holds variant 'hot-unet', not 'unet'"):
        _run(*args)
    (tmp_path / "unet-last.pt").write_bytes(b"\x00" * 1000)
    with pytest.raises(SystemExit, match="unet-last.pt is not a readable checkpoint"):
        _run(*args)



def test_bf16_autocast_the_gpus_use_runs_end_to_end(shared_dir, layout, tmp_path):
    """The mixed-precision path of an A100/H100 run (bf16 autocast), on CPU: training, validation
    through the flow extraction, weights saved in float32, and validation close to fp32's."""
    printed = _run(*_cli(shared_dir, tmp_path, "hot-flow-unet", "--epochs", "1", "--precision", "bf16"))
    assert "on cpu, bf16 autocast, batch 2" in printed
    row = pd.read_csv(tmp_path / "hot-flow-unet-metrics.csv").iloc[0]
    assert np.isfinite(row.drop("stage").to_numpy(float)).all() and row["val_dice"] >= row["val_iou"]
    assert row["val_score"] < 1
    weights = torch.load(tmp_path / "hot-flow-unet.pt", weights_only=True)["model"]
    assert {tensor.dtype for tensor in weights.values() if tensor.is_floating_point()} == {torch.float32}
    model, variant, _ = load_checkpoint(tmp_path / "hot-flow-unet.pt")
    _, val_ids = split_train_val(sartorius.image_table(sartorius.read_train_csv(layout.train_csv)), seed=1)
    split = batches.load_split(layout, val_ids[:1], variant, torch.device("cpu"))
    criterion, crop = build_loss(variant), (96, 128)
    bf16 = loop.evaluate(model, split, variant, criterion, torch.bfloat16, crop)
    fp32 = loop.evaluate(model, split, variant, criterion, None, crop)
    assert bf16["val_loss"] == pytest.approx(row["val_loss"], rel=1e-4)  # what the run recorded
    assert bf16["val_loss"] == pytest.approx(fp32["val_loss"], rel=0.03)
    assert bf16["val_dice"] == pytest.approx(fp32["val_dice"], abs=0.02)


def test_the_fp16_grad_scaler_state_survives_a_resume(tmp_path):
    """T4 / P100 runs train in fp16 with a GradScaler: its scale must come back with --resume."""
    variant = VARIANTS["unet"]
    model = build_model(variant)
    optimizer = setup.build_optimizer(model, variant)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, variant.lr_step, variant.lr_gamma)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, enabled=True)
    x, target = torch.rand(1, 1, 32, 32), (torch.rand(1, 1, 32, 32) > 0.5).float()
    loop.train_step(model, x, target, build_loss(variant), optimizer, scaler, torch.float16)
    scaler.update(new_scale=512.0)  # as after overflow steps halved it
    history = [{"epoch": 1, "val_score": 0.1, "val_loss": 1.0}]
    save_checkpoint(tmp_path / "unet-last.pt", model, variant, optimizer=optimizer, scheduler=scheduler,
                    scaler=scaler, epoch=1, history=history)
    fresh_model = build_model(variant)
    fresh_optimizer = setup.build_optimizer(fresh_model, variant)
    fresh_scheduler = torch.optim.lr_scheduler.StepLR(fresh_optimizer, variant.lr_step, variant.lr_gamma)
    fresh_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, enabled=True)
    restored = setup.resume(tmp_path / "unet-last.pt", variant, fresh_model, fresh_optimizer, fresh_scheduler,
                                fresh_scaler)
    assert restored == history and fresh_scaler.get_scale() == 512.0
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh_model.state_dict().values()))

@pytest.mark.slow
def test_two_processes_train_through_torchrun(shared_dir, tmp_path):
    """The DDP path (gloo on CPU here, NCCL on GPUs): both ranks step, rank 0 writes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "kit.train", *_cli(shared_dir, tmp_path, "hot-flow-unet", "--epochs", "1")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on cpu x2" in done.stdout and done.stdout.count("epoch 1/1") == 1
    assert torch.load(tmp_path / "hot-flow-unet.pt", weights_only=True)["epoch"] == 1
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 5  # 4 train + 1 validation images


def test_model_selection_scores_only_the_crops_that_hold_cells():
    """An empty prediction scores 1.0 on a crop without cells; counted, it would lift a model that
    predicts nothing to 0.5 here. Scored over the crops that hold a cell, it gets 0."""
    labels = _two_cells(96, 128)
    empty = np.zeros_like(labels)
    masks = np.stack([labels > 0, empty > 0])
    split = batches.TrainData(["cells", "empty"], ["cort", "cort"], torch.from_numpy(masks.astype(np.uint8) * 200),
                              torch.from_numpy(masks[:, None].astype(np.uint8)),
                              [[rle.encode(labels == k) for k in (1, 2)], []])
    variant = VARIANTS["hot-unet"]
    nothing = _Fixed(torch.full((2, 1, 64, 96), -20.0))
    scores = loop.evaluate(nothing, split, variant, build_loss(variant), crop=(64, 96))
    assert scores["val_score"] == 0.0
    only_empty = batches.TrainData(["empty"], ["cort"], split.images[1:], split.targets[1:], [[]])
    alone = loop.evaluate(_Fixed(torch.full((1, 1, 64, 96), -20.0)), only_empty, variant, build_loss(variant),
                           crop=(64, 96))
    assert math.isnan(alone["val_score"])  # the epochs are then ranked by validation loss


def test_the_cosine_factor_warms_up_then_follows_the_larger_of_step_and_time_progress():
    factor = setup.cosine_factor(0.1, 100, config.Budget(limit=0.0))  # no time limit: steps alone
    assert factor(5) == pytest.approx(0.5) and factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5) and factor(100) == pytest.approx(0.0, abs=1e-12)
    half_spent = config.Budget(limit=100.0, started=time.monotonic() - 50.0)  # half of a 100 s limit is spent
    timed = setup.cosine_factor(0.0, 10 ** 6, half_spent)
    assert timed(0) == pytest.approx(0.5, abs=0.01)
    resumed = config.Budget(limit=100.0, resumed=50.0)  # a resumed run's 50 s count as spent
    assert setup.cosine_factor(0.0, 10 ** 6, resumed)(0) == pytest.approx(0.5, abs=0.01)


def test_a_single_process_stops_when_its_budget_less_the_reserve_is_spent():
    steps = []
    budget = config.Budget(limit=100.0, started=time.monotonic() - 50.0)
    state = SimpleNamespace(scheduler=SimpleNamespace(step=lambda: steps.append(1)), world=1, step_lr_per_batch=True,
                            budget=budget, steps=0, keep_steps=(), rank=0)
    assert not loop.after_step(state) and not budget.out_of_time
    budget.reserve = 60.0  # the last validation and save took a minute: 40 s were left, now none
    assert loop.after_step(state) and budget.out_of_time
    state.world = 2  # DDP ranks keep to the stop they decide together at each epoch's end
    assert not loop.after_step(state)
    assert len(steps) == 3  # the lr moved at every step
    state.world, state.step_lr_per_batch = 1, False  # the step schedule: lr moves per epoch, the stop is the same
    assert loop.after_step(state) and len(steps) == 3
    assert state.steps == 4  # every optimiser step counted, for --keep-steps and the metrics' steps column


def test_command_line_overrides_change_only_what_they_name():
    parse = train.get_args_parser().parse_args
    recipe = train.effective_variant(parse(["--variant", "hot-flow-unet-plus"]))
    assert recipe == train.get_variant("hot-flow-unet-plus")
    changed = train.effective_variant(parse(["--variant", "hot-flow-unet-plus", "--residual", "--cell-diameter", "0",
                                             "--optimizer", "sgd", "--lr", "0.2"]))
    assert changed == recipe.replace(residual=True, cell_diameter=0.0, optimizer="sgd", lr=0.2)
