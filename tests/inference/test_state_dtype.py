"""The SSM state dtype (inference/state_dtype.py): how it is chosen, that a 16-bit state stays 16-bit through
prefill, steps and the batch operations, that the default is float32, that generate agrees with the float32
state, and how saved states, the prefix cache and the CLI treat it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from mambalab import InferenceState, LanguageModel, ModelConfig
from mambalab.cli import app
from mambalab.config import AttentionConfig, Mamba2Config, S4DConfig, SSMConfig
from mambalab.errors import InputError, StateMismatchError
from mambalab.inference.generate import generate
from mambalab.inference.prefix_cache import PrefixCache
from mambalab.inference.state import read_state_metadata
from mambalab.inference.state_dtype import STATE_DTYPE_CHOICES, resolve_state_dtype
from mambalab.models.pretrained import save_pretrained
from tests.conftest import rel_error
from tests.inference.conftest import VOCAB
from tests.serve.conftest import TOK, byte_model

LAYERS = ["mamba", "mamba2", "attention+mlp", "s4d"]


def ssm_model(dtype=torch.bfloat16, seed: int = 0, layers=None) -> LanguageModel:
    """A tiny model with every layer kind that holds a state (Mamba, Mamba-2, attention, S4D)."""
    torch.manual_seed(seed)
    layers = layers or LAYERS
    config = ModelConfig(d_model=16, n_layer=len(layers), vocab_size=VOCAB, layer_pattern=layers,
                         ssm=SSMConfig(d_state=4), mamba2=Mamba2Config(d_state=6, head_dim=8, chunk_size=4),
                         s4d=S4DConfig(d_state=8), attention=AttentionConfig(n_heads=2))
    return LanguageModel(config).to(dtype).eval()


def ssm_dtypes(state: InferenceState) -> list[torch.dtype]:
    return [layer["ssm"].dtype for layer in state.layers if "ssm" in layer]


@pytest.mark.parametrize(("value", "model_dtype", "expected"), [
    (None, torch.bfloat16, torch.float32), (None, torch.float64, torch.float64),
    ("model", torch.bfloat16, torch.bfloat16), ("model", torch.float16, torch.float16),
    ("model", torch.float32, torch.float32), ("bfloat16", torch.float32, torch.bfloat16),
    ("float16", torch.bfloat16, torch.float16), ("float32", torch.bfloat16, torch.float32),
    ("torch.bfloat16", torch.float32, torch.bfloat16), (torch.float16, torch.float32, torch.float16),
])
def test_resolve_names_dtypes_and_the_model(value, model_dtype, expected):
    assert resolve_state_dtype(value, model_dtype) == expected


@pytest.mark.parametrize("value", ["fp8", "bf16", "", torch.int8, 16, "Model"])
def test_a_bad_state_dtype_names_the_value_and_the_choices(value):
    with pytest.raises(InputError, match="state_dtype must be") as info:
        ssm_model(layers=["mamba"]).allocate_state(1, state_dtype=value)
    assert repr(value) in str(info.value) and all(choice in str(info.value) for choice in STATE_DTYPE_CHOICES)


def test_allocate_state_puts_only_the_ssm_states_in_the_state_dtype():
    model = ssm_model()
    default, half = model.allocate_state(2), model.allocate_state(2, state_dtype="model")
    assert ssm_dtypes(default) == [torch.float32] * 3 and default.ssm_dtype == torch.float32
    assert ssm_dtypes(half) == [torch.bfloat16] * 3 and half.ssm_dtype == torch.bfloat16
    for d, h in zip(default.layers, half.layers):
        assert {k: t.shape for k, t in d.items()} == {k: t.shape for k, t in h.items()}
        assert all(h[k].dtype == torch.bfloat16 for k in h)  # conv windows and KV caches: the model's dtype
    ssm_bytes = sum(t.nbytes for layer in default.layers for k, t in layer.items() if k == "ssm")
    assert default.nbytes() - half.nbytes() == ssm_bytes // 2  # the SSM states' bytes halve
    assert ssm_dtypes(model.allocate_state(1, state_dtype=None)) == ssm_dtypes(model.allocate_state(1, state_dtype="float32"))


def test_a_16bit_state_stays_16bit_through_prefill_steps_and_batch_operations():
    model = ssm_model()
    prompts = torch.randint(0, VOCAB, (3, 5))
    _, state = model.prefill(prompts, state_dtype="model")
    assert ssm_dtypes(state) == [torch.bfloat16] * 3
    for _ in range(2):
        model.step(torch.randint(0, VOCAB, (3,)), state)
    assert ssm_dtypes(state) == [torch.bfloat16] * 3
    joined = InferenceState.concat([state.select([2]), state.clone().select([0, 1])])
    assert ssm_dtypes(joined) == [torch.bfloat16] * 3 and joined.batch_size == 3
    _, continued = model.prefill(torch.randint(0, VOCAB, (3, 2)), joined)  # a given state keeps its dtype
    assert continued.ssm_dtype == torch.bfloat16
    assert InferenceState.concat([joined]).to(device="cpu").ssm_dtype == torch.bfloat16


def test_states_of_different_ssm_dtypes_do_not_join_or_mix():
    model = ssm_model(layers=["mamba2"])
    with pytest.raises(InputError, match="dtypes"):
        InferenceState.concat([model.allocate_state(1), model.allocate_state(1, state_dtype="model")])
    with pytest.raises(InputError, match="convert it first"):
        model.prefill(torch.zeros(1, 2, dtype=torch.long), model.allocate_state(1), state_dtype="model")
    with pytest.raises(InputError, match="convert it first"):
        generate(model, [[1, 2]], 2, state=model.allocate_state(1, state_dtype="model"), state_dtype="float32")


def test_to_converts_ssm_states_only_when_asked():
    model = ssm_model(dtype=torch.float32)
    state = model.allocate_state(1)
    assert state.to(dtype=torch.bfloat16).ssm_dtype == torch.float32  # the default for a bf16 model: float32
    half = state.to(state_dtype="bfloat16")
    assert half.ssm_dtype == torch.bfloat16 and half.layers[0]["conv"].dtype == torch.float32
    assert half.to(dtype=torch.bfloat16, state_dtype="model").ssm_dtype == torch.bfloat16
    assert half.to(state_dtype="float32").ssm_dtype == torch.float32


def test_s4d_step_on_a_16bit_state_is_the_float32_step_rounded():
    model = ssm_model(dtype=torch.float32, layers=["s4d"])
    mixer = model.backbone.layers[0].mixer
    start = torch.randn(2, mixer.d_inner, mixer.n_modes, 2).to(torch.bfloat16)
    hidden = torch.randn(2, 16)
    half, full = {"ssm": start.clone()}, {"ssm": start.float()}
    y_half, y_full = mixer.step(hidden, half), mixer.step(hidden, full)
    assert half["ssm"].dtype == torch.bfloat16
    assert torch.equal(y_half, y_full)  # the same float32 arithmetic on the same values
    assert torch.equal(half["ssm"], full["ssm"].to(torch.bfloat16))


@pytest.mark.parametrize("layers", [["mamba", "mamba"], ["mamba2", "mamba2"], LAYERS])
def test_generate_with_the_model_dtype_state_agrees_with_the_float32_state(layers):
    """A bf16 model: the state rounded to bf16 after each step perturbs the logits by about bf16's resolution,
    far below the gaps between the top logits of these seeded models, so the greedy tokens are the same; the
    logits of the first decode step differ by at most a few bf16 units (5e-2 relative)."""
    model = ssm_model(layers=layers, seed=3)
    prompts = torch.randint(0, VOCAB, (2, 6))
    full = generate(model, prompts, 6, return_state=True)
    half = generate(model, prompts, 6, state_dtype="model", return_state=True)
    assert half.state.ssm_dtype == torch.bfloat16 and full.state.ssm_dtype == torch.float32
    assert [row[:4] for row in half.sequences] == [row[:4] for row in full.sequences]
    with torch.no_grad():
        logits_full, state_full = model.prefill(prompts)
        logits_half, state_half = model.prefill(prompts, state_dtype="model")
        assert torch.equal(logits_half, logits_full)  # the prefill computes from zeros in float32 either way
        for half_layer, full_layer in zip(state_half.layers, state_full.layers):  # and rounds its final state
            assert "ssm" not in half_layer or torch.equal(half_layer["ssm"], full_layer["ssm"].to(torch.bfloat16))
        token = logits_full[:, -1].argmax(-1)
        assert rel_error(model.step(token, state_half), model.step(token, state_full)) <= 5e-2


def test_a_saved_state_loads_only_in_its_own_state_dtype(tmp_path):
    model = ssm_model()
    tokens = torch.randint(0, VOCAB, (1, 4))
    _, half = model.prefill(tokens, state_dtype="model")
    half.save(tmp_path / "half.safetensors", model, tokens[0])
    assert read_state_metadata(tmp_path / "half.safetensors")["state_dtype"] == "torch.bfloat16"
    with pytest.raises(StateMismatchError, match="saved in bfloat16.*state_dtype='bfloat16'"):
        InferenceState.load(tmp_path / "half.safetensors", model)
    loaded = InferenceState.load(tmp_path / "half.safetensors", model, state_dtype="model")
    assert all(torch.equal(a[k], b[k]) for a, b in zip(loaded.layers, half.layers) for k in a)
    _, full = model.prefill(tokens)
    full.save(tmp_path / "full.safetensors", model)
    with pytest.raises(StateMismatchError, match="saved in float32"):
        InferenceState.load(tmp_path / "full.safetensors", model, state_dtype="bfloat16")
    assert InferenceState.load(tmp_path / "full.safetensors", model).ssm_dtype == torch.float32


def test_a_state_file_without_the_field_holds_the_default(tmp_path):
    """Files written before the state dtype was recorded hold float32 SSM states: they load as the default."""
    model = ssm_model(layers=["mamba"])
    _, state = model.prefill(torch.randint(0, VOCAB, (1, 3)))
    path = tmp_path / "old.safetensors"
    state.save(path, model)
    metadata = read_state_metadata(path)
    del metadata["state_dtype"]
    save_file(load_file(path), path, metadata=metadata)
    assert InferenceState.load(path, model).ssm_dtype == torch.float32
    with pytest.raises(StateMismatchError, match="saved in float32"):
        InferenceState.load(path, model, state_dtype="model")


def test_the_prefix_cache_keeps_one_state_dtype_per_cache(tmp_path):
    model = ssm_model(layers=["mamba2", "mamba"])
    prefix = torch.randint(0, VOCAB, (5,)).tolist()
    half_cache = PrefixCache(model, directory=tmp_path, state_dtype="model")
    full_cache = PrefixCache(model, directory=tmp_path)
    assert half_cache.prefill(prefix).ssm_dtype == torch.bfloat16
    assert full_cache.prefill(prefix).ssm_dtype == torch.float32
    assert len(list(tmp_path.iterdir())) == 2  # one file each, no collision
    assert len(PrefixCache(model, directory=tmp_path, state_dtype="bfloat16")) == 1  # finds only its own
    n, state = PrefixCache(model, directory=tmp_path, state_dtype="model", max_bytes=0).lookup(prefix + [1])
    assert n == len(prefix) and state.ssm_dtype == torch.bfloat16  # reloaded from disk in its dtype
    with pytest.raises(InputError, match="convert it first"):
        half_cache.put(prefix + [2], full_cache.prefill(prefix + [2]))


def test_cli_generate_state_dtype(tmp_path):
    model = byte_model()
    save_pretrained(model, tmp_path / "model")
    expected = generate(model, [TOK.encode("Hi")], 6, eos_token_id=TOK.eos_token_id, state_dtype="bfloat16")
    args = ["generate", "--model", str(tmp_path / "model"), "--prompt", "Hi", "--max-new-tokens", "6",
            "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--state-dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert result.output == TOK.decode(expected.sequences[0]) + "\n"
    bad = CliRunner().invoke(app, [*args, "--state-dtype", "fp8"])
    assert bad.exit_code == 2 and "--state-dtype must be one of" in bad.output and "'fp8'" in bad.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("layers", [["mamba", "mamba"], ["mamba2", "mamba2"]])
def test_cuda_graph_decode_of_a_bf16_state_is_captured_and_gives_the_eager_tokens(layers):
    from mambalab.inference.cuda_graph import GraphStep, decode_step

    model = ssm_model(layers=layers, seed=1).cuda()
    prompts = torch.randint(0, VOCAB, (3, 5), device="cuda")
    _, state = model.prefill(prompts, state_dtype="model")
    step = decode_step(model, state)
    assert isinstance(step, GraphStep) and step.state.ssm_dtype == torch.bfloat16  # its own graph, not eager
    eager = generate(model, prompts, 10, state_dtype="model", use_cuda_graph=False).sequences
    assert generate(model, prompts, 10, state_dtype="model").sequences == eager
