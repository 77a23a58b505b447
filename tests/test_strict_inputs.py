"""Strict inputs: the public API refuses wrong types and dtypes with an `InputError` naming the argument
(never truncating float token ids, never computing in int64 or complex), and every CLI user error is one line
`error: ...` on stderr with exit code 2, no traceback. Plus the CLI's --version, -h, typed paths, --list-keys
and --dtype aliases."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import mambalab
from mambalab import LanguageModel, ModelConfig, SSMConfig, selective_scan
from mambalab.cli import app
from mambalab.errors import InputError


def _scan_args(dtype=torch.float32, b=1, d=4, n=3, length=5):
    return {"u": torch.randn(b, d, length, dtype=dtype), "delta": torch.rand(b, d, length, dtype=dtype),
            "A": -torch.rand(d, n), "B": torch.randn(b, n, length, dtype=dtype),
            "C": torch.randn(b, n, length, dtype=dtype)}


def _with(**changes):
    args = _scan_args()
    for name, change in changes.items():
        args[name] = change(args[name])
    return args


SCAN_CASES = {
    "int64 u": (_with(u=lambda t: t.long(), delta=lambda t: t.long()), "u must be a real float tensor"),
    "complex u": (_with(u=lambda t: t.to(torch.complex64)), "u must be a real float tensor"),
    "bool delta": (_with(delta=lambda t: t > 0), "delta must be a real float tensor"),
    "u as a list": (_with(u=lambda t: t.tolist()), "u must be a torch.Tensor, got list"),
    "A as a list": (_with(A=lambda t: t.tolist()), "A must be a torch.Tensor"),
    "B as None": (_with(B=lambda t: None), "B must be a torch.Tensor, got NoneType"),
    "float16 delta with float32 u": (_with(delta=lambda t: t.half()), "delta must have u's dtype"),
    "float16 u with float32 z": ({**_with(u=lambda t: t.half(), delta=lambda t: t.half(), B=lambda t: t.half(),
                                          C=lambda t: t.half()), "z": torch.randn(1, 4, 5)}, "z must have u's dtype"),
    "float64 u with float32 B": (_with(u=lambda t: t.double(), delta=lambda t: t.double(), C=lambda t: t.double()),
                                 "B must have u's dtype"),
    "bfloat16 C with float16 u": (_with(u=lambda t: t.half(), delta=lambda t: t.half(), B=lambda t: t.half(),
                                        C=lambda t: t.bfloat16()), "C must have u's dtype"),
}


@pytest.mark.parametrize("case", list(SCAN_CASES), ids=list(SCAN_CASES))
def test_selective_scan_refuses_wrong_types_naming_the_argument(case):
    args, message = SCAN_CASES[case]
    with pytest.raises(InputError, match=f"selective_scan: {message}"):
        selective_scan(**args, backend="reference")


def test_selective_scan_still_accepts_float32_delta_b_c_with_a_16_bit_u():
    args = _with(u=lambda t: t.bfloat16())
    assert selective_scan(**args, z=torch.randn(1, 4, 5).bfloat16(), backend="torch").dtype == torch.bfloat16


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(d_model=16, n_layer=1, vocab_size=32, ssm=SSMConfig(d_state=4))).eval()


MODEL_CASES = {
    "forward, float ids": (lambda m: m(torch.tensor([[1.7, 2.0]])), "input_ids must be an integer tensor"),
    "forward, a list": (lambda m: m([[1, 2]]), "input_ids must be an integer torch.Tensor, got list"),
    "prefill, float ids": (lambda m: m.prefill(torch.tensor([[1.0]])), "input_ids must be an integer tensor"),
    "prefill, length 0": (lambda m: m.prefill(torch.zeros(1, 0, dtype=torch.long)), "length >= 1"),
    "step, float ids": (lambda m: m.step(torch.tensor([1.7]), m.allocate_state(1)), "token_ids must be an integer"),
    "step, a list": (lambda m: m.step([1], m.allocate_state(1)), "token_ids must be an integer torch.Tensor"),
    "generate, float id": (lambda m: m.generate([[1, 1.7]], 2), r"prompts\[0\]\[1\] = 1.7 is not an integer"),
    "generate, integral float id": (lambda m: m.generate([[1.0]], 2), r"prompts\[0\]\[0\] = 1.0 is not an integer"),
    "generate, bool id": (lambda m: m.generate([[True]], 2), "is not an integer token id"),
    "generate, float tensor": (lambda m: m.generate(torch.tensor([[1.5]]), 2), "integer tensor"),
    "generate, empty prompt": (lambda m: m.generate([[]], 2), r"prompts\[0\] is empty"),
}


@pytest.mark.parametrize("case", list(MODEL_CASES), ids=list(MODEL_CASES))
def test_language_model_refuses_bad_token_ids_naming_the_argument(model, case):
    call, message = MODEL_CASES[case]
    with pytest.raises(InputError, match=message):
        call(model)


def test_numpy_integer_token_ids_are_accepted(model):
    import numpy as np

    assert len(model.generate([[np.int64(3), 4]], 2).sequences[0]) == 2


# CLI ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model):
    return model.save_pretrained(tmp_path_factory.mktemp("cli") / "model")


@pytest.fixture(scope="module")
def a_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "a_file.txt"
    path.write_text("text")
    return path


CLI_CASES = {
    "missing --prompt-file": (["generate", "--model", "{model}", "--prompt-file", "{missing}"], "--prompt-file"),
    "missing --prefix-file": (["generate", "--model", "{model}", "--prompt", "a", "--prefix-file", "{missing}"],
                              "--prefix-file"),
    "--prompt-file is a directory": (["generate", "--model", "{model}", "--prompt-file", "{model}"], "is a directory"),
    "--cache-dir is a file": (["generate", "--model", "{model}", "--prompt", "a", "--cache-dir", "{file}"],
                              "--cache-dir"),
    "--device cuda without CUDA": (["generate", "--model", "{model}", "--prompt", "a", "--device", "cuda"], "cuda"),
    "unknown --dtype": (["generate", "--model", "{model}", "--prompt", "a", "--dtype", "fp77"], "dtype must be one of"),
    "train --out is a file": (["train", "--preset", "tiny-mamba", "--out", "{file}"], "--out"),
    "train --config missing": (["train", "--config", "{missing}"], "--config"),
    "--set lr=abc": (["train", "--preset", "tiny-mamba", "--set", "lr=abc"], "train.lr"),
    "--set batch_size=10**6": (["train", "--preset", "tiny-mamba", "--set", "batch_size=10**6"], "batch_size"),
    "--set model.d_model=10**9": (["train", "--preset", "tiny-mamba", "--set", "model.d_model=10**9"], "d_model"),
    "--set device=cuda": (["train", "--preset", "tiny-mamba", "--set", "device=cuda"], "cuda"),
    "prepare --out is a file": (["prepare", "embedded", "--out", "{file}"], "--out"),
    "eval --device cuda": (["eval", "--model", "{model}", "--data", "embedded", "--device", "cuda"], "cuda"),
    "compare --report-only on an empty dir": (["compare", "--preset", "smoke", "--report-only", "--out", "{empty}"],
                                              "no compare call has written"),
}


def _fill(args, model_dir, a_file, tmp_path):
    (tmp_path / "empty").mkdir(exist_ok=True)
    values = {"model": str(model_dir), "file": str(a_file), "missing": str(tmp_path / "missing.txt"),
              "empty": str(tmp_path / "empty")}
    return [arg.format(**values) for arg in args]


@pytest.mark.parametrize("case", list(CLI_CASES), ids=list(CLI_CASES))
def test_cli_user_errors_are_one_line_exit_2(model_dir, a_file, tmp_path, monkeypatch, case):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args, named = CLI_CASES[case]
    result = CliRunner().invoke(app, _fill(args, model_dir, a_file, tmp_path))
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert named in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("alias", ["auto", "fp16", "half", "bf16", "fp32", "float", "float64", "BF16"])
def test_dtype_aliases(model_dir, alias):
    result = CliRunner().invoke(app, ["generate", "--model", str(model_dir), "--prompt", "\x01", "--dtype", alias,
                                      "--max-new-tokens", "1", "--device", "cpu"])
    assert "dtype must be one of" not in result.output


def test_version_and_short_help_on_every_command():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"mambalab {mambalab.__version__}"
    commands = [name for name in app.registered_commands]
    assert len(commands) >= 6
    for command in [None, *(c.name or c.callback.__name__.rstrip("_") for c in commands)]:
        args = ([] if command is None else [command]) + ["-h"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output, (args, result.output)


def test_path_options_are_typed():
    result = CliRunner().invoke(app, ["generate", "-h"], terminal_width=200)
    for option in ("--model", "--prompt-file", "--prefix-file", "--cache-dir"):
        line = next(line for line in result.output.splitlines() if line.strip("│ *").startswith(option))
        assert "PATH" in line.upper() and "<str>" not in line.lower(), line


def test_train_list_keys_lists_every_set_key_with_type_and_default():
    result = CliRunner().invoke(app, ["train", "--list-keys"])
    assert result.exit_code == 0
    rows = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()}
    assert rows["train.lr"] == ["float", "0.0006"]
    assert rows["model.ssm.d_state"] == ["int", "16"]
    assert rows["data.tokenizer"] == ["str", "'byte'"]
    assert "model.preset" in rows and len(rows) > 60
