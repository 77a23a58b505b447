"""The CLI reports every `MambalabError` in one place: one line `error: <message>` on stderr, exit code 2;
any other exception is not dressed up as a bad value (no "Invalid value")."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import mambalab.train.evaluate
from mambalab.cli import ERROR_EXIT_CODE, app
from mambalab.errors import CheckpointError, ConfigError, MambalabError


def test_a_bad_value_gives_exit_2_and_one_line():
    result = CliRunner().invoke(app, ["zoo", "--match", "rnn"])
    assert result.exit_code == ERROR_EXIT_CODE == 2, result.output
    assert result.stderr == "error: family must be one of ('mamba', 'transformer', 's4d', 'hybrid', 'moe', 'mamba2'), got 'rnn'\n"
    assert "Invalid value" not in result.output and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_a_multi_line_message_is_reported_on_one_line(monkeypatch):
    def fail(*args, **kwargs):
        raise CheckpointError("runs/x/config.json:\n  field 'd_model'   disagrees")

    monkeypatch.setattr(mambalab.train.evaluate, "evaluate_model", fail)
    result = CliRunner().invoke(app, ["eval", "--model", "m", "--data", "embedded"])
    assert result.exit_code == 2
    assert result.stderr == "error: runs/x/config.json: field 'd_model' disagrees\n"


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory"), OSError("disk full"), ValueError("a bug")])
def test_other_exceptions_are_not_reported_as_bad_values(monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(mambalab.train.evaluate, "evaluate_model", fail)
    result = CliRunner().invoke(app, ["eval", "--model", "m", "--data", "embedded"])
    assert result.exception is error  # propagates with its traceback; not turned into a usage error
    assert "Invalid value" not in result.output and "error:" not in result.output


def test_every_project_error_is_a_mambalab_error_and_a_value_error():
    from mambalab.errors import CorruptCheckpoint, CorruptStateError, StateMismatchError, TrainingDiverged
    from mambalab.ops.backends import BackendUnavailable

    for cls in (CheckpointError, ConfigError, CorruptCheckpoint, CorruptStateError, StateMismatchError,
                TrainingDiverged, BackendUnavailable):
        assert issubclass(cls, MambalabError) and issubclass(cls, ValueError), cls
    assert issubclass(TrainingDiverged, RuntimeError)


def test_installed_command_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    command = [sys.executable, "-m", "mambalab", "train", "--preset", "tiny-mamba", "--set", "colour=red",
               "--out", str(tmp_path / "run")]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert lines == ["error: override 'colour=red': unknown key 'colour'; use train.X, data.X or model.X"], proc.stderr
    assert "Traceback" not in proc.stderr
