"""Inference with Mamba-2 layers, alone and mixed with attention and MoE: prefill + step equals the parallel
forward, generate equals greedy recomputation, states save/load with their fingerprint, prefix caching."""

from __future__ import annotations

import pytest
import torch

from mambalab import AttentionConfig, InferenceState, LanguageModel, ModelConfig, MoEConfig
from mambalab.config import Mamba2Config
from mambalab.inference.generate import generate
from mambalab.inference.state import StateMismatchError
from tests.conftest import rel_error
from tests.inference import test_prefix_cache
from tests.inference.conftest import VOCAB, random_prompts

PATTERNS = {
    "mamba2": ["mamba2", "mamba2"],
    "hybrid": ["mamba2", "attention+mlp", "mamba2+moe", "mamba"],
}


def mamba2_model(pattern: str = "mamba2", seed: int = 0, dtype=torch.float64) -> LanguageModel:
    """A tiny model with odd Mamba-2 sizes (3 heads of 8 in 3 groups, N = 5, chunks of 4), moved off its init."""
    torch.manual_seed(seed)
    layers = PATTERNS[pattern]
    config = ModelConfig(
        d_model=12,
        n_layer=len(layers),
        vocab_size=VOCAB,
        layer_pattern=layers,
        mamba2=Mamba2Config(d_state=5, head_dim=8, n_groups=3, d_conv=3, chunk_size=4),
        attention=AttentionConfig(n_heads=2),
        moe=MoEConfig(n_experts=3, top_k=2),
    )
    model = LanguageModel(config).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("prompt", [1, 6, 11])
def test_prefill_then_steps_equal_the_parallel_forward_fp32(pattern, prompt):
    model = mamba2_model(pattern, dtype=torch.float32)
    ids = torch.randint(0, VOCAB, (3, 14))
    with torch.no_grad():
        full = model(ids)  # (b, l, vocab)
        logits, state = model.prefill(ids[:, :prompt])
        steps = [model.step(ids[:, t], state) for t in range(prompt, 14)]
    assert rel_error(logits, full[:, :prompt]) <= 1e-4
    assert rel_error(torch.stack(steps, 1), full[:, prompt:]) <= 1e-4
    assert state.seqlen.tolist() == [14] * 3
    mixer_state = state.layers[0]
    assert mixer_state["ssm"].shape == (3, 3, 8, 5) and mixer_state["ssm"].dtype == torch.float32
    assert mixer_state["conv"].shape == (3, 24 + 2 * 3 * 5, 3)


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_prefill_in_pieces_equals_one_prefill(pattern):
    model = mamba2_model(pattern)
    ids = torch.randint(0, VOCAB, (2, 13))
    token = torch.randint(0, VOCAB, (2,))
    with torch.no_grad():
        _, whole = model.prefill(ids)
        _, first = model.prefill(ids[:, :5])
        _, pieces = model.prefill(ids[:, 5:], state=first)
        assert rel_error(model.step(token, pieces), model.step(token, whole)) < 1e-12
    assert rel_error(pieces.layers[0]["ssm"], whole.layers[0]["ssm"]) < 1e-12
    # the conv window holds in_proj outputs of the last tokens: equal up to rounding, since a BLAS may block
    # 8 rows differently from 13 (bit-equal on one CPU, not on another)
    assert rel_error(pieces.layers[0]["conv"], whole.layers[0]["conv"]) < 1e-12


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_generate_equals_greedy_recomputation(pattern):
    model = mamba2_model(pattern)
    prompts = random_prompts([3, 7])
    result = generate(model, prompts, 6)
    for prompt, new in zip(prompts, result.sequences):
        tokens = list(prompt)
        with torch.no_grad():
            for _ in range(6):
                tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
        assert new == tokens[len(prompt) :]


def test_state_save_load_and_fingerprint(tmp_path):
    model = mamba2_model("hybrid")
    prefix = random_prompts([9])[0]
    _, state = model.prefill(torch.tensor([prefix]))
    path = tmp_path / "state.safetensors"
    state.save(path, model, prefix_tokens=prefix)
    loaded = InferenceState.load(path, model, prefix_tokens=prefix)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(state.layers, loaded.layers) for k in a)
    token = torch.tensor([prefix[-1]])
    with torch.no_grad():
        assert torch.equal(model.step(token, loaded), model.step(token, state.clone()))
    with pytest.raises(StateMismatchError, match="other weights"):
        InferenceState.load(path, mamba2_model("hybrid", seed=1))
    with pytest.raises(StateMismatchError, match="another config"):
        InferenceState.load(path, mamba2_model("mamba2"))


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_prefix_cache_resumes_with_the_same_tokens(pattern):
    test_prefix_cache.test_resuming_from_the_cache_gives_the_same_tokens(mamba2_model(pattern))  # on Mamba-2


def test_state_batch_operations_keep_rows():
    model = mamba2_model()
    prompts = torch.randint(0, VOCAB, (3, 6))
    _, state = model.prefill(prompts)
    joined = InferenceState.concat([state.select([2]), state.select([0, 1])])
    assert all(
        torch.equal(joined.layers[i][k], state.layers[i][k][[2, 0, 1]])
        for i in range(2)
        for k in state.layers[i]
    )
    assert state.to(dtype=torch.bfloat16).layers[0]["ssm"].dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_cuda_graph_decode_is_captured_and_gives_the_eager_tokens(pattern):
    from mambalab.inference.cuda_graph import GraphStep, decode_step

    model = mamba2_model(pattern, dtype=torch.float32).cuda()
    prompts = random_prompts([5, 9])
    _, state = model.prefill(torch.tensor([prompts[0]], device="cuda"))
    if pattern == "mamba2":  # (attention's step synchronises with the host to grow its KV cache: eager)
        assert isinstance(decode_step(model, state), GraphStep)  # not the eager fallback
    eager = generate(model, prompts, 12, use_cuda_graph=False).sequences
    assert generate(model, prompts, 12, use_cuda_graph=True).sequences == eager
