"""Each logits processor against hand-computed cases; validation; seeded draws."""

from __future__ import annotations

import math

import pytest
import torch

from mambalab.inference.sampling import (
    SamplingConfig,
    apply_min_p,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
)

INF = float("inf")
PROBS = [0.5, 0.3, 0.15, 0.05]


def log_probs() -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in PROBS]])  # (1, 4)


def kept(logits: torch.Tensor) -> list[bool]:
    return torch.isfinite(logits[0]).tolist()


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -2.0, 0.5, 3.0]]
    assert apply_repetition_penalty(logits, seen, 0.5).tolist() == [[4.0, -0.5, 0.5, 3.0]]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_temperature_divides_the_logits_shifted_by_their_maximum():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    assert apply_temperature(logits, 0.5).tolist() == [[0.0, -6.0], [-5.0, 0.0]]
    assert torch.allclose(apply_temperature(logits, 0.5).softmax(-1), (logits / 0.5).softmax(-1))


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert apply_top_k(logits, 2).tolist() == [[-INF, 3.0, 2.0, -INF]]
    assert apply_top_k(logits, 0).tolist() == logits.tolist()
    assert apply_top_k(logits, 10).tolist() == logits.tolist()
    assert kept(apply_top_k(torch.tensor([[1.0, 1.0, 1.0, 0.0]]), 2)) == [True, True, True, False]  # ties stay


@pytest.mark.parametrize(
    "p, expected",
    [(0.4, [True, False, False, False]), (0.75, [True, True, False, False]),
     (0.9, [True, True, True, False]), (0.97, [True, True, True, True]), (1.0, [True] * 4)],
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    assert kept(apply_top_p(log_probs(), p)) == expected


def test_top_p_is_per_row_and_in_vocabulary_order():
    logits = torch.stack([log_probs()[0], log_probs()[0].flip(0)])  # second row: least likely first
    out = apply_top_p(logits, 0.75)
    assert torch.isfinite(out).tolist() == [[True, True, False, False], [False, False, True, True]]


@pytest.mark.parametrize(
    "min_p, expected",
    [(0.0, [True] * 4), (0.2, [True, True, True, False]), (0.5, [True, True, False, False]),
     (0.9, [True, False, False, False])],
)
def test_min_p_drops_tokens_below_a_fraction_of_the_top_probability(min_p, expected):
    assert kept(apply_min_p(log_probs(), min_p)) == expected


def test_greedy_applies_only_the_repetition_penalty():
    config = SamplingConfig(do_sample=False, temperature=0.1, top_k=1, repetition_penalty=4.0)
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    seen = torch.tensor([[True, False, False]])
    assert config.process(logits, seen).tolist() == [[0.5, 1.0, 0.0]]
    assert config.choose(logits, seen).tolist() == [1]


@pytest.mark.parametrize(
    "kwargs, name",
    [({"do_sample": True, "temperature": 0.0}, "temperature"), ({"do_sample": True, "temperature": -1.0}, "temperature"),
     ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"),
     ({"min_p": 1.5}, "min_p"), ({"repetition_penalty": 0.0}, "repetition_penalty"),
     ({"repetition_penalty": INF}, "repetition_penalty"), ({"do_sample": True, "temperature": INF}, "temperature")],
)
def test_bad_options_raise_value_errors_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SamplingConfig(**kwargs)


def test_zero_temperature_is_fine_when_greedy():
    SamplingConfig(do_sample=False, temperature=0.0)


def test_seeded_draws_are_reproducible_and_follow_the_distribution():
    config = SamplingConfig(do_sample=True)
    logits = torch.log(torch.tensor([[0.7, 0.3]])).expand(4000, 2)
    draws = [config.choose(logits, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    assert abs(draws[0].float().mean().item() - 0.3) < 0.04
    other = config.choose(logits, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(draws[0], other)


@pytest.mark.parametrize("temperature", [1e-30, 1e-38, 1e-300, 5e-324])
def test_a_tiny_temperature_draws_the_argmax_instead_of_overflowing(temperature):
    """logits / T overflows float32 below T ≈ 1e-38 (and T itself underflows float32 below 1.4e-45): the
    shifted form in float64 keeps the most likely token's probability 1."""
    logits = torch.randn(3, 50) * 5
    config = SamplingConfig(do_sample=True, temperature=temperature)
    tokens = config.choose(logits, generator=torch.Generator().manual_seed(0))
    assert tokens.tolist() == logits.argmax(-1).tolist()


def test_a_tiny_repetition_penalty_keeps_the_logits_finite():
    logits = torch.tensor([[2.0, 1.0, -1.0, 0.5]])
    seen = torch.tensor([[True, False, True, False]])
    out = SamplingConfig(do_sample=True, repetition_penalty=1e-300).process(logits, seen)
    assert not torch.isnan(out).any() and torch.isfinite(out[0, :2]).all()
    assert SamplingConfig(do_sample=True, repetition_penalty=1e-300).choose(logits, seen).tolist() == [0]
