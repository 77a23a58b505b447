"""Pretrained checkpoint directories as functions: `load(directory)` (exported as `mambalab.load`) and
`save_pretrained(model, directory)`, both thin wrappers over `LanguageModel.from_pretrained` /
`LanguageModel.save_pretrained`.

A directory holds config.json (translated by `models/hf_config.py`) and the weights (read and written by
`models/weights_io.py`); docs/checkpoints.md describes the layout and the formats loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mambalab.models.lm import LanguageModel


def load(
    directory: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
    strict_config: bool = True,
) -> LanguageModel:
    """Load a mambalab, transformers or official state-spaces Mamba checkpoint directory; see
    `LanguageModel.from_pretrained` (strict_config=False: unknown config.json fields are logged, not refused)."""
    return LanguageModel.from_pretrained(directory, device=device, dtype=dtype, strict_config=strict_config)


def save_pretrained(model: LanguageModel, directory: str | Path, tokenizer=None) -> Path:
    """Write `model` as config.json + model.safetensors (+ `tokenizer`'s files) into `directory`; see
    `LanguageModel.save_pretrained`."""
    if not isinstance(model, LanguageModel):
        raise TypeError(f"model must be a mambalab LanguageModel, got {type(model).__name__}")
    return model.save_pretrained(directory, tokenizer=tokenizer)
