"""The paper's U-Net, its inputs and outputs, and checkpoints that say which variant they hold.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts) so that
``torch.load(path, weights_only=True)`` reads it: ``format``, ``variant`` (``Variant.to_dict()``),
``model`` (state dict), ``epoch``, ``best_score``, ``history`` (the per-epoch metrics rows), ``inference``
(``InferenceSettings.to_dict()``: per-type scales, tuned post-processing settings, the validation split
the weights were trained with, possibly empty),
``stages`` (a staged run's pretraining / fine-tuning / pseudo-label stages, ``kit.stages``; empty
before); a
resumable checkpoint adds ``optimizer``, ``scheduler`` and ``scaler`` states. No random state is
saved: the trainer seeds batch order, crops and augmentation per epoch (only dropout masks differ
after a resume).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kit.competition import CELL_TYPES, LIVECELL_CELL_LINES
from kit.files import atomic_output, no_space_error
from kit.variants import IMAGE_CHANNELS, Variant

# v2: the image channel is standardised per image (v1 fed image / 255, see model_input).
CHECKPOINT_FORMAT = "kit-checkpoint-v2"
MIN_IMAGE_STD = 1.0  # grey levels: a flat image is centred, not blown up
ENCODER_WIDTHS = (32, 64, 128, 256)
BOTTLENECK_WIDTH = 512
SIZE_MULTIPLE = 2 ** len(ENCODER_WIDTHS)  # four 2x poolings: H and W are padded to a multiple of 16
# v2 adds ``split`` (older kits then ask for an update instead of naming an unknown entry); v1 files load as ever.
INFERENCE_SETTINGS_VERSION = 2
OPTIMIZER_STATE_COPIES = {"sgd": 1, "adam": 2, "adamw": 2}  # weight-sized buffers: momentum; first and second moments
# Settings that change the network or what it computes; schedule settings may differ on resume.
ARCHITECTURE_SETTINGS = ("in_channels", "out_channels", "target", "dropout", "flow_scale", "cell_diameter",
                         "residual")


@dataclass(frozen=True)
class InferenceSettings:
    """What inference needs from a checkpoint beyond its variant: the one reader and writer of the
    checkpoint's ``inference`` entry (``to_dict`` / ``from_dict``, versioned).

    ``cell_diameters`` and ``scales``: a rescaling variant's median cell diameter per type on its
    training images and the factor each type's images are resampled by (empty: native scale).
    ``postprocess``: ``kit.tune``'s per-type extraction settings, ``{"cell_prob": {type: value},
    "flow_threshold": {...}, "min_size": {...}}`` (empty: untuned). ``validation``: ``kit.tune``'s
    record of the tuned score (``kit.tune.validation_record``; None: not tuned). ``split``: the
    validation split the weights were trained with (``kit.split.Split.to_dict``; None: weights from
    before it was recorded, taken to have the default split).
    """

    cell_diameters: Mapping[str, float] = dataclasses.field(default_factory=dict)
    scales: Mapping[str, float] = dataclasses.field(default_factory=dict)
    postprocess: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    validation: Mapping[str, Any] | None = None
    split: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts and numbers (safe inside a ``weights_only`` checkpoint); empty entries left out."""
        settings: dict[str, Any] = {"version": INFERENCE_SETTINGS_VERSION}
        if self.cell_diameters:
            settings["cell_diameters"] = dict(self.cell_diameters)
        if self.scales:
            settings["scales"] = dict(self.scales)
        if self.postprocess:
            settings["postprocess"] = {name: dict(per_type) for name, per_type in self.postprocess.items()}
        if self.validation is not None:
            settings["validation"] = dict(self.validation)
        if self.split is not None:
            settings["split"] = dict(self.split)
        return settings

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> "InferenceSettings":
        """Rebuild from ``to_dict`` output, or from the unversioned dict of a checkpoint written before
        the version (the same entries); a newer version or an unknown entry is an error."""
        settings = dict(settings)
        version = settings.pop("version", 0)
        if not isinstance(version, int) or version > INFERENCE_SETTINGS_VERSION:
            raise ValueError(f"inference settings of version {version!r}, newer than this kit's "
                             f"{INFERENCE_SETTINGS_VERSION}: update the kit (git pull) to read them")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(f"unknown inference setting(s) {unknown}; known: {known}")
        return cls(cell_diameters=dict(settings.get("cell_diameters") or {}),
                   scales=dict(settings.get("scales") or {}),
                   postprocess={k: dict(v) for k, v in (settings.get("postprocess") or {}).items()},
                   validation=None if settings.get("validation") is None else dict(settings["validation"]),
                   split=None if settings.get("split") is None else dict(settings["split"]))

    @classmethod
    def of(cls, checkpoint: Mapping[str, Any], path: str | os.PathLike) -> "InferenceSettings":
        """The settings a checkpoint dict of ``path`` holds (none: the defaults)."""
        try:
            return cls.from_dict(checkpoint.get("inference") or {})
        except (TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{os.fspath(path)}: unreadable inference settings: {err}") from None


class UNet(nn.Module):
    """U-Net of the paper: 4 encoder levels (32-256 filters) of 2x(3x3 conv + BN + ReLU) with max
    pooling, a 512-filter bottleneck, transposed-conv upsampling with skip connections, 1x1 head.

    ``residual`` (beyond the paper, as in Cellpose's network): every block adds its input through
    a 1x1 projection, and a style vector, the bottleneck's features averaged over the image and
    scaled to unit length, is added per channel (one linear map per decoder) to every decoder's
    output, so that each pixel's decision sees the whole image's look.

    ``forward``: float[B, in_channels, H, W] -> float[B, out_channels, H, W] logits, any H x W:
    the input is reflect-padded at the bottom/right to a multiple of 16 and the output cropped back.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, residual: bool = False):
        super().__init__()
        block = _ResidualBlock if residual else _double_conv
        self.encoders = nn.ModuleList()
        width_in = in_channels
        for width in ENCODER_WIDTHS:
            self.encoders.append(block(width_in, width, dropout))
            width_in = width
        self.bottleneck = block(width_in, BOTTLENECK_WIDTH, dropout)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        width_in = BOTTLENECK_WIDTH
        for width in reversed(ENCODER_WIDTHS):
            self.upsamplers.append(nn.ConvTranspose2d(width_in, width, kernel_size=2, stride=2))
            self.decoders.append(block(2 * width, width, dropout))
            width_in = width
        self.styles = nn.ModuleList(nn.Linear(BOTTLENECK_WIDTH, width) for width in reversed(ENCODER_WIDTHS)) \
            if residual else None
        self.head = nn.Conv2d(width_in, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % SIZE_MULTIPLE, -width % SIZE_MULTIPLE
        if pad_h or pad_w:
            # Reflection continues the image texture; it needs the pad smaller than the side.
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        style = F.normalize(x.mean(dim=(2, 3)), dim=1) if self.styles is not None else None
        for k, (upsample, decoder, skip) in enumerate(zip(self.upsamplers, self.decoders, reversed(skips))):
            x = decoder(torch.cat([upsample(x), skip], dim=1))
            if style is not None:
                x = x + self.styles[k](style)[:, :, None, None]
        return self.head(x)[..., :height, :width]


def build_model(variant: Variant) -> UNet:
    """The network of ``variant``: 1 output channel for mask targets, 3 (dy, dx, cell logit) for flows."""
    return UNet(variant.in_channels, variant.out_channels, variant.dropout, variant.residual)


def model_input(images: torch.Tensor, cell_types: Sequence[str], variant: Variant) -> torch.Tensor:
    """The network input for a batch: float32[B, C, H, W] on the images' device.

    ``images``: uint8[B, H, W] or uint8[B, 1, H, W]. Channel 0 is each image standardised to mean
    0 and standard deviation 1 (over its own pixels). One-hot variants append ``len(CELL_TYPES)``
    constant 0/1 planes in ``CELL_TYPES`` order; a LIVECell line (pretraining) sets its type's plane
    where it is one (shsy5y), else none (``kit.stages``).

    Why standardise: the competition's images have a standard deviation of only 9 to 16 grey
    levels, so image / 255 would vary by about 0.05 while the one-hot planes jump by 1 between cell
    types. The first layer's batch-norm statistics would then depend on which cell types a batch of
    2 happens to mix, and a network trained on those batch statistics would not hold with its
    running ones.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"model_input expects uint8 images, got {images.dtype}")
    if images.ndim == 4 and images.shape[1] == IMAGE_CHANNELS:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"model_input expects images of shape [B, H, W] or [B, 1, H, W], got {tuple(images.shape)}")
    if len(cell_types) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(cell_types)} cell types")
    x = images.unsqueeze(1).float()
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True).clamp_(min=MIN_IMAGE_STD)
    x = (x - mean) / std
    if not variant.one_hot:
        return x
    unknown = sorted(set(cell_types) - set(CELL_TYPES) - set(LIVECELL_CELL_LINES))
    if unknown:
        raise ValueError(f"unknown cell type(s) {unknown}; valid: {', '.join(CELL_TYPES)} (and LIVECell's lines "
                         f"{', '.join(LIVECELL_CELL_LINES)})")
    # LIVECell's lines other than SH-SY5Y (the competition's shsy5y) are no competition type: no plane is set.
    index = torch.tensor([CELL_TYPES.index(c) if c in CELL_TYPES else len(CELL_TYPES) for c in cell_types],
                         device=images.device)
    planes = F.one_hot(index, len(CELL_TYPES) + 1)[:, :len(CELL_TYPES)].to(x.dtype)[:, :, None, None]
    return torch.cat([x, planes.expand(-1, -1, *x.shape[-2:])], dim=1)


