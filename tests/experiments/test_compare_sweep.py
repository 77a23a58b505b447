"""benchmarks/sweeps/compare_sweep.py's grid parser: plan fields, task options, model sizes, seeds, and its errors."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from mambalab.experiments.presets import get_compare_preset

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sweeps" / "compare_sweep.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("compare_sweep_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_one_spec_per_family_and_combination_with_overrides():
    sweep, preset = _load_script(), get_compare_preset("standard")
    specs = sweep.parse_run(
        "mamba+s4d:selective_copying:lr=2e-3,1e-2:options.n_copy=4:size.n_layer=2:eval_lengths=64/128",
        preset,
    )
    assert [(s.family, s.plan.lr) for s in specs] == [
        ("mamba", 2e-3), ("s4d", 2e-3), ("mamba", 1e-2), ("s4d", 1e-2)
    ]
    for spec in specs:
        assert spec.plan.options == {**preset.tasks["selective_copying"].options, "n_copy": 4}
        assert spec.plan.eval_lengths == (64, 128)
        assert (spec.size.n_layer, spec.size.d_model) == (2, preset.size.d_model)
    assert len({s.key for s in specs}) == 4  # every combination is its own cached run


def test_seeds_are_separate_runs_of_one_plan():
    sweep, preset = _load_script(), get_compare_preset("quick")
    specs = sweep.parse_run("mamba:selective_copying:steps=3000:seed=1,2", preset)
    assert [s.seed for s in specs] == [1, 2]
    assert specs[0].plan == specs[1].plan and specs[0].plan.steps == 3000
    assert specs[0].key != specs[1].key
    (default,) = sweep.parse_run("mamba:selective_copying", preset)
    assert default.seed == preset.seed


def test_config_fields_become_nested_overrides_of_the_matched_model():
    sweep, preset = _load_script(), get_compare_preset("standard")
    specs = sweep.parse_run("transformer:phonebook:config.attention.n_heads=4,8", preset)
    assert [s.overrides for s in specs] == [{"attention": {"n_heads": 4}}, {"attention": {"n_heads": 8}}]
    (plain,) = sweep.parse_run("transformer:phonebook", preset)
    assert plain.overrides == {} and len({s.key for s in [*specs, plain]}) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [("mamba:nope:lr=1e-3", "unknown task"), ("mamba:mqar:depth=3", "not a TaskPlan field, seed")],
)
def test_bad_runs_name_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        _load_script().parse_run(text, get_compare_preset("standard"))
