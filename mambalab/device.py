"""The `--device` and `--dtype` options of every command and runner: a name -> `torch.device` /
`torch.dtype`, checked once here."""

from __future__ import annotations

import os

import torch

from mambalab.errors import InputError


def resolve_device(device: str | torch.device, present: bool = True) -> torch.device:
    """'auto' -> cuda when torch sees a GPU, else cpu; 'cpu', 'cuda' or 'cuda:N' as given. A name torch does
    not know, or cuda without a GPU (unless `present` is False: a name only), is an `InputError` (rather than
    a failure deep inside the first kernel)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if present and device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was asked for but torch sees no CUDA GPU")
    return torch.device(device)


def gpus_to_spread_over(device: torch.device) -> list[str]:
    """The CUDA device ids that worker processes of a `device` run can be spread over, one GPU each: every
    visible GPU (as CUDA_VISIBLE_DEVICES names them, else 0..count-1) when `device` is plain "cuda" and more
    than one is visible; none (leave the environment alone) for the CPU, one GPU, or a pinned "cuda:N"."""
    if device.type != "cuda" or device.index is not None:
        return []
    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()][:count] if visible else [str(i) for i in range(count)]
    return ids if len(ids) > 1 else []


# --dtype names: torch's own and the usual short forms; "auto" keeps the checkpoint's dtype.
DTYPE_NAMES = {
    "auto": None,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}  # fmt: skip


def resolve_dtype(name: str | None) -> torch.dtype | None:
    """A --dtype name (see DTYPE_NAMES, case-insensitive) -> torch.dtype; None or "auto" -> None (keep the
    checkpoint's). Anything else is an `InputError` listing the names."""
    if name is None:
        return None
    key = name.strip().lower().removeprefix("torch.")
    if key not in DTYPE_NAMES:
        raise InputError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {name!r}")
    return DTYPE_NAMES[key]
