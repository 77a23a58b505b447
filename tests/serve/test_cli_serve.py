"""`mambalab serve` as a user runs it: a subprocess on 127.0.0.1, stopped by SIGINT / SIGTERM mid-generation
(exit 0), and one-line errors with exit status 2 for bad command lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mambalab.cli import app
from mambalab.models.pretrained import save_pretrained
from tests.serve.conftest import byte_model

httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("served") / "tiny-byte"
    save_pretrained(byte_model(), path)
    return path


def start(model_dir: Path, *args: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mambalab", "serve", str(model_dir), "--host", "127.0.0.1", "--port", "0",
         "--device", "cpu", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    deadline = time.monotonic() + 90
    for line in proc.stdout:
        if line.startswith("serving on "):
            return proc, line.split()[2].removesuffix("/v1")
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"the server did not start: {proc.stdout.read()}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_generation_shuts_down_cleanly(model_dir, sig):
    proc, url = start(model_dir, "--served-model-name", "tiny", "--shutdown-timeout", "2")
    try:
        body = {"model": "tiny", "prompt": "go", "max_tokens": 30_000 if sig == signal.SIGINT else 200,
                "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first.removeprefix("data: "))["choices"][0]["index"] == 0
            proc.send_signal(sig)
            rest = [line for line in lines if line]  # SIGTERM: the 200 tokens finish; SIGINT: the 30,000 are cancelled at 2 s
        assert proc.wait(timeout=60) == 0
        assert rest[-1] == "data: [DONE]"
        last = json.loads(rest[-2].removeprefix("data: "))
        if sig == signal.SIGTERM:
            assert last["choices"][0]["finish_reason"] in ("length", "stop")
        else:
            assert last["error"]["message"] == "the server is shutting down"
        assert "Traceback" not in proc.stdout.read()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    "args, message",
    [(["/no/such/dir"], "does not exist"),
     (["{model}", "--port", "70000"], "--port"),
     (["{model}", "--port", "http"], "--port"),
     (["{model}", "--system-prompt-file", "/no/such/file"], "--system-prompt-file"),
     (["{model}", "--max-num-seqs", "0"], "max_num_seqs"),
     (["{model}", "--stream-interval-ms", "-1"], "--stream-interval-ms"),
     (["{model}", "--prefix-cache-mb", "-1"], "--prefix-cache-mb"),
     (["{model}", "--model", "{model}"], "once"),
     ([], "once")],
)
def test_bad_command_lines_get_one_line_and_status_2(model_dir, args, message):
    result = CliRunner().invoke(app, ["serve", *[a.format(model=model_dir) for a in args]])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_a_system_prompt_past_the_context_limit_is_a_one_line_error(model_dir, tmp_path):
    (tmp_path / "system.txt").write_text("s" * 200)
    result = CliRunner().invoke(app, ["serve", str(model_dir), "--port", "0", "--device", "cpu", "--max-model-len",
                                      "100", "--system-prompt-file", str(tmp_path / "system.txt")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: the system prompt has")
