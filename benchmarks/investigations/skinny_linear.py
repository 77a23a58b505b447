"""Decode-sized projections: cuBLAS (F.linear) vs the few-row Triton kernel (mambalab/ops/triton/linear.py).

    PYTHONPATH=. python3 benchmarks/investigations/skinny_linear.py --out $OUT    # needs a GPU

For mamba-130m's in_proj (768 -> 3072) and out_proj (1536 -> 768) in bf16 at 1, 2 and 4 rows, every block
shape of the sweep is checked against a float32 matmul and timed inside a CUDA graph
(triton.testing.do_bench_cudagraph: GPU time per call without launch overhead, as in a captured decode step);
out_proj also with the block's residual add, unfused (cuBLAS, then the add) and fused (default blocks).
Floor: the weight read once at 4.25 TB/s (ANCHORS.md): 1.11 µs for in_proj, 0.55 µs for out_proj.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from triton.testing import do_bench_cudagraph

from benchmarks.common import base_parser, write_result
from mambalab.ops.triton.linear import skinny_linear

SHAPES = {"in_proj": (768, 3072), "out_proj": (1536, 768)}
SWEEP = {"block_n": (4, 8, 16, 32), "block_k": (128, 256, 512), "num_warps": (2, 4)}
BANDWIDTH = 4.25e12  # bytes/s


def us(fn, *args) -> float:
    """GPU µs per call of fn(*args), replayed from a CUDA graph."""
    return do_bench_cudagraph(lambda: fn(*args), rep=50) * 1e3  # ms -> µs


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1,2,4")
    opts = parser.parse_args()
    torch.manual_seed(0)
    results = []
    for (name, (n_in, n_out)), rows in itertools.product(SHAPES.items(), map(int, opts.rows.split(","))):
        x = torch.randn(rows, n_in, device="cuda", dtype=torch.bfloat16)
        w = (torch.randn(n_out, n_in, device="cuda") / n_in**0.5).to(torch.bfloat16)
        exact = x.float() @ w.float().T
        row = {"proj": name, "rows": rows, "floor_us": n_in * n_out * 2 / BANDWIDTH * 1e6,
               "cublas_us": us(F.linear, x, w), "configs": []}
        for block_n, block_k, warps in itertools.product(*SWEEP.values()):
            y = skinny_linear(x, w, block_n=block_n, block_k=block_k, num_warps=warps)
            err = ((y.float() - exact).norm() / exact.norm()).item()
            row["configs"].append({"block_n": block_n, "block_k": block_k, "num_warps": warps, "rel_err": err,
                                   "us": us(skinny_linear, x, w, None, block_n, block_k, warps)})
        if name == "out_proj":  # as the block uses it: onto the float32 residual stream
            residual = torch.randn(rows, n_out, device="cuda")
            row["with_residual"] = {"cublas_plus_add_us": us(lambda r, a, b: r + F.linear(a, b), residual, x, w),
                                    "fused_us": us(skinny_linear, x, w, residual)}
        best = min(row["configs"], key=lambda c: c["us"])
        row["best"] = best
        results.append(row)
        print(f"{name} rows={rows}: cuBLAS {row['cublas_us']:.2f} us, best Triton {best['us']:.2f} us "
              f"(block_n={best['block_n']} block_k={best['block_k']} warps={best['num_warps']}, "
              f"err {best['rel_err']:.1e}); floor {row['floor_us']:.2f} us", flush=True)
        write_result("skinny_linear", {"rows": results}, opts.out)  # after every shape


if __name__ == "__main__":
    main()
