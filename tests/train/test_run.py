"""Run configuration: YAML + preset + key=value overrides, model config resolution."""

from __future__ import annotations

import pytest

from mambalab.train.run import build_model_config, load_run_config


def test_yaml_preset_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: tiny-mamba\n  d_model: 48\ndata:\n  val_fraction: 0.1\ntrain:\n  lr: 1.0e-3\n")
    run = load_run_config(path, overrides=["lr=3e-4", "model.ssm.d_state=8", "data.tokenizer=byte",
                                           "betas=[0.8, 0.9]", "max_steps=7"])
    assert run.train.lr == 3e-4 and run.train.betas == (0.8, 0.9) and run.train.max_steps == 7
    assert run.data.val_fraction == 0.1 and run.data.tokenizer == "byte"
    config = build_model_config(run.model, vocab_size=259)
    assert (config.d_model, config.ssm.d_state, config.vocab_size) == (48, 8, 259)
    deeper = build_model_config({"preset": "tiny-mamba", "n_layer": 2}, vocab_size=259)
    assert deeper.layer_pattern == ["mamba", "mamba"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["nonsense=1"], "unknown key 'nonsense'"), (["lr"], "expected key=value"),
     (["train.not_a_field=1"], r"unknown field\(s\)"), (["data.colour=red"], r"unknown field\(s\)"),
     (["precision=fp16"], "precision")],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_run_config(preset="tiny-mamba", overrides=overrides)


def test_model_config_errors():
    with pytest.raises(ValueError, match="layer_pattern"):
        build_model_config({"preset": "tiny-hybrid", "n_layer": 3}, vocab_size=259)
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        build_model_config({"preset": "tiny-mamba", "vocab_size": 100}, vocab_size=259)
    with pytest.raises(ValueError, match="unknown preset"):
        build_model_config({"preset": "no-such-model"}, vocab_size=259)