def decode_output(output: torch.Tensor, variant: Variant) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Network output float[B, out_channels, H, W] -> (cell probability float[B, H, W],
    flows float[B, 2, H, W] as (dy, dx) in the units of ``kit.flows.masks_to_flows``, or None)."""
    output = output.float()
    if variant.target == "flow":
        return torch.sigmoid(output[:, 2]), output[:, :2] / variant.flow_scale
    return torch.sigmoid(output[:, 0]), None


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 in hardware: x86's ``avx512_bf16`` or ``amx_bf16`` flag, Arm's
    ``bf16`` feature, as Linux lists them in ``/proc/cpuinfo`` (``cpuinfo``: its text, for the tests).
    Read from the kernel, not from torch, because the oldest torch the kit supports (2.4) has no public
    query for it; without /proc/cpuinfo (macOS, Windows) the answer is False and the CPU trains in fp32.
    Elsewhere a CPU bf16 autocast is emulated and slower than fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(value.split()))
    return False


@functools.lru_cache(maxsize=None)
def _this_cpu_has_native_bf16() -> bool:
    return cpu_has_native_bf16()


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype for ``device`` (``--precision auto``): bf16 on GPUs of compute capability
    8.0 and up (A100, H100) and on CPUs with native bf16 (``cpu_has_native_bf16``: 1.84x the fp32 step
    here, ``benchmarks.bench_precision``), fp16 on older GPUs (Kaggle's T4, which lacks bf16), else None (fp32)."""
    if device.type == "cpu":
        return torch.bfloat16 if _this_cpu_has_native_bf16() else None
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``'s type; no context at all for fp32 (None): torch 2.1
    refuses a CPU autocast of any dtype but bf16 even with enabled=False ("AutocastCPU only support Bfloat16"),
    and torch 2.4 warns of it."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA and on the CPU (oneDNN's convolutions; 1.16x the fp32 step and 1.21x the bf16
    one here, ``benchmarks.bench_precision``), else the default layout."""
    return torch.channels_last if device.type in ("cuda", "cpu") else torch.contiguous_format


def save_checkpoint(path: str | os.PathLike, model: nn.Module, variant: Variant, *,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    scaler: torch.amp.GradScaler | None = None, epoch: int = 0,
                    best_score: float = float("nan"), history: Sequence[Mapping[str, Any]] = (),
                    inference: InferenceSettings | None = None, stages: Sequence[Mapping[str, Any]] = ()) -> None:
    """Write a checkpoint atomically (a reader never sees half a file); a full disk is an error
    naming the file. Every checkpoint the kit writes goes through here.

    With only ``model`` and ``variant`` it is a weights file (what ``kit.infer`` needs); pass the
    optimizer, scheduler and scaler to make it resumable: each an object with ``state_dict()`` or
    the state dict a checkpoint already holds (``kit.tune`` rewriting one). ``inference``: what
    inference needs beyond the variant (``InferenceSettings``). ``stages``: the run's training
    stages (``kit.stages``), whose rows ``history`` holds.
    """
    checkpoint: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "variant": variant.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "epoch": int(epoch),
        "best_score": float(best_score),
        "history": [dict(row) for row in history],
        "inference": (inference or InferenceSettings()).to_dict(),
        "stages": [dict(stage) for stage in stages],
    }
    optional = {"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    checkpoint.update({key: part.state_dict() if hasattr(part, "state_dict") else dict(part)
                       for key, part in optional.items() if part is not None})
    with atomic_output(path) as tmp:
        try:
            torch.save(checkpoint, tmp)
        except RuntimeError as err:
            # A full disk surfaces from torch's C++ writer as "basic_ios::clear: iostream error" or
            # "unexpected pos": no file named, no errno. Say which file and that space ran out.
            raise no_space_error(Path(path), f"torch.save failed ({str(err).splitlines()[0][:120]}), "
                                             "most likely a full disk") from None


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's dict (tensors on the CPU), read with ``weights_only=True``; a clear error for
    anything else.

    Always read onto the CPU: a device fault (no CUDA) must not pass for a corrupt file, so the
    caller checks the device first (``resolve_device``) and moves the model there.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as err:
        raise ValueError(f"cannot read checkpoint {path} ({err.strerror}); fix its permissions") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
            KeyError, IndexError, OSError) as err:
        # A short text file ends in KeyError or IndexError, a truncated checkpoint in OSError (EINVAL).
        # torch's own message suggests weights_only=False, which is exactly what not to do here.
        raise ValueError(f"{path} is not a readable checkpoint: corrupt, truncated, or not a torch file "
                         f"({type(err).__name__}); pass a file written by `python -m kit.train` (train again if "
                         "it was damaged)") from None
    found = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if found == "kit-checkpoint-v1":
        raise ValueError(f"{path} was written by an older kit that fed the network image / 255; this kit "
                         "standardises each image, so those weights would see other inputs: train again")
    if _format_version(found) > _format_version(CHECKPOINT_FORMAT):
        raise ValueError(f"{path} is a kit checkpoint of a newer format ({found!r}; this kit reads "
                         f"{CHECKPOINT_FORMAT!r}): update the kit (git pull) to load it")
    if found != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is a torch file but not a kit checkpoint (no format {CHECKPOINT_FORMAT!r}); "
                         "model files come from `python -m kit.train`")
    return checkpoint


def load_checkpoint(path: str | os.PathLike, expected_variant: str | Variant | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[UNet, Variant, dict[str, Any]]:
    """``(model in eval mode, variant, checkpoint dict)`` from a file of ``save_checkpoint``.

    ``expected_variant`` (a name or a ``Variant``) makes a checkpoint of another variant, or one whose
    architecture settings differ, an error naming both.
    """
    checkpoint = read_checkpoint(path)
    try:
        variant = Variant.from_dict(checkpoint["variant"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{os.fspath(path)}: unreadable variant settings: {err}") from None
    if expected_variant is not None:
        _check_variant(os.fspath(path), variant, expected_variant)
    model = build_model(variant)
    try:
        model.load_state_dict(checkpoint["model"])
    except (KeyError, RuntimeError) as err:
        raise ValueError(f"{os.fspath(path)}: the weights do not fit variant {variant.name!r}: "
                         f"{str(err).splitlines()[0]}") from None
    return model.to(map_location).eval(), variant, checkpoint


def resolve_device(name: str | None) -> torch.device:
    """The torch device of a ``--device`` value (default: cuda when available), refused before any
    work when it is no device or is not present on this machine."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cuda", "cpu"):
        raise ValueError(f"--device {name!r} is not a device this kit runs on: use cuda, cuda:N or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible (torch.cuda.is_available() is False); "
                         "use --device cpu, or run on a machine with a GPU")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                         f"numbered from 0")
    return device


