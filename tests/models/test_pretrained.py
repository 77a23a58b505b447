"""Checkpoints: transformers <-> mambalab round trips with equal logits, official-format import, own-format
round trip, and one clear `CheckpointError` for each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, MambaConfig, MambaForCausalLM

import mambalab
from mambalab import AttentionConfig, LanguageModel, ModelConfig, SSMConfig
from mambalab.errors import CheckpointError
from mambalab.models.hf_config import load_config, to_hf_config, transformers_incompatibility
from mambalab.models.pretrained import save_pretrained
from tests.conftest import rel_error

VOCAB = 61  # padded to 64 by pad_vocab_size_multiple=8


@torch.no_grad()
def perturb(model: torch.nn.Module) -> None:
    """Move every parameter off its init (norm weights 1, D = 1, zero biases...) so each one matters."""
    for p in model.parameters():
        p.add_(0.1 * torch.randn_like(p))


def hf_model(**kw) -> MambaForCausalLM:
    """A random tiny transformers Mamba, with non-default sizes so a mis-mapped field changes shapes."""
    fields = {
        "vocab_size": 64, "hidden_size": 32, "state_size": 8, "num_hidden_layers": 2, "conv_kernel": 3,
        "time_step_rank": 5, "layer_norm_epsilon": 1e-6,
    }
    model = MambaForCausalLM(MambaConfig(**{**fields, **kw})).eval()
    perturb(model)
    return model


def ours(**kw) -> LanguageModel:
    ssm = SSMConfig(d_state=8, d_conv=3, dt_rank=5, **kw.pop("ssm", {}))
    model = LanguageModel(ModelConfig(d_model=32, n_layer=2, vocab_size=VOCAB, ssm=ssm, **kw)).eval()
    perturb(model)
    return model


def edit_config(directory: Path, edit) -> None:
    path = directory / "config.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def assert_same_logits(model: LanguageModel, hf: MambaForCausalLM, vocab: int) -> None:
    ids = torch.randint(0, vocab, (2, 13))
    with torch.no_grad():
        got, want = model(ids), hf(ids).logits[..., :vocab]  # (b, l, vocab)
    assert got.shape == want.shape
    assert rel_error(got, want) <= 1e-5


# --- Interop with transformers ----------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"tie_word_embeddings": False, "use_bias": True, "use_conv_bias": False}])
def test_transformers_checkpoint_loads_with_equal_logits(tmp_path, kw):
    hf = hf_model(**kw)
    hf.save_pretrained(tmp_path)
    model = mambalab.load(tmp_path)
    assert model.config.vocab_size == 64 and model.config.pad_vocab_size_multiple == 1
    assert model.config.tie_embeddings == kw.get("tie_word_embeddings", True)
    assert_same_logits(model, hf, vocab=64)


def test_sharded_transformers_safetensors_load(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path, max_shard_size="4KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    assert_same_logits(LanguageModel.from_pretrained(tmp_path), hf, vocab=64)


@pytest.mark.parametrize("sharded", [False, True])
def test_transformers_pytorch_bin_loads(tmp_path, sharded):
    hf = hf_model()
    hf.config.save_pretrained(tmp_path)
    state = hf.state_dict()  # tied: holds lm_head.weight too, as old transformers .bin files do
    if sharded:
        keys = sorted(state)
        shards = {"pytorch_model-1.bin": keys[: len(keys) // 2], "pytorch_model-2.bin": keys[len(keys) // 2 :]}
        for name, names in shards.items():
            torch.save({k: state[k] for k in names}, tmp_path / name)
        weight_map = {k: name for name, names in shards.items() for k in names}
        (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    else:
        torch.save(state, tmp_path / "pytorch_model.bin")
    assert_same_logits(mambalab.load(tmp_path), hf, vocab=64)


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False, "ssm": {"bias": True, "conv_bias": False}}])
def test_saved_model_loads_in_transformers_with_equal_logits(tmp_path, kw):
    model = ours(**kw)
    model.save_pretrained(tmp_path)
    hf, info = MambaForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert hf.config.vocab_size == 64 and hf.config.tie_word_embeddings == model.config.tie_embeddings
    assert_same_logits(model, hf.eval(), vocab=VOCAB)


def test_official_checkpoint_loads_with_equal_logits(tmp_path):
    hf = hf_model(time_step_rank="auto", layer_norm_epsilon=1e-5)  # the official model always uses 1e-5
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf.state_dict().items()}
    torch.save(state, tmp_path / "pytorch_model.bin")  # official names, lm_head.weight included (tied)
    official = {
        "d_model": 32, "d_intermediate": 0, "n_layer": 2, "vocab_size": VOCAB,
        "ssm_cfg": {"layer": "Mamba1", "d_state": 8, "d_conv": 3, "use_fast_path": True},
        "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
        "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(official))
    config, fmt = load_config(tmp_path)
    assert fmt == "official" and config.padded_vocab_size == 64 and config.norm_eps == 1e-5
    assert_same_logits(mambalab.load(tmp_path), hf, vocab=VOCAB)


# --- Own format -------------------------------------------------------------------------------------
def test_own_format_round_trips_exactly_and_keeps_rng(tmp_path):
    model = ours(tie_embeddings=False, norm_eps=1e-6).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    rng = torch.get_rng_state()
    loaded = mambalab.load(tmp_path)
    assert torch.equal(torch.get_rng_state(), rng)
    assert loaded.config == model.config and loaded.dtype == torch.bfloat16
    assert loaded.backbone.layers[0].mixer.A_log.dtype == torch.float32
    want = model.state_dict()
    assert all(torch.equal(t, want[k]) for k, t in loaded.state_dict().items())
    ids = torch.randint(0, VOCAB, (1, 5))
    assert torch.equal(loaded(ids), model(ids))


def test_tied_embedding_is_stored_once_and_retied(tmp_path):
    ours().save_pretrained(tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    loaded = mambalab.load(tmp_path, dtype=torch.float64)
    assert loaded.lm_head.weight is loaded.backbone.embeddings.weight and loaded.dtype == torch.float64


def test_hybrid_model_round_trips_and_transformers_refuses_it(tmp_path):
    pattern = ["mamba", "attention+mlp", "s4d", "mamba+moe"]
    config = ModelConfig(
        d_model=32, n_layer=4, vocab_size=VOCAB, layer_pattern=pattern, attention=AttentionConfig(n_heads=4)
    )
    model = LanguageModel(config).eval()
    perturb(model)
    model.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert list(data) == ["mambalab"] and data["mambalab"]["transformers_loadable"] is False
    assert "transformers cannot load it because layer_pattern has layers other than" in data["mambalab"]["note"]
    loaded = mambalab.load(tmp_path)
    assert not loaded.training
    ids = torch.randint(0, VOCAB, (2, 7))
    assert loaded.config == config and torch.equal(loaded(ids), model(ids))
    with pytest.raises(ValueError, match="Should have a `model_type` key"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_non_mamba_config_is_marked_not_loadable_by_transformers():
    config = ModelConfig(d_model=32, n_layer=2, vocab_size=VOCAB, layer_pattern=["mamba", "attention+mlp"])
    assert "attention+mlp" in transformers_incompatibility(config)
    with pytest.raises(ValueError, match="cannot be expressed as a transformers MambaConfig"):
        to_hf_config(config)
    ablated = ModelConfig(d_model=32, n_layer=2, vocab_size=VOCAB, ssm=SSMConfig(selective=False))
    assert "ssm.selective" in transformers_incompatibility(ablated)
    init_only = ModelConfig(ssm=SSMConfig(A_init="random", scan_backend="torch"), initializer_range=0.1)
    assert transformers_incompatibility(init_only) is None


# --- Bad input --------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path) -> Path:
    ours().save_pretrained(tmp_path)
    return tmp_path


def test_missing_directory_config_and_weights(tmp_path, saved):
    with pytest.raises(CheckpointError, match="nowhere: checkpoint directory not found"):
        mambalab.load(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: is a file; pass the directory that holds"):
        mambalab.load(saved / "model.safetensors")
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights file found; expected one of"):
        mambalab.load(saved)
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: config file not found"):
        mambalab.load(saved)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["mambalab"]["model"].update(foo=1), r"mambalab\.model: .*unknown field\(s\) \['foo'\]"),
        (lambda d: d.update(foo=1), r"unknown config field\(s\) \['foo'\]"),
        (lambda d: d.update(hidden_size=48), "field 'hidden_size' = 48 disagrees with the 'mambalab' block"),
        (lambda d: d["mambalab"].update(format_version=2), "field 'format_version' = 2 is not supported"),
    ],
)
def test_bad_own_config(saved, edit, message):
    edit_config(saved, edit)
    with pytest.raises(CheckpointError, match=message):
        mambalab.load(saved)


SHAPE_MESSAGE = (
    r"model\.safetensors: key 'backbone\.layers\.0\.mixer\.conv1d\.weight' has shape \(64, 1, 3\)"
    r" but the config expects \(64, 1, 4\)"
)


@pytest.fixture
def hf_dir(tmp_path) -> Path:
    hf_model().save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(foo=1), r"config\.json: unknown config field\(s\) \['foo'\]"),
        (lambda d: d.update(hidden_act="gelu"), "field 'hidden_act' = 'gelu' is not supported"),
        (lambda d: d.update(model_type="mamba2"), "field 'model_type' = 'mamba2' is not supported"),
        (lambda d: d.update(n_layer=3), "field 'n_layer' = 3 disagrees with 'num_hidden_layers' = 2"),
        (lambda d: d.update(intermediate_size=48), "'intermediate_size' = 48 but expand·hidden_size = 64"),
        (lambda d: d.update(conv_kernel=4), SHAPE_MESSAGE),
    ],
)
def test_bad_transformers_config(hf_dir, edit, message):
    edit_config(hf_dir, edit)
    with pytest.raises(CheckpointError, match=message):
        mambalab.load(hf_dir)


def test_irrelevant_transformers_fields_are_accepted(hf_dir):
    irrelevant = {"use_mambapy": True, "use_cache": False, "torch_dtype": "float32", "n_layer": 2}
    edit_config(hf_dir, lambda d: d.update(irrelevant))
    assert mambalab.load(hf_dir).config.n_layer == 2


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(rms_norm=False), "field 'rms_norm' = False is not supported"),
        (lambda d: d["ssm_cfg"].update(layer="Mamba2"), r"\(ssm_cfg\): field 'layer' = 'Mamba2' is not"),
        (lambda d: d["ssm_cfg"].update(foo=1), r"\(ssm_cfg\): unknown config field\(s\) \['foo'\]"),
        (lambda d: d.update(attn_layer_idx=[1]), "field 'attn_layer_idx' = \\[1\\] is not supported"),
    ],
)
def test_bad_official_config(tmp_path, edit, message):
    data = {"d_model": 32, "n_layer": 2, "vocab_size": VOCAB, "ssm_cfg": {}}
    edit(data)
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=message):
        load_config(tmp_path)


def rewrite_weights(directory: Path, edit) -> None:
    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("backbone.layers.1.mixer.D"), r"missing key 'backbone\.layers\.1\.mixer\.D'"),
        (lambda t: t.update({"backbone.layers.0.mixer.extra": torch.zeros(2)}),
         r"model\.safetensors: unexpected key 'backbone\.layers\.0\.mixer\.extra'"),
        (lambda t: t.update({"backbone.norm_f.weight": torch.zeros(31)}),
         r"key 'backbone\.norm_f\.weight' has shape \(31,\) but the config expects \(32,\)"),
        (lambda t: t.update({"backbone.norm_f.weight": torch.zeros(32, dtype=torch.long)}),
         r"key 'backbone\.norm_f\.weight' has dtype torch\.int64, expected a float dtype"),
        (lambda t: t.update({"lm_head.weight": torch.zeros(64, 32)}),
         r"key 'lm_head\.weight' differs from 'backbone\.embeddings\.weight', but the config ties"),
    ],
)
def test_bad_weights(saved, edit, message):
    rewrite_weights(saved, edit)
    with pytest.raises(CheckpointError, match=message):
        mambalab.load(saved)


def test_truncated_files(saved, tmp_path_factory):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable safetensors file, truncated"):
        mambalab.load(saved)
    path.unlink()
    bin_path = saved / "pytorch_model.bin"
    torch.save({"backbone.norm_f.weight": torch.ones(32)}, bin_path)
    bin_path.write_bytes(bin_path.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: unreadable PyTorch file, truncated"):
        mambalab.load(saved)


def test_pickle_with_code_is_refused(saved):
    (saved / "model.safetensors").unlink()
    torch.save({"backbone.norm_f.weight": Path("x")}, saved / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: refused: .*weights_only=True"):
        mambalab.load(saved)


def test_bad_shards(tmp_path):
    hf_model().save_pretrained(tmp_path, max_shard_size="4KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard = min(index["weight_map"].values())
    (tmp_path / shard).rename(tmp_path / "moved.safetensors")
    with pytest.raises(CheckpointError, match=f"{shard}: shard listed in model.safetensors.index.json not"):
        mambalab.load(tmp_path)
    (tmp_path / "moved.safetensors").rename(tmp_path / shard)
    index["weight_map"]["backbone.layers.9.norm.weight"] = shard
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"'backbone\.layers\.9\.norm\.weight' listed in .* is not in"):
        mambalab.load(tmp_path)
    index["weight_map"]["backbone.layers.9.norm.weight"] = "../elsewhere.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="'weight_map' must map keys to shard file names in this folder"):
        mambalab.load(tmp_path)


def test_save_rejects_non_model(tmp_path):
    with pytest.raises(TypeError, match="model must be a mambalab LanguageModel, got Linear"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path)
