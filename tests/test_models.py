"""The U-Net, its input/output conventions, and checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kit.model import checkpoints, hardware
from kit.model.checkpoints import load_checkpoint, save_checkpoint
from kit.model.encoding import decode_output, model_input
from kit.model.losses import build_loss
from kit.model.network import build_model, UNet
from kit.model.variants import OPTIMIZERS, VARIANTS
from kit.training import loop, setup


def _expected_parameters(in_channels: int, out_channels: int) -> int:
    """Parameter count of the paper's U-Net worked out from its description."""
    def double_conv(cin, cout):  # two bias-free 3x3 convs, each with a BatchNorm (weight + bias)
        return 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout

    widths = [32, 64, 128, 256]
    total, cin = 0, in_channels
    for w in widths:
        total += double_conv(cin, w)
        cin = w
    total += double_conv(256, 512)
    cin = 512
    for w in reversed(widths):
        total += 4 * cin * w + w  # 2x2 transposed conv with bias
        total += double_conv(2 * w, w)  # after concatenating the skip
        cin = w
    return total + 32 * out_channels + out_channels  # 1x1 head with bias


@pytest.mark.parametrize("name", list(VARIANTS))
def test_build_model_has_the_papers_architecture(name):
    v = VARIANTS[name]
    model = build_model(v)
    assert sum(p.numel() for p in model.parameters()) == _expected_parameters(v.in_channels, v.out_channels)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(convs) == 18
    assert len(dropouts) == (18 if v.dropout > 0 else 0)
    assert all(d.p == v.dropout for d in dropouts)


def test_the_residual_network_adds_projections_and_a_style_per_decoder():
    plain, residual = UNet(4, 3), UNet(4, 3, residual=True)
    widths_in = [(4, 32), (32, 64), (64, 128), (128, 256), (256, 512), (512, 256), (256, 128), (128, 64), (64, 32)]
    projections = sum(cin * cout for cin, cout in widths_in)  # 1x1, bias-free
    styles = sum(512 * w + w for w in (256, 128, 64, 32))  # one linear map (with bias) per decoder
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(residual) - count(plain) == projections + styles


@pytest.mark.parametrize("residual", [False, True])
def test_only_the_style_vector_lets_a_pixel_see_past_its_receptive_field(residual):
    torch.manual_seed(0)
    model = UNet(1, 1, residual=residual).eval()
    image = torch.rand(1, 1, 16, 640)
    changed = image.clone()
    changed[..., 560:] = 0.0  # far beyond the receptive field of the left edge's pixels
    with torch.no_grad():
        left, left_changed = model(image)[..., :32], model(changed)[..., :32]
    assert torch.equal(left, left_changed) != residual


def test_a_residual_checkpoint_round_trips_and_an_old_one_without_the_setting_loads(tmp_path):
    variant = VARIANTS["hot-flow-unet-plus"].replace(residual=True)
    model = build_model(variant)
    save_checkpoint(tmp_path / "r.pt", model, variant, epoch=1, best_score=0.0)
    loaded, found, _ = load_checkpoint(tmp_path / "r.pt")
    assert found.residual and loaded.styles is not None
    old = torch.load(tmp_path / "r.pt", weights_only=True)
    plain = VARIANTS["hot-flow-unet-plus"]
    old["variant"] = {k: v for k, v in plain.to_dict().items() if k != "residual"}  # saved before the setting
    old["model"] = build_model(plain).state_dict()
    torch.save(old, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")[1] == plain


@pytest.mark.parametrize("height, width", [(37, 50), (16, 16), (33, 17)])
@pytest.mark.parametrize("residual", [False, True])
def test_any_size_goes_in_and_comes_back_out(height, width, residual):
    model = UNet(4, 3, residual=residual).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 4, height, width))
    assert out.shape == (2, 3, height, width)
    assert torch.isfinite(out).all()


def test_a_whole_competition_image_goes_in():
    model = UNet(1, 1).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, 520, 704))
    assert out.shape == (1, 1, 520, 704)


def test_model_input_standardises_each_image_and_appends_one_hot_planes_in_cell_type_order():
    images = torch.tensor([[[0, 255], [51, 102]], [[1, 2], [3, 4]], [[7, 7], [7, 7]]], dtype=torch.uint8)
    x = model_input(images, ["shsy5y", "cort", "astro"], VARIANTS["hot-unet"])
    assert x.dtype == torch.float32 and x.shape == (3, 4, 2, 2)
    for image, channel in zip(images.numpy().astype(np.float64), x[:, 0].numpy()):
        expected = (image - image.mean()) / max(image.std(ddof=1), 1.0)  # a flat image stays flat, at 0
        np.testing.assert_allclose(channel, expected, rtol=1e-6, atol=1e-6)
    # CELL_TYPES = (cort, astro, shsy5y)
    assert torch.equal(x[0, 1:], torch.tensor([0.0, 0.0, 1.0])[:, None, None].expand(3, 2, 2))
    assert torch.equal(x[1, 1:], torch.tensor([1.0, 0.0, 0.0])[:, None, None].expand(3, 2, 2))
    plain = model_input(images[:, None], ["astro"] * 3, VARIANTS["unet"])
    assert plain.shape == (3, 1, 2, 2) and torch.equal(plain[:, 0], x[:, 0])


