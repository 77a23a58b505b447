"""Static view of the scan kernels as built for the H200 (sm_90), on a machine without a GPU.

Compiles `_scan_fwd_kernel` / `_scan_bwd_kernel` for sm_90 with Triton's own ptxas, specialised as a real
launch at the ANCHORS.md shape would be (pointers 16-byte aligned, integer arguments equal to 1 folded into
constants, multiples of 16 marked divisible), and prints registers, spills and the SASS instruction mix of the
main loop (the largest backward branch), per (b, d, l, n) element:

    PYTHONPATH=. python3 benchmarks/investigations/kernel_sass.py fwd                       # the default ScanConfig
    PYTHONPATH=. python3 benchmarks/investigations/kernel_sass.py fwd --set block_d=32 --define FAST_MATH=1
    PYTHONPATH=. python3 benchmarks/investigations/kernel_sass.py bwd --dump /tmp/bwd.sass  # also write the whole SASS

Numbers from this script are predictions' raw material (benchmarks/notes/scan.md), not timings.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mambalab.ops.selective_scan import triton_kernels as scan

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
SHAPE = {"dim": 2048, "length": 2048, "n": 16}  # the anchors (batch 8: only the grid depends on it)


def _arg_types(fn, values: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) for `fn` as Triton's launcher specialises `values` (name -> value:
    a dtype string such as '*bf16' for a pointer, an int, or a compile-time constant)."""
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        value = values[name]
        if fn.params[i].is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, str):
            signature[name] = value
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif value == 1:
            signature[name], constexprs[name] = "constexpr", 1
        else:
            signature[name] = "i32" if abs(value) < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def forward_args(cfg: scan.ScanConfig, dtype: str = "bf16") -> tuple:
    d, length, n = SHAPE["dim"], SHAPE["length"], SHAPE["n"]
    bdl = (d * length, length, 1)
    values = dict(
        u_ptr=f"*{dtype}", dt_ptr=f"*{dtype}", A_ptr="*fp32", B_ptr=f"*{dtype}", C_ptr=f"*{dtype}", D_ptr="*fp32",
        z_ptr=f"*{dtype}", bias_ptr="*fp32", h0_ptr="*fp32", cu_ptr=f"*{dtype}", y_ptr=f"*{dtype}", hT_ptr="*fp32",
        ckpt_ptr="*fp32", seg_h_ptr="*fp32", seg_dsum_ptr="*fp32", length=length, dim=d, dim_per_group=d,
        n_chunks=length // cfg.chunk, n_segs=1,
        **dict(zip(("s_u_b", "s_u_d", "s_u_l"), bdl)), **dict(zip(("s_dt_b", "s_dt_d", "s_dt_l"), bdl)),
        s_A_d=n, s_A_n=1, s_B_b=n * length, s_B_g=n * length, s_B_n=length, s_B_l=1,
        s_C_b=n * length, s_C_g=n * length, s_C_n=length, s_C_l=1, **dict(zip(("s_z_b", "s_z_d", "s_z_l"), bdl)),
        s_h0_s=d * n, s_h0_d=n, s_h0_n=1, **dict(zip(("s_y_b", "s_y_d", "s_y_l"), bdl)),
        N=n, NP=n, BLOCK_D=cfg.block_d, CHUNK=cfg.fwd_chunk, CKPT=cfg.chunk, HAS_D=True, HAS_Z=True, HAS_BIAS=True,
        SOFTPLUS=True, HAS_H0=False, VARLEN=False, STORE_CKPT=False, SEG=False, SUMMARY=False,
    )
    return scan._scan_fwd_kernel, values, cfg.fwd_warps, cfg.fwd_maxnreg, cfg.block_d * cfg.fwd_chunk * n


