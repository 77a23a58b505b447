"""A/B versions of the cpu scan kernels (mambalab/ops/selective_scan/cpu_scan.c) in one process.

    PYTHONPATH=. python3 benchmarks/investigations/scan_cpu_ab.py old.c new.c [--threads 1] [--rounds 10]

Each source is compiled with the backend's flags; rounds alternate the builds (so that load and frequency
drift hit every version alike) and time the forward kernel, the backward kernel, and the whole op
(`selective_scan(..., backend="cpu")` forward + backward of y.sum()) at b=2, d=512, N=16, L=4096 with D, z,
delta_bias and softplus. Prints min and median per version (milliseconds).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import Timing
from mambalab.ops.selective_scan import cpu_scan, selective_scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    opts = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(opts.threads)
    b, d, n, L = 2, 512, 16, 4096
    u, z, dy = torch.randn(b, d, L), torch.randn(b, d, L), torch.randn(b, d, L)
    delta, A = torch.randn(b, d, L) * 0.5 - 1, -torch.rand(d, n) * 4 - 0.1
    B, C, D, bias = torch.randn(b, n, L), torch.randn(b, n, L), torch.randn(d), torch.randn(d) * 0.1
    folder = Path(tempfile.mkdtemp(prefix="scan_cpu_ab-"))
    builds = []
    for i, source in enumerate(opts.sources):
        library = folder / f"v{i}.so"
        subprocess.run(["cc", *cpu_scan.FLAGS, "-o", str(library), str(source.resolve()), "-lm"], check=True)
        builds.append((str(source), cpu_scan._load(library)))
    times = {name: {"fwd": [], "bwd": [], "op": []} for name, _ in builds}
    for _ in range(opts.rounds):
        for name, lib in builds:
            cpu_scan._library = lib
            start = time.perf_counter()
            _, _, ckpt = cpu_scan._forward(u, delta, A, B, C, D, z, bias, None, None, True, True)
            mid = time.perf_counter()
            cpu_scan._backward(dy, None, u, delta, A, B, C, D, z, bias, None, ckpt, True)
            end = time.perf_counter()
            args = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
            op = time.perf_counter()
            selective_scan(*args[:7], delta_bias=args[7], delta_softplus=True, backend="cpu").sum().backward()
            times[name]["op"].append(time.perf_counter() - op)
            times[name]["fwd"].append(mid - start)
            times[name]["bwd"].append(end - mid)
    for name, parts in times.items():
        stats = {k: Timing.of(v) for k, v in parts.items()}
        print(f"{name:40s} " + "  ".join(f"{k} min {t.min_s * 1e3:6.1f} med {t.median_s * 1e3:6.1f}"
                                        for k, t in stats.items()))


if __name__ == "__main__":
    main()
