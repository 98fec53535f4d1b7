"""Checkpoints that say which variant they hold: the format, ``InferenceSettings``, and the one
writer and readers of the files.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts) so that
``torch.load(path, weights_only=True)`` reads it: ``format``, ``variant`` (``Variant.to_dict()``),
``model`` (state dict), ``epoch``, ``best_score``, ``history`` (the per-epoch metrics rows), ``inference``
(``InferenceSettings.to_dict()``: per-type scales, tuned post-processing settings, the validation split
the weights were trained with, possibly empty),
``stages`` (a staged run's pretraining / fine-tuning / pseudo-label stages, ``kit.training.stages``;
empty before); a resumable checkpoint adds ``optimizer``, ``scheduler`` and ``scaler`` states. No random state is
saved: the trainer seeds batch order, crops and augmentation per epoch (only dropout masks differ
after a resume).
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from kit.files import atomic_output, no_space_error
from kit.model.network import UNet, build_model
from kit.model.variants import Variant

# v2: the image channel is standardised per image (v1 fed image / 255, see kit.model.encoding.model_input).
CHECKPOINT_FORMAT = "kit-checkpoint-v2"
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
    record of the tuned score (``kit.inference.tuning.validation_record``; None: not tuned). ``split``: the
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
    stages (``kit.training.stages``), whose rows ``history`` holds.
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


def checkpoint_bytes(variant: Variant) -> int:
    """About the size of ``variant``'s resumable checkpoint: float32 weights plus the optimizer's
    weight-sized buffers (``OPTIMIZER_STATE_COPIES``), and 1 MB for the rest."""
    if variant.optimizer not in OPTIMIZER_STATE_COPIES:
        raise ValueError(f"checkpoint_bytes knows no optimizer {variant.optimizer!r}; add it to "
                         "kit.model.checkpoints.OPTIMIZER_STATE_COPIES")
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


