"""Where the SSD forward+backward's time goes, kernel by kernel: ours (`ssd_triton`, the default SSDConfig)
and official `mamba_chunk_scan_combined` under the torch profiler on the same inputs, at the shapes of
benchmarks/ssd_gpu.py where we lose (b8 h24 L8192, b2 h24 L32768) and where we win (b8 h24 L2048).

    PYTHONPATH=.:/tmp/off/mamba_ssm-2.3.2.post1 python3 benchmarks/investigations/ssd_profile.py --out $OUT \
        --also state_mode=parallel

Per shape and implementation: every GPU kernel of one forward+backward summed by name (calls and µs per
iteration, over `--iters` iterations after a warm-up), the sum against the wall time per iteration (the rest
is gaps between launches), and the host's time to enqueue one iteration (where it nears the wall time, the GPU
waits on Python and launches, not on kernels). The official package is optional (its rows are skipped when it
is not importable).
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import base_parser, write_result
from benchmarks.ssd_gpu import (
    fwd_bwd,
    load_official,
    make_inputs,
    official_fn,
    ours,
    ours_with,
    parse_config,
    parse_shape,
)

SHAPES = [(8, 24, 2048), (8, 24, 8192), (2, 24, 32768)]  # (b, h, L); head dim 64, N 128 (ssd_gpu's)


def kernel_table(run, iters: int) -> dict:
    """Kernels of `iters` calls of run() summed by name, per call, largest first; wall, host (enqueueing) and
    kernel µs per call."""
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        run()
    host_us = (time.perf_counter() - start) / iters * 1e6
    torch.cuda.synchronize()
    wall_us = (time.perf_counter() - start) / iters * 1e6
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            run()
        torch.cuda.synchronize()
    kernels = {
        e.key[:100]: {"calls": e.count / iters, "us": e.self_device_time_total / iters}
        for e in prof.key_averages()
        if e.self_device_time_total > 0
    }
    kernels = dict(sorted(kernels.items(), key=lambda kv: -kv[1]["us"]))
    return {"wall_us": wall_us, "host_us": host_us, "kernel_us": sum(k["us"] for k in kernels.values()), "kernels": kernels}


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--also", action="append", default=[], type=parse_config, metavar="FIELD=VALUE[,...]",
                        help="an SSDConfig profiled besides the default, e.g. state_mode=parallel (repeatable)")
    parser.add_argument("--shape", action="append", default=[], type=parse_shape, metavar="B,H,L",
                        help="profile only these shapes (repeatable; default: SHAPES)")
    opts = parser.parse_args()
    official, why = load_official()
    report = {"official": "mamba_ssm 2.3.2 mamba_chunk_scan_combined" if official else f"skipped: {why}",
              "shapes": {}}
    calls = {"ours": ours}
    for fields in opts.also:
        name = "ours " + ",".join(f"{k}={v}" for k, v in fields.items())
        calls[name] = ours_with(fields)
    if official:
        calls["official"] = official_fn(official[0])
    for b, h, length in opts.shape or SHAPES:
        args = make_inputs(b, h, length)
        row = {}
        for name, call in calls.items():
            row[name] = kernel_table(fwd_bwd(call, args), opts.iters)
            top = list(row[name]["kernels"].items())[:8]
            print(f"b{b} h{h} L{length} {name}: wall {row[name]['wall_us']:.0f} µs, host "
                  f"{row[name]['host_us']:.0f} µs, kernels {row[name]['kernel_us']:.0f} µs", flush=True)
            for kernel, k in top:
                print(f"    {k['us']:9.1f} µs  {k['calls']:5.1f}×  {kernel}", flush=True)
        report["shapes"][f"b{b}_h{h}_L{length}"] = row
        del args
        torch.cuda.empty_cache()
        write_result("ssd_profile", report, opts.out)


if __name__ == "__main__":
    main()