def test_model_input_rejects_bad_batches():
    images = torch.zeros(2, 4, 4, dtype=torch.uint8)
    with pytest.raises(TypeError, match="uint8"):
        model_input(images.float(), ["cort", "cort"], VARIANTS["unet"])
    with pytest.raises(ValueError, match="2 images but 1 cell types"):
        model_input(images, ["cort"], VARIANTS["hot-unet"])
    with pytest.raises(ValueError, match="unknown cell type.*'neuron'.*cort, astro, shsy5y"):
        model_input(images, ["cort", "neuron"], VARIANTS["hot-unet"])
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        model_input(images[None], ["cort", "cort"], VARIANTS["unet"])


def test_decode_output_undoes_the_flow_scale():
    output = torch.zeros(1, 3, 2, 2)
    output[0, 0] = 5.0  # dy, scaled by flow_scale = 5
    output[0, 1] = -2.5
    output[0, 2, 0, 0] = 100.0
    prob, flows = decode_output(output, VARIANTS["hot-flow-unet"])
    assert torch.allclose(flows[0, 0], torch.ones(2, 2)) and torch.allclose(flows[0, 1], torch.full((2, 2), -0.5))
    assert torch.allclose(prob, torch.tensor([[[1.0, 0.5], [0.5, 0.5]]]))
    prob, flows = decode_output(torch.zeros(1, 1, 2, 2), VARIANTS["unet"])
    assert flows is None and torch.equal(prob, torch.full((1, 2, 2), 0.5))


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    variant = VARIANTS["hot-drop-unet"].replace(epochs=7)
    model = build_model(variant)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 4, 16, 16)).mean().backward()
    optimizer.step()  # gives the optimizer a momentum state to save
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10, 0.5)
    path = tmp_path / "hot-drop-unet.pt"
    save_checkpoint(path, model, variant, optimizer=optimizer, scheduler=scheduler, epoch=3, best_score=0.25,
                    history=[{"epoch": 1, "val_score": 0.1}, {"epoch": 2, "val_score": 0.25}, {"epoch": 3}])
    return path, model.eval(), variant


def test_a_checkpoint_loads_with_weights_only(saved):
    path, model, variant = saved
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["variant"]["name"] == "hot-drop-unet" and checkpoint["variant"]["epochs"] == 7
    assert checkpoint["epoch"] == 3 and checkpoint["best_score"] == 0.25 and len(checkpoint["history"]) == 3
    assert set(checkpoint["model"]) == set(model.state_dict())
    assert checkpoint["optimizer"]["state"] and checkpoint["scheduler"]["step_size"] == 10


def test_load_checkpoint_rebuilds_the_same_network(saved):
    path, model, variant = saved
    loaded, loaded_variant, checkpoint = load_checkpoint(path, expected_variant="hot-drop-unet")
    assert loaded_variant == variant and not loaded.training
    x = torch.rand(1, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert load_checkpoint(path, expected_variant=variant)[1] == variant  # same architecture, schedule may differ


def test_a_checkpoint_of_another_variant_is_a_clear_error(saved):
    path, _, variant = saved
    with pytest.raises(ValueError, match="holds variant 'hot-drop-unet', not 'hot-unet'"):
        load_checkpoint(path, expected_variant="hot-unet")
    with pytest.raises(ValueError, match="dropout 0.2 != 0.5"):
        load_checkpoint(path, expected_variant=variant.replace(dropout=0.5))


def test_corrupt_truncated_and_foreign_files_are_clear_errors(saved, tmp_path):
    path, _, _ = saved
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:100_000])
    for bad in (garbage, truncated):
        with pytest.raises(ValueError, match=f"{bad.name} is not a readable checkpoint: corrupt, truncated"):
            load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(ValueError, match="foreign.pt is a torch file but not a kit checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_weights_that_do_not_fit_the_variant_are_a_clear_error(saved):
    path, _, _ = saved
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["variant"]["in_channels"] = 1  # the first conv still expects 4 channels
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="the weights do not fit variant 'hot-drop-unet'"):
        load_checkpoint(path)


def test_a_failed_save_leaves_the_previous_checkpoint_intact(saved, monkeypatch):
    path, model, variant = saved
    before = path.read_bytes()

    def broken_save(obj, f):
        with open(f, "wb") as handle:
            handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, variant, epoch=4)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


@pytest.mark.parametrize("cpuinfo, expected", [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n", True),  # AMD Zen 4, Intel Cooper Lake
    ("flags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n", True),  # Intel Sapphire Rapids
    ("flags\t\t: fpu sse2 avx2 avx512f avx512bw\n", False),  # AVX-512 without bf16: emulated, slower than fp32
    ("Features\t: fp asimd sve bf16 i8mm\n", True),  # Arm Neoverse V1 / Graviton 3
    ("Features\t: fp asimd evtstrm aes\n", False), ("", False)])
