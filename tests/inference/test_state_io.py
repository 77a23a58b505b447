"""Saved states: round trip, refusal of other models / dtypes / prefixes / corrupt files, and continuing a
restored state in a new process exactly as processing prefix + continuation from scratch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model

from mambalab.inference.generate import generate
from mambalab.inference.state import CorruptStateError, InferenceState, StateMismatchError, model_fingerprint
from tests.inference.conftest import random_prompts, tiny_model


def saved_state(model, tmp_path: Path, prefix: list[int]) -> Path:
    _, state = model.prefill(torch.tensor([prefix]))
    path = tmp_path / "prefix.safetensors"
    state.save(path, model, prefix_tokens=prefix)
    return path


def test_round_trip_is_exact_and_leaves_no_temp_files(model, tmp_path):
    prefixes = random_prompts([6, 6])
    _, state = model.prefill(torch.tensor(prefixes))
    state.save(tmp_path / "s.safetensors", model, prefix_tokens=prefixes)
    loaded = InferenceState.load(tmp_path / "s.safetensors", model, prefix_tokens=prefixes)
    assert torch.equal(loaded.seqlen, state.seqlen)
    for mine, theirs in zip(loaded.layers, state.layers):
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) and mine[k].dtype == theirs[k].dtype for k in mine)
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]


def test_state_of_another_model_is_refused(model, tmp_path):
    path = saved_state(model, tmp_path, random_prompts([5])[0])
    with pytest.raises(StateMismatchError, match="other weights"):
        InferenceState.load(path, tiny_model(seed=1))
    with pytest.raises(StateMismatchError, match="d_model: 32 .state. vs 16 .model."):
        InferenceState.load(path, tiny_model(d_model=16))


def test_state_of_another_dtype_is_refused(model, tmp_path):
    path = saved_state(model, tmp_path, random_prompts([5])[0])
    with pytest.raises(StateMismatchError, match="torch.float64 model, this model is torch.float32"):
        InferenceState.load(path, tiny_model(dtype=torch.float32))


def test_state_of_another_prefix_is_refused(model, tmp_path):
    prefix = random_prompts([5])[0]
    path = saved_state(model, tmp_path, prefix)
    with pytest.raises(StateMismatchError, match="prefix tokens"):
        InferenceState.load(path, model, prefix_tokens=prefix[:-1])


def test_weights_changed_in_place_change_the_fingerprint(model):
    before = model_fingerprint(model)
    assert model_fingerprint(model) is before  # cached
    with torch.no_grad():
        model.backbone.norm_f.weight.add_(1.0)
    assert model_fingerprint(model)["weights_hash"] != before["weights_hash"]


@pytest.mark.parametrize("damage", ["truncate", "flip_data", "garbage"])
def test_corrupt_or_truncated_files_are_refused(model, tmp_path, damage):
    path = saved_state(model, tmp_path, random_prompts([5])[0])
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "flip_data":
        data[-3] ^= 0xFF
    else:
        data = bytearray(b"not a state file at all" * 4)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptStateError, match=str(path.name)):
        InferenceState.load(path, model)


CHILD = """
import json, sys, torch
from safetensors.torch import load_model
from mambalab import InferenceState, LanguageModel, ModelConfig
from mambalab.inference.generate import generate
torch.set_num_threads(1)  # as the parent test (tests/conftest.py): the same reduction order, the same bits
d = sys.argv[1]
args = json.load(open(d + "/args.json"))
model = LanguageModel(ModelConfig.from_json(d + "/config.json")).to(torch.float64).eval()
load_model(model, d + "/model.safetensors")
state = InferenceState.load(d + "/prefix.safetensors", model, prefix_tokens=args["prefix"])
logits, _ = model.prefill(torch.tensor([args["rest"]]), state)
torch.save(logits, d + "/logits.pt")
json.dump(generate(model, [args["rest"]], 8, state=state).sequences[0], open(d + "/tokens.json", "w"))
"""


@pytest.mark.slow
def test_restored_state_continues_exactly_in_a_new_process(model, tmp_path):
    prefix, rest = random_prompts([20, 5])
    saved_state(model, tmp_path, prefix)
    model.config.to_json(tmp_path / "config.json")
    save_model(model, str(tmp_path / "model.safetensors"))
    (tmp_path / "args.json").write_text(json.dumps({"prefix": prefix, "rest": rest}))
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], check=True, cwd=root, timeout=120)

    _, state = model.prefill(torch.tensor([prefix]))  # from scratch, in this process
    logits, _ = model.prefill(torch.tensor([rest]), state)
    assert torch.equal(torch.load(tmp_path / "logits.pt"), logits)
    tokens = json.loads((tmp_path / "tokens.json").read_text())
    assert tokens == generate(model, [prefix + rest], 8).sequences[0]
    full = model(torch.tensor([prefix + rest]))[:, len(prefix):]  # one parallel pass over everything
    assert (full - logits).abs().max().item() < 1e-10
