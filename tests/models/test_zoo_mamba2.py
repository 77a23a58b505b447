"""The matched Mamba-2 of `mambalab compare`: within 3% of the reference Mamba's parameters at every size a
compare preset trains (and at mamba-130m), with a power-of-two N, a head_dim dividing d_inner, one group."""

from __future__ import annotations

import pytest

from mambalab import LanguageModel
from mambalab.experiments.families import family_config, reference_config
from mambalab.experiments.presets import get_compare_preset
from mambalab.models.zoo import count_params, get_preset, mamba2_head_dim, match_config
from mambalab.tasks import build_task


def compare_cells(name: str) -> set[tuple]:
    """(reference size, vocabulary) of every main-grid task and scaling size of a compare preset."""
    preset = get_compare_preset(name)
    cells = {(preset.size_for(plan), build_task(task, **plan.options).vocab_size) for task, plan in preset.tasks.items()}
    return cells | {(size, 256) for size in preset.scaling.sizes}


def assert_mamba2_shape(config):
    cfg = config.mamba2
    assert set(config.layer_pattern) == {"mamba2"}
    assert cfg.d_state & (cfg.d_state - 1) == 0 and 4 <= cfg.d_state <= 256  # a power of two
    assert (cfg.expand * config.d_model) % cfg.head_dim == 0 and cfg.n_groups == 1


@pytest.mark.parametrize("preset", ["smoke", "quick", "standard"])
def test_matched_mamba2_within_3_percent_at_compare_sizes(preset):
    for size, vocab in sorted(compare_cells(preset), key=str):
        target = count_params(reference_config(size, vocab))
        matched = family_config("mamba2", size, vocab)
        assert abs(count_params(matched) / target - 1) <= 0.03, (size, vocab)
        assert_mamba2_shape(matched)


def test_matched_mamba2_of_mamba_130m_keeps_the_width_and_prefers_n_64():
    config = get_preset("mamba-130m")
    matched = match_config(config, "mamba2")
    assert abs(count_params(matched) / count_params(config) - 1) <= 0.03
    assert matched.d_model == 768 and matched.mamba2.d_state == 64 and matched.mamba2.head_dim == 64
    assert_mamba2_shape(matched)


def test_matched_mamba2_count_equals_the_built_model():
    matched = family_config("mamba2", get_compare_preset("smoke").size, 32)
    assert count_params(matched) == sum(p.numel() for p in LanguageModel(matched).parameters())


def test_mamba2_head_dim_divides_d_inner_into_enough_heads():
    assert mamba2_head_dim(1536, 64) == 64
    assert mamba2_head_dim(64, 64) == 16  # 4 heads
    assert mamba2_head_dim(144, 64) == 16  # 9 heads: 32 would not divide 144
    assert mamba2_head_dim(6, 64) == 1


def test_mamba2_match_errors_name_the_widths_tried():
    with pytest.raises(ValueError, match=r"no mamba2 config with d_model=128 \(or a multiple of 8 within 2×"):
        match_config(get_preset("tiny-mamba"), "mamba2", tolerance=1e-9)
