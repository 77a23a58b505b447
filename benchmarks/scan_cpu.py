"""Selective scan on CPU: the per-timestep reference loop vs the chunked torch backend vs the compiled "cpu"
backend (fused C/OpenMP kernels) vs HF transformers.

"HF slow path" is `transformers.models.mamba.modeling_mamba.mamba_selective_scan`, the sequential scan that
`MambaMixer` runs when mamba_ssm is not installed (its scan part only, same arguments as ours). Its backward
indexes the full (b, d, L, N) tensors once per step, so it grows with L²: beyond `--hf-backward-max-len`
it is not run and the table says so.

Inputs are float32 with D, z, delta_bias and delta_softplus (as in the Mamba block). Every timing is the
median of `--repeats` runs after one untimed warm-up, with `--threads` intra-op threads; the JSON keeps every
run, the CPU time and the load average around each measurement (the machine may be shared: a second core
that is busy elsewhere slows every two-thread op). `--tune` also sweeps the torch backend's chunk sizes at
the largest length. The JSON also records the cpu backend's settings and the rate of its float32 exponential
(one thread, an L1-resident array), the primitive its floor is counted in. Writes JSON (machine info,
command, every timing) to --out (default $OUT, else benchmarks/results/scan_cpu.json).

    PYTHONPATH=. python3 benchmarks/scan_cpu.py                      # b=2, d=512, N=16, L=1024 and 4096
    PYTHONPATH=. python3 benchmarks/scan_cpu.py --tune --lengths 4096
"""

from __future__ import annotations

import datetime
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import base_parser, write_result
from mambalab.ops.selective_scan import cpu_scan, selective_scan
from mambalab.ops.selective_scan.torch_scan import CHUNK_LEN, SUB_LEN, chunked_selective_scan


def make_inputs(batch, dim, n, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": torch.randn(batch, dim, length, generator=g) - 2.0,
        "A": -torch.arange(1, n + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(batch, n, length, generator=g),
        "C": torch.randn(batch, n, length, generator=g),
        "D": torch.ones(dim),
        "z": torch.randn(batch, dim, length, generator=g),
        "delta_bias": torch.rand(dim, generator=g) * 0.1,
    }
    return {k: v.requires_grad_() for k, v in t.items()}


def ours(backend, **chunks):
    def f(t):
        args = {k: t[k] for k in ("D", "z", "delta_bias")}
        if chunks:
            return chunked_selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], **args, delta_softplus=True,
                                          **chunks)
        return selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], **args, delta_softplus=True,
                              backend=backend)
    return f


def hf_slow_path(t):
    from transformers.models.mamba.modeling_mamba import mamba_selective_scan

    return mamba_selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"],
                                delta_bias=t["delta_bias"], delta_softplus=True)


def cpu_pressure():
    """Share of the last 10 s in which some runnable task waited for a CPU (Linux PSI), or None."""
    path = Path("/proc/pressure/cpu")
    if not path.exists():
        return None
    return float(path.read_text().split()[1].split("=")[1])


def wait_quiet(limit, max_wait=900.0):
    """Sleep until the CPU pressure is below `limit` % (two checks 5 s apart), at most max_wait seconds."""
    waited, calm = 0.0, 0
    while limit is not None and waited < max_wait and calm < 2:
        pressure = cpu_pressure()
        calm = calm + 1 if pressure is None or pressure < limit else 0
        if calm < 2:
            time.sleep(5.0)
            waited += 5.0


def time_it(fn, inputs, backward, repeats, quiet=None):
    """Wall-clock and process CPU seconds of fn (plus the backward of y.sum()) over `repeats` runs after one
    untimed warm-up run: {"median", "min", "runs", "cpu median", "load", "pressure"}. Forward-only runs under
    no_grad (no graph, no saved tensors). CPU time is all threads together (spin-waiting included). The
    machine may be shared, and a busy second core slows every two-thread op: "load" is the 1-minute load
    average before and after, "pressure" the CPU pressure (% of time something waited for a CPU) at the
    start and end of each run; with `quiet`, each run first waits until the pressure is below that, then runs
    once untimed, so that the timed run is not a cold start after the wait (OpenMP threads asleep, freed memory
    handed back to the OS: ≈ 5 ms more for the cpu backend)."""
    walls, cpus, pressures = [], [], []
    load_before = os.getloadavg()[0]

    def run():
        for v in inputs.values():
            v.grad = None
        if backward:
            fn(inputs).sum().backward()
        else:
            with torch.no_grad():
                fn(inputs)

    for i in range(repeats + 1):
        if quiet is not None:
            wait_quiet(quiet)
            run()
        start_pressure = cpu_pressure()
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        if i:
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            pressures.append([start_pressure, cpu_pressure()])
    return {"median": statistics.median(walls), "min": min(walls), "runs": walls,
            "cpu median": statistics.median(cpus), "load": [load_before, os.getloadavg()[0]],
            "pressure": pressures}


def exp_rate(count=4096, calls=20000) -> float:
    """Elements per second of the cpu backend's float32 2^x (exp2_f32), one thread, on an L1-resident array."""
    lib = cpu_scan.library()
    x = -torch.rand(count) * 20
    y = torch.empty_like(x)
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            lib.mambalab_exp2_f32(x.data_ptr(), y.data_ptr(), count)
        rates.append(count * calls / (time.perf_counter() - start))
    return max(rates)


def machine_load() -> dict:
    """What the shared environment record lacks for a CPU timing: the vector ISA torch uses, the load average."""
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_average_at_start": list(os.getloadavg())}


