"""Size a model before building it: parameters and bytes from the config alone, against the memory a device
has, so a config that cannot fit fails in a fraction of a second with a message naming its source instead
of in the allocator minutes later.

The figures are lower bounds (weights only; for training also gradients, AdamW's two moments and the
residual stream each layer keeps for backward) compared with the device's total memory (CPU: physical RAM;
CUDA: the card's memory): a refusal means the run cannot fit whatever else is freed.
"""

from __future__ import annotations

import os

import torch

from mambalab.config import ModelConfig
from mambalab.errors import ConfigError
from mambalab.models.zoo import count_params

# Bytes per parameter while training: the weight, its gradient, AdamW's two float32 moments.
_TRAIN_BYTES_PER_PARAM = 4 + 4 + 8


def device_memory(device: torch.device | str) -> int | None:
    """Total bytes of `device`'s memory (CPU: physical RAM), or None when it cannot be known here."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1] if torch.cuda.is_available() else None
    if device.type != "cpu":
        return None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def model_bytes(config: ModelConfig, dtype: torch.dtype) -> int:
    """Bytes of `LanguageModel(config)`'s parameters at `dtype`."""
    return count_params(config) * torch.empty((), dtype=dtype).element_size()


def training_bytes(config: ModelConfig, batch_size: int, seq_len: int) -> int:
    """A lower bound of a training step's memory: weights, gradients and AdamW moments in float32, the
    token ids and labels, and the residual stream (float32) that each layer keeps for backward."""
    tokens = batch_size * seq_len
    return (count_params(config) * _TRAIN_BYTES_PER_PARAM + tokens * 2 * 8
            + tokens * config.d_model * 4 * config.n_layer)


def _refuse_past(needed: int, device: torch.device | str, what: str, where: str, error: type[Exception]) -> None:
    total = device_memory(device)
    if total is not None and needed > total:
        raise error(f"{where}: {what} needs at least {needed / 2**30:,.1f} GiB, past the {total / 2**30:,.1f} GiB"
                    f" of {torch.device(device).type} memory, so it cannot fit")


def check_model_fits(config: ModelConfig, dtype: torch.dtype, device: torch.device | str = "cpu",
                     where: str = "config", error: type[Exception] = ConfigError) -> None:
    """Raise `error` (naming `where`) when the model's weights at `dtype` exceed `device`'s memory."""
    what = f"the model ({count_params(config):,} parameters at {str(dtype).removeprefix('torch.')})"
    _refuse_past(model_bytes(config, dtype), device, what, where, error)


def check_training_fits(config: ModelConfig, batch_size: int, seq_len: int, device: torch.device | str,
                        where: str = "train") -> None:
    """Raise `ConfigError` when `training_bytes` exceeds `device`'s memory (batch_size sequences of seq_len)."""
    what = (f"training ({count_params(config):,} parameters, batch_size={batch_size:,} × seq_len={seq_len:,}"
            " tokens)")
    _refuse_past(training_bytes(config, batch_size, seq_len), device, what, where, ConfigError)
