from __future__ import annotations

import json

import pytest

from mambalab import ModelConfig, SSMConfig


def test_json_round_trip(tmp_path):
    cfg = ModelConfig(d_model=64, n_layer=3, vocab_size=100, layer_pattern=["mamba", "attention+mlp", "mamba+moe"],
                      ssm=SSMConfig(d_state=4, dt_rank=7))
    cfg.to_json(tmp_path / "c.json")
    assert ModelConfig.from_json(tmp_path / "c.json") == cfg
    assert cfg.padded_vocab_size == 104 and cfg.d_inner == 128 and cfg.dt_rank == 7


def test_unknown_fields_and_bad_patterns_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"config.ssm: unknown field\(s\) \['d_sate'\]"):
        ModelConfig.from_dict({"d_model": 8, "n_layer": 1, "ssm": {"d_sate": 4}})
    with pytest.raises(ValueError, match=r"layer_pattern\[1\]: unknown layer kind 'mamba\+ffn'"):
        ModelConfig(n_layer=2, layer_pattern=["mamba", "mamba+ffn"])
    with pytest.raises(ValueError, match="has 1 entries but n_layer=2"):
        ModelConfig(n_layer=2, layer_pattern=["mamba"])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        ModelConfig.from_json(tmp_path / "bad.json")
    assert json.loads(json.dumps(ModelConfig().to_dict()))["ssm"]["d_state"] == 16
