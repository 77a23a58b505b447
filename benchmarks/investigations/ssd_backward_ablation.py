"""Where the SSD gradient kernel's time goes: its own GPU time (torch profiler) with one part of its work taken
out at a time, at the shapes where forward+backward loses to official (b8 h24 / h32 L8192, head dim 64, N 128).

    PYTHONPATH=. python3 benchmarks/investigations/ssd_backward_ablation.py --out $OUT --also stages=1

Each ablation is a textual edit of mambalab/ops/ssd/triton_kernels.py loaded as its own module (the edit must
match exactly once, else the script stops), of which only the kernels the edit changed replace the original's (the
others are compiled once); its gradients are wrong by construction: timing only. What an
ablation saves bounds what making that part free could gain. Alternatives (another algorithm for a part) and
schedules (the same work in another order) are correct: `--apply NAME` writes one over the kernel module, so
that a device's copy of the tree runs the compiled tests with it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import sys
import tempfile
import types
from pathlib import Path
from unittest import mock

from benchmarks.common import base_parser, write_result
from benchmarks.investigations.ssd_profile import kernel_table
from benchmarks.ssd_gpu import fwd_bwd, make_inputs, ours, parse_config, parse_shape
from mambalab.ops.ssd import triton_ssd
from mambalab.ops.ssd.triton_ssd import SSDConfig

KERNEL = "ssd_chunk_backward_kernel"
SOURCE = Path(triton_ssd.__file__).with_name("triton_kernels.py")
SHAPES = [(8, 24, 8192), (8, 32, 8192)]

PAIR_STEPS = "        pair_steps = tl.cumsum(pair_rows - pair_columns, axis=0, reverse=True)  # (Q,)\n"

# Schedules: the same work in another order, which moves what ptxas spills (register pressure; sm_90 builds of
# Triton 3.6 on the CPU machine, notes/ssd.md "Eleventh session": the orders of the first loop's three parts,
# timed at 066b68f). Here: single sums of the first loop moved, and the second loop split.
LOOP1_START = "        D = _skip(D_ptr, head, offs_p, p_mask, s_D_h, s_D_p, BLOCK_P, ACC, HAS_D)\n"
LOOP1_END = "        tl.store(dD_ptr + (chunk * heads + head) * head_dim + offs_p, skip_sums, mask=p_mask)\n"
_TEXT = SOURCE.read_text()
LOOP1 = _TEXT[_TEXT.index(LOOP1_START):_TEXT.index(LOOP1_END) + len(LOOP1_END)]
READS = "        reads = tl.sum(gy * y_in, axis=1)  # (Q,)\n"
Y_SUM = "        y = y_in + y_pairs  # y^ssm\n"
PAIRS_COMMENT = "        # ∂loss/∂ℓ_k, ℓ = Δ A"

# The second loop as two: W and dC's state part (needs gy, x, H), then dB's (needs x, Δ, G): each carries one
# (Q, N) sum instead of two.
LOOP2_HEAD = "    if not ONE_PASS:\n        for i in range(heads_per_program):\n"
LOOP2 = _TEXT[_TEXT.index(LOOP2_HEAD):_TEXT.index("    dC, dB = _close_state_side(")]
_HEAD_TILES = """            A, entering, adjoint, dt, _raw, log_decay, x, _dy, gy, _z, _gate = _head_tiles(
                x_ptr, dt_ptr, A_ptr, z_ptr, bias_ptr, dy_ptr, states_ptr, adjoints_ptr, first_head + i, chunk, row,
                heads, head_dim, n_state, offs_q, row_mask, qp_mask, pn_mask, state_tile, x_offs, dy_offs, z_offs,
                s_x_l, s_x_h, s_dt_l, s_dt_h, s_z_l, s_z_h, s_dy_l, s_dy_h, ACC, DOT, HAS_Z, HAS_BIAS, SOFTPLUS)
"""
LOOP2_SPLIT = (LOOP2_HEAD + _HEAD_TILES + """\
            gx = tl.dot(gy.to(DOT), tl.trans(x.to(DOT)), input_precision=PRECISION, out_dtype=ACC)
            pairs_dt += gx * _decay_mask(log_decay, offs_q) * dt[None, :]
            dC = tl.dot((tl.exp(log_decay)[:, None] * gy).to(DOT), entering, acc=dC, input_precision=PRECISION,
                        out_dtype=ACC)
        for i in range(heads_per_program):
""" + _HEAD_TILES + """\
            to_end = tl.exp(tl.sum(dt * A, axis=0) - log_decay)
            dB = tl.dot((x.to(ACC) * (dt * to_end)[:, None]).to(DOT), adjoint, acc=dB, input_precision=PRECISION,
                        out_dtype=ACC)
