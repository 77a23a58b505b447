"""benchmarks/decode_vs_official.py: the --quick run (our side, official skipped on CPU), the official-format
checkpoint it hands our loader, and its agreement and ratio arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import common
from benchmarks import decode_vs_official as bench
from mambalab import LanguageModel
from mambalab.models.hf_config import load_config


def test_quick_run_times_our_models_and_skips_the_official_on_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{common.REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([sys.executable, "benchmarks/decode_vs_official.py", "--quick", "--batches", "1,3",
                    "--repeats", "1", "--out", str(tmp_path)],
                   cwd=common.REPO, env=env, check=True, capture_output=True, timeout=120)
    record = json.loads((tmp_path / "decode_vs_official.json").read_text())
    assert record["benchmark"] == "decode_vs_official" and "--quick" in record["command"]
    assert any("official mamba-ssm skipped" in note for note in record["notes"])
    variants = ["mambalab cuda-graph", "mambalab cuda-graph+model-dtype-state"]
    assert [(r["model"], r["batch"], r["impl"]) for r in record["rows"]] == [
        (kind, batch, impl) for kind in ("mamba", "mamba2") for batch in (1, 3) for impl in variants]
    for row in record["rows"]:
        assert row["timing"]["repeats"] == 1 and row["state_bytes_per_row"] > 0
        assert row["timed_with"] == sorted(variants)  # the batch's rows timed against each other
        assert row["tokens_per_s"] == pytest.approx(row["batch"] * record["plan"]["new_tokens"] / row["seconds"])
    for default, model_dtype in zip(record["rows"][::2], record["rows"][1::2]):  # a float32 model: the same bytes
        assert model_dtype["state_bytes_per_row"] == default["state_bytes_per_row"]
    assert record["checks"] == {"mamba": {}, "mamba2": {}} and record["ratios"] == []


def test_timed_rows_report_a_failing_impl_and_time_the_rest_together():
    def broken():
        raise RuntimeError("no graph today")

    calls = {"a": lambda: [[1, 2]], "broken": broken, "b": lambda: [[1, 3]]}
    rows, outputs = bench.timed_rows("mamba", 1, {**bench.QUICK, "repeats": 3}, calls)
    assert [row["impl"] for row in rows] == ["a", "broken", "b"]
    assert rows[1]["error"] == "RuntimeError: no graph today" and "tokens_per_s" not in rows[1]
    for row in (rows[0], rows[2]):
        assert row["timed_with"] == ["a", "b"] and row["timing"]["repeats"] == 3
    assert outputs == {"a": [[1, 2]], "b": [[1, 3]]}
    assert bench.agreement(dict(rows[2]), outputs["b"], outputs["a"])["tokens_agreeing_with_official"] == 1


def test_models_flag_refuses_unknown_names():
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "mamba,mamba3"])
    assert bench.parse_args(["--models", "mamba2"]).models == ["mamba2"]
    assert bench.parse_args([]).late_budget == 120.0 and bench.parse_args(["--late-budget", "200"]).late_budget == 200.0


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_official_config_is_the_130m_shape_for_our_loader(tmp_path, kind):
    (tmp_path / "config.json").write_text(json.dumps(bench.official_config(kind, bench.FULL)))
    config, fmt = load_config(tmp_path)
    assert fmt == "official" and (config.d_model, config.n_layer) == (768, 24)
    assert config.vocab_size == 50277 and config.padded_vocab_size == 50280 and config.tie_embeddings
    if kind == "mamba2":
        assert config.layer_pattern == ["mamba2"] * 24
        m2 = config.mamba2
        assert (m2.d_state, m2.head_dim, m2.n_groups, m2.expand, m2.d_conv) == (128, 64, 1, 2, 4)
    else:
        assert set(config.layer_pattern) == {"mamba"} and config.ssm.d_state == 16


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_standin_checkpoint_loads_with_every_weight_as_written(tmp_path, kind):
    bench.write_checkpoint(bench.official_config(kind, bench.QUICK), tmp_path / kind)
    written = torch.load(tmp_path / kind / "pytorch_model.bin", weights_only=True)
    assert "backbone.embedding.weight" in written and "backbone.embeddings.weight" not in written
    loaded = LanguageModel.from_pretrained(tmp_path / kind).state_dict()
    written["backbone.embeddings.weight"] = written.pop("backbone.embedding.weight")
    assert set(loaded) == set(written)
    for key, tensor in written.items():
        assert torch.equal(loaded[key], tensor), key


def test_agreeing_prefix_counts_tokens_before_the_first_difference():
    ours = [[1, 2, 3, 4], [1, 5, 3, 4], [9, 2, 3, 4]]
    official = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]])
    assert bench.agreeing_prefix(ours, official) == [4, 1, 0]


def test_ratios_divide_ours_by_the_official_of_the_same_model_and_batch():
    rows = [{"model": "mamba", "impl": bench.OFFICIAL, "batch": 1, "tokens_per_s": 200.0},
            {"model": "mamba", "impl": "mambalab cuda-graph", "batch": 1, "tokens_per_s": 300.0},
            {"model": "mamba", "impl": "mambalab cuda-graph", "batch": 64, "tokens_per_s": 900.0},
            {"model": "mamba2", "impl": "mambalab cuda-graph", "batch": 1, "tokens_per_s": 50.0},
            {"model": "mamba", "impl": "mambalab cuda-graph+compile", "batch": 1, "error": "boom"}]
    assert bench.ratios(rows) == [{"model": "mamba", "batch": 1, "impl": "mambalab cuda-graph",
                                   "ours_over_official": 1.5}]


class _OfficialStandIn:
    """The official model's calls the benchmark makes, answered by one of our models (greedy, so the same
    tokens): checks the benchmark's plumbing of the official side on CPU."""

    def __init__(self, model):
        self.model, self._decoding_cache, self.calls = model, "captured", []

    def __call__(self, ids):
        return type("Output", (), {"logits": self.model(ids)})

    def generate(self, ids, max_length, cg, top_k):
        self.calls.append((ids.shape[0], max_length, cg, top_k))
        new = torch.tensor(bench.ours_generate(self.model, ids, max_length - ids.shape[1], "cuda-graph"))
        return torch.cat([ids, new], dim=1)  # (b, max_length), as official generate returns


def test_check_compares_prefill_logits_and_greedy_tokens_and_drops_the_graph_cache(tmp_path):
    plan = dict(bench.QUICK, check_tokens=5)
    bench.write_checkpoint(bench.official_config("mamba", plan), tmp_path)
    ours = LanguageModel.from_pretrained(tmp_path)
    official = _OfficialStandIn(ours)
    out = bench.check(ours, official, plan)
    assert out == {"prefill_logits_rel_err": 0.0, "greedy_tokens_checked": 5, "greedy_tokens_agreeing": 5}
    assert official.calls == [(1, plan["prompt_len"] + 5, True, 1)] and official._decoding_cache is None
    broken = _OfficialStandIn(ours)
    broken.generate = None
    assert "TypeError" in bench.check(ours, broken, plan)["error"] and broken._decoding_cache is None
