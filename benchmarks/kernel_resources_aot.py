"""Registers, spills and shared memory of the SSD Triton kernels compiled for a GPU on a machine without one:

    PYTHONPATH=.:/tmp/tri36 python3 benchmarks/kernel_resources_aot.py --lengths 2048,8192 --also warps_backward=8

The host code of `ssd_triton` runs forward and backward on meta tensors (no memory, no device) at a Mamba-2
layer's shapes (b8 h24 p64 N128 one group, bfloat16 x/B/C/z, float32 dt/A/D/dt_bias, z, D, dt_softplus), with
the kernel module swapped for one that records each launch instead of running it. Each recorded launch is then
specialized and compiled exactly as Triton's launcher would (its own binder: the same constexprs, integer and
alignment specializations, options) for the target (default sm_90), and the cubin's resources are read with
the cuobjdump bundled with Triton. The rows are those of `kernel_resources.compiled_resources` plus the stack
frame and local memory separately, so that a tile or warp choice can be judged before any device time: spills
(a stack frame), registers and shared memory bound the programs per multiprocessor (benchmarks/notes/ssd.md;
ptxas takes up to 255 registers when nothing bounds it, so the stack says more than the register count).
dt is float32 here (ssd_gpu.py times bfloat16 dt: the same kernels but for one load's conversion).

Run it with the device's Triton first on PYTHONPATH (e.g. `pip install --target /tmp/tri36 triton==3.6.0`):
register allocation changes between Triton versions. Meta tensors have address 0, so every pointer counts as
16-byte aligned, as PyTorch's allocations are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from unittest import mock

import torch

from benchmarks.kernel_resources import summary
from benchmarks.ssd_gpu import parse_config
from mambalab.atomic import write_json_atomic
from mambalab.ops.ssd import triton_ssd

HEAD_DIM, N, GROUPS = 64, 128, 1


@dataclass
class Launch:
    """One kernel launch the host code made: the kernel's name and what it was called with."""

    kernel: str
    args: tuple
    kwargs: dict


class _Recorder:
    """Stands in for the kernel module: `module.name[grid](*args, **kwargs)` appends a Launch."""

    INTERPRETED = False

    def __init__(self):
        self.launches: list[Launch] = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Grid(self, name)


@dataclass
class _Grid:
    recorder: _Recorder
    name: str

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.recorder.launches.append(Launch(self.name, args, kwargs))


def model_inputs(batch, length, heads, dtype=torch.bfloat16) -> dict:
    """Meta tensors shaped like a Mamba-2 layer's SSD inputs (ssd_gpu.py's shapes), each requiring grad."""
    meta = lambda *shape, dt=dtype: torch.empty(*shape, device="meta", dtype=dt).requires_grad_()
    return {"x": meta(batch, length, heads, HEAD_DIM), "dt": meta(batch, length, heads, dt=torch.float32),
            "A": meta(heads, dt=torch.float32), "B": meta(batch, length, GROUPS, N), "C": meta(batch, length, GROUPS, N),
            "D": meta(heads, dt=torch.float32), "z": meta(batch, length, heads, HEAD_DIM),
            "dt_bias": meta(heads, dt=torch.float32)}


def captured_launches(inputs: dict, cfg: triton_ssd.SSDConfig) -> list[Launch]:
    """Every kernel launch of one forward and backward of ssd_triton's autograd function (dt_softplus, no
    initial state, no cu_seqlens) on `inputs`, recorded and not run."""
    recorder = _Recorder()
    with mock.patch.object(triton_ssd, "kernels", lambda: recorder):
        names = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")
        leaves = [inputs[k] for k in names]
        y, _ = triton_ssd._SSDFunction.apply(*leaves, None, None, True, cfg)
        torch.autograd.grad(y, leaves, torch.empty_like(y))
    return recorder.launches


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def cubin_resources(cubin: bytes) -> dict:
    """{REG, STACK, SHARED, LOCAL, ...: int} of the one function in a cubin, as `cuobjdump
    --dump-resource-usage` reports them."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    found = dict(re.findall(r"\b([A-Z]+):(\d+)", out))
    if "REG" not in found:
        raise RuntimeError(f"no resource usage in cuobjdump's output: {out[:500]}")
    return {k: int(v) for k, v in found.items()}


def compile_launch(launch: Launch, arch: int) -> dict:
    """The row of one launch compiled for sm_<arch> by the Triton on the path, specialized as its launcher
    specializes it; keys of kernel_resources.compiled_resources' rows, spilled_bytes = stack frame + local
    memory per thread."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = getattr(triton_ssd.kernels(), launch.kernel)
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kwargs = {**launch.kwargs, "debug": False}
    bound, specialization, options = create_function_from_signature(fn.signature, fn.params, backend)(
        *launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    usage = cubin_resources(compiled.asm["cubin"])
    names = fn.arg_names
    return {
        "kernel": launch.kernel, "num_warps": compiled.metadata.num_warps, "num_stages": compiled.metadata.num_stages,
        "shared_bytes": compiled.metadata.shared, "registers": usage["REG"],
        "spilled_bytes": usage.get("STACK", 0) + usage.get("LOCAL", 0), "stack_bytes": usage.get("STACK", 0),
        "local_bytes": usage.get("LOCAL", 0),
        "constexprs": {names[path[0]]: v if isinstance(v, (bool, int, float, str)) else str(v)
                       for path, v in constexprs.items()},
    }


def resources(batch, length, heads, cfg, arch=90) -> list[dict]:
    """One row per distinct compiled variant among the launches of a forward and backward at (batch, length,
    heads), in launch order; each row says the triton version, the length and the config's overrides."""
    import triton

    rows, seen = [], set()
    overrides = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                 if getattr(cfg, f.name) != f.default}
    for launch in captured_launches(model_inputs(batch, length, heads), cfg):
        row = compile_launch(launch, arch)
        key = (row["kernel"], row["num_warps"], row["num_stages"], json.dumps(row["constexprs"], sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        rows.append({**row, "triton": triton.__version__, "arch": arch, "batch": batch, "length": length,
                     "heads": heads, "config": overrides})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="2048,8192", help="sequence lengths, comma-separated")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--arch", type=int, default=90, help="compute capability (90: H100)")
    parser.add_argument("--also", action="append", default=[], type=parse_config, metavar="FIELD=VALUE[,...]",
                        help="an SSDConfig to compile besides the default (repeatable, as ssd_gpu.py's --also)")
    parser.add_argument("--no-default", action="store_true", help="compile only the --also configs")
    parser.add_argument("--json", help="write the rows here")
    opts = parser.parse_args(argv)
    if triton_ssd.kernels().INTERPRETED:
        raise SystemExit("kernel_resources_aot: unset TRITON_INTERPRET (the kernels must be compiled)")
    rows = []
    for fields in ([] if opts.no_default else [{}]) + opts.also:
        cfg = dataclasses.replace(triton_ssd.SSDConfig(), **fields)
        for length in (int(v) for v in opts.lengths.split(",")):
            found = resources(opts.batch, length, opts.heads, cfg, opts.arch)
            for row, line in zip(found, summary(found), strict=True):
                print(f"L{length} {fields or 'default'}: {line}, {row['stack_bytes']} B stack", flush=True)
            rows += found
    if opts.json:
        write_json_atomic(opts.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