def test_cpu_bf16_is_native_only_where_the_kernel_lists_the_instructions(cpuinfo, expected):
    assert hardware.cpu_has_native_bf16(cpuinfo) is expected


@pytest.mark.parametrize("capability, expected", [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16),
                                                  ((7, 5), torch.float16), ((6, 0), torch.float16)])
def test_gpus_with_bf16_get_bf16_and_t4_p100_get_fp16(capability, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    gpu = torch.device("cuda", 0)
    assert hardware.amp_dtype(gpu) is expected
    assert hardware.amp_dtype(torch.device("cpu")) is (torch.bfloat16 if hardware.cpu_has_native_bf16() else None)
    assert hardware.autocast_dtype(gpu, "auto") is expected and hardware.autocast_dtype(gpu, "fp32") is None
    assert hardware.autocast_dtype(gpu, "fp16") is torch.float16
    if expected is torch.float16:
        with pytest.raises(ValueError, match="Tesla T4 has no bf16; use --precision fp16"):
            hardware.autocast_dtype(gpu, "bf16")
    else:
        assert hardware.autocast_dtype(gpu, "bf16") is torch.bfloat16


def test_v1_checkpoints_of_the_old_input_scaling_are_refused(saved, tmp_path):
    old = torch.load(saved[0], weights_only=True)
    old["format"] = "kit-checkpoint-v1"
    torch.save(old, tmp_path / "v1.pt")
    with pytest.raises(ValueError, match="older kit that fed the network image / 255.*train again"):
        load_checkpoint(tmp_path / "v1.pt")


def test_first_layer_statistics_barely_depend_on_which_cell_types_a_batch_mixes(samples):
    """Batch norm trains on the statistics of 2-image batches and predicts with their running
    average: the first conv's output variance must not swing with the batch's cell-type mix
    (image / 255 beside 0/1 one-hot planes made it 75x larger for mixed batches)."""
    torch.manual_seed(0)
    first_conv = build_model(VARIANTS["hot-unet"]).encoders[0][0]
    by_type = {}
    for sample in samples:
        by_type.setdefault(sample.cell_type, []).append(sample)

    def conv_variance(pair):
        images = torch.from_numpy(np.stack([s.image[:256, :256] for s in pair]))
        with torch.no_grad():
            return first_conv(model_input(images, [s.cell_type for s in pair], VARIANTS["hot-unet"])).var((0, 2, 3))

    one_type = torch.stack([conv_variance(group[:2]) for group in by_type.values()]).mean(0)
    for first, second in (("cort", "astro"), ("astro", "shsy5y"), ("cort", "shsy5y")):
        mixed = conv_variance([by_type[first][0], by_type[second][0]])
        assert (mixed / one_type).mean() < 3, (first, second)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_checkpoint_bytes_is_room_for_the_resumable_checkpoint_of_every_optimizer(tmp_path, optimizer):
    """The free-space check before a run: the estimate holds the real resumable checkpoint after a
    step (when the optimiser's buffers exist), and overshoots it by less than one weights copy."""
    variant = VARIANTS["unet"].replace(optimizer=optimizer)
    model = build_model(variant)
    optimizer_state = setup.build_optimizer(model, variant)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer_state, variant.lr_step, variant.lr_gamma)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x, target = torch.rand(1, 1, 32, 32), (torch.rand(1, 1, 32, 32) > 0.5).float()
    loop.train_step(model, x, target, build_loss(variant), optimizer_state, scaler, None)
    path = tmp_path / "unet-last.pt"
    save_checkpoint(path, model, variant, optimizer=optimizer_state, scheduler=scheduler, scaler=scaler, epoch=1)
    weights = 4 * sum(p.numel() for p in model.parameters())
    size, estimate = path.stat().st_size, checkpoints.checkpoint_bytes(variant)
    assert size <= estimate < size + weights // 10


def test_inference_settings_read_older_checkpoints_and_refuse_newer_ones():
    legacy = {"cell_diameters": {"cort": 20.0}, "scales": {"cort": 1.5}}  # written before the version
    settings = checkpoints.InferenceSettings.from_dict(legacy)
    assert settings.scales == {"cort": 1.5} and settings.validation is None and not settings.postprocess
    assert checkpoints.InferenceSettings.from_dict(settings.to_dict()) == settings
    assert settings.to_dict() == {"version": checkpoints.INFERENCE_SETTINGS_VERSION, **legacy}
    assert checkpoints.InferenceSettings.from_dict({}) == checkpoints.InferenceSettings()
    with pytest.raises(ValueError, match="newer than this kit's .*update the kit"):
        checkpoints.InferenceSettings.from_dict({"version": checkpoints.INFERENCE_SETTINGS_VERSION + 1})
    with pytest.raises(ValueError, match=r"unknown inference setting\(s\) \['scale'\]"):
        checkpoints.InferenceSettings.from_dict({"scale": {"cort": 1.5}})