""")
# The state side's three sums in another order: the two products first, then W's (Q, Q) update.
W_UPDATE = "    pairs_dt += gx * mask * dt[None, :]\n"
DB_PRODUCT = ("    dB = tl.dot((x * (dt * to_end)[:, None]).to(DOT), adjoint, acc=dB, input_precision=PRECISION, "
              "out_dtype=ACC)\n")
PRODUCTS_BEFORE_W = [(W_UPDATE, ""), (DB_PRODUCT, DB_PRODUCT + W_UPDATE)]
# Each head's W (Q, Q) multiplied with B and C at once (two tensor-core products per head) instead of summed over
# the heads and multiplied at the end: nothing (Q, Q) carried through the second loop (Triton 3.6: that loop's spill
# instructions 111 → 59, its instructions 1,484 → 1,425; W rounded per head instead of once).
PER_HEAD_W = [
    (W_UPDATE,
     ("    w = (gx * mask * dt[None, :]).to(DOT)  # this head's W\n"
     "    dC = tl.dot(w, B, acc=dC, input_precision=PRECISION, out_dtype=ACC)\n"
     "    dB = tl.dot(tl.trans(w), C, acc=dB, input_precision=PRECISION, out_dtype=ACC)\n")),
    ("                    PRECISION: tl.constexpr, ACC: tl.constexpr):\n",
     "                    PRECISION: tl.constexpr, ACC: tl.constexpr, B, C):\n"),
    ("                       HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):\n    \"\"\"_add_state_side",
     "                       HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, B, C):\n    \"\"\"_add_state_side"),
    ("                           entering, adjoint, DOT, PRECISION, ACC)\n",
     "                           entering, adjoint, DOT, PRECISION, ACC, B, C)\n"),
    ("                                               adjoint, DOT, PRECISION, ACC)\n",
     "                                               adjoint, DOT, PRECISION, ACC, B, C)\n"),
    (("                PRECISION, HAS_Z, HAS_BIAS, SOFTPLUS)\n"
     "    dC, dB = _close_state_side(pairs_dt, dC, dB, B, C, ACC, DOT, PRECISION)  # (Q, N) each\n"),
     "                PRECISION, HAS_Z, HAS_BIAS, SOFTPLUS, B, C)\n"),
]
# The second loop re-reads each head's tiles (x, dy, z, H, G: 28 KB a head at 32 channels) that the first loop read
# moments before; with all heads of a group in one program, 24 heads × 28 KB a program, ≈ 177 MB across the 264
# resident programs, most of them have left L2 by then (ncu, tenth session: 55 % L2 hits, ≈ 3× the compulsory DRAM
# traffic). Two ways to keep more of them: the second loop in the reverse order of the first (the heads read last
# come back first, while still in L2), and L2 eviction hints on the tiles' loads (kept after the first loop's
# read, dropped after the second's).
REVERSE_SECOND_LOOP = [("                first_head + i, chunk, row, heads, head_dim, n_state,",
                        "                first_head + heads_per_program - 1 - i, chunk, row, heads, head_dim, n_state,")]
_HEAD_TILES_AT = _TEXT.index("def _head_tiles(")
_TILE_LOADS = _TEXT[_TEXT.index("    entering = tl.load(", _HEAD_TILES_AT):
                    _TEXT.index("    return A, entering, adjoint, dt, raw,", _HEAD_TILES_AT)]
_HINTED_LOADS = """    entering = tl.load(states_ptr + chunk_state, mask=pn_mask, other=0.0, eviction_policy=EVICT).to(DOT)
    adjoint = tl.load(adjoints_ptr + chunk_state, mask=pn_mask, other=0.0, eviction_policy=EVICT).to(DOT)
    dt, raw = _step_sizes(dt_ptr + row * s_dt_l + head * s_dt_h, bias_ptr, head, offs_q, row_mask, s_dt_l, ACC,
                          HAS_BIAS, SOFTPLUS)
    x = tl.load(x_ptr + row * s_x_l + head * s_x_h + x_offs, mask=qp_mask, other=0.0, eviction_policy=EVICT)
    dy = tl.load(dy_ptr + row * s_dy_l + head * s_dy_h + dy_offs, mask=qp_mask, other=0.0,
                 eviction_policy=EVICT).to(ACC)
    if HAS_Z:
        z = tl.load(z_ptr + row * s_z_l + head * s_z_h + z_offs, mask=qp_mask, other=0.0,
                    eviction_policy=EVICT).to(ACC)
        gate = sigmoid(z)
        gy = dy * z * gate
    else:
        gy, z, gate = dy, dy, dy
