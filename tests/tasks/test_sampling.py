"""`sample_without_replacement`: distinct items, every item and every position equally likely."""

from __future__ import annotations

import torch

from mambalab.tasks.base import sample_without_replacement, seeded


def test_rows_are_distinct_and_in_range():
    draws = sample_without_replacement(500, 37, 9, seeded(0))  # (500, 9)
    assert draws.shape == (500, 9) and draws.min() >= 0 and draws.max() < 37
    assert all(len(set(row.tolist())) == 9 for row in draws)


def test_every_item_is_equally_likely_in_every_slot():
    """Chi-square over (slot, item) counts: a biased sampler (e.g. keys sorted by index, or slot 0 always the
    smallest) fails by hundreds of standard deviations; a fair one passes at this threshold ~always."""
    rows, population, k = 40_000, 10, 4
    draws = sample_without_replacement(rows, population, k, seeded(1))  # (rows, k)
    counts = torch.stack([torch.bincount(draws[:, slot], minlength=population) for slot in range(k)]).double()
    expected = rows / population
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    dof = k * (population - 1)
    assert chi2 < dof + 6 * (2 * dof) ** 0.5, chi2
