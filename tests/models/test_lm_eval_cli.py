"""lm-evaluation-harness itself, through `python -m mambalab.lm_eval` (its CLI with model "mambalab"
registered), on local tasks written here (a YAML + a JSONL): a multiple-choice task and a generate_until
task, `--batch_size auto`, and a model whose vocabulary is larger than its tokenizer's."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from mambalab import LanguageModel, ModelConfig, SSMConfig
from mambalab.errors import InputError
from mambalab.models.lm_eval_adapter import Scorer, parse_batch_size
from mambalab.tokenizer import ByteTokenizer

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm-eval is not installed (pip install lm-eval, or the 'test' extra)")

DOCS = [{"question": f"{a} + {b} =", "choices": [str(a + b), str(a + b + 1)], "answer": 0, "target": str(a + b)}
        for a, b in ((1, 2), (3, 4), (2, 2), (5, 1))]
TASKS = {
    "mambalab_mc": "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
                   "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n",
    "mambalab_gen": "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{target}}'\n"
                    "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 6\n  do_sample: false\n"
                    "metric_list:\n  - metric: exact_match\n",
}


def _model_dir(path, vocab_size):
    torch.manual_seed(0)
    config = ModelConfig(d_model=16, n_layer=1, vocab_size=vocab_size, ssm=SSMConfig(d_state=4))
    model = LanguageModel(config)
    with torch.no_grad():  # favour the ids the byte tokenizer lacks, so generation produces them
        model.lm_head.weight[ByteTokenizer.vocab_size:] += 5 * model.lm_head.weight[:1].sign()
    return model.save_pretrained(path)


def _write_tasks(directory):
    data = directory / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    for name, body in TASKS.items():
        (directory / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n{body}"
        )


@needs_lm_eval
@pytest.mark.parametrize(("vocab_size", "batch_size"), [(259, "auto"), (320, "auto:4"), (320, "2")],
                         ids=["byte vocab, auto", "model vocab > tokenizer vocab, auto:4", "larger vocab, batch 2"])
def test_lm_eval_cli_runs_local_tasks(tmp_path, vocab_size, batch_size):
    model_dir = _model_dir(tmp_path / "model", vocab_size)
    _write_tasks(tmp_path)
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "mambalab.lm_eval", "--model", "mambalab",
               "--model_args", f"pretrained={model_dir},tokenizer=byte,dtype=float32",
               "--tasks", "mambalab_mc,mambalab_gen", "--include_path", str(tmp_path), "--device", "cpu",
               "--batch_size", batch_size, "--output_path", str(out)]
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = out.rglob("results*.json")
    results = json.loads(results_file.read_text())["results"]
    assert 0.0 <= results["mambalab_mc"]["acc,none"] <= 1.0
    assert 0.0 <= results["mambalab_gen"]["exact_match,none"] <= 1.0


@pytest.mark.parametrize(("given", "expected"), [(8, 8), ("8", 8), ("auto", 64), ("auto:4", 64), (" auto ", 64)])
def test_batch_size_parsing(given, expected):
    assert parse_batch_size(given) == expected


@pytest.mark.parametrize("given", ["0", "-1", "big", 2.5])
def test_bad_batch_size_is_refused(given):
    with pytest.raises(InputError, match="batch_size"):
        parse_batch_size(given)


def test_generate_until_drops_ids_the_tokenizer_lacks(tmp_path):
    model = LanguageModel.from_pretrained(_model_dir(tmp_path / "model", 320))
    raw = model.generate([ByteTokenizer().encode("1 + 2 =")], 6).sequences[0]
    assert max(raw) >= ByteTokenizer.vocab_size  # the case at hand: ids with no text are generated
    scorer = Scorer(model, ByteTokenizer(), batch_size=2)
    texts = scorer.generate_until([("1 + 2 =", {"max_gen_toks": 6, "until": ["\n"]})] * 3)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
