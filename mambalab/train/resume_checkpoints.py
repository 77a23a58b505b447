"""Training resume checkpoints (not pretrained model directories: see models/pretrained.py): atomic
directories, checksummed files, keep-last-K, newest-valid lookup.

A checkpoint is a directory `<root>/step_00000100/`:

    model.safetensors      full (gathered) model state dict; tied aliases stored once
    optimizer.safetensors  every tensor of the full optimizer state, keyed "<param name>/<state key>"
    state.json             step, scheduler, data position, RNG states per rank, optimizer hyperparameters and
                           non-tensor state, tied aliases, the training and model configs
    checkpoint.json        format + the size and SHA-256 of each file above (written last)

It is written to `<root>/.tmp-step_00000100/`, every file fsynced, then renamed into place, so a crash never
leaves a partial `step_*` directory. Loading verifies sizes and checksums first: a truncated or corrupted
file raises `CorruptCheckpoint` naming it, and `latest_valid_checkpoint` falls back to the previous one; a
resume from it renames the skipped newer ones to `.corrupt-step_N` (`set_aside_newer`), out of the way of
the steps it writes again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mambalab.atomic import file_sha256, read_versioned_json
from mambalab.config import config_differences
from mambalab.errors import CorruptCheckpoint, StateMismatchError

logger = logging.getLogger(__name__)

FORMAT = "mambalab-train-checkpoint"
FORMAT_VERSION = 1
INDEX = "checkpoint.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
PREFIX = "step_"
# Fields of state.json that loading itself reads (the trainer checks its own: `Trainer._resume`).
_STATE_FIELDS = ("optimizer", "aliases")


@dataclass
class Checkpoint:
    path: Path
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict  # {"state": {name: {key: value}}, "param_groups": [...]} as torch's full optimizer state
    state: dict  # the rest of state.json


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _split_optimizer(optimizer_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors of the optimizer state -> flat safetensors dict; everything else -> JSON-able dict."""
    tensors, scalars = {}, {}
    for name, entries in optimizer_state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(name, {})[key] = value
    return tensors, {"param_groups": optimizer_state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[str, dict] = {name: dict(values) for name, values in meta["scalars"].items()}
    for flat, value in tensors.items():
        name, key = flat.rsplit("/", 1)
        state.setdefault(name, {})[key] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def checkpoint_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"{PREFIX}{step:08d}"


def save_checkpoint(
    root: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict,
    state: dict,
    aliases: dict[str, str] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write checkpoint `step` under `root` atomically; `aliases` maps a tied name to the name stored (its
    tensor is not written twice). Then delete all but the newest `keep_last` checkpoints."""
    root = Path(root)
    final = checkpoint_dir(root, step)
    if final.exists():
        logger.info("checkpoint %s already exists; not rewriting it", final)
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        aliases = aliases or {}
        model_tensors = {k: v.detach().cpu().contiguous() for k, v in model_state.items() if k not in aliases}
        save_file(model_tensors, str(tmp / MODEL_FILE))
        opt_tensors, opt_meta = _split_optimizer(optimizer_state)
        save_file(opt_tensors, str(tmp / OPTIMIZER_FILE))
        full_state = {**state, "step": step, "optimizer": opt_meta, "aliases": aliases}
        (tmp / STATE_FILE).write_text(json.dumps(full_state, indent=1) + "\n", encoding="utf-8")
        files = {}
        for name in (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE):
            _fsync(tmp / name)
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": file_sha256(tmp / name)}
        index = {"format": FORMAT, "version": FORMAT_VERSION, "step": step, "files": files}
        (tmp / INDEX).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
        _fsync(tmp / INDEX)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved checkpoint %s", final)
    if keep_last is not None and keep_last > 0:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """The `step_*` directories under `root`, oldest first (temp directories are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def verify_checkpoint(path: str | Path) -> dict:
    """The index of checkpoint `path` after checking every file's size and SHA-256; `CorruptCheckpoint` else."""
    path = Path(path)
    index = read_versioned_json(path / INDEX, FORMAT, FORMAT_VERSION, CorruptCheckpoint,
                                missing=f"{path} is not a complete training checkpoint")
    for name, meta in index["files"].items():
        file = path / name
        if not file.is_file():
            raise CorruptCheckpoint(f"{file}: missing")
        size = file.stat().st_size
        if size != meta["bytes"]:
            raise CorruptCheckpoint(f"{file}: truncated or altered: {size} bytes, expected {meta['bytes']}")
        if file_sha256(file) != meta["sha256"]:
            raise CorruptCheckpoint(f"{file}: corrupted: SHA-256 does not match {INDEX}")
    return index


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint directory (verified first); tied aliases are restored in the model state."""
    path = Path(path)
    index = verify_checkpoint(path)
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    missing = sorted(set(_STATE_FIELDS) - set(state)) if isinstance(state, dict) else ["(not an object)"]
    if missing:
        raise CorruptCheckpoint(f"{path / STATE_FILE}: field(s) {missing} missing")
    model = load_file(str(path / MODEL_FILE))
    for alias, original in state.pop("aliases").items():
        model[alias] = model[original]
    optimizer = _join_optimizer(load_file(str(path / OPTIMIZER_FILE)), state.pop("optimizer"))
    return Checkpoint(path=path, step=int(index["step"]), model=model, optimizer=optimizer, state=state)


def check_model_config(path: Path, recorded: dict | None, config) -> None:
    """`StateMismatchError` naming the differing fields when checkpoint `path` recorded a model config other
    than `config` (a ModelConfig); nothing when either is None."""
    if recorded is not None and config is not None:
        diffs = config_differences(recorded, json.loads(json.dumps(config.to_dict())), ("checkpoint", "model"))
        if diffs:
            raise StateMismatchError(f"{path}: trained with another model config ({'; '.join(diffs)})")


def check_fits_model(ckpt: Checkpoint, model: torch.nn.Module) -> None:
    """Refuse a checkpoint that does not belong to `model` before any tensor is copied into it: another
    recorded model config (`StateMismatchError` naming the differing fields), or model / optimizer tensors
    whose names, shapes or dtypes do not fit the model's parameters (`CorruptCheckpoint` naming the file and
    the key; the checksums only prove the files are as written, not that they were written for this model)."""
    check_model_config(ckpt.path, ckpt.state.get("model_config"), getattr(model, "config", None))
    expected = model.state_dict()
    model_file, optimizer_file = ckpt.path / MODEL_FILE, ckpt.path / OPTIMIZER_FILE
    for problem, keys in (("missing", sorted(set(expected) - set(ckpt.model))),
                          ("not a parameter of the model", sorted(set(ckpt.model) - set(expected)))):
        if keys:
            raise CorruptCheckpoint(f"{model_file}: key {keys[0]!r} {problem} ({len(keys)} such)")
    for key, want in expected.items():
        got = ckpt.model[key]
        if got.shape != want.shape or got.is_floating_point() != want.is_floating_point():
            raise CorruptCheckpoint(f"{model_file}: key {key!r} is {got.dtype} of shape {tuple(got.shape)}, the"
                                    f" model's is {want.dtype} of shape {tuple(want.shape)}")
    for name, entries in ckpt.optimizer["state"].items():
        if name not in expected:
            raise CorruptCheckpoint(f"{optimizer_file}: state of {name!r}, not a parameter of the model")
        for key, value in entries.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != expected[name].shape:
                raise CorruptCheckpoint(f"{optimizer_file}: '{name}/{key}' has shape {tuple(value.shape)}, the"
                                        f" parameter's is {tuple(expected[name].shape)}")


def set_aside_newer(root: str | Path, step: int) -> list[Path]:
    """Rename every checkpoint under `root` newer than `step` (those a resume skipped as corrupt) to a hidden
    `.corrupt-step_N` (`.corrupt-step_N.K` when taken), which `list_checkpoints` ignores: the run rewrites
    those steps and keep-last-K counts only valid checkpoints. Returns the new paths."""
    moved = []
    for path in list_checkpoints(root):
        if int(path.name[len(PREFIX):]) <= step:
            continue
        target, k = path.with_name(f".corrupt-{path.name}"), 0
        while target.exists():
            k += 1
            target = path.with_name(f".corrupt-{path.name}.{k}")
        os.replace(path, target)
        logger.warning("moved unusable checkpoint %s aside to %s (resuming from step %d)", path, target, step)
        moved.append(target)
    return moved


def latest_valid_checkpoint(root: str | Path) -> Checkpoint | None:
    """The newest checkpoint under `root` that loads; corrupt newer ones are skipped with a warning."""
    for path in reversed(list_checkpoints(root)):
        try:
            return load_checkpoint(path)
        except CorruptCheckpoint as exc:
            logger.warning("skipping checkpoint %s: %s", path, exc)
    return None
