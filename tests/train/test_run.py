"""Run configuration: YAML + preset + key=value overrides, model config resolution; what a run refuses
before writing, and a validation split too small to evaluate."""

from __future__ import annotations

import pytest
import torch

from mambalab.errors import ConfigError
from mambalab.train.run import build_model_config, load_run_config, run_training


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


@pytest.mark.parametrize(("override", "message"), [
    ("seed=-1", r"seed must be in \[0, 2\*\*64\), got -1"), ("eps=0", "eps must be a finite number > 0"),
    ("betas=[0.9, 1.0]", r"betas must be 2 numbers in \[0, 1\)"), ("betas=[0.9, abc]", "betas must be 2 numbers"),
    ("lr=nan", "lr must be a finite number > 0"), ("lr=inf", "lr must be a finite number > 0"),
    ("grad_clip=nan", "grad_clip must be a finite number >= 0"), ("weight_decay=-0.1", "weight_decay must be"),
])
def test_values_the_optimizer_would_refuse_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(preset="tiny-mamba", overrides=[override, "min_lr=0"])


def test_yaml_file_reads_exponents_without_a_dot_as_floats(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: tiny-mamba\ntrain:\n  lr: 3e-4\n  min_lr: 3E-5\ndata:\n  path: 1e3x\n")
    run = load_run_config(path)
    assert (run.train.lr, run.train.min_lr, run.data.path) == (3e-4, 3e-5, "1e3x")


TINY = ["model.d_model=16", "model.n_layer=1", "max_steps=1", "batch_size=2", "seq_len=32", "eval_every=0",
        "progress=false", "device=cpu"]


def _corpus(path, seed):
    words = ["state", "space", "model", "scan", "token", "layer"]
    gen = torch.Generator().manual_seed(seed)
    path.write_text(" ".join(words[i] for i in torch.randint(len(words), (2000,), generator=gen).tolist()))
    return path


def _snapshot(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("overrides", "resume", "error"), [
    (["model.d_model=24"], False, "already holds checkpoints"),
    (["model.d_model=24"], True, r"another model config \(d_model: 16 \(checkpoint\) vs 24"),
], ids=["no --resume", "resume with another model"])
def test_a_refused_run_leaves_the_out_dir_untouched(tmp_path, overrides, resume, error):
    out = tmp_path / "out"
    run_training(load_run_config(preset="tiny-mamba", overrides=[*TINY, f"data.path={_corpus(tmp_path / 'a.txt', 0)}"]),
                 out)
    before = _snapshot(out)
    other = [*TINY, f"data.path={_corpus(tmp_path / 'b.txt', 1)}", *overrides]
    with pytest.raises(ValueError, match=error):
        run_training(load_run_config(preset="tiny-mamba", overrides=other), out, resume=resume)
    assert _snapshot(out) == before


def test_a_validation_split_under_one_batch_skips_evaluation(tmp_path, caplog):
    corpus = _corpus(tmp_path / "a.txt", 0)  # ~13k tokens: chunk 0 trains, chunk 1 (~5k tokens) validates
    overrides = [*TINY, f"data.path={corpus}", "eval_every=1", "seq_len=512", "batch_size=12"]
    result = run_training(load_run_config(preset="tiny-mamba", overrides=overrides), tmp_path / "out")
    assert [r["step"] for r in result.records] == [1] and "val_loss" not in result.records[0]
    assert "evaluation skipped: the validation split" in caplog.text
