"""Static view of the SSD kernels of the backward and the state paths as built for sm_90, on a machine without a
GPU: registers, stack, shared memory and the SASS instructions of each loop (spills, memory and tensor-core
instructions, mix) of the sequential walks (`ssd_forward_kernel` storing states, `ssd_adjoint_kernel`), of the
parallel state path (`ssd_local_state_kernel`, `ssd_state_passing_kernel`) and of the gradient kernel
(`ssd_chunk_backward_kernel`: its two per-head loops when heads_per_program > 1), specialised as a launch at b8
h24 L8192 p64 N128, one group, bf16 inputs, the default SSDConfig (or the fields given), would be:

    PYTHONPATH=. python3 benchmarks/investigations/ssd_sass.py                       # every kernel
    PYTHONPATH=. python3 benchmarks/investigations/ssd_sass.py --set block_pass=1024 --set warps_local=8
    PYTHONPATH=. python3 benchmarks/investigations/ssd_sass.py --set heads_per_program=4 --only gradients

Compiling and the helpers are kernel_sass.py's. Numbers from this script are predictions' raw material
(benchmarks/notes/ssd.md), not timings. Spills differ between Triton versions: for the device's, install it
beside (`pip install --target /tmp/tri36 triton==3.6.0`) and put it first (`PYTHONPATH=/tmp/tri36:.`); under
3.6 the gradient kernel's time followed its first loop's spill instructions (notes/ssd.md, eleventh session).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys

import torch
import triton.language as tl

from benchmarks.investigations.kernel_sass import _INSTR, compile_sm90, family, loops, resources, sass_of
from benchmarks.ssd_gpu import parse_config
from mambalab.ops.ssd import triton_kernels as k
from mambalab.ops.ssd.triton_ssd import SSDConfig, _adjoint_warps, _StateSidePlan, _walk_block

HEADS, HEAD_DIM, N = 24, 64, 128
BATCH = 8  # the walks' channels per program as chosen at b8 (off CUDA for 132 multiprocessors, an H100's)
LENGTH = 8192
LHP = {"l": HEADS * HEAD_DIM, "h": HEAD_DIM, "p": 1}  # strides of a contiguous (b, l, h, p) tensor
LGN = {"l": N, "g": N, "n": 1}
TILES = {"BLOCK_N": N, "ACC": tl.float32, "DOT": tl.bfloat16, "PRECISION": "tf32", "HAS_BIAS": True,
         "SOFTPLUS": True}


def _strides(prefix: str, strides: dict) -> dict:
    return {f"s_{prefix}_{axis}": v for axis, v in strides.items()}


def _walk_block_here(walk: str, cfg: SSDConfig) -> int:
    return _walk_block(BATCH * HEADS, HEAD_DIM, walk, cfg, torch.device("cpu"))


def walk_states(cfg: SSDConfig) -> tuple:
    values = dict(
        x_ptr="*bf16", dt_ptr="*bf16", A_ptr="*fp32", B_ptr="*bf16", C_ptr="*bf16", D_ptr="*fp32", z_ptr="*bf16",
        bias_ptr="*fp32", h0_ptr="*fp32", seq_ptr="*i64", chunk_ptr="*i64", y_ptr="*bf16", states_ptr="*bf16",
        final_ptr="*fp32", **_strides("x", LHP), s_dt_l=HEADS, s_dt_h=1, **_strides("B", LGN), **_strides("C", LGN),
        s_D_h=1, s_D_p=0, **_strides("z", LHP), **_strides("y", LHP), heads=HEADS, heads_per_group=HEADS,
        head_dim=HEAD_DIM, n_state=N, BLOCK_Q=cfg.chunk, BLOCK_P=_walk_block_here("state", cfg), **TILES,
        HAS_D=True, HAS_Z=True, HAS_INIT=False, STORE_Y=False, STORE_STATES=True, STORE_FINAL=True,
    )
    return k.ssd_forward_kernel, values, cfg.warps_state, cfg.stages


def walk_adjoints(cfg: SSDConfig) -> tuple:
    values = dict(
        dt_ptr="*bf16", A_ptr="*fp32", C_ptr="*bf16", z_ptr="*bf16", bias_ptr="*fp32", dy_ptr="*bf16",
        seq_ptr="*i64", chunk_ptr="*i64", dfinal_ptr="*fp32", adjoints_ptr="*bf16", dh0_ptr="*fp32",
        s_dt_l=HEADS, s_dt_h=1, **_strides("C", LGN), **_strides("z", LHP), **_strides("dy", LHP),
        heads=HEADS, heads_per_group=HEADS, head_dim=HEAD_DIM, n_state=N, BLOCK_Q=cfg.chunk,
        BLOCK_P=_walk_block_here("adjoint", cfg), **TILES, HAS_Z=True, HAS_DFINAL=False,
    )
    return k.ssd_adjoint_kernel, values, _adjoint_warps(values["BLOCK_P"], cfg), cfg.stages


def local(cfg: SSDConfig, adjoint: bool) -> tuple:
    values = dict(
        rows_ptr="*bf16", dt_ptr="*bf16", A_ptr="*fp32", other_ptr="*bf16", z_ptr="*bf16", bias_ptr="*fp32",
        seq_ptr="*i64", chunk_ptr="*i64", chunk_seq_ptr="*i32", local_ptr="*fp32", decay_ptr="*fp32",
        **_strides("r", LHP), s_dt_l=HEADS, s_dt_h=1, s_o_l=N, s_o_g=N, s_o_n=1, **_strides("z", LHP),
        heads=HEADS, heads_per_group=HEADS, head_dim=HEAD_DIM, n_state=N, BLOCK_Q=cfg.chunk,
        BLOCK_P=min(cfg.block_p_local, HEAD_DIM), **TILES, HAS_Z=adjoint, ADJOINT=adjoint,
    )
    return k.ssd_local_state_kernel, values, cfg.warps_local, cfg.stages


def passing(cfg: SSDConfig, reverse: bool) -> tuple:
    values = {"local_ptr": "*fp32", "decay_ptr": "*fp32", "chunk_ptr": "*i64", "init_ptr": "*fp32",
              "passed_ptr": "*bf16", "final_ptr": "*fp32", "heads": HEADS, "state_size": HEAD_DIM * N,
              "BLOCK": min(cfg.block_pass, HEAD_DIM * N), "STEPS": cfg.pass_steps, "HAS_INIT": reverse,
              "REVERSE": reverse}
    return k.ssd_state_passing_kernel, values, cfg.warps_pass, cfg.stages


def gradients(cfg: SSDConfig) -> tuple:
    k_heads = cfg.heads_per_program or HEADS  # "auto" takes every head of the group at this shape
    inline = cfg.state_side == "inline"
    values = dict(
        x_ptr="*bf16", dt_ptr="*bf16", A_ptr="*fp32", B_ptr="*bf16", C_ptr="*bf16", D_ptr="*fp32", z_ptr="*bf16",
        bias_ptr="*fp32", dy_ptr="*bf16", seq_ptr="*i64", chunk_ptr="*i64", chunk_seq_ptr="*i32",
        states_ptr="*bf16", adjoints_ptr="*bf16", dx_ptr="*bf16", dz_ptr="*bf16", ddt_ptr="*fp32", dB_ptr="*fp32",
        dC_ptr="*fp32", dA_ptr="*fp32", dD_ptr="*fp32", **_strides("x", LHP), s_dt_l=HEADS, s_dt_h=1,
        **_strides("B", LGN), **_strides("C", LGN), s_D_h=0, s_D_p=0, **_strides("z", LHP), **_strides("dy", LHP),
        **_strides("o", LHP), heads=HEADS, groups=1, heads_per_group=HEADS, heads_per_program=k_heads,
        head_dim=HEAD_DIM, n_state=N, p_blocks=HEAD_DIM // cfg.block_p_backward, BLOCK_Q=cfg.chunk,
        BLOCK_P=cfg.block_p_backward, **TILES, HAS_D=True, HAS_Z=True, ONE_PASS=inline and k_heads == 1,
        STATE_SIDE=inline,
    )
    return k.ssd_chunk_backward_kernel, values, cfg.warps_backward, cfg.stages_backward


def state_side(cfg: SSDConfig) -> tuple:
    plan = _StateSidePlan.of(BATCH * LENGTH // cfg.chunk, HEADS, 1, HEAD_DIM, cfg, torch.device("cpu"))
    group_grads = "*bf16" if plan.sole else "*fp32"  # stored in B's dtype, or added into float32
    values = dict(
        x_ptr="*bf16", dt_ptr="*bf16", A_ptr="*fp32", B_ptr="*bf16", C_ptr="*bf16", z_ptr="*bf16", bias_ptr="*fp32",
        dy_ptr="*bf16", seq_ptr="*i64", chunk_ptr="*i64", chunk_seq_ptr="*i32", states_ptr="*bf16",
        adjoints_ptr="*bf16", dB_ptr=group_grads, dC_ptr=group_grads, **_strides("x", LHP), s_dt_l=HEADS,
        s_dt_h=1, **_strides("B", LGN), **_strides("C", LGN), **_strides("z", LHP), **_strides("dy", LHP),
        heads=HEADS, groups=1, heads_per_group=HEADS, heads_per_program=plan.per_program, head_dim=HEAD_DIM,
        n_state=N, BLOCK_Q=cfg.chunk, BLOCK_P=plan.block_p, **TILES, HAS_Z=True, SOLE=plan.sole,
    )
    return k.ssd_chunk_state_side_kernel, values, cfg.warps_state_side, cfg.stages_state_side


KERNELS = {
    "walk states (ssd_forward_kernel, STORE_STATES)": walk_states,
    "walk adjoints (ssd_adjoint_kernel)": walk_adjoints,
    "local states (ssd_local_state_kernel)": lambda cfg: local(cfg, adjoint=False),
    "local adjoints (ssd_local_state_kernel, ADJOINT)": lambda cfg: local(cfg, adjoint=True),
    "state passing (ssd_state_passing_kernel)": lambda cfg: passing(cfg, reverse=False),
    "adjoint passing (ssd_state_passing_kernel, REVERSE, dfinal)": lambda cfg: passing(cfg, reverse=True),
    "gradients (ssd_chunk_backward_kernel)": gradients,
    "dB and dC (ssd_chunk_state_side_kernel, state_side kernel)": state_side,
}


def report(build) -> dict:
    """Resources (registers, stack; shared memory as launched) and each loop of ≥ 100 SASS instructions (the
    whole kernel where there is none): its size, spill instructions, memory and tensor-core instructions and
    mix."""
    fn, values, warps, stages = build
    kernel = compile_sm90(fn, values, warps, None, stages)
    sass = sass_of(kernel.asm["cubin"])
    bodies = loops(sass, least=100)
    whole = not bodies  # a chunk-parallel kernel: no sequential loop
    bodies = bodies or [[(0, m.group(3)) for m in _INSTR.finditer(sass)]]
    memory = ("LDG", "LDGSTS", "STG", "RED", "HGMMA", "HMMA", "BAR")
    return {"resources": f"{resources(kernel.asm['cubin'])} shared as launched {kernel.metadata.shared} B",
            "whole_kernel": whole,
            "loops": [{"instructions": len(body),
                       "spills": sum(family(op) == "LDL/STL (spills)" for _, op in body),
                       "memory_and_mma": {k: n for k in memory
                                          if (n := sum(op.split(".")[0] == k for _, op in body))},
                       "mix": collections.Counter(family(op) for _, op in body).most_common(8)}
                      for body in bodies]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", action="append", default=[], help="SSDConfig field=value[,...] (repeatable)")
    parser.add_argument("--only", help="build only the kernels whose name contains this")
    opts = parser.parse_args()
    cfg = dataclasses.replace(SSDConfig(), **{k: v for spec in opts.set for k, v in parse_config(spec).items()})
    for name, build in KERNELS.items():
        if opts.only and opts.only not in name:
            continue
        r = report(build(cfg))
        print(f"{name}\n  {r['resources']}")
        for i, loop in enumerate(r["loops"]):
            print(f"  {'whole kernel' if r['whole_kernel'] else f'loop {i + 1}'}: {loop['instructions']} instructions, {loop['spills']} spill instructions, "
                  + ", ".join(f"{k} {n}" for k, n in loop["memory_and_mma"].items()) + "; "
                  + ", ".join(f"{op} {n}" for op, n in loop["mix"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
