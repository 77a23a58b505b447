"""What every benchmark shares: the machine it ran on, its command line, a timer, and one way to write results.

A result is `<name>.json` with the environment embedded (versions, GPU, CPU, git commit and whether the tree
was dirty), so every committed number says what produced it. By default it goes to $OUT (a device run's output
folder) when set, else to benchmarks/results/, where one current file per benchmark is kept; the history of
earlier results lives in git and is indexed in benchmarks/notes/results_history.md.

Scripts run from the repository root as `PYTHONPATH=. python3 benchmarks/<script>.py` (also those in
investigations/ and sweeps/) and import this module as `benchmarks.common`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
DTYPES = ("float32", "float16", "bfloat16")


def git_commit(repo: Path = REPO) -> dict:
    """{"commit": HEAD's hash, "dirty": uncommitted changes to tracked files}; None for both outside a checkout.
    $BENCH_GIT_COMMIT, when set, names the commit instead (a copied tree, such as a device machine's, can carry a
    stale .git: the caller passes the hash it sent)."""
    if os.environ.get("BENCH_GIT_COMMIT"):
        return {"commit": os.environ["BENCH_GIT_COMMIT"], "dirty": None}

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # no git, or not a git checkout (e.g. an exported tree)
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux; platform.processor() elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Versions, accelerator and CPU of this run, and the code's git commit. No hostname."""
    import torch

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        **git_commit(),
    }
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:  # triton is optional on CPU-only machines
        env["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        env["gpu"] = props.name
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["gpu_count"] = torch.cuda.device_count()
    else:
        env["gpu"] = None
    return env


def command_line() -> str:
    """The command that produced this result, as it would be typed from the repository root."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return shlex.join(["python3", str(shown), *sys.argv[1:]])


def default_out() -> Path:
    """$OUT when set (a device run's output folder), else benchmarks/results."""
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS


def result_path(name: str, out: str | Path | None = None) -> Path:
    """Where `write_result(name, ..., out)` writes: `out` itself when it ends in .json, else `out/<name>.json`."""
    out = Path(out) if out is not None else default_out()
    return out if out.suffix == ".json" else out / f"{name}.json"


def write_result(name: str, payload: dict, out: str | Path | None = None) -> Path:
    """Write `payload` with the environment and command embedded to `result_path(name, out)`, atomically.

    Written to a temporary file in the same folder and renamed, so a run cut short mid-write leaves the previous
    file whole. Safe to call after every section of a long benchmark. Returns the path written."""
    path = result_path(name, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "command": command_line(), "environment": environment(), **payload}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def add_official_to_path(root: Path, wait_s: float) -> bool:
    """Put the official mamba-ssm that anchors/build_official.sh built under `root` first on sys.path, with
    its causal_conv1d when that was built too (`--with-conv`). Waits up to wait_s seconds for a build running
    beside this process: for the selective scan, then, if the conv's build was started (its folder exists),
    for the conv. False if the selective scan is not there in time."""
    package, built = root / "mamba_ssm-2.3.2.post1", root / "bss"
    conv_package, conv_built = root / "causal_conv1d-1.7.0", root / "bcc"
    deadline = time.monotonic() + wait_s

    def wait_for(folder: Path, pattern: str) -> bool:
        while not list(folder.glob(pattern)) and time.monotonic() < deadline:
            time.sleep(2)
        return bool(list(folder.glob(pattern)))

    if not (wait_for(built, "selective_scan_cuda*.so") and package.is_dir()):
        return False
    paths = [str(package), str(built)]
    if conv_built.is_dir() and wait_for(conv_built, "causal_conv1d_cuda*.so") and conv_package.is_dir():
        paths += [str(conv_package), str(conv_built)]
    sys.path[:0] = paths
    return True


def base_parser(description: str | None, *, out_help: str | None = None, device: str | None = None,
                dtype: str | None = None, repeats: int | None = None, warmup: int | None = None,
                raw_description: bool = False) -> argparse.ArgumentParser:
    """The flags shared by the benchmarks: --out always; --device, --dtype, --repeats, --warmup where the
    benchmark uses them (pass their default to add them)."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter if raw_description else argparse.HelpFormatter)
    parser.add_argument("--out", default=None,
                        help=out_help or "output folder or .json path (default $OUT, else benchmarks/results)")
    if device is not None:
        parser.add_argument("--device", default=device, help=f"torch device (default {device})")
    if dtype is not None:
        parser.add_argument("--dtype", default=dtype, choices=DTYPES, help=f"compute dtype (default {dtype})")
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats, help=f"timed runs (default {repeats})")
    if warmup is not None:
        parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed runs first (default {warmup})")
    return parser


@dataclass(frozen=True)
class Timing:
    """Seconds per call over `repeats` timed calls: the median, and the spread as min, max and quartiles."""

    median_s: float
    min_s: float
    max_s: float
    q25_s: float
    q75_s: float
    repeats: int

    @classmethod
    def of(cls, samples: list[float]) -> Timing:
        if not samples:
            raise ValueError("Timing.of: no samples (repeats must be >= 1)")
        ordered = sorted(samples)
        quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
        return cls(statistics.median(ordered), ordered[0], ordered[-1], quartiles[0], quartiles[2], len(ordered))

    def as_dict(self) -> dict:
        return asdict(self)


def seconds_of(fn: Callable[[], object], device: str) -> float:
    """One call of fn(): between CUDA events after a synchronize on CUDA (GPU time of the call's stream,
    launch included), by perf_counter elsewhere (wall time)."""
    if str(device).startswith("cuda"):
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _check_counts(name: str, repeats: int, warmup: int) -> None:
    if repeats < 1 or warmup < 0:
        raise ValueError(f"{name}: repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")


def time_call(fn: Callable[[], object], device: str = "cpu", *, repeats: int = 5, warmup: int = 1) -> Timing:
    """Time fn() `repeats` times after `warmup` untimed calls (each call as seconds_of says)."""
    _check_counts("time_call", repeats, warmup)
    for _ in range(warmup):
        fn()
    return Timing.of([seconds_of(fn, device) for _ in range(repeats)])


def rotation(items: list, step: int) -> list:
    """items starting at step mod len(items): over a round of steps each one goes first, second, … equally."""
    k = step % len(items) if items else 0
    return items[k:] + items[:k]


def time_interleaved(fns: dict[str, Callable[[], object]], device: str = "cpu", *, repeats: int = 5,
                     warmup: int = 1) -> dict[str, Timing]:
    """Time several calls against each other: `warmup` untimed calls of each, then `repeats` rounds of one timed
    call of each, in an order rotated every round. A slow stretch of the machine (host load, clocks) then falls
    on every call alike instead of on whichever was timed during it, which is what a ratio between them needs."""
    _check_counts("time_interleaved", repeats, warmup)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples = {name: [] for name in fns}
    for round_ in range(repeats):
        for name in rotation(list(fns), round_):
            samples[name].append(seconds_of(fns[name], device))
    return {name: Timing.of(values) for name, values in samples.items()}
