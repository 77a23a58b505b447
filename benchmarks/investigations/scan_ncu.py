"""One forward (with checkpoints) and one backward of the Triton scan at the ANCHORS.md shape, for Nsight Compute:

    PYTHONPATH=. ncu --clock-control none -k regex:_scan_ -s 2 -c 2 --section SpeedOfLight --section Occupancy \\
        --section WarpStateStats --section SchedulerStats python3 benchmarks/investigations/scan_ncu.py

(`--clock-control none` leaves the card's clocks as they are; `-s 2` skips the first forward and backward,
which compile the kernels.)
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.scan_gpu import make_inputs
from mambalab.ops.selective_scan import triton_kernels as scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=2048)
    opts = parser.parse_args()
    a = make_inputs(8, 2048, opts.length)
    dy = torch.randn_like(a["u"])
    cfg = scan.default_config(2048, 16, 8, 1, opts.length)
    for _ in range(2):
        _, _, ckpt = scan.scan_forward(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"],
                                       None, None, True, True, cfg)
        scan.scan_backward(dy, None, a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"],
                           None, ckpt, True, cfg)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