def main(argv=None):
    p = base_parser(__doc__, raw_description=True,
                    out_help="JSON path or folder (default $OUT, else benchmarks/results/scan_cpu.json)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed runs of the torch backend")
    p.add_argument("--loop-repeats", type=int, default=3, help="timed runs of the per-timestep loops")
    p.add_argument("--hf-backward-max-len", type=int, default=1024)
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--wait-quiet", type=float, default=None, metavar="PCT",
                   help="before each run, wait until the CPU pressure (/proc/pressure/cpu avg10) is below PCT")
    p.add_argument("--tune", action="store_true", help="sweep the torch backend's chunk_len/sub_len")
    p.add_argument("--skip-loops", action="store_true", help="time only the torch backend (with --tune)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info = machine_load()

    impls = {"reference loop": (ours("reference"), args.loop_repeats), "torch": (ours("torch"), args.repeats),
             "cpu": (ours("cpu"), args.repeats)}
    if not args.skip_hf:
        impls["HF slow path"] = (hf_slow_path, args.loop_repeats)
    rows = []
    for length in [] if args.skip_loops else args.lengths:
        inputs = make_inputs(args.batch, args.dim, args.state, length)
        for mode in ("forward", "forward+backward"):
            row = {"L": length, "mode": mode}
            for name, (fn, repeats) in impls.items():
                if name == "HF slow path" and mode != "forward" and length > args.hf_backward_max_len:
                    row[name] = None  # quadratic backward, see the module docstring
                    continue
                row[name] = t = time_it(fn, inputs, mode != "forward", repeats, args.wait_quiet)
                print(f"L={length} {mode:17s} {name:15s} median {t['median']:9.3f} s  min {t['min']:.3f} s  "
                      f"(cpu {t['cpu median']:.3f} s, load {t['load'][0]:.2f}-{t['load'][1]:.2f}, "
                      f"cpu pressure {[p[1] for p in t['pressure']]})",
                      file=sys.stderr, flush=True)
            for fast in ("torch", "cpu"):
                for base in ("reference loop", "HF slow path", *(["torch"] if fast == "cpu" else [])):
                    if row.get(base):
                        row[f"{fast} speedup vs {base}"] = row[base]["median"] / row[fast]["median"]
                row[f"{fast} cpu-time speedup vs reference loop"] = (row["reference loop"]["cpu median"]
                                                                     / row[fast]["cpu median"])
            rows.append(row)

    tuning = []
    if args.tune:
        length = max(args.lengths)
        inputs = make_inputs(args.batch, args.dim, args.state, length)
        for chunk_len, sub_len in [(32, 8), (32, 32), (64, 8), (64, 16), (128, 16), (256, 16)]:
            fn = ours("torch", chunk_len=chunk_len, sub_len=sub_len)
            fwd, fwd_bwd = (time_it(fn, inputs, b, args.repeats, args.wait_quiet) for b in (False, True))
            tuning.append({"L": length, "chunk_len": chunk_len, "sub_len": sub_len, "forward": fwd,
                           "forward+backward": fwd_bwd})
            print(f"tune chunk_len={chunk_len:5d} sub_len={sub_len:3d} fwd {fwd['median']:.3f} s  "
                  f"fwd+bwd {fwd_bwd['median']:.3f} s (load {fwd_bwd['load'][1]:.2f})", file=sys.stderr, flush=True)

    info["load_average_at_end"] = list(os.getloadavg())
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "shapes": {"batch": args.batch, "dim": args.dim, "N": args.state, "dtype": "float32",
                   "options": "D, z, delta_bias, delta_softplus"},
        "torch_backend_chunks": {"chunk_len": CHUNK_LEN, "sub_len": SUB_LEN},
        "cpu_backend": {"flags": " ".join(cpu_scan.FLAGS), "checkpoint_steps": cpu_scan.CHECKPOINT_STEPS,
                        "source sha256": hashlib.sha256(cpu_scan.SOURCE.read_bytes()).hexdigest()[:16],
                        "compiler": os.environ.get("CC") or "cc", "exp2_f32 per second, one thread": exp_rate()},
        "hf_slow_path": "transformers.models.mamba.modeling_mamba.mamba_selective_scan (sequential loop), "
                        f"backward only for L <= {args.hf_backward_max_len}",
        "seconds": rows,
        "tuning": tuning,
    }
    out = write_result("scan_cpu", result, args.out)

    names = list(impls)
    print(f"selective scan on CPU, b={args.batch} d={args.dim} N={args.state} float32, {args.threads} threads "
          "(wall-clock seconds, median over repeats)")
    ratios = {"torch vs loop": "torch speedup vs reference loop", "cpu vs loop": "cpu speedup vs reference loop",
              "cpu (cpu time)": "cpu cpu-time speedup vs reference loop", "cpu vs torch": "cpu speedup vs torch",
              "cpu vs HF": "cpu speedup vs HF slow path"}
    print(" | ".join(f"{h:>14s}" for h in ["L", "mode", *names, *ratios]))
    for r in rows:
        cells = [str(r["L"]), r["mode"], *("not run" if r[n] is None else f"{r[n]['median']:.3f}" for n in names),
                 *(f"{r[key]:.1f}x" if key in r else "-" for key in ratios.values())]
        print(" | ".join(f"{c:>14s}" for c in cells))
    for t in tuning:
        print(f"tune L={t['L']} chunk_len={t['chunk_len']} sub_len={t['sub_len']}: forward "
              f"{t['forward']['median']:.3f} s, forward+backward {t['forward+backward']['median']:.3f} s")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
