"""Every mixer and hybrid of the zoo through the LanguageModel API: the parallel forward equals prefill of
the first k tokens + one step per later token (float64 ≤ 1e-10, float32 ≤ 1e-5), prefix caching, and
attention states of different lengths joined by InferenceState.concat."""

from __future__ import annotations

import pytest
import torch

from mambalab import InferenceState, LanguageModel, ModelConfig
from mambalab.config import AttentionConfig, MoEConfig, S4DConfig, SSMConfig
from mambalab.inference.generate import generate
from mambalab.models.zoo import hybrid_pattern
from tests.conftest import rel_error
from tests.models.test_lm import parallel_vs_recurrent

VOCAB = 53


def config(pattern: list[str], ssm: SSMConfig | None = None, s4d: S4DConfig | None = None,
           n_kv_heads: int | None = None) -> ModelConfig:
    return ModelConfig(
        d_model=32, n_layer=len(pattern), vocab_size=VOCAB, layer_pattern=pattern,
        ssm=ssm or SSMConfig(d_state=4, scan_backend="reference"), s4d=s4d or S4DConfig(d_state=8),
        attention=AttentionConfig(n_heads=4, n_kv_heads=n_kv_heads),
        moe=MoEConfig(n_experts=4, top_k=2, d_intermediate=24),
    )


ZOO = {
    "mamba": config(["mamba"] * 2),
    "mamba-A-s4d_lin": config(["mamba"] * 2, SSMConfig(d_state=4, A_init="s4d_lin", scan_backend="reference")),
    "mamba-A-random": config(["mamba"] * 2, SSMConfig(d_state=4, A_init="random", scan_backend="reference")),
    "mamba-zoh": config(["mamba"] * 2, SSMConfig(d_state=4, discretization="zoh")),
    "mamba-bilinear": config(["mamba"] * 2, SSMConfig(d_state=4, discretization="bilinear")),
    "mamba-euler": config(["mamba"] * 2, SSMConfig(d_state=4, discretization="euler")),
    "mamba-s4 (selective=False)": config(["mamba"] * 2, SSMConfig(d_state=4, selective=False)),
    "mamba-s4-bilinear": config(["mamba"] * 2, SSMConfig(d_state=4, selective=False, discretization="bilinear")),
    "mamba-selective_A": config(["mamba"] * 2, SSMConfig(d_state=4, selective_A=True)),
    "mamba-lti-selective_A": config(["mamba"] * 2, SSMConfig(d_state=4, selective=False, selective_A=True)),
    "s4d-cnn-glu": config(["s4d", "s4d+mlp"]),
    "s4d-rnn-silu": config(["s4d"] * 2, s4d=S4DConfig(d_state=8, mode="rnn", gate="silu", expand=2)),
    "s4d-cnn-legs-bilinear": config(["s4d"] * 2, s4d=S4DConfig(d_state=8, init="legs", discretization="bilinear")),
    "transformer": config(["attention+mlp"] * 2),
    "transformer-gqa": config(["attention+mlp"] * 2, n_kv_heads=2),
    "jamba": config(hybrid_pattern(4, attention_every=2, attention_offset=1)),
    "moe-mamba": config(["mamba+moe", "mamba+moe"]),
    "everything": config(["mamba+mlp", "attention+moe", "s4d+mlp"]),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_parallel_equals_prefill_plus_steps_float64(name):
    torch.manual_seed(0)
    model = LanguageModel(ZOO[name]).double().eval()
    errors = parallel_vs_recurrent(model, torch.randint(0, VOCAB, (2, 13)), k=5)
    assert max(errors) <= 1e-10, (name, errors)


@pytest.mark.parametrize("name", ["mamba-s4 (selective=False)", "mamba-selective_A", "s4d-cnn-glu", "jamba"])
def test_parallel_equals_prefill_plus_steps_float32(name):
    model = LanguageModel(ZOO[name]).eval()
    errors = parallel_vs_recurrent(model, torch.randint(0, VOCAB, (2, 17)), k=6)
    assert max(errors) <= 1e-5, (name, errors)


@pytest.mark.parametrize("name", ["s4d-cnn-glu", "mamba-s4 (selective=False)", "transformer-gqa", "jamba"])
def test_prefix_caching_continues_the_state(name):
    """prefill(prefix) then prefill(rest, state) == the parallel forward over the whole sequence."""
    model = LanguageModel(ZOO[name]).double().eval()
    ids = torch.randint(0, VOCAB, (2, 15))
    with torch.no_grad():
        full = model(ids)
        _, prefix = model.prefill(ids[:, :6])
        rest, _ = model.prefill(ids[:, 6:], state=prefix)
    assert rel_error(rest, full[:, 6:]) < 1e-10


@pytest.mark.parametrize("name", ["transformer", "transformer-gqa", "everything"])
def test_concat_states_of_different_lengths(name):
    """Rows prefilled to different lengths (their KV caches zero-padded by concat) decode as if alone;
    decoding past the cache's capacity grows it."""
    model = LanguageModel(ZOO[name]).double().eval()
    seqs = [torch.randint(0, VOCAB, (1, n)) for n in (3, 9, 6)]
    new = torch.randint(0, VOCAB, (3, 20))
    with torch.no_grad():
        state = InferenceState.concat([model.prefill(s)[1] for s in seqs])
        assert state.seqlen.tolist() == [3, 9, 6]
        stepped = torch.stack([model.step(new[:, t], state) for t in range(new.shape[1])], 1)  # (3, 20, V)
        for i, s in enumerate(seqs):
            alone = model(torch.cat([s, new[i : i + 1]], 1))[0, s.shape[1]:]
            assert rel_error(stepped[i], alone) < 1e-10, i
        # the same rows continued in parallel mode (prefill with a state) from the joined state
        joined = InferenceState.concat([model.prefill(s)[1] for s in seqs])
        chunk, _ = model.prefill(new[:, :7], state=joined)
        for i, s in enumerate(seqs):
            alone = model(torch.cat([s, new[i : i + 1, :7]], 1))[0, s.shape[1]:]
            assert rel_error(chunk[i], alone) < 1e-10, i


def test_moe_hybrid_returns_aux_loss():
    model = LanguageModel(ZOO["jamba"]).train()
    logits, aux = model(torch.randint(0, VOCAB, (2, 9)), return_aux_loss=True)
    assert logits.shape == (2, 9, VOCAB) and aux.item() > 0
    aux.backward()
    assert model.backbone.layers[1].mlp.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["transformer-gqa", "jamba", "s4d-rnn-silu"])
def test_generate_batches_prompts_of_different_lengths(name):
    """generate() prefills prompts of different lengths separately, joins their states with concat and
    decodes them together: each row must continue exactly as its prompt alone."""
    model = LanguageModel(ZOO[name]).double().eval()
    prompts = [torch.randint(0, VOCAB, (n,)).tolist() for n in (2, 7, 4)]
    together = generate(model, prompts, max_new_tokens=5, use_cuda_graph=False).sequences
    alone = [generate(model, [p], max_new_tokens=5, use_cuda_graph=False).sequences[0] for p in prompts]
    assert together == alone
