"""Every config is validated and sized before any tensor is allocated: pretrained config.json files, `train
--set` overrides and presets fail in well under a second with an error naming the file (when there is one)
and the field, instead of in the allocator; the official float `expand` loads."""

from __future__ import annotations

import json
import time

import pytest

import mambalab
from mambalab.errors import CheckpointError, ConfigError
from mambalab.models import memory
from mambalab.train.run import load_run_config

HF = {"model_type": "mamba", "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2}
OFFICIAL = {"d_model": 64, "n_layer": 2, "vocab_size": 256}


def _timed(call):
    start = time.perf_counter()
    with pytest.raises((CheckpointError, ConfigError)) as info:
        call()
    assert time.perf_counter() - start < 1.0, "the check must come before any allocation"
    return str(info.value)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({**HF, "hidden_size": 10**9}, "d_model"),
        ({**HF, "vocab_size": 10**12}, "vocab_size"),
        ({**HF, "num_hidden_layers": 200000}, "n_layer"),
        ({**HF, "hidden_size": 16384, "num_hidden_layers": 48, "vocab_size": 50280}, "parameters"),
        ({**HF, "state_size": 10**6}, "d_state"),
        ({**HF, "expand": 1000}, "expand"),
        ({**HF, "hidden_size": "64"}, "d_model"),
        ({**OFFICIAL, "d_model": 10**9}, "d_model"),
        ({**OFFICIAL, "ssm_cfg": {"expand": "two"}}, "expand"),
    ],
)
def test_pretrained_config_past_limits_fails_fast_naming_file_and_field(tmp_path, fields, named):
    (tmp_path / "config.json").write_text(json.dumps(fields))
    message = _timed(lambda: mambalab.load(tmp_path))
    assert str(tmp_path / "config.json") in message and named in message, message


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["model.d_model=10**9"], "d_model"),
        (["model.vocab_size=10**12"], "vocab_size"),
        (["model.n_layer=200000"], "n_layer"),
        (["model.d_model=16384", "model.n_layer=48"], "parameters"),
        (["model.ssm.expand=1000"], "expand"),
        (["batch_size=10**6"], "batch_size"),
        (["lr=abc"], "train.lr"),
        (["model.d_model=abc"], "d_model"),
    ],
)
def test_train_overrides_past_limits_fail_fast_naming_the_field(overrides, named):
    message = _timed(lambda: load_run_config(preset="tiny-mamba", overrides=overrides))
    assert named in message, message


@pytest.mark.parametrize(
    ("fields", "d_inner"),
    [({**OFFICIAL, "ssm_cfg": {"expand": 2.0}}, 128), ({**HF, "expand": 2.0}, 128), ({**HF, "expand": 1.5}, 96)],
)
def test_float_expand_loads_as_official(tmp_path, fields, d_inner):
    """d_inner = int(expand · d_model), as state-spaces/mamba and transformers compute it."""
    from mambalab.config import ModelConfig
    from mambalab.models.hf_config import load_config

    (tmp_path / "config.json").write_text(json.dumps(fields))
    config, _ = load_config(tmp_path)
    assert config.d_inner == d_inner
    model = mambalab.LanguageModel(ModelConfig.from_dict(config.to_dict()))
    assert model.backbone.layers[0].mixer.in_proj.out_features == 2 * d_inner


def test_the_estimate_is_the_parameter_count_times_the_dtype_size():
    import torch

    from mambalab.models.zoo import count_params, get_preset

    config = get_preset("tiny-mamba")
    assert memory.model_bytes(config, torch.bfloat16) == 2 * count_params(config)
    assert memory.model_bytes(config, torch.float32) == sum(
        p.numel() * 4 for p in mambalab.LanguageModel(config).parameters()
    )
    assert memory.device_memory("cpu") > 2**28


def test_building_a_model_past_memory_fails_before_allocating(monkeypatch):
    from mambalab.models.zoo import get_preset

    monkeypatch.setattr(memory, "device_memory", lambda device: 1000)
    message = _timed(lambda: mambalab.LanguageModel(get_preset("tiny-mamba")))
    assert "past the" in message
