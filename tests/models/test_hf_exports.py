"""HF-ready exports: the byte tokenizer's files load in `transformers.AutoTokenizer` with our ids (bytes
0..255, BOS 256, EOS 257, PAD 258) and come back as a `ByteTokenizer`; config.json carries the tokenizer's
special-token ids; a training run exports them; `load(strict_config=False)` ignores unknown fields (logged)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import mambalab
from mambalab import LanguageModel, ModelConfig, SSMConfig
from mambalab.errors import CheckpointError
from mambalab.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = {
    "ascii": "The list type",
    "accents and emoji": "héllo wörld 🐍 — ok",
    "control bytes and spaces": "\x00\x01  a\tb\n\n  c  ",
    "leading spaces": "   lead",
    "a special token spelled in the text": "<eos> is text here, <bos> too",
    "empty": "",
}


def _model(vocab_size=ByteTokenizer.vocab_size):
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(d_model=16, n_layer=1, vocab_size=vocab_size, pad_vocab_size_multiple=1,
                                     ssm=SSMConfig(d_state=4)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return _model().save_pretrained(tmp_path_factory.mktemp("export") / "model", tokenizer=ByteTokenizer())


@pytest.mark.parametrize("text", list(TEXTS.values()), ids=list(TEXTS))
def test_auto_tokenizer_round_trips_our_ids(exported, text):
    hf = transformers.AutoTokenizer.from_pretrained(exported)
    ids = hf(text, add_special_tokens=False).input_ids
    assert ids == ByteTokenizer().encode(text)
    assert hf.decode(ids) == text
    assert hf.decode([ByteTokenizer.bos_token_id, *ids, ByteTokenizer.eos_token_id], skip_special_tokens=True) == text


@pytest.mark.parametrize(("name", "value"), [("bos_token_id", 256), ("eos_token_id", 257), ("pad_token_id", 258)])
def test_special_token_ids_in_tokenizer_and_config(exported, name, value):
    hf = transformers.AutoTokenizer.from_pretrained(exported)
    config = json.loads((exported / "config.json").read_text())
    assert getattr(hf, name) == config[name] == value
    assert getattr(transformers.AutoConfig.from_pretrained(exported), name) == value
    assert len(hf) == ByteTokenizer.vocab_size


def test_the_export_loads_back_as_the_byte_tokenizer(exported):
    tok = load_tokenizer(exported)
    assert isinstance(tok, ByteTokenizer) and tok.fingerprint() == ByteTokenizer().fingerprint()
    assert isinstance(load_tokenizer(exported / "tokenizer.json"), ByteTokenizer)
    mambalab.load(exported)  # the tokenizer files do not disturb loading the model


def test_an_hf_tokenizer_is_copied_and_its_ids_written(exported, tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text((exported / "tokenizer.json").read_text())
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<pad>"}))
    hf_tok = load_tokenizer(tmp_path / "tok")
    assert isinstance(hf_tok, HFTokenizer) and hf_tok.eos_token_id == 258
    out = _model().save_pretrained(tmp_path / "model", tokenizer=hf_tok)
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 258
    assert (out / "tokenizer.json").read_text() == (exported / "tokenizer.json").read_text()


def test_without_a_tokenizer_no_special_token_id_is_invented(tmp_path):
    config = json.loads((_model().save_pretrained(tmp_path) / "config.json").read_text())
    assert config["eos_token_id"] is None and config["bos_token_id"] is None and config["pad_token_id"] is None


def test_a_training_run_exports_tokenizer_files_and_ids(tmp_path):
    from mambalab.train.run import load_run_config, run_training

    overrides = ["model.d_model=16", "model.n_layer=1", "max_steps=1", "batch_size=1", "seq_len=16",
                 "eval_every=0", "progress=false", "device=cpu"]
    result = run_training(load_run_config(preset="tiny-mamba", overrides=overrides), tmp_path)
    assert json.loads((result.model_dir / "config.json").read_text())["eos_token_id"] == 257
    assert transformers.AutoTokenizer.from_pretrained(result.model_dir).eos_token_id == 257


UNKNOWN = {
    "hf": {"model_type": "mamba", "vocab_size": 259, "hidden_size": 16, "num_hidden_layers": 1, "state_size": 4,
           "my_note": "hi", "quantization_hint": None},
    "official": {"d_model": 16, "n_layer": 1, "vocab_size": 259, "pad_vocab_size_multiple": 1,
                 "ssm_cfg": {"d_state": 4, "my_flag": True}, "my_note": "hi"},
}


@pytest.mark.parametrize("fmt", list(UNKNOWN))
def test_unknown_fields_refused_by_default_ignored_and_logged_with_strict_config_false(tmp_path, caplog, fmt):
    model = _model()
    model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(UNKNOWN[fmt]))
    with pytest.raises(CheckpointError, match="my_note.*strict_config=False"):
        mambalab.load(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mambalab.models.hf_config"):
        loaded = mambalab.load(tmp_path, strict_config=False)
    assert "my_note" in caplog.text and str(tmp_path / "config.json") in caplog.text
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(loaded(ids), model.eval()(ids))


def test_fields_that_change_the_math_stay_refused_without_strict(tmp_path):
    _model().save_pretrained(tmp_path)
    config = {**UNKNOWN["hf"], "hidden_act": "gelu"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="hidden_act"):
        mambalab.load(tmp_path, strict_config=False)


@pytest.mark.parametrize("expand", [2.0, 1.5])
def test_a_float_expand_is_written_as_transformers_reads_it(tmp_path, expand):
    """Official configs write expand 2.0: transformers' strict MambaConfig takes an int, so a whole number is
    written as one, and any other makes the checkpoint mambalab-only."""
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(d_model=16, n_layer=1, vocab_size=64, ssm=SSMConfig(d_state=4, expand=expand)))
    model.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["mambalab"]["transformers_loadable"] == (expand == 2.0)
    if expand == 2.0:
        assert data["expand"] == 2 and isinstance(data["expand"], int)
        hf = transformers.MambaForCausalLM.from_pretrained(tmp_path).eval()
        ids = torch.tensor([[1, 2, 3, 4]])
        with torch.no_grad():
            assert torch.allclose(hf(ids).logits, model.eval()(ids), atol=1e-5)
    else:
        assert "expand" not in data
    assert mambalab.load(tmp_path).config == model.config
