"""The `--device` option of every command and runner: a name -> `torch.device`, checked once here."""

from __future__ import annotations

import torch

from mambalab.errors import InputError


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda when torch sees a GPU, else cpu; 'cpu', 'cuda' or 'cuda:N' as given. A name torch does
    not know, or cuda without a GPU, is an `InputError` (rather than a failure deep inside the first kernel)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was asked for but torch sees no CUDA GPU")
    return torch.device(device)
