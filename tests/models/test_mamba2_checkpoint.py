"""Mamba-2 checkpoints: transformers' Mamba2ForCausalLM <-> mambalab both ways with equal logits, the official
state-spaces format, our own format for hybrids, clear errors for options mambalab does not compute, and the
zoo's Mamba-2 presets and counts."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import Mamba2Config, Mamba2ForCausalLM

import mambalab
from mambalab import AttentionConfig, LanguageModel, ModelConfig
from mambalab.config import Mamba2Config as OurMamba2Config
from mambalab.errors import CheckpointError
from mambalab.models.hf_config import load_config, transformers_incompatibility
from mambalab.models.zoo import FAMILIES, count_params, flops_per_token, get_preset, match_config
from tests.conftest import rel_error
from tests.models.test_pretrained import edit_config, perturb

VOCAB = 61  # padded to 64 by pad_vocab_size_multiple=8
# Odd sizes so that a mis-mapped field changes a shape: 4 heads of 8, 2 groups, N = 6, width-3 conv.
MIXER = {"d_state": 6, "head_dim": 8, "n_groups": 2, "d_conv": 3, "chunk_size": 8}


def hf_model(**kw) -> Mamba2ForCausalLM:
    """A random tiny transformers Mamba-2."""
    fields = {
        "vocab_size": 64,
        "hidden_size": 16,
        "num_heads": 4,
        "head_dim": 8,
        "n_groups": 2,
        "state_size": 6,
        "conv_kernel": 3,
        "chunk_size": 8,
        "num_hidden_layers": 2,
        "layer_norm_epsilon": 1e-6,
    }
    torch.manual_seed(0)
    model = Mamba2ForCausalLM(Mamba2Config(**{**fields, **kw})).eval()
    perturb(model)
    return model


def ours(mixer: dict | None = None, **kw) -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(
        d_model=16,
        n_layer=2,
        vocab_size=VOCAB,
        layer_pattern=["mamba2"] * 2,
        mamba2=OurMamba2Config(**{**MIXER, **(mixer or {})}),
        **kw,
    )
    model = LanguageModel(config).eval()
    perturb(model)
    return model


def assert_same_logits(model: LanguageModel, hf: Mamba2ForCausalLM, vocab: int) -> None:
    ids = torch.randint(0, vocab, (2, 13))  # 13: not a multiple of chunk_size
    with torch.no_grad():
        got, want = model(ids), hf(ids).logits[..., :vocab]  # (b, l, vocab)
    assert got.shape == want.shape
    assert rel_error(got, want) <= 1e-4


# --- Interop with transformers ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"tie_word_embeddings": True, "use_bias": True, "use_conv_bias": False, "expand": 4, "num_heads": 8},
    ],
)
def test_transformers_checkpoint_loads_with_equal_logits(tmp_path, kw):
    hf = hf_model(**kw)
    hf.save_pretrained(tmp_path)
    model = mambalab.load(tmp_path)
    config, fmt = load_config(tmp_path)
    assert fmt == "hf" and config.layer_pattern == ["mamba2"] * 2 and config.mamba2.n_groups == 2
    assert model.config.tie_embeddings == kw.get("tie_word_embeddings", False)
    assert model.config.norm_eps == model.config.mamba2.rmsnorm_eps == 1e-6
    assert_same_logits(model, hf, vocab=64)


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False, "mixer": {"bias": True, "conv_bias": False}}])
def test_saved_model_loads_in_transformers_with_equal_logits(tmp_path, kw):
    model = ours(**kw)
    model.save_pretrained(tmp_path)
    hf, info = Mamba2ForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert hf.config.tie_word_embeddings == model.config.tie_embeddings and hf.config.num_heads == 4
    assert_same_logits(model, hf.eval(), vocab=VOCAB)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "mamba2" and "Mamba2ForCausalLM" in data["mambalab"]["note"]
    assert mambalab.load(tmp_path).config == model.config  # and back, exactly


def official_dir(tmp_path, model: LanguageModel, **ssm_cfg):
    """An official state-spaces Mamba-2 directory (pytorch_model.bin, official names) of our model."""
    state = {
        k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in model.state_dict().items()
    }
    torch.save(state, tmp_path / "pytorch_model.bin")  # lm_head.weight included (tied), as official files
    config = model.config
    official = {
        "d_model": config.d_model,
        "d_intermediate": 0,
        "n_layer": config.n_layer,
        "vocab_size": VOCAB,
        "ssm_cfg": {
            "layer": "Mamba2",
            "d_state": 6,
            "headdim": 8,
            "ngroups": 2,
            "d_conv": 3,
            "chunk_size": 8,
            **ssm_cfg,
        },
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
        "tie_embeddings": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(official))
    return tmp_path


def test_official_checkpoint_loads_with_equal_logits(tmp_path):
    model = ours()  # norm eps 1e-5, as official
    official_dir(tmp_path, model, rmsnorm=True, norm_before_gate=False, use_mem_eff_path=True)
    config, fmt = load_config(tmp_path)
    assert fmt == "official" and config.padded_vocab_size == 64 and config.mamba2.n_groups == 2
    loaded = mambalab.load(tmp_path)
    ids = torch.randint(0, VOCAB, (2, 13))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_official_d_has_hdim_loads(tmp_path):
    model = ours(mixer={"D_has_hdim": True})
    official_dir(tmp_path, model, D_has_hdim=True, A_init_range=[1, 16])
    assert mambalab.load(tmp_path).backbone.layers[0].mixer.D.shape == (32,)
    assert "D_has_hdim" in transformers_incompatibility(model.config)


@pytest.mark.parametrize(
    ("ssm_cfg", "message"),
    [
        ({"dt_limit": [0.001, 0.1]}, "'dt_limit' = \\[0.001, 0.1\\] is not supported"),
        ({"norm_before_gate": True}, "'norm_before_gate' = True is not supported"),
        ({"rmsnorm": False}, "'rmsnorm' = False is not supported"),
        ({"d_ssm": 16}, "'d_ssm' = 16 is not supported"),
        ({"nonsense": 1}, "unknown config field\\(s\\) \\['nonsense'\\]"),
    ],
)
def test_bad_official_mamba2_config(tmp_path, ssm_cfg, message):
    official_dir(tmp_path, ours(), **ssm_cfg)
    with pytest.raises(CheckpointError, match=message):
        mambalab.load(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d.update(time_step_limit=[0.0, 0.5]),
            "'time_step_limit' = \\[0.0, 0.5\\] is not supported",
        ),
        (lambda d: d.update(num_heads=3), "'num_heads' = 3 but expand·hidden_size / head_dim = 4"),
        (lambda d: d.update(hidden_act="gelu"), "'hidden_act' = 'gelu' is not supported"),
        (lambda d: d.update(head_dim=5), "multiple of head_dim=5"),
        (lambda d: d.update(mystery=1), "unknown config field\\(s\\) \\['mystery'\\]"),
    ],
)
def test_bad_transformers_mamba2_config(tmp_path, edit, message):
    hf_model().save_pretrained(tmp_path)
    edit_config(tmp_path, edit)
    with pytest.raises(CheckpointError, match=message):
        mambalab.load(tmp_path)


def test_fields_of_older_transformers_are_read_as_transformers_reads_them(tmp_path):
    """4.44 wrote norm_before_gate (default true; its PyTorch path gated first all the same) and a bare
    Infinity in time_step_limit."""
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    edit_config(tmp_path, lambda d: d.update(time_step_limit=[0.0, math.inf], norm_before_gate=True))
    assert_same_logits(mambalab.load(tmp_path), Mamba2ForCausalLM.from_pretrained(tmp_path).eval(), vocab=64)


def test_what_transformers_cannot_compute_is_saved_mambalab_only(tmp_path):
    assert "rmsnorm_eps" in transformers_incompatibility(ours(mixer={"rmsnorm_eps": 1e-3}).config)
    pattern = ["mamba2", "attention+mlp", "mamba2+moe", "mamba"]
    config = ModelConfig(
        d_model=16,
        n_layer=4,
        vocab_size=VOCAB,
        layer_pattern=pattern,
        attention=AttentionConfig(n_heads=2),
        mamba2=OurMamba2Config(**MIXER),
    )
    model = LanguageModel(config).eval()
    perturb(model)
    assert "other than plain 'mamba2'" in transformers_incompatibility(config)
    model.save_pretrained(tmp_path)
    assert list(json.loads((tmp_path / "config.json").read_text())) == ["mambalab"]
    loaded = mambalab.load(tmp_path)
    ids = torch.randint(0, VOCAB, (2, 7))
    assert loaded.config == config and torch.equal(loaded(ids), model(ids))


# --- Zoo ---------------------------------------------------------------------------------------------
def test_count_params_equals_built_mamba2_models():
    hybrid = ModelConfig(
        d_model=16,
        n_layer=3,
        vocab_size=VOCAB,
        layer_pattern=["mamba2+mlp", "attention", "mamba2"],
        attention=AttentionConfig(n_heads=2),
        mamba2=OurMamba2Config(**MIXER, bias=True, conv_bias=False, D_has_hdim=True),
    )
    for config in (get_preset("tiny-mamba2"), hybrid):
        assert count_params(config) == sum(p.numel() for p in LanguageModel(config).parameters())


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("mamba2-130m", (24, 768)),
        ("mamba2-370m", (48, 1024)),
        ("mamba2-780m", (48, 1536)),
        ("mamba2-1.3b", (48, 2048)),
        ("mamba2-2.7b", (64, 2560)),
    ],
)
def test_mamba2_presets_have_the_published_shapes(name, shape):
    config = get_preset(name)
    assert (config.n_layer, config.d_model) == shape and config.padded_vocab_size == 50288
    assert config.mamba2.d_state == 128 and config.mamba2.head_dim == 64 and config.mamba2.n_groups == 1


def test_mamba2_130m_count_is_the_sum_of_its_checkpoint_tensors():
    """The tensors of state-spaces/mamba2-130m, one by one (24 heads, conv over 1536 + 2·128 channels)."""
    layer = {
        "norm": 768,
        "in_proj": 768 * (2 * 1536 + 2 * 128 + 24),
        "conv1d.weight": 1792 * 4,
        "conv1d.bias": 1792,
        "dt_bias": 24,
        "A_log": 24,
        "D": 24,
        "mixer.norm": 1536,
        "out_proj": 1536 * 768,
    }
    assert count_params(get_preset("mamba2-130m")) == 50288 * 768 + 24 * sum(layer.values()) + 768  # + norm_f


def test_tiny_mamba2_is_the_size_of_tiny_mamba_and_every_mamba2_preset_matches_every_family():
    assert abs(count_params(get_preset("tiny-mamba2")) / count_params(get_preset("tiny-mamba")) - 1) <= 0.03
    for name in ("tiny-mamba2", "mamba2-130m"):  # `mambalab zoo --match FAMILY` matches every preset
        for family in FAMILIES:
            matched = match_config(get_preset(name), family)
            assert abs(count_params(matched) / count_params(get_preset(name)) - 1) <= 0.03, (name, family)


def test_mamba2_flops_are_about_six_per_parameter_and_flat_in_length():
    config = get_preset("mamba2-130m")
    assert 0.95 < flops_per_token(config, 2048) / (6 * count_params(config)) < 1.15
    assert flops_per_token(config, 8192) == flops_per_token(config, 2048)


def test_published_mamba2_130m_config_is_the_preset(tmp_path):
    """The config.json of state-spaces/mamba2-130m (Mamba2 defaults in ssm_cfg) gives the mamba2-130m preset."""
    published = {
        "d_model": 768, "d_intermediate": 0, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {"layer": "Mamba2"},
        "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": 16, "tie_embeddings": True,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(published))
    assert load_config(tmp_path) == (get_preset("mamba2-130m"), "official")


def test_a_checkpoint_that_transformers_saved_again_loads(tmp_path):
    """ours -> save_pretrained -> Mamba2ForCausalLM -> save_pretrained (fine-tuning with transformers): the
    re-saved config.json keeps our block beside transformers' own additions (time_step_limit, time_step_rank),
    which loads as before; a clamp of Δ written there is refused, strict or not."""
    model = ours()
    model.save_pretrained(tmp_path / "ours")
    Mamba2ForCausalLM.from_pretrained(tmp_path / "ours").save_pretrained(tmp_path / "hf")
    data = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "mambalab" in data and "time_step_limit" in data
    assert mambalab.load(tmp_path / "hf").config == model.config
    edit_config(tmp_path / "hf", lambda d: d.update(time_step_limit=[0.0, 0.01]))
    with pytest.raises(CheckpointError, match="time_step_limit"):
        mambalab.load(tmp_path / "hf", strict_config=False)


@pytest.mark.parametrize("fmt", ["hf", "official"])
def test_strict_config_false_ignores_a_harmless_unknown_field(tmp_path, fmt):
    if fmt == "hf":
        hf_model().save_pretrained(tmp_path)
    else:
        official_dir(tmp_path, ours())
    before = load_config(tmp_path)[0]
    edit_config(tmp_path, lambda d: d.update(leftover_flag=True))
    with pytest.raises(CheckpointError, match="leftover_flag.*strict_config=False"):
        mambalab.load(tmp_path)
    assert mambalab.load(tmp_path, strict_config=False).config == before
