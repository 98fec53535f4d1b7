"""kit.training.batches: crops at each image's scale, flips that turn the flow vectors, validation truth."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kit import flows, rle
from kit.data import rescale, sartorius
from kit.model.variants import VARIANTS
from kit.training import batches


def _split(labels: np.ndarray, cell_type: str = "cort", scale: float = 1.0) -> batches.TrainData:
    target = np.concatenate([flows.masks_to_flows(labels), (labels > 0)[None]]).astype(np.float16)
    image = np.where(labels > 0, 180, 40).astype(np.uint8) + (np.arange(labels.shape[1]) % 7).astype(np.uint8)
    return batches.TrainData(["a"], [cell_type], torch.from_numpy(image)[None], torch.from_numpy(target)[None],
                             [rle.encode_labels(labels)], torch.tensor([scale]), torch.from_numpy(labels)[None])


def _discs(height=64, width=96) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    labels = np.zeros((height, width), np.int32)
    radius = min(height, width) / 6
    labels[(yy - 0.35 * height) ** 2 + (xx - 0.4 * width) ** 2 < radius ** 2] = 1
    labels[(yy - 0.62 * height) ** 2 + (xx - 0.65 * width) ** 2 < (1.3 * radius) ** 2] = 2
    return labels


def test_resample_at_scale_one_is_the_plain_crop():
    batch = torch.arange(2 * 64 * 96, dtype=torch.float32).reshape(2, 1, 64, 96)
    out = rescale.resample(batch, torch.ones(2), (32, 40), torch.tensor([[0.0, 1.0]]), "bilinear")
    torch.testing.assert_close(out, batch[:, :, :32, 56:96])
    centred = rescale.resample(batch, torch.ones(2), (32, 40), None, "nearest")
    torch.testing.assert_close(centred, batch[:, :, 16:48, 28:68])


def test_a_doubled_image_is_upsampled_around_the_crop_centre():
    batch = torch.arange(64 * 96, dtype=torch.float32).reshape(1, 1, 64, 96)
    out = rescale.resample(batch, torch.tensor([2.0]), None, None, "nearest")
    assert out.shape == (1, 1, 128, 192)
    torch.testing.assert_close(out[0, 0, ::2, ::2], batch[0, 0])


def test_flips_turn_the_flow_vectors_with_the_image(monkeypatch):
    monkeypatch.setattr(batches, "FLOW_SCALE_JITTER", (1.0, 1.0))
    labels = _discs()
    split = _split(labels)
    seen = set()
    for seed in range(12):
        images, target = batches.resample_batch(split, torch.tensor([0]), (64, 96),
                                                torch.Generator().manual_seed(seed), augment=True)
        for dims in ((), (-1,), (-2,), (-2, -1)):
            flipped = np.flip(labels, [d + 2 for d in dims]) if dims else labels
            expected = flows.masks_to_flows(np.ascontiguousarray(flipped))
            if np.array_equal(images[0].numpy(), np.flip(split.images[0].numpy(), [d + 2 for d in dims])):
                np.testing.assert_allclose(target[0, :2].numpy(), expected, atol=2e-3)
                assert np.array_equal(target[0, 2].numpy() > 0.5, flipped > 0)
                seen.add(dims)
                break
        else:
            pytest.fail(f"seed {seed}: the image is no flip of the original")
    assert len(seen) == 4


def test_the_truth_of_a_rescaled_crop_matches_its_mask_target():
    labels = _discs(128, 160)
    split = _split(labels, scale=1.6)
    truth = split.truth((96, 96))
    assert split.truth((96, 96)) is truth  # computed once per crop size
    union = np.zeros((96, 96), bool)
    for run in truth[0]:
        union |= rle.decode(run, (96, 96))
    _, target = batches.make_batch(split, torch.tensor([0]), VARIANTS["hot-flow-unet"], (96, 96))
    mask = target[0, 2].numpy() > 0.5
    assert len(truth[0]) == 2 and (union ^ mask).sum() <= 0.02 * mask.sum()


def test_type_scales_bring_each_type_to_the_common_diameter(shared_dir):
    df = sartorius.read_train_csv(sartorius.find_competition(shared_dir).train_csv)
    diameters = sartorius.cell_diameters(df)
    assert 25 < diameters["astro"] < 35 and 13 < diameters["cort"] < 20 and 12 < diameters["shsy5y"] < 20
    scales = rescale.type_scales(diameters, 30.0)
    assert all(scales[t] * diameters[t] == pytest.approx(30.0) for t in scales)
    assert rescale.type_scales(diameters, 0.0) == dict.fromkeys(sorted(diameters), 1.0)
