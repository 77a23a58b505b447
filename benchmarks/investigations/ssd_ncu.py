"""Three forward+backward calls of the Triton SSD at b8 h24 L8192 (p64 N128 bf16, ssd_gpu.py's inputs), for
Nsight Compute's view of the gradient kernel (where its warps stall, its occupancy, its pipes):

    PYTHONPATH=. ncu --clock-control none -k regex:ssd_chunk_backward -s 1 -c 1 --section SpeedOfLight \\
        --section Occupancy --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \\
        --section MemoryWorkloadAnalysis --section SourceCounters python3 benchmarks/investigations/ssd_ncu.py

(`-s 1` skips the first call's kernel, which compiled it.)
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.ssd_gpu import fwd_bwd, make_inputs, ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--length", type=int, default=8192)
    opts = parser.parse_args()
    step = fwd_bwd(ours, make_inputs(8, opts.heads, opts.length))
    for _ in range(3):
        step()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
