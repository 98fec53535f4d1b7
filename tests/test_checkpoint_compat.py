"""Checkpoints written before the package moved into stage folders still load: a checkpoint holds
plain values only (no pickled kit class), so a module's new path cannot break it.

``fixtures/checkpoint-v2-main.pt.gz`` is a resumable ``hot-flow-unet`` checkpoint written by
``kit.model.checkpoints.save_checkpoint`` of the kit as it was before the move (commit 4557c8d), with every
weight set to zero so that it gzips to 40 KB (the file itself is the real network's 31 MB), and
inference settings, history and stages as a tuned run leaves them.
"""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from kit.model import checkpoints, encoding
from kit.split import Split

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint-v2-main.pt.gz"


@pytest.fixture(scope="module")
def old_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("old") / "hot-flow-unet-last.pt"
    with gzip.open(FIXTURE, "rb") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


def test_a_checkpoint_of_the_kit_before_the_move_loads(old_checkpoint):
    model, variant, checkpoint = checkpoints.load_checkpoint(old_checkpoint, expected_variant="hot-flow-unet")
    assert checkpoint["format"] == "kit-checkpoint-v2"
    assert variant.name == "hot-flow-unet" and variant.target == "flow"
    assert set(model.state_dict()) == set(checkpoint["model"])
    assert all(not p.any() for p in model.parameters())  # the zeroed weights, loaded as they were saved
    settings = checkpoints.InferenceSettings.of(checkpoint, old_checkpoint)
    assert settings.scales == {"astro": 1.0, "cort": 1.85, "shsy5y": 1.91}
    assert settings.postprocess["cell_prob"] == {"astro": 0.4}
    assert Split.from_dict(settings.split).val_ids == ("a", "b")
    assert checkpoint["history"][0]["stage"] == "finetune" and checkpoint["stages"][0]["name"] == "finetune"
    assert "optimizer" in checkpoint and checkpoint["epoch"] == 1


def test_the_old_checkpoint_predicts(old_checkpoint):
    model, variant, _ = checkpoints.load_checkpoint(old_checkpoint)
    x = encoding.model_input(torch.zeros(1, 32, 32, dtype=torch.uint8), ["astro"], variant)
    prob, flow = encoding.decode_output(model(x), variant)
    assert prob.shape == (1, 32, 32) and flow.shape == (1, 2, 32, 32)
    assert torch.allclose(prob, torch.full_like(prob, 0.5))  # zero weights: logit 0 everywhere
