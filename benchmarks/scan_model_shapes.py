"""The selective scan at the shapes, strides and dtypes the Mamba mixer really passes, ours vs official.

    PYTHONPATH=. python3 benchmarks/scan_model_shapes.py --official /tmp/official      # GPU, one device call

The mamba-130m mixer (d_model 768: d_inner 1536, N 16, dt_rank 48) under bf16 autocast passes: u = the conv
output, contiguous (b, d, l); z = a view of in_proj's (b, l, 2d) output and Δ = dt_proj's (b, l, d) output, both
transposed (stride 1 along d); B, C = views of x_proj's (b, l, r + 2N) output (stride r + 2N along l). The
official model passes its own layout (time-contiguous u, Δ, z from its (d, b·l) projections; B, C made
contiguous): each library is timed on the layout its model produces, from the same values.

Shapes: the three training shapes of benchmarks/train_vs_official.py (b8 L2048, b2 L8192, b1 L32768). For each,
forward and forward+backward times (triton.testing.do_bench, median) and the extra peak memory of forward +
backward, for the official kernel and for each of our configurations (`--configs`): the default (segments
along L where the programs would not fill the GPU), without segments, dB/dC by atomics instead of per-block
partial buffers (less memory), and smaller channel blocks.
Every configuration is checked against our default one (outputs and gradients). JSON: $OUT or benchmarks/results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from benchmarks.common import write_result
from mambalab.ops.selective_scan import selective_scan

SHAPES = [(8, 2048), (2, 8192), (1, 32768)]
D_INNER, N, RANK = 1536, 16, 48
CONFIGS = {  # name -> ScanConfig overrides of the default
    "default": {},
    "no_segments": {"segment": 0},
    "atomics": {"bwd_partial_dbc": False},
    "fwd_bd8": {"block_d": 8},
    "bwd_bd4": {"bwd_block_d": 4},
}


def model_inputs(batch: int, length: int, seed: int = 0) -> dict:
    """The scan's arguments in our mixer's layout (bf16 activations, fp32 parameters), requires_grad set."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    kw = {"device": "cuda", "generator": g}
    xz = torch.randn(batch, length, 2 * D_INNER, dtype=torch.bfloat16, **kw)  # in_proj output (b, l, 2d)
    x_dbl = torch.randn(batch, length, RANK + 2 * N, dtype=torch.bfloat16, **kw)  # x_proj output (b, l, r+2n)
    dt = (0.5 * torch.randn(batch, length, D_INNER, **kw) - 1).to(torch.bfloat16)  # dt_proj output (b, l, d)
    leaves = {
        "u": torch.randn(batch, D_INNER, length, dtype=torch.bfloat16, **kw),  # conv output (b, d, l)
        "xz": xz, "x_dbl": x_dbl, "dt": dt,
        "A": -torch.exp(torch.rand(D_INNER, N, **kw) * 2), "D": torch.randn(D_INNER, **kw),
        "bias": torch.randn(D_INNER, **kw) * 0.1 - 2,
    }
    for t in leaves.values():
        t.requires_grad_()
    return leaves


def ours_args(leaves: dict) -> tuple:
    z = leaves["xz"][..., D_INNER:].transpose(1, 2)  # (b, d, l), stride 1 along d
    delta = leaves["dt"].transpose(1, 2)  # (b, d, l)
    B = leaves["x_dbl"][..., RANK : RANK + N].transpose(1, 2)  # (b, n, l), stride r + 2n along l
    C = leaves["x_dbl"][..., RANK + N :].transpose(1, 2)
    return leaves["u"], delta, leaves["A"], B, C, leaves["D"], z, leaves["bias"]


def official_args(leaves: dict) -> tuple:
    u, delta, A, B, C, D, z, bias = ours_args(leaves)
    return u, delta.contiguous(), A, B.contiguous(), C.contiguous(), D, z.contiguous(), bias


def time_and_memory(fn, args: tuple, dy: torch.Tensor) -> dict:
    from triton.testing import do_bench

    def fwd():
        with torch.no_grad():
            fn(*args)

    def fwd_bwd():
        y = fn(*args)
        grads = torch.autograd.grad(y, [a for a in args if a.requires_grad], dy, allow_unused=True)
        return y, grads

    forward_ms = do_bench(fwd, warmup=25, rep=200, return_mode="median")
    fwd_bwd_ms = do_bench(fwd_bwd, warmup=25, rep=200, return_mode="median")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    y, grads = fwd_bwd()
    torch.cuda.synchronize()
    extra_gb = (torch.cuda.max_memory_allocated() - before) / 1e9
    return {"forward_ms": forward_ms, "fwd_bwd_ms": fwd_bwd_ms, "extra_peak_gb": extra_gb}, (y, grads)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()


def with_config(overrides: dict):
    """Make our triton backend use the default ScanConfig with `overrides` (restored by the caller)."""
    from mambalab.ops.selective_scan import triton_kernels as kernels

    original = kernels.default_config

    def patched(*args, **kwargs):
        return dataclasses.replace(original(*args, **kwargs), **overrides)

    kernels.default_config = patched
    return lambda: setattr(kernels, "default_config", original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, default=Path("/tmp/official"))
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {list(CONFIGS)}")
    parser.add_argument("--out", default=None, help="JSON path or folder (default: $OUT, else benchmarks/results)")
    args = parser.parse_args()
    official = None
    if (args.official / "bss").is_dir():
        sys.path[:0] = [str(args.official / "mamba_ssm-2.3.2.post1"), str(args.official / "bss")]
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        def official(u, delta, A, B, C, D, z, bias):
            return selective_scan_fn(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)

    def ours(u, delta, A, B, C, D, z, bias):
        return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True, backend="triton")

    rows = []
    for batch, length in SHAPES:
        leaves = model_inputs(batch, length)
        dy = torch.randn(batch, D_INNER, length, device="cuda", dtype=torch.bfloat16)
        base = {"batch": batch, "d_inner": D_INNER, "N": N, "length": length}
        reference = None
        if official is not None:
            timing, _ = time_and_memory(official, official_args(leaves), dy)
            rows.append({**base, "impl": "official", **timing})
            print(json.dumps(rows[-1]), flush=True)
        for name in args.configs.split(","):
            restore = with_config(CONFIGS[name])
            try:
                timing, (y, grads) = time_and_memory(ours, ours_args(leaves), dy)
            finally:
                restore()
            if reference is None:
                reference = (y, grads)
            errors = [rel_err(y, reference[0])] + [rel_err(a, b) for a, b in zip(grads, reference[1]) if a is not None]
            rows.append({**base, "impl": f"mambalab:{name}", "overrides": CONFIGS[name], **timing,
                         "max_rel_err_vs_default": max(errors)})
            print(json.dumps(rows[-1]), flush=True)
        del leaves, dy, reference
        torch.cuda.empty_cache()
    path = write_result("scan_model_shapes", {"device": torch.cuda.get_device_name(), "rows": rows}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
