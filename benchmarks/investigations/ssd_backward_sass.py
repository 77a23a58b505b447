"""Static view of the SSD gradient kernel (`ssd_chunk_backward_kernel`) as built for sm_90, on a machine
without a GPU: registers, spills and the SASS instruction mix of the per-head loop, specialised as a launch at
the benchmark shape (b8 h24 L8192 p64 n128, one group, bf16, softplus, z, D, dt_bias) would be:

    PYTHONPATH=. python3 benchmarks/investigations/ssd_backward_sass.py                          # k = 1 and 4
    PYTHONPATH=. python3 benchmarks/investigations/ssd_backward_sass.py --heads-per-program 1 4 24 --dump /tmp/k

Registers depend on the tiles, not on heads_per_program's value (a run-time loop bound); a value of 1 is folded
into a constant by Triton's launcher (as here), so k = 1 builds the loop away. Numbers are predictions' raw
material (benchmarks/notes/ssd.md), not timings.
"""

from __future__ import annotations

import argparse
import collections
import sys

import triton.language as tl

from benchmarks.investigations.kernel_sass import compile_sm90, family, main_loop, resources, sass_of
from mambalab.ops.ssd import triton_kernels as ssd
from mambalab.ops.ssd.triton_ssd import SSDConfig

BATCH, HEADS, LENGTH, HEAD_DIM, N = 8, 24, 8192, 64, 128


def kernel_values(cfg: SSDConfig, heads_per_program: int, dtype: str = "bf16") -> dict:
    """Every argument of ssd_chunk_backward_kernel as the launcher passes it at the benchmark shape (pointers as
    their dtype, integers as values, constexprs as constants)."""
    lhp = (HEADS * HEAD_DIM, HEAD_DIM, 1)  # strides of (b·l, h, p) rows
    values = {name: f"*{dtype}" for name in ("x_ptr", "dt_ptr", "B_ptr", "C_ptr", "z_ptr", "dy_ptr", "dx_ptr",
                                              "dz_ptr", "states_ptr", "adjoints_ptr")}
    values.update({name: "*fp32" for name in ("A_ptr", "D_ptr", "bias_ptr", "ddt_ptr", "dB_ptr", "dC_ptr",
                                                    "dA_ptr", "dD_ptr")})
    values.update(seq_ptr="*i64", chunk_ptr="*i64", chunk_seq_ptr="*i32")
    values.update(dict(zip(("s_x_l", "s_x_h", "s_x_p"), lhp)), s_dt_l=HEADS, s_dt_h=1, s_B_l=N, s_B_g=N, s_B_n=1,
                  s_C_l=N, s_C_g=N, s_C_n=1, s_D_h=0, s_D_p=0)
    for t in ("z", "dy", "o"):
        values.update(dict(zip((f"s_{t}_l", f"s_{t}_h", f"s_{t}_p"), lhp)))
    p_blocks = HEAD_DIM // cfg.block_p_backward
    values.update(heads=HEADS, groups=1, heads_per_group=HEADS, heads_per_program=heads_per_program,
                  head_dim=HEAD_DIM, n_state=N, p_blocks=p_blocks)
    values.update(BLOCK_Q=cfg.chunk, BLOCK_P=cfg.block_p_backward, BLOCK_N=N, ACC=tl.float32,
                  DOT={"bf16": tl.bfloat16, "fp16": tl.float16}[dtype], PRECISION="tf32", HAS_D=True, HAS_Z=True,
                  HAS_BIAS=True, SOFTPLUS=True, ONE_PASS=heads_per_program == 1)
    return values


def report(cfg: SSDConfig, heads_per_program: int, dump: str | None) -> dict:
    kernel = compile_sm90(ssd.ssd_chunk_backward_kernel, kernel_values(cfg, heads_per_program), cfg.warps_backward,
                          None)
    sass = sass_of(kernel.asm["cubin"])
    if dump:
        with open(f"{dump}.k{heads_per_program}.sass", "w") as f:
            f.write(sass)
    ops = [op for _, op in main_loop(sass)] if heads_per_program != 1 else []
    whole = [m for m in sass.splitlines() if "/*" in m and ";" in m]
    return {"resources": resources(kernel.asm["cubin"]), "instructions": len(whole),
            "loop_mix": collections.Counter(family(op) for op in ops).most_common()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heads-per-program", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--dump", help="write each whole SASS to DUMP.k<k>.sass")
    opts = parser.parse_args()
    cfg = SSDConfig()
    for k in opts.heads_per_program:
        r = report(cfg, k, opts.dump)
        print(f"k={k} chunk {cfg.chunk} × {cfg.block_p_backward} channels × {cfg.warps_backward} warps, n {N}, bf16:"
              f"\n  {r['resources']}\n  {r['instructions']} SASS lines")
        for name, count in r["loop_mix"]:
            print(f"    loop {name:<22} {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
