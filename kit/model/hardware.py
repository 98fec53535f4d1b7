"""The device and the precision a command runs at: ``--device`` resolved and checked, the
mixed-precision dtype of a device (``--precision``), its autocast context and memory format."""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch


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


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Autocast dtype of ``--precision`` on ``device`` (None: fp32); auto is ``amp_dtype``."""
    if precision == "auto":
        return amp_dtype(device)
    if precision == "fp32":
        return None
    has_bf16 = device.type != "cuda" or amp_dtype(device) == torch.bfloat16
    if precision == "bf16" and not has_bf16:
        raise ValueError(f"{torch.cuda.get_device_name(device)} has no bf16; use --precision fp16")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA GPU (--device cuda); on the CPU use --precision auto, "
                         "bf16 or fp32")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """How the run's log names its precision."""
    return {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + GradScaler"}[amp_dtype]