def checkpoint_bytes(variant: Variant) -> int:
    """About the size of ``variant``'s resumable checkpoint: float32 weights plus the optimizer's
    weight-sized buffers (``OPTIMIZER_STATE_COPIES``), and 1 MB for the rest."""
    if variant.optimizer not in OPTIMIZER_STATE_COPIES:
        raise ValueError(f"checkpoint_bytes knows no optimizer {variant.optimizer!r}; add it to "
                         "kit.models.OPTIMIZER_STATE_COPIES")
    weights = 4 * sum(p.numel() for p in build_model(variant).parameters())
    return weights * (1 + OPTIMIZER_STATE_COPIES[variant.optimizer]) + 1_000_000


def _format_version(name: Any) -> int:
    """N of ``kit-checkpoint-vN``, 0 for anything else."""
    text = name if isinstance(name, str) else ""
    prefix = "kit-checkpoint-v"
    return int(text[len(prefix):]) if text.startswith(prefix) and text[len(prefix):].isdigit() else 0


def _check_variant(path: str, found: Variant, expected: str | Variant) -> None:
    expected_name = expected if isinstance(expected, str) else expected.name
    if found.name != expected_name:
        raise ValueError(f"{path} holds variant {found.name!r}, not {expected_name!r}; "
                         f"pass --variant {found.name} or another checkpoint")
    if isinstance(expected, Variant):
        differ = [f"{key} {getattr(found, key)!r} != {getattr(expected, key)!r}"
                  for key in ARCHITECTURE_SETTINGS if getattr(found, key) != getattr(expected, key)]
        if differ:
            raise ValueError(f"{path}: variant {found.name!r} was saved with other settings: {', '.join(differ)}")


def _double_conv(width_in: int, width: int, dropout: float) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU blocks, each followed by dropout when ``dropout > 0``."""
    layers: list[nn.Module] = []
    for block_in in (width_in, width):
        layers += [nn.Conv2d(block_in, width, kernel_size=3, padding=1, bias=False),
                   nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class _ResidualBlock(nn.Module):
    """``_double_conv`` plus its input through a 1x1 projection (Cellpose's residual block):
    float[B, width_in, H, W] -> float[B, width, H, W]."""

    def __init__(self, width_in: int, width: int, dropout: float):
        super().__init__()
        self.convs = _double_conv(width_in, width, dropout)
        self.project = nn.Conv2d(width_in, width, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x) + self.project(x)
