"""Crafted state files (every hash recomputed, so only the shapes, dtypes and names lie) are refused with
`CorruptStateError` naming the tensor, never an IndexError / KeyError or a state of the wrong shape; in a
`PrefixCache` directory such a file is a miss with a warning naming it. Crafted training checkpoints
(checksums recomputed) are refused with `CorruptCheckpoint` / `StateMismatchError` before any tensor is
copied into the model."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mambalab import InferenceState, PrefixCache
from mambalab.errors import CorruptCheckpoint, CorruptStateError, StateMismatchError
from mambalab.inference.generate import prefill
from mambalab.inference.state import _content_hash

PREFIX = [1, 2, 3, 4]


def _craft(path, edit_tensors=None, edit_metadata=None):
    """Rewrite a state file with edited tensors / metadata and a recomputed content hash."""
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    if edit_tensors:
        edit_tensors(tensors)
    if edit_metadata:
        edit_metadata(metadata)
    metadata["content_hash"] = _content_hash(tensors)
    save_file(tensors, str(path), metadata=metadata)


def _set(name, value):
    return lambda tensors: tensors.__setitem__(name, value)


def _drop(name):
    return lambda tensors: tensors.pop(name)


CRAFTS = {
    "layer index past n_layer": _set("layers.7.conv", torch.zeros(1, 64, 4, dtype=torch.float64)),
    "unknown tensor name": _set("layers.0.kv", torch.zeros(1)),
    "missing layer tensor": _drop("layers.1.ssm"),
    "ssm state of the wrong shape": _set("layers.0.ssm", torch.zeros(1, 64, 3, dtype=torch.float64)),
    "conv window of the wrong rank": _set("layers.0.conv", torch.zeros(64, 4, dtype=torch.float64)),
    "ssm state of the wrong dtype": _set("layers.0.ssm", torch.zeros(1, 64, 8, dtype=torch.float16)),
    "float seqlen": _set("seqlen", torch.tensor([4.0])),
    "negative seqlen": _set("seqlen", torch.tensor([-1])),
    "seqlen of another batch than the layers": _set("seqlen", torch.tensor([4, 4])),
}


@pytest.fixture
def saved(model, tmp_path):
    _, state = prefill(model, [PREFIX])
    path = tmp_path / "state.safetensors"
    state.save(path, model, prefix_tokens=PREFIX)
    return path


@pytest.mark.parametrize("craft", list(CRAFTS), ids=list(CRAFTS))
def test_crafted_state_files_are_refused_naming_the_tensor(model, saved, craft):
    _craft(saved, CRAFTS[craft])
    with pytest.raises(CorruptStateError, match=str(saved)):
        InferenceState.load(saved, model, prefix_tokens=PREFIX)


@pytest.mark.parametrize(
    "edit",
    [lambda m: m.pop("prefix_hash"), lambda m: m.update(config="{not json", config_hash="x")],
    ids=["no prefix hash", "config not JSON"],
)
def test_crafted_metadata_is_refused_as_corrupt_or_mismatched(model, saved, edit):
    _craft(saved, edit_metadata=edit)
    with pytest.raises((CorruptStateError, StateMismatchError), match=str(saved)):
        InferenceState.load(saved, model, prefix_tokens=PREFIX)


@pytest.mark.parametrize(
    ("craft", "edit"),
    [*((name, (CRAFTS[name], None)) for name in ("layer index past n_layer", "ssm state of the wrong shape",
                                                   "unknown tensor name")),
     ("prefix tokens not JSON", (None, lambda m: m.update(prefix_tokens="[[1, 2"))),
     ("prefix tokens not ids", (None, lambda m: m.update(prefix_tokens='[["a"]]')))],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_crafted_file_in_a_prefix_cache_directory_is_a_miss(model, tmp_path, caplog, craft, edit):
    cache = PrefixCache(model, directory=tmp_path)
    cache.put(PREFIX, prefill(model, [PREFIX])[1])
    (path,) = tmp_path.glob("*.safetensors")
    _craft(path, *edit)
    fresh = PrefixCache(model, directory=tmp_path)
    with caplog.at_level(logging.WARNING, logger="mambalab.inference.prefix_cache"):
        n, state = fresh.lookup(PREFIX + [5, 6])
    assert (n, state) == (0, None) and fresh.misses == 1
    assert path.name in caplog.text
    assert fresh.prefill(PREFIX + [5]).seqlen.tolist() == [5]  # and the cache still works


# Training checkpoints ------------------------------------------------------------------------------------------
def _crafted_checkpoint(tmp_path, edit_model=None, edit_state=None):
    from mambalab.atomic import file_sha256
    from mambalab.train.resume_checkpoints import INDEX, MODEL_FILE, STATE_FILE, save_checkpoint
    from tests.inference.conftest import tiny_model

    model = tiny_model(dtype=torch.float32)
    state = {"trainer": {}, "scheduler": {"step": 1}, "data": None, "rng": [], "model_config": model.config.to_dict()}
    path = save_checkpoint(tmp_path, 1, model.state_dict(), {"state": {}, "param_groups": []}, state,
                           aliases={"lm_head.weight": "backbone.embeddings.weight"})
    if edit_model:
        tensors = dict(model.state_dict())
        edit_model(tensors)
        save_file({k: v.contiguous() for k, v in tensors.items() if k != "lm_head.weight"}, str(path / MODEL_FILE))
    if edit_state:
        saved = json.loads((path / STATE_FILE).read_text())
        edit_state(saved)
        (path / STATE_FILE).write_text(json.dumps(saved))
    index = json.loads((path / INDEX).read_text())
    for name, meta in index["files"].items():
        meta.update(bytes=(path / name).stat().st_size, sha256=file_sha256(path / name))
    (path / INDEX).write_text(json.dumps(index))
    return model, path


@pytest.mark.parametrize(
    ("edit_model", "edit_state", "error", "named"),
    [
        (_set("backbone.layers.0.mixer.A_log", torch.zeros(3, 3)), None, CorruptCheckpoint, "A_log"),
        (_drop("backbone.norm_f.weight"), None, CorruptCheckpoint, "norm_f"),
        (_set("backbone.layers.9.norm.weight", torch.zeros(32)), None, CorruptCheckpoint, "layers.9"),
        (_set("backbone.norm_f.weight", torch.zeros(32, dtype=torch.int64)), None, CorruptCheckpoint, "int64"),
        (None, lambda s: s.pop("aliases"), CorruptCheckpoint, "aliases"),
        (None, lambda s: s["model_config"].update(d_model=48), StateMismatchError, "d_model"),
    ],
    ids=["wrong shape", "missing key", "extra key", "integer tensor", "state.json field missing", "other config"],
)
def test_crafted_training_checkpoints_are_refused(tmp_path, edit_model, edit_state, error, named):
    from mambalab.train.resume_checkpoints import check_fits_model, load_checkpoint

    model, path = _crafted_checkpoint(tmp_path, edit_model, edit_state)
    with pytest.raises(error, match=named) as info:
        check_fits_model(load_checkpoint(path), model)
    assert str(path) in str(info.value)