"""


def tile_load_hints(first: str, second: str, keyword: str = "eviction_policy") -> list[tuple[str, str]]:
    """Edits giving the first loop's tile loads the eviction policy `first` and the second loop's `second` (or,
    with keyword="cache_modifier", that load option)."""
    return [
        (_TILE_LOADS, _HINTED_LOADS.replace("eviction_policy=EVICT", f"{keyword}=EVICT")),
        ("                HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):\n    \"\"\"One head's tiles",
         ("                HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, EVICT: tl.constexpr):\n"
         "    \"\"\"One head's tiles")),
        ("s_dt_l, s_dt_h, s_z_l, s_z_h, s_dy_l, s_dy_h, ACC, DOT, HAS_Z, HAS_BIAS, SOFTPLUS)\n    x = x.to(ACC)",
         (f"s_dt_l, s_dt_h, s_z_l, s_z_h, s_dy_l, s_dy_h, ACC, DOT, HAS_Z, HAS_BIAS, SOFTPLUS, {second!r})\n"
         "    x = x.to(ACC)")),
        ("s_x_h, s_dt_l, s_dt_h, s_z_l, s_z_h, s_dy_l, s_dy_h, ACC, DOT, HAS_Z, HAS_BIAS, SOFTPLUS)\n        D = _skip",
         (f"s_x_h, s_dt_l, s_dt_h, s_z_l, s_z_h, s_dy_l, s_dy_h, ACC, DOT, HAS_Z, HAS_BIAS, SOFTPLUS, {first!r})\n"
         "        D = _skip")),
    ]


# Nsight Compute (fourteenth session, results/ssd_ncu_stalls.txt): a sixth of the kernel's warp stalls wait on spill
# reloads (LDL) at 10 % L1 hits: two programs' 213 KB of shared memory leave L1 28 KB, which the tile loads' lines
# (x, dy, z through L1) also take. Two ways to leave L1 to the stack: the tile loads marked first to go (evict_first)
# or not cached in L1 at all (.cg). Timed: 1.00 and 0.99 of the kernel (results/ssd_backward_l1.json): not the lever.
L1_FOR_SPILLS = {
    "schedule: tile loads evict_first (L1 left to the spill reloads)": tile_load_hints("evict_first", "evict_first"),
    "schedule: tile loads past L1 (.cg)": tile_load_hints(".cg", ".cg", "cache_modifier"),
}


# Each loop's software pipeline depth on its own (tl.range's num_stages; the kernel's loops take the launch's
# stages_backward = 3): whether the second loop waits on its loads (latency) more than on its instructions. (4 stages
# for the second loop take 135 KB of shared memory: one program per multiprocessor, not the same test.)
LOOP1_HEAD = "    for i in range(heads_per_program):\n        head = first_head + i\n"


def loop_stages(first: int | None, second: int | None) -> list[tuple[str, str]]:
    """Edits giving the first and the second head loop their own pipeline stages (None: the launch's)."""
    edits = []
    if first is not None:
        edits.append((LOOP1_HEAD, LOOP1_HEAD.replace("range(heads_per_program)",
                                                     f"tl.range(heads_per_program, num_stages={first})")))
    if second is not None:
        edits.append((LOOP2_HEAD, LOOP2_HEAD.replace("range(heads_per_program)",
                                                     f"tl.range(heads_per_program, num_stages={second})")))
    return edits


# Both head loops counting the head itself (scf.for's own induction variable) instead of adding the program's first
# head to a counter: the first head, a loop invariant, was the first loop's costliest spill reload (ncu, fourteenth
# session: 5.4 % of the stall samples wait on it at the top of each iteration). Timed: 1.00 of the kernel.
HEAD_AS_COUNTER = [
    (LOOP1_HEAD, "    for head in range(first_head, first_head + heads_per_program):\n"),
    (LOOP2_HEAD, LOOP2_HEAD.replace("for i in range(heads_per_program)",
                                    "for head in range(first_head, first_head + heads_per_program)")),
    ("                first_head + i, chunk, row, heads, head_dim, n_state,",
     "                head, chunk, row, heads, head_dim, n_state,"),
]
NO_STATE_SIDE_LOOP = (LOOP2_HEAD, LOOP2_HEAD.replace("if not ONE_PASS:", "if False:"))
# dB and dC summed in the first loop, each head's state side added from the tiles it holds (the one-head path for
# every program): no second loop, no re-reads, but W and the two (Q, N) sums carried through the first loop's work
# (Triton 3.6, sm_90: 555 spill instructions a head at 4 warps, 225 at 8 warps; the kernel's two loops 143 at 4).
# Timed at 8 warps: 2.08 of the kernel (results/ssd_backward_ablation.json).
ONE_PASS_EDITS = [("        if ONE_PASS:\n", "        if True:\n"), NO_STATE_SIDE_LOOP]

# name: [(text in the kernel source, its replacement)]. The pair steps' earlier forms (a scan along the (Q, Q)
# tile, its alternatives, and row minus column sums with each side rounded differently) were timed and replaced
# (notes/ssd.md, eighth to twelfth sessions; results/ssd_backward_*.json).
ABLATIONS = {
    "full": [],
    "no state-side loop (dB, dC of the heads)": [NO_STATE_SIDE_LOOP],
    "no pair steps (dΔ's in-chunk pairs)": [(PAIR_STEPS, "        pair_steps = dt * 0.0\n")],
    "no decay exps (L = causal 0/1 mask)": [
        ('    return tl.exp(tl.where(causal, log_decay[:, None] - log_decay[None, :], float("-inf")))',
         "    return tl.where(causal, 1.0, 0.0) + 0.0 * log_decay[:, None]"),
    ],
    "no C Bᵀ product (scores = L)": [
        ("scored = tl.dot(C, tl.trans(B), input_precision=PRECISION, out_dtype=ACC) * mask  # L ∘ C Bᵀ (Q, Q)",
         "scored = mask"),
    ],
    "no (L ∘ C Bᵀ)ᵀ gy product (gB from G only)": [
        ("gB_pairs = tl.dot(tl.trans(scores), gy_dot, input_precision=PRECISION, out_dtype=ACC)",
         "gB_pairs = leaving * 0.0"),
    ],
    "plain stores for dB, dC (no atomics)": [
        ('tl.atomic_add(dC_ptr + gn_offs, dC, mask=qn_mask, sem="relaxed")', "tl.store(dC_ptr + gn_offs, dC, mask=qn_mask)"),
        ('tl.atomic_add(dB_ptr + gn_offs, dB, mask=qn_mask, sem="relaxed")', "tl.store(dB_ptr + gn_offs, dB, mask=qn_mask)"),
    ],
    "schedule: reads after y": [(READS, ""), (Y_SUM, Y_SUM + READS)],
    "schedule: reads after y, the state side's products before W": [(READS, ""), (Y_SUM, Y_SUM + READS)]
    + PRODUCTS_BEFORE_W,
    "schedule: reads before the pair steps": [(READS, ""), (PAIRS_COMMENT, READS + PAIRS_COMMENT)],
    "schedule: second loop split": [(LOOP2, LOOP2_SPLIT)],
    "alternative: each head's W multiplied at once (no W carried)": PER_HEAD_W,
    "schedule: second loop in reverse head order": REVERSE_SECOND_LOOP,
    "schedule: L2 hints (first loop evict_last, second evict_first)": tile_load_hints("evict_last", "evict_first"),
    "schedule: L2 hints (first loop evict_last)": tile_load_hints("evict_last", ""),
    "schedule: reverse order, L2 hints (first loop evict_last, second evict_first)":
        REVERSE_SECOND_LOOP + tile_load_hints("evict_last", "evict_first"),
    "schedule: reverse order, L2 hints (first loop evict_last)": REVERSE_SECOND_LOOP + tile_load_hints("evict_last", ""),
    "schedule: second loop at 1 stage": loop_stages(None, 1),
    "schedule: second loop at 2 stages": loop_stages(None, 2),
    "no state-side loop, no pair steps": [NO_STATE_SIDE_LOOP, (PAIR_STEPS, "        pair_steps = dt * 0.0\n")],
    "alternative: one pass over the heads, 8 warps": ONE_PASS_EDITS,
    **L1_FOR_SPILLS,
    "schedule: loops over the head index": HEAD_AS_COUNTER,
}
# The config the variants are timed with: the gradient kernel with both head loops (state_side "inline"), the
# kernel their edits were written for; and each variant's own fields on top, where it has some. (`--also` configs
# start from the default SSDConfig.)
BASE = SSDConfig(state_side="inline")
VARIANT_CONFIGS = {"alternative: one pass over the heads, 8 warps": {"warps_backward": 8}}


CORRECT = ("alternative", "schedule")  # the variants whose gradients are right: they may be applied


def edited_source(name: str, edits: list[tuple[str, str]]) -> str:
    """The kernel module's source with `edits` applied (each must match exactly once)."""
    text = SOURCE.read_text()
    for old, new in edits:
        if text.count(old) != 1:
            raise SystemExit(f"ablation {name!r}: {old[:60]!r} occurs {text.count(old)} times in {SOURCE}")
        text = text.replace(old, new)
    return text


def ablated_kernels(name: str, edits: list[tuple[str, str]], where: Path) -> types.ModuleType:
    """The kernel module with its gradient kernel from a copy of the source with `edits` applied, imported from
    its own file (Triton reads a kernel's source)."""
    path = where / f"ssd_kernels_{abs(hash(name))}.py"
    path.write_text(edited_source(name, edits))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    original = triton_ssd.kernels()
    kernels = types.ModuleType(f"{original.__name__}, {name}")
    kernels.__dict__.update(original.__dict__)
    for attr, value in vars(module).items():  # the kernels whose source the edits changed
        if attr.endswith("_kernel") and value.cache_key != getattr(original, attr).cache_key:
            setattr(kernels, attr, value)
    return kernels


def gradient_kernel_times(run, iters: int) -> dict:
    """µs per call of `run()`: the gradient kernel's, all kernels', the wall time's, and each SSD kernel's."""
    table = kernel_table(run, iters)
    gradient = sum(k["us"] for key, k in table["kernels"].items() if KERNEL in key)
    return {"gradient_kernel_us": gradient, "all_kernels_us": table["kernel_us"], "wall_us": table["wall_us"],
            "ssd_kernels": {key: k for key, k in table["kernels"].items() if key.startswith("ssd_")}}


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--also", action="append", default=[], type=parse_config, metavar="FIELD=VALUE[,...]",
                        help="an SSDConfig timed besides the default with the original kernels (repeatable)")
    parser.add_argument("--apply", metavar="NAME", choices=[n for n in ABLATIONS if n.startswith(CORRECT)],
                        help="write an alternative's or a schedule's source over the kernel module (on a device's copy of the tree, "
                             "to run the compiled tests with it) and exit")
    parser.add_argument("--shape", action="append", default=[], type=parse_shape, metavar="B,H,L",
                        help="time only these shapes (repeatable; default: b8 h24 and h32 at L8192)")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--alternatives-only", action="store_true",
                      help="time the full kernel and the alternatives, not the ablations")
    only.add_argument("--schedules-only", action="store_true",
                      help="time the full kernel and the schedules, not the ablations")
    only.add_argument("--configs-only", action="store_true",
                      help="time the full kernel and the --also configs, neither ablations nor alternatives")
    only.add_argument("--variant", action="append", choices=list(ABLATIONS), metavar="NAME",
                      help="time the full kernel and this variant (repeatable)")
    opts = parser.parse_args()
    if opts.apply:
        SOURCE.write_text(edited_source(opts.apply, ABLATIONS[opts.apply]))
        return
    report = {"kernel": KERNEL, "shapes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        def timed(name: str) -> bool:
            if name == "full" or opts.variant and name in opts.variant:
                return True
            if not (opts.configs_only or opts.alternatives_only or opts.schedules_only or opts.variant):
                return True
            return (opts.alternatives_only and name.startswith("alternative")
                    or opts.schedules_only and name.startswith("schedule"))

        chosen = {name: edits for name, edits in ABLATIONS.items() if timed(name)}
        variants = [(name, ablated_kernels(name, edits, Path(tmp)),
                     dataclasses.replace(BASE, **VARIANT_CONFIGS.get(name, {})))
                    for name, edits in chosen.items()]
        variants += [("config " + ",".join(f"{k}={v}" for k, v in fields.items()), triton_ssd.kernels(),
                      dataclasses.replace(SSDConfig(), **fields)) for fields in opts.also]
        for b, h, length in opts.shape or SHAPES:
            shape, args = f"b{b}_h{h}_L{length}", make_inputs(b, h, length)
            row = report["shapes"][shape] = {}
            for name, kernels, config in variants:
                with mock.patch.object(triton_ssd, "kernels", lambda kernels=kernels: kernels):
                    row[name] = gradient_kernel_times(fwd_bwd(functools.partial(ours, config=config), args), opts.iters)
                us, full = row[name]["gradient_kernel_us"], row["full"]["gradient_kernel_us"]
                print(f"{shape} {name}: gradient kernel {us:.0f} µs ({us / full:.2f} of full), all kernels "
                      f"{row[name]['all_kernels_us']:.0f} µs", flush=True)
            write_result("ssd_backward_ablation", report, opts.out)


if __name__ == "__main__":
    main()