def backward_args(cfg: scan.ScanConfig, dtype: str = "bf16") -> tuple:
    d, length, n = SHAPE["dim"], SHAPE["length"], SHAPE["n"]
    bdl = (d * length, length, 1)
    values = dict(
        u_ptr=f"*{dtype}", dt_ptr=f"*{dtype}", A_ptr="*fp32", B_ptr=f"*{dtype}", C_ptr=f"*{dtype}", D_ptr="*fp32",
        z_ptr=f"*{dtype}", bias_ptr="*fp32", cu_ptr=f"*{dtype}", ckpt_ptr="*fp32", dy_ptr=f"*{dtype}",
        dhT_ptr="*fp32", du_ptr=f"*{dtype}", ddt_ptr=f"*{dtype}", dz_ptr=f"*{dtype}", dA_ptr="*fp32",
        dB_ptr="*fp32", dC_ptr="*fp32", dD_ptr="*fp32", dbias_ptr="*fp32", dh0_ptr="*fp32", seg_g_ptr="*fp32",
        seg_dsum_ptr="*fp32", length=length, dim=d, dim_per_group=d, n_chunks=length // cfg.chunk, groups=1, n_segs=1,
        **dict(zip(("s_u_b", "s_u_d", "s_u_l"), bdl)), **dict(zip(("s_dt_b", "s_dt_d", "s_dt_l"), bdl)),
        s_A_d=n, s_A_n=1, s_B_b=n * length, s_B_g=n * length, s_B_n=length, s_B_l=1,
        s_C_b=n * length, s_C_g=n * length, s_C_n=length, s_C_l=1, **dict(zip(("s_z_b", "s_z_d", "s_z_l"), bdl)),
        **dict(zip(("s_dy_b", "s_dy_d", "s_dy_l"), bdl)), **dict(zip(("s_du_b", "s_du_d", "s_du_l"), bdl)),
        **dict(zip(("s_ddt_b", "s_ddt_d", "s_ddt_l"), bdl)), **dict(zip(("s_dz_b", "s_dz_d", "s_dz_l"), bdl)),
        N=n, NP=n, SUB=cfg.bwd_sub, DI=cfg.bwd_block_d // cfg.bwd_sub, CHUNK=cfg.chunk, STEPS=cfg.bwd_chunk,
        HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, HAS_DHT=False, VARLEN=False,
        DBC_PARTIAL=cfg.bwd_partial_dbc, REUSE_DECAY=cfg.bwd_reuse_decay, FORWARD_ADJOINT=cfg.bwd_forward_adjoint,
        SEG=False,
    )
    return scan._scan_bwd_kernel, values, cfg.bwd_warps, cfg.bwd_maxnreg, cfg.bwd_block_d * cfg.chunk * n


def compile_sm90(fn, values: dict, num_warps: int, maxnreg: int | None, num_stages: int | None = None):
    signature, constexprs, attrs = _arg_types(fn, values)
    options = {"num_warps": num_warps, **({"maxnreg": maxnreg} if maxnreg else {}),
               **({"num_stages": num_stages} if num_stages else {})}
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                          options=options)


def sass_of(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", f.name], check=True,
                              capture_output=True, text=True).stdout


