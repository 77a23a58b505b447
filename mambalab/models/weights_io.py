"""Pretrained weights on disk: read a state dict in any layout Mamba checkpoints use, check it against the
model's parameters, and lay it out for transformers' Mamba on export. Imports no model.

Weights come from model.safetensors, a sharded model.safetensors.index.json, or pytorch_model.bin (sharded
or not), the latter read only with `torch.load(weights_only=True)`. Keys follow transformers' names (which
`LanguageModel`'s parameters share); the official checkpoints' singular `backbone.embedding.weight` is
renamed. A tied lm_head is stored once, as `backbone.embeddings.weight` (safetensors refuses shared tensors;
transformers re-ties it). Every problem raises `CheckpointError` naming the file and the key.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mambalab.atomic import write_atomic
from mambalab.errors import CheckpointError

SAFETENSORS_NAME = "model.safetensors"
# Weight files in the order `load` looks for them.
WEIGHT_NAMES = (
    SAFETENSORS_NAME,
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
EMBEDDING_KEY = "backbone.embeddings.weight"
LM_HEAD_KEY = "lm_head.weight"
# Official state-spaces checkpoints (and old transformers ones) name the embedding in the singular.
_KEY_RENAMES = {"backbone.embedding.weight": EMBEDDING_KEY}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file, truncated or corrupt ({e})") from e


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model.bin state dict, unpickled only with weights_only=True (no arbitrary code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused: the pickle holds objects other than tensors, and mambalab only loads"
            " pickles with"
            f" torch.load(weights_only=True) ({str(e).splitlines()[-1]})"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable PyTorch file, truncated or corrupt ({e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict (key -> tensor), got {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: key {key!r} holds a {type(value).__name__}, expected a tensor")
    return state


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    return _read_safetensors(path) if path.suffix == ".safetensors" else _read_pickle(path)


def _read_sharded(index_path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """Read every shard named by a transformers index file; each key must be in the shard the index names."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path}: not a shard index with a 'weight_map' object ({e!r})") from e
    if not isinstance(weight_map, dict) or not all(
        isinstance(name, str) and Path(name).name == name for name in weight_map.values()
    ):
        raise CheckpointError(f"{index_path}: 'weight_map' must map keys to shard file names in this folder")
    state: dict[str, torch.Tensor] = {}
    sources: dict[str, Path] = {}
    for shard_name in sorted(set(weight_map.values())):
        shard = index_path.parent / shard_name
        if not shard.is_file():
            raise CheckpointError(f"{shard}: shard listed in {index_path.name} not found")
        for key, tensor in _read_file(shard).items():
            if weight_map.get(key) != shard_name:
                raise CheckpointError(
                    f"{shard}: key {key!r} is not assigned to this shard by {index_path.name}"
                )
            state[key], sources[key] = tensor, shard
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(
            f"{index_path.parent / weight_map[missing[0]]}: key {missing[0]!r} listed in {index_path.name}"
            f" is not in the shard ({len(missing)} missing)"
        )
    return state, sources


def read_weights(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Path], Path]:
    """(state dict with our key names, file of each key, the weights file or index that was read)."""
    for name in WEIGHT_NAMES:
        path = directory / name
        if path.is_file():
            break
    else:
        raise CheckpointError(f"{directory}: no weights file found; expected one of {list(WEIGHT_NAMES)}")
    if name.endswith(".index.json"):
        state, sources = _read_sharded(path)
    else:
        state = _read_file(path)
        sources = dict.fromkeys(state, path)
    for old, new in _KEY_RENAMES.items():
        if old in state:
            if new in state:
                raise CheckpointError(f"{sources[old]}: both {old!r} and {new!r} are present; expected one")
            state[new], sources[new] = state.pop(old), sources.pop(old)
    return state, sources, path


def check_state(
    state: dict[str, torch.Tensor],
    sources: dict[str, Path],
    weights: Path,
    expected: dict[str, torch.Size],
    tied: bool,
) -> None:
    """Check `state` against the model's parameter shapes `expected` (key -> shape, lm_head included): refuse
    missing / unexpected keys, wrong shapes, non-float tensors and an lm_head that differs from the embedding
    when `tied`; afterwards `state` is exactly what `model.load_state_dict(strict=True)` needs."""
    if (
        tied
        and LM_HEAD_KEY in state
        and EMBEDDING_KEY in state
        and not torch.equal(state[LM_HEAD_KEY], state[EMBEDDING_KEY])
    ):
        raise CheckpointError(
            f"{sources[LM_HEAD_KEY]}: key {LM_HEAD_KEY!r} differs from {EMBEDDING_KEY!r}, but the config ties"
            " the embeddings (tie_embeddings / tie_word_embeddings is true)"
        )
    expected = dict(expected)
    if tied:
        state.pop(LM_HEAD_KEY, None)
        del expected[LM_HEAD_KEY]
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(
            f"{weights}: missing key {missing[0]!r} ({len(missing)} missing: {missing[:5]})"
        )
    if unexpected:
        raise CheckpointError(
            f"{sources[unexpected[0]]}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected:"
            f" {unexpected[:5]}); the config does not have this parameter"
        )
    for key, shape in expected.items():
        tensor = state[key]
        if tensor.shape != shape:
            raise CheckpointError(
                f"{sources[key]}: key {key!r} has shape {tuple(tensor.shape)}"
                f" but the config expects {tuple(shape)}"
            )
        if not tensor.is_floating_point():
            raise CheckpointError(
                f"{sources[key]}: key {key!r} has dtype {tensor.dtype}, expected a float dtype"
            )
    if tied:
        state[LM_HEAD_KEY] = state[EMBEDDING_KEY]


def write_weights(state: dict[str, torch.Tensor], directory: Path, tied: bool) -> None:
    """Write `state` (a model's state dict) as `directory`/model.safetensors under transformers' names; a tied
    lm_head is left out (stored once, as the embedding; transformers and `read_weights` re-tie it)."""
    tensors = {key: t.detach().cpu().contiguous() for key, t in state.items()}
    if tied:
        del tensors[LM_HEAD_KEY]
    write_atomic(
        directory / SAFETENSORS_NAME, lambda p: save_file(tensors, str(p), metadata={"format": "pt"})
    )
