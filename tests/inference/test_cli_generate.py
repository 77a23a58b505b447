"""`mambalab generate` on a saved model directory, with a cached prefix persisted across runs."""

from __future__ import annotations

from typer.testing import CliRunner

from mambalab.cli import app
from mambalab.inference.generate import generate
from mambalab.models.checkpoint import save_pretrained
from mambalab.tokenizer import ByteTokenizer
from tests.serve.test_app import byte_model


def test_generate_with_a_cached_prefix_matches_the_library(tmp_path):
    model, tok = byte_model(), ByteTokenizer()
    save_pretrained(model, tmp_path / "model")
    (tmp_path / "prefix.txt").write_text("A long shared context. " * 4)
    prefix_ids, prompt_ids = tok.encode((tmp_path / "prefix.txt").read_text()), tok.encode("Question?")
    expected = generate(model, [prefix_ids + prompt_ids], 10, eos_token_id=tok.eos_token_id).sequences[0]

    args = ["generate", "--model", str(tmp_path / "model"), "--prompt", "Question?", "--max-new-tokens", "10",
            "--prefix-file", str(tmp_path / "prefix.txt"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.output == tok.decode(expected) + "\n"
    assert len(list((tmp_path / "cache").iterdir())) == 1
    streamed = runner.invoke(app, [*args, "--stream"])  # second run: the prefix state comes from the cache dir
    assert streamed.exit_code == 0 and streamed.output == first.output


def test_generate_needs_exactly_one_prompt(tmp_path):
    result = CliRunner().invoke(app, ["generate", "--model", str(tmp_path)])
    assert result.exit_code != 0 and "--prompt" in result.output
