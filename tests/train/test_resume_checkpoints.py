"""Checkpoint files: exact round trip, atomic directories, keep-last-K, corrupt files and fallback, newer
unusable checkpoints moved aside."""

from __future__ import annotations

import pytest
import torch

from mambalab.train.resume_checkpoints import (
    CorruptCheckpoint,
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    set_aside_newer,
)


def _states():
    model = {"emb.weight": torch.randn(4, 3), "norm.weight": torch.randn(3)}
    optimizer = {
        "state": {"emb.weight": {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 3), "exp_avg_sq": torch.rand(4, 3)}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "weight_decay": 0.1, "params": ["emb.weight"]}],
    }
    return model, optimizer


def test_round_trip_is_exact(tmp_path):
    model, optimizer = _states()
    model["head.weight"] = model["emb.weight"]  # tied: stored once
    path = save_checkpoint(tmp_path, 7, model, optimizer, {"data": {"position": 12}}, aliases={"head.weight": "emb.weight"})
    ckpt = load_checkpoint(path)
    assert ckpt.step == 7 and ckpt.state["data"] == {"position": 12}
    for k, v in model.items():
        assert torch.equal(ckpt.model[k], v)
    state = ckpt.optimizer["state"]["emb.weight"]
    for k, v in optimizer["state"]["emb.weight"].items():
        assert torch.equal(state[k], v)
    assert ckpt.optimizer["param_groups"] == optimizer["param_groups"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_keep_last(tmp_path):
    model, optimizer = _states()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model, optimizer, {}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_index"])
def test_corrupt_checkpoint_is_named_and_previous_loads(tmp_path, damage):
    model, optimizer = _states()
    save_checkpoint(tmp_path, 1, model, optimizer, {})
    newest = save_checkpoint(tmp_path, 2, model, optimizer, {})
    target = newest / "model.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        target = newest / "checkpoint.json"
        target.unlink()
    with pytest.raises(CorruptCheckpoint, match=str(target)):
        load_checkpoint(newest)
    fallback = latest_valid_checkpoint(tmp_path)
    assert fallback.step == 1 and torch.equal(fallback.model["norm.weight"], model["norm.weight"])


def test_set_aside_newer_hides_them_from_the_listing(tmp_path):
    model, optimizer = _states()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, optimizer, {})
    set_aside_newer(tmp_path, 1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001"]
    save_checkpoint(tmp_path, 2, model, optimizer, {})  # written afresh, not "already exists"
    set_aside_newer(tmp_path, 1)  # a name already taken gets a counter
    assert sorted(p.name for p in tmp_path.glob(".corrupt-*")) == [
        ".corrupt-step_00000002", ".corrupt-step_00000002.1", ".corrupt-step_00000003"]
