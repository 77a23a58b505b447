"""generate(): greedy == teacher-forced argmax, batched == one by one, EOS per row, streaming, states,
seeded sampling, and the argument checks."""

from __future__ import annotations

import pytest
import torch

from mambalab import AttentionConfig, LanguageModel, ModelConfig, SSMConfig
from mambalab.inference.generate import generate
from tests.conftest import rel_error
from tests.inference.conftest import VOCAB, random_prompts


def teacher_forced_argmax(model, prompt: list[int], new: list[int]) -> list[int]:
    """The argmax of a full parallel forward over prompt + new, at each generated position."""
    logits = model(torch.tensor([prompt + new]))[0]  # (l, vocab)
    return logits[len(prompt) - 1 : -1].argmax(-1).tolist()


def test_greedy_equals_argmax_of_teacher_forced_forward(model):
    prompt = random_prompts([7])[0]
    out = generate(model, [prompt], 12)
    assert len(out.sequences[0]) == 12 and out.finish_reasons == ["length"]
    assert out.sequences[0] == teacher_forced_argmax(model, prompt, out.sequences[0])


def test_batched_prompts_of_different_lengths_equal_one_by_one(model):
    prompts = random_prompts([5, 1, 9, 5, 3])
    batched = generate(model, prompts, 8)
    for prompt, seq in zip(prompts, batched.sequences):
        assert generate(model, [prompt], 8).sequences[0] == seq
    assert batched.prompt_lengths == [5, 1, 9, 5, 3]


def test_hybrid_models_with_kv_caches_batch_exactly_too():
    config = ModelConfig(d_model=32, n_layer=3, vocab_size=VOCAB, ssm=SSMConfig(d_state=8),
                         attention=AttentionConfig(n_heads=4), layer_pattern=["mamba", "attention+mlp", "s4d+mlp"])
    model = LanguageModel(config).double().eval()
    prompts = random_prompts([5, 1, 9])  # KV caches of different lengths, zero-padded when joined
    batched = generate(model, prompts, 6).sequences
    assert batched == [generate(model, [p], 6).sequences[0] for p in prompts]
    assert batched[2] == teacher_forced_argmax(model, prompts[2], batched[2])


def test_tensor_prompts_equal_list_prompts(model):
    prompts = torch.randint(0, VOCAB, (3, 6))
    assert generate(model, prompts, 5).sequences == generate(model, prompts.tolist(), 5).sequences


def test_rows_stop_at_eos_independently_and_stream_in_order(model):
    prompts = random_prompts([4, 6, 2])
    free = generate(model, prompts, 10).sequences
    eos = free[0][2]  # row 0 reaches it at step 3; other rows whenever (or never) they produce it
    streamed = {i: [] for i in range(3)}
    out = generate(model, prompts, 10, eos_token_id=eos, streamer=lambda row, tok: streamed[row].append(tok))
    for i, seq in enumerate(free):
        stop = seq.index(eos) + 1 if eos in seq else len(seq)
        assert out.sequences[i] == seq[:stop] == streamed[i]
        assert out.finish_reasons[i] == ("stop" if eos in seq else "length")


def test_returned_state_continues_each_row_exactly(model):
    prompts = random_prompts([3, 5])
    eos = generate(model, prompts, 6).sequences[0][1]
    out = generate(model, prompts, 6, eos_token_id=eos, return_state=True)
    for i, (prompt, seq) in enumerate(zip(prompts, out.sequences)):
        _, ref = model.prefill(torch.tensor([prompt + seq]))
        row = out.state.select([i])
        assert row.seqlen.tolist() == ref.seqlen.tolist() == [len(prompt) + len(seq)]
        for mine, theirs in zip(row.layers, ref.layers):
            for key in theirs:
                assert rel_error(mine[key], theirs[key]) < 1e-12


def test_continuing_from_a_state_equals_the_whole_prompt_and_leaves_it_unchanged(model):
    prefix, rest = random_prompts([10, 4])
    _, state = model.prefill(torch.tensor([prefix]))
    before = state.clone()
    assert generate(model, [rest], 6, state=state).sequences == generate(model, [prefix + rest], 6).sequences
    assert all(torch.equal(a[k], b[k]) for a, b in zip(state.layers, before.layers) for k in a)
    shared = generate(model, [rest, rest[:2]], 6, state=state).sequences  # a batch-1 state is shared
    assert shared == [generate(model, [prefix + r], 6).sequences[0] for r in (rest, rest[:2])]


def test_seeded_sampling_is_reproducible(model):
    prompts = random_prompts([3, 3])
    kwargs = {"do_sample": True, "temperature": 1.5, "top_k": 20, "top_p": 0.95, "min_p": 0.01, "repetition_penalty": 1.2}
    runs = [generate(model, prompts, 16, generator=torch.Generator().manual_seed(s), **kwargs).sequences
            for s in (11, 11, 12)]
    assert runs[0] == runs[1] != runs[2]
    assert all(0 <= t < VOCAB for seq in runs[0] for t in seq)


def test_sampling_with_top_k_1_is_greedy(model):
    prompts = random_prompts([4])
    sampled = generate(model, prompts, 8, do_sample=True, top_k=1, generator=torch.Generator().manual_seed(0))
    assert sampled.sequences == generate(model, prompts, 8).sequences


def test_repetition_penalty_changes_greedy_choices(model):
    prompts = random_prompts([4])
    plain = generate(model, prompts, 20).sequences[0]
    penalised = generate(model, prompts, 20, repetition_penalty=1e6).sequences[0]
    assert len(set(penalised)) == len(penalised) and penalised != plain  # a huge penalty forbids repeats


def test_zero_new_tokens(model):
    out = generate(model, random_prompts([3]), 0, return_state=True)
    assert out.sequences == [[]] and out.state.seqlen.tolist() == [3]


def test_model_generate_is_the_same(model):
    prompts = random_prompts([4])
    assert model.generate(prompts, 5).sequences == generate(model, prompts, 5).sequences


@pytest.mark.parametrize(
    "prompts, kwargs, name",
    [([[]], {}, "prompts"), ([[1, 2], []], {}, "prompts"), ([], {}, "prompts"), ([[1, VOCAB]], {}, "prompts"),
     ([[-1]], {}, "prompts"), ([[1]], {"max_new_tokens": -1}, "max_new_tokens"),
     ([[1]], {"do_sample": True, "temperature": 0.0}, "temperature"), ([[1]], {"top_p": 0.0}, "top_p"),
     ([[1]], {"top_p": 1.01}, "top_p"), ([[1]], {"eos_token_id": VOCAB}, "eos_token_id")],
)
def test_bad_input_raises_value_error_naming_the_argument(model, prompts, kwargs, name):
    kwargs = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=name):
        generate(model, prompts, **kwargs)
