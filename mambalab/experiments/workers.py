"""Work items of `compare` in worker processes, and stopping them on Ctrl-C / SIGTERM without ever hanging.

Each pending item runs in its own spawned process (CUDA needs spawn), at most `jobs` at once; given several
GPUs, each new worker goes to the one running the fewest (it sees only that GPU, as "cuda"). A worker writes
its record into the RunStore itself (run_cached), so nothing travels back through a queue: the parent only
starts processes, polls them, and reads the store once one has exited. A process that exits without a record
(killed, out of host memory) fails its item with its exit code.

Stopping. Each worker puts itself in its own process group, so the terminal's Ctrl-C (SIGINT to the
foreground group) reaches the parent only, which forwards exactly one SIGTERM per press:
- first Ctrl-C (or SIGTERM, e.g. from `timeout`): every worker's trainer finishes its step, checkpoints and
  exits; workers still running after GRACE_S seconds are killed. Then KeyboardInterrupt is raised here.
- second Ctrl-C: every worker is killed at once and KeyboardInterrupt is raised.
A worker whose parent is gone (killed with SIGKILL) notices within a second and exits.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

import torch

from mambalab.experiments.runner import RunStore, run_cached

GRACE_S = 4.0  # after the first Ctrl-C: time for the trainers to checkpoint before their workers are killed
POLL_S = 0.2


def _exit_with_parent(parent_pid: int) -> None:
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker_main(
    store_dir: str, key: str, describe: dict, fn: Callable, threads: int, parent_pid: int, gpu: str | None
) -> None:
    """Entry point of a worker process: run one item (on GPU `gpu` alone, if given) and store its record."""
    if gpu is not None:  # before anything initialises CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.setpgrp()  # the terminal's Ctrl-C reaches the parent only; it forwards one SIGTERM per press
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent_pid)
    torch.set_num_threads(threads)
    _warm_plotting()
    code = 0
    try:
        run_cached(RunStore(store_dir), key, describe, fn)
    except KeyboardInterrupt:  # stopped by SIGTERM: the trainer checkpointed, nothing is stored as done
        code = 130
    # everything this process made is on disk (atomically written); interpreter finalisation with torch
    # loaded takes seconds on a busy machine, which would eat the grace period of a Ctrl-C
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _warm_plotting() -> None:
    """Import matplotlib now: a stopped trainer plots its loss curve after its checkpoint, and importing
    matplotlib then could take seconds of the grace period on a busy machine."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401


@contextlib.contextmanager
def stop_signals():
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread while active."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop(processes: list[multiprocessing.Process], grace_s: float) -> None:
    """SIGTERM every live worker, wait up to `grace_s` for them to checkpoint and exit, kill the rest. A
    KeyboardInterrupt while waiting (the second Ctrl-C) kills them at once and propagates."""
    try:
        for p in processes:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for p in processes:
            if p.is_alive():
                p.kill()
        for p in processes:
            p.join(timeout=5.0)


def run_in_workers(
    items: list,
    store: RunStore,
    jobs: int,
    threads: int,
    started: Callable[[str], None],
    finished: Callable[[object, dict], None],
    grace_s: float = GRACE_S,
    gpus: list[str] | tuple[str, ...] = (),
) -> dict[str, dict]:
    """Run `items` (WorkItems, heaviest first as given) in at most `jobs` worker processes of `threads` torch
    threads each, spread over the CUDA device ids `gpus` if any; returns {key: record}. Raises
    KeyboardInterrupt after stopping the workers (see module)."""
    context = multiprocessing.get_context("spawn")
    pending, running, records = list(items), {}, {}
    on_gpu: dict[str, str] = {}  # running item key -> its GPU
    with stop_signals():
        try:
            while pending or running:
                while pending and len(running) < jobs:
                    item = pending.pop(0)
                    gpu = least_busy(gpus, on_gpu.values())
                    if gpu is not None:
                        on_gpu[item.key] = gpu
                    process = context.Process(
                        target=_worker_main,
                        args=(str(store.dir.parent), item.key, item.describe, item.fn, threads, os.getpid(), gpu),
                        name=f"compare-{item.key}",
                        daemon=True,
                    )
                    process.start()
                    running[item.key] = (item, process)
                    started(item.label)
                for key, (item, process) in list(running.items()):
                    if process.is_alive():
                        continue
                    process.join()
                    del running[key]
                    on_gpu.pop(key, None)
                    records[key] = _record_of(store, item, process.exitcode)
                    finished(item, records[key])
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            _stop([p for _, p in running.values()], grace_s)
            raise
    return records


def least_busy(gpus, busy) -> str | None:
    """The first of `gpus` with the fewest entries in `busy` (the GPUs of the running workers); None if none."""
    if not gpus:
        return None
    counts = list(busy)
    return min(gpus, key=counts.count)


def _record_of(store: RunStore, item, exitcode: int) -> dict:
    record = store.get(item.key)
    if record is not None and exitcode == 0:
        return {**record, "cached": False}
    return {
        "status": "failed",
        "error": f"worker process exited with code {exitcode} before storing a result",
        "key": item.key,
        **item.describe,
        "cached": False,
    }