def resources(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([os.path.join(BIN, "cuobjdump"), "-res-usage", f.name], check=True,
                             capture_output=True, text=True).stdout
    return " ".join(line.strip() for line in out.splitlines() if "REG" in line)


_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def loop_spans(instrs) -> list[tuple[int, int]]:
    """(first address, branch address) of each loop, in address order: every branch to an earlier address, from
    (address, opcode, operands) of a kernel's instructions."""
    spans = set()
    for addr, op, rest in instrs:
        target = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
        if target and int(target.group(1), 16) < addr:
            spans.add((int(target.group(1), 16), addr))
    return sorted(spans)


def loops(sass: str, least: int = 8) -> list[list[tuple[int, str]]]:
    """(address, opcode) of the instructions of each loop (a branch to an earlier address) spanning ≥ `least`
    instructions, in address order (an outer loop contains its inner ones)."""
    instrs = [(int(m.group(1), 16), m.group(3), m.group(4)) for m in _INSTR.finditer(sass)]
    bodies = [[(a, op) for a, op, _ in instrs if start <= a <= end] for start, end in loop_spans(instrs)]
    return [body for body in bodies if len(body) >= least]


def main_loop(sass: str) -> list[tuple[int, str]]:
    """(address, opcode) of the instructions of the largest loop."""
    return max(loops(sass, least=1), key=len, default=[])


def family(op: str) -> str:
    base = op.split(".")[0]
    groups = {
        "FP32": {"FADD", "FMUL", "FFMA", "FMNMX", "FSEL", "FSETP", "FCHK", "FSET"},
        "MUFU": {"MUFU"}, "SHFL": {"SHFL"}, "LDG": {"LDG"}, "STG": {"STG"}, "RED/ATOM": {"RED", "ATOM", "ATOMG"},
        "LDS": {"LDS"}, "STS": {"STS"}, "LDL/STL (spills)": {"LDL", "STL"}, "BAR": {"BAR"},
        "convert/pack": {"F2F", "F2FP", "PRMT", "I2F", "F2I", "F2IP"},
        "int/address": {"IMAD", "IADD3", "LEA", "SHF", "LOP3", "ISETP", "IABS", "IMNMX", "SEL", "ULDC", "UIADD3",
                        "ULEA", "USHF", "UIMAD", "ULOP3", "UMOV", "S2R", "S2UR", "ISCADD", "IMUL", "PLOP3", "P2R", "R2P"},
        "move": {"MOV", "UMOV", "R2UR", "CS2R"}, "branch": {"BRA", "BSSY", "BSYNC", "WARPSYNC", "EXIT", "CALL", "RET"},
    }
    for name, ops in groups.items():
        if base in ops:
            return name
    return "other:" + base


def report(kind: str, cfg: scan.ScanConfig, dtype: str, dump: str | None, flags: dict | None = None) -> dict:
    fn, values, warps, maxnreg, elements = (forward_args if kind == "fwd" else backward_args)(cfg, dtype)
    values.update(flags or {})
    kernel = compile_sm90(fn, values, warps, maxnreg)
    cubin = kernel.asm["cubin"]
    sass = sass_of(cubin)
    if dump:
        with open(dump, "w") as f:
            f.write(sass)
    loop = main_loop(sass)
    mix = collections.Counter(family(op) for _, op in loop)
    per_thread = elements / (32 * warps)  # (b, d, l, n) elements of one loop iteration, per thread
    return {"kind": kind, "resources": resources(cubin), "loop_instructions": len(loop),
            "elements_per_thread": per_thread, "per_element": len(loop) / per_thread,
            "mix_per_element": {k: round(v / per_thread, 2) for k, v in mix.most_common()}}


def _parse_set(items: list[str]) -> dict:
    fields = {f.name: f.type for f in dataclasses.fields(scan.ScanConfig)}
    out = {}
    for item in items:
        key, value = item.split("=", 1)
        if key not in fields:
            raise SystemExit(f"--set {key}: not a ScanConfig field ({', '.join(fields)})")
        out[key] = None if value == "None" else (value == "True" if value in ("True", "False") else int(value))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=("fwd", "bwd"))
    parser.add_argument("--set", action="append", default=[], help="ScanConfig field=value (repeatable)")
    parser.add_argument("--flag", action="append", default=[],
                        help="a kernel's compile-time flag, e.g. HAS_Z=False (repeatable)")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--dump", help="write the whole SASS here")
    opts = parser.parse_args()
    cfg = dataclasses.replace(scan.ScanConfig(), **_parse_set(opts.set))
    flags = {k: v == "True" for k, v in (f.split("=", 1) for f in opts.flag)}
    r = report(opts.kind, cfg, opts.dtype, opts.dump, flags)
    print(f"{r['kind']} {cfg}\n  {r['resources']}\n  main loop: {r['loop_instructions']} instructions for "
          f"{r['elements_per_thread']:.0f} elements per thread = {r['per_element']:.2f} per element")
    for k, v in r["mix_per_element"].items():
        print(f"    {k:<22} {v:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
