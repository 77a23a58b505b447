"""`compare` as a user at a terminal or in a pipe meets it: Ctrl-C once and twice, progress lines in a pipe."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from functools import partial

import pytest
from rich.console import Console

from mambalab.experiments.compare import WorkItem, run_all
from mambalab.experiments.progress import CompareProgress
from mambalab.experiments.runner import RunStore

ENDLESS_COMPARE = """
import dataclasses, sys
from mambalab.cli import app
from mambalab.experiments import presets
if __name__ == "__main__":
    smoke = presets.get_compare_preset("smoke")
    lm = dataclasses.replace(smoke.tasks["lm"], steps=10**4)
    presets.PRESETS["endless"] = lambda: dataclasses.replace(smoke, tasks={**smoke.tasks, "lm": lm})
    app(["compare", "--preset", "endless", "--models", "mamba,transformer", "--tasks", "lm", "--studies", "none",
         "--out", sys.argv[1], "--device", "cpu", "--quiet", "--jobs", "2"])
"""


def _start_endless(out):
    """`mambalab compare` on an endless preset, in its own session as a shell runs a foreground job: Ctrl-C
    is SIGINT to the group."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", ENDLESS_COMPARE, str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while len(list(out.glob("runs/*.work"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0].decode()
    time.sleep(2.0)  # both trainers running
    return proc


def _ctrl_c(proc) -> None:
    os.killpg(proc.pid, signal.SIGINT)


@pytest.mark.slow
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_once_checkpoints_and_twice_exits_at_once(tmp_path, presses):
    out = tmp_path / "out"
    proc = _start_endless(out)
    _ctrl_c(proc)
    start = time.monotonic()
    if presses == 2:
        time.sleep(0.2)
        _ctrl_c(proc)
    # EOF only once every process holding the pipe (the workers too) has exited
    output, _ = proc.communicate(timeout=30)
    elapsed = time.monotonic() - start
    assert proc.returncode == 130, output.decode()
    assert "interrupted: finished runs are cached" in output.decode()
    assert not list(out.glob("runs/*.json"))  # nothing is cached as done
    if presses == 1:
        assert elapsed < 5.0, elapsed
        checkpoints = list(out.glob("runs/*.work/checkpoints/*"))
        assert len(checkpoints) == 2, (checkpoints, output.decode())
    else:
        assert elapsed < 2.0, elapsed


def _sleep(seconds: float, work_dir) -> dict:
    time.sleep(seconds)
    return {}


def test_progress_in_a_pipe_is_one_flushed_line_per_start_and_finish_with_elapsed_time(tmp_path):
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=False)
    items = [WorkItem(f"run{i}", f"k{i}", {}, partial(_sleep, 0.0)) for i in range(3)]
    run_all(items, RunStore(tmp_path), progress=True, console=console)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[0/3 0:00] 3 work items"
    assert [line.split("] ", 1)[1].split(":")[0] for line in lines[1:]] == [
        f"{what} run{i}" for i in range(3) for what in ("start", "done ")
    ]
    assert lines[-1].startswith("[3/3 0:0") and lines[-1].endswith("ok in 0.0 s")


def test_progress_heartbeat_names_the_running_items_and_labels_are_not_repeated():
    stream = io.StringIO()
    with CompareProgress(2, console=Console(file=stream, force_terminal=False), heartbeat_s=0.05) as shown:
        shown.started("a")
        shown.started("a")
        shown.started("b")
        time.sleep(0.2)
        assert shown.active == ["a", "b"]
    assert "still running: a, b" in stream.getvalue()


def test_compare_piped_prints_progress_before_it_ends(tmp_path):
    """The CLI with stdout a pipe: the first line arrives while the first run trains, not at the end."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [
        sys.executable,
        "-m",
        "mambalab",
        "compare",
        "--preset",
        "smoke",
        "--models",
        "mamba",
        "--tasks",
        "mqar,selective_copying",
        "--studies",
        "none",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    first = proc.stdout.readline()
    running_when_first_line_came = proc.poll() is None
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, first + rest
    assert first.startswith("[0/2 0:00] 2 work items") and running_when_first_line_came
    assert "start main/mqar/mamba" in rest and "done  main/selective_copying/mamba" in rest
