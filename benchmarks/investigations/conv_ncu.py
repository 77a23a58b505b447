"""One forward and backward of the fused causal conv at b8, d2048, L2048 (bf16, the mixer's channels-last view),
for Nsight Compute:

    PYTHONPATH=. ncu --clock-control none -k regex:_conv_ -s 3 -c 3 --section SpeedOfLight \\
        --section MemoryWorkloadAnalysis python3 benchmarks/investigations/conv_ncu.py

(`-s 3` skips the first forward and backward, which compile the kernels.)
"""

from __future__ import annotations

import argparse

import torch

from mambalab.ops.causal_conv1d.triton_conv import causal_conv1d_triton as causal_conv1d_fused


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()  # no options: --help only
    x = torch.randn(8, 2048, 4096, device="cuda", dtype=torch.bfloat16).transpose(1, 2)[:, :2048].requires_grad_(True)
    w = torch.randn(2048, 4, device="cuda", requires_grad=True)
    b = torch.randn(2048, device="cuda", requires_grad=True)
    dy = torch.randn(x.shape, device="cuda", dtype=x.dtype)
    for _ in range(2):
        torch.autograd.grad(causal_conv1d_fused(x, w, b, "silu"), (x, w, b), dy)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
