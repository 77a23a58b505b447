"""Selective scan on one GPU: correctness of the Triton kernels at full size, then timings against the torch
backend, the naive loop and causal SDPA attention, a tile-size sweep, an L sweep with bandwidth, fraction of
the floor and peak memory, and the decode-step kernels. One command for one device call:

    PYTHONPATH=. python3 benchmarks/scan_gpu.py   # writes $OUT/scan_gpu.json (or benchmarks/results/scan_gpu.json)

Shapes follow ../shared/ANCHORS.md: b8, d2048, N16, bf16 u/Δ/B/C/z, float32 A/D/Δ-bias, delta_softplus, with z.
Times are medians of triton.testing.do_bench. The table is printed last.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from benchmarks.common import base_parser, write_result
from mambalab.ops import triton as kernels
from mambalab.ops.causal_conv1d.reference import causal_conv1d_reference as causal_conv1d
from mambalab.ops.causal_conv1d.reference import causal_conv1d_update_reference as causal_conv1d_update
from mambalab.ops.causal_conv1d.triton_conv import causal_conv1d_triton as causal_conv1d_fused
from mambalab.ops.causal_conv1d.triton_conv import causal_conv1d_update_triton as causal_conv1d_update_fused
from mambalab.ops.selective_scan import selective_scan
from mambalab.ops.selective_scan import triton_kernels as scan
from mambalab.ops.state_update.reference import mixer_step_reference as mixer_step
from mambalab.ops.state_update.reference import selective_state_update_reference as selective_state_update
from mambalab.ops.state_update.triton_step import mixer_step_triton as mixer_step_fused
from mambalab.ops.state_update.triton_step import (
    selective_state_update_triton as selective_state_update_fused,
)
from mambalab.ops.triton import common

COPY_BW = 4.25e12  # measured device-to-device copy, bytes/s (read + write), ANCHORS.md
SFU_EXP = 16 * 132 * 1.98e9  # ex2 per second on the special-function units
OFFICIAL = {  # mamba-ssm selective_scan_cuda, ANCHORS.md (ms)
    "fwd": {512: 0.149, 1024: 0.293, 2048: 0.596, 4096: 1.17, 8192: 2.59, 16384: 5.67, 32768: 11.2, 65536: 23.0},
    "fwdbwd": {512: 0.698, 1024: 1.47, 2048: 2.92, 4096: 5.78, 8192: 11.9, 16384: 24.5, 32768: 49.4, 65536: 101.5},
}
TARGETS = {"fwd": {2048: 0.30, 8192: 1.3}, "fwdbwd": {2048: 1.9, 8192: 8.0}}
# Tile configs swept at L=2048 (ScanConfig fields; the rest are the defaults). Forward: channels per program,
# steps per iteration. Backward: channels per program and per thread (bwd_sub), dB/dC as per-block partial sums
# or float32 atomics. The first backward config is the v6/v7 default (every other config's gradients are
# compared with its). Earlier sweeps are in the v5, v6 (caps with spills, the adjoint variants), v7 (forward
# tiles, 4-channel blocks, caps, 16-step halves) and v8 (atomics into 4-64 slots) results, in git
# (notes/results_history.md); notes/scan.md says what each measured.
V6 = {"chunk": 8, "bwd_block_d": 8, "bwd_chunk": 8}
FWD_SWEEP = [
    {"block_d": 16, "fwd_chunk": 8},
    {"block_d": 32, "fwd_chunk": 8},
]
BWD_SWEEP = [
    V6,
    {**V6, "bwd_block_d": 16, "bwd_sub": 2},
    {**V6, "bwd_partial_dbc": False},
]

T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def make_inputs(batch, dim, length, n=16, groups=1, dtype=torch.bfloat16, varlen_seqs=0, device="cuda"):
    """Fresh random inputs shaped like a Mamba layer's: Δ before softplus around inverse_softplus(0.001..0.1)."""
    g = torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(4), "little"))
    randn = lambda *s, dt=dtype: torch.randn(*s, device=device, generator=g).to(dt)
    bc_shape = (batch, n, length) if groups == 1 else (batch, groups, n, length)
    dt_init = torch.exp(torch.rand(dim, device=device, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    args = {
        "u": randn(batch, dim, length),
        "delta": randn(batch, dim, length) * 0.5,
        "A": -torch.arange(1, n + 1, device=device, dtype=torch.float32).repeat(dim, 1)
        * (1 + 0.1 * torch.rand(dim, n, device=device, generator=g)),
        "B": randn(*bc_shape),
        "C": randn(*bc_shape),
        "D": randn(dim, dt=torch.float32),
        "z": randn(batch, dim, length),
        "delta_bias": dt_init + torch.log(-torch.expm1(-dt_init)),
    }
    rows = batch
    if varlen_seqs:
        cuts = torch.sort(torch.randint(0, length, (varlen_seqs - 1,), device=device, generator=g)).values
        args["cu_seqlens"] = torch.cat([cuts.new_zeros(1), cuts, cuts.new_full((1,), length)]).int()
        rows = varlen_seqs
    args["initial_state"] = randn(rows, dim, n, dt=torch.float32)
    return args


def rel_error(out, ref) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def grads_of(args, backend, dtype=None):
    """y, final state and the gradients of <y, gy> + <final, gh> for every floating input."""
    leaves = {k: (v.to(dtype) if dtype and v.is_floating_point() else v).detach() for k, v in args.items()}
    for v in leaves.values():
        if v.is_floating_point():
            v.requires_grad_(True)
    y, final = selective_scan(**leaves, delta_softplus=True, return_final_state=True, backend=backend)
    gen = torch.Generator(device=y.device).manual_seed(1234)
    gy = torch.randn(y.shape, device=y.device, generator=gen).to(y.dtype)
    gh = torch.randn(final.shape, device=y.device, generator=gen).to(final.dtype)
    names = [k for k, v in leaves.items() if v.is_floating_point()]
    grads = torch.autograd.grad((y, final), [leaves[k] for k in names], (gy, gh))
    return {"y": y, "final_state": final, **{f"d{k}": g for k, g in zip(names, grads)}}


def poisoned_empty(*shape, device, dtype):
    return torch.full(shape, float("nan"), device=device, dtype=dtype)


def check(name, args, tol, report):
    """Triton (outputs poisoned with NaN) vs the torch backend in float64 on the same inputs."""
    original, common.empty = common.empty, poisoned_empty
    try:
        out = grads_of(args, "triton")
    finally:
        common.empty = original
    try:
        ref = grads_of(args, "torch", dtype=torch.float64)
    except Exception as e:  # noqa: BLE001  (the torch backend is another module's: fall back to the oracle)
        log(f"torch backend failed in float64 ({type(e).__name__}: {str(e)[:200]}); reference loop instead")
        ref = grads_of(args, "reference", dtype=torch.float64)
    errs = {k: rel_error(out[k], ref[k]) for k in out}
    worst = max(errs.values())
    report["checks"][name] = {"tol": tol, "worst": worst, "ok": worst <= tol, "errors": errs}
    log(f"check {name}: worst rel error {worst:.2e} (tol {tol:g}) {'OK' if worst <= tol else 'FAIL'} "
        + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))


def floors(batch, dim, length, n, fwdbwd):
    """(bytes, exponentials, floor ms): each bf16 (b, d, l) tensor and B/C moved once; one exp per (b, d, l, n)
    in the forward, and one more per element to recompute it in the backward."""
    bdl, bnl = batch * dim * length * 2, batch * n * length * 2
    nbytes = (11 * bdl + 4 * bnl) if fwdbwd else (4 * bdl + 2 * bnl)  # fwd: u Δ z in, y out; bwd: +u Δ z dy in, 3 out
    exps = batch * dim * length * n * (2 if fwdbwd else 1)
    return nbytes, exps, 1e3 * max(nbytes / COPY_BW, exps / SFU_EXP)


def time_scan(args, backend, fwdbwd, rep=100):
    leaves = {k: v.detach().requires_grad_(fwdbwd and v.is_floating_point()) for k, v in args.items()}
    names = [k for k, v in leaves.items() if v.requires_grad]
    dy = torch.randn_like(args["u"])

    def fwd():
        with torch.no_grad():
            return selective_scan(**leaves, delta_softplus=True, backend=backend)

    def fwd_bwd():
        y = selective_scan(**leaves, delta_softplus=True, backend=backend)
        return torch.autograd.grad(y, [leaves[k] for k in names], dy)

    return do_bench(fwd_bwd if fwdbwd else fwd, warmup=25, rep=rep, return_mode="median")


def kernel_profile(args, reps=5) -> dict:
    """GPU time per kernel (µs per call, summed over a forward+backward) of the triton backend, from the torch
    profiler: where fwd+bwd spends what the two scan kernels do not."""
    leaves = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in args.items()}
    names = [k for k, v in leaves.items() if v.requires_grad]
    dy = torch.randn_like(args["u"])

    def fwd_bwd():
        y = selective_scan(**leaves, delta_softplus=True, backend="triton")
        return torch.autograd.grad(y, [leaves[k] for k in names], dy)

    fwd_bwd()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fwd_bwd()
        torch.cuda.synchronize()
    per_kernel = {e.key[:80]: e.self_device_time_total / reps for e in prof.key_averages() if e.self_device_time_total > 0}
    return dict(sorted(per_kernel.items(), key=lambda kv: -kv[1]))


def peak_extra_gb(args, backend):
    leaves = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in args.items()}
    names = [k for k, v in leaves.items() if v.requires_grad]
    dy = torch.randn_like(args["u"])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    y = selective_scan(**leaves, delta_softplus=True, backend=backend)
    grads = torch.autograd.grad(y, [leaves[k] for k in names], dy)
    torch.cuda.synchronize()
    del y, grads
    return (torch.cuda.max_memory_allocated() - base) / 1e9


def tile_label(fields: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in fields.items())


def sweep(report, length=2048):
    """Time each tile config of the forward and backward kernels directly (the backward's gradients checked
    against the first config's); returns the best ScanConfig."""
    args = make_inputs(8, 2048, length)
    a = {k: v for k, v in args.items() if k != "initial_state"}
    dy = torch.randn_like(a["u"])
    fwd_times, bwd_times, bwd_diffs = {}, {}, {}
    call = lambda cfg, store: scan.scan_forward(
        a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"], None, None, True, store, cfg)
    for fields in FWD_SWEEP:
        cfg, key = scan.ScanConfig(bwd_partial_dbc=True, **fields), tile_label(fields)
        try:
            fwd_times[key] = do_bench(lambda cfg=cfg: call(cfg, False), warmup=10, rep=50, return_mode="median")
        except Exception as e:  # noqa: BLE001  (a config that fails to compile or launch is skipped)
            log(f"fwd config {key} failed: {type(e).__name__}: {str(e)[:200]}")
        log(f"fwd {key}: {fwd_times.get(key, float('nan')):.3f} ms")
    first = None
    for fields in BWD_SWEEP:
        cfg, key = scan.ScanConfig(**{"bwd_partial_dbc": True, **fields}), tile_label(fields)
        try:
            _, _, ckpt = call(cfg, True)
            bwd = lambda cfg=cfg, ckpt=ckpt: scan.scan_backward(
                dy, None, a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"], None, ckpt,
                True, cfg)
            grads = bwd()
            first = first or grads
            bwd_diffs[key] = max(rel_error(g, f) for g, f in zip(grads, first))
            del grads
            bwd_times[key] = do_bench(bwd, warmup=10, rep=50, return_mode="median")
        except Exception as e:  # noqa: BLE001
            log(f"bwd config {key} failed: {type(e).__name__}: {str(e)[:200]}")
        log(f"bwd {key}: {bwd_times.get(key, float('nan')):.3f} ms (max rel diff to the first "
            f"{bwd_diffs.get(key, float('nan')):.1e})")
    report["sweep"] = {"L": length, "fwd_ms": fwd_times, "bwd_ms": bwd_times, "bwd_max_rel_diff": bwd_diffs}
    by_key = {tile_label(f): f for f in FWD_SWEEP + BWD_SWEEP}
    agree = {k: t for k, t in bwd_times.items() if bwd_diffs[k] <= 1e-2}  # a config must agree with the first
    bwd_best = by_key[min(agree, key=agree.get)]
    fwd_ok = {k: t for k, t in fwd_times.items() if bwd_best["chunk"] % by_key[k]["fwd_chunk"] == 0}
    fwd_best = by_key[min(fwd_ok, key=fwd_ok.get)]
    cfg = scan.ScanConfig(**{"bwd_partial_dbc": True, **fwd_best, **bwd_best})
    report["sweep"]["best"] = cfg.__dict__
    log(f"best config {cfg}")
    return cfg


def with_config(default_config, fn, *args):
    """fn(*args) with `default_config` as the library's tile rule."""
    current, scan.default_config = scan.default_config, default_config
    try:
        return fn(*args)
    finally:
        scan.default_config = current


def time_attention(batch, length, fwdbwd):
    q, k, v = (torch.randn(batch, 32, length, 64, device="cuda", dtype=torch.bfloat16, requires_grad=fwdbwd)
               for _ in range(3))
    if not fwdbwd:
        return do_bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), return_mode="median")
    do = torch.randn_like(q)
    return do_bench(lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True),
                                                (q, k, v), do), return_mode="median")


def time_decode_step(batch, d=1536, n=16, width=4):
    """SSM and conv decode steps, fused vs torch, at one batch size (mamba-130m layer: d_inner 1536, N 16)."""
    mk = lambda *s: torch.randn(*s, device="cuda")
    state = mk(batch, d, n)
    x, dt, z, B, C = mk(batch, d), mk(batch, d), mk(batch, d), mk(batch, n), mk(batch, n)
    A, D, bias = -torch.rand(d, n, device="cuda") - 0.5, mk(d), mk(d)
    s1, s2 = state.clone(), state.clone()
    y1 = selective_state_update(s1, x, dt, A, B, C, D, z, bias, True)
    y2 = selective_state_update_fused(s2, x, dt, A, B, C, D, z, bias, True)
    err = max(rel_error(y2, y1), rel_error(s2, s1))
    t_torch = do_bench(lambda: selective_state_update(s1, x, dt, A, B, C, D, z, bias, True), return_mode="median")
    t_fused = do_bench(lambda: selective_state_update_fused(s2, x, dt, A, B, C, D, z, bias, True),
                       return_mode="median")
    conv, w, cb = mk(batch, d, width), mk(d, width), mk(d)
    c1, c2 = conv.clone(), conv.clone()
    e2 = rel_error(causal_conv1d_update_fused(x, c2, w, cb, "silu"), causal_conv1d_update(x, c1, w, cb, "silu"))
    tc_torch = do_bench(lambda: causal_conv1d_update(x, c1, w, cb, "silu"), return_mode="median")
    tc_fused = do_bench(lambda: causal_conv1d_update_fused(x, c2, w, cb, "silu"), return_mode="median")
    # The whole mixer step between in_proj and out_proj (mamba-130m: rank 48), bf16 weights like a served model.
    mix = {"x_t": mk(batch, d).bfloat16(), "z_t": mk(batch, d).bfloat16(), "conv_weight": mk(d, width).bfloat16(),
           "conv_bias": mk(d).bfloat16(), "x_proj_weight": (mk(48 + 2 * n, d) / d**0.5).bfloat16(),
           "dt_proj_weight": (mk(d, 48) / 48**0.5).bfloat16(), "dt_proj_bias": mk(d) * 0.5 - 3.0,
           "A_log": mk(d, n) * 0.5, "D": mk(d)}
    start = (mk(batch, d, width).bfloat16(), mk(batch, d, n))
    states = [(start[0].clone(), start[1].clone()) for _ in range(2)]  # the same start for both paths
    ym = [fn(**mix, conv_state=cs, ssm_state=ss) for fn, (cs, ss) in zip((mixer_step, mixer_step_fused), states)]
    em = rel_error(ym[1], ym[0])
    tm_torch = do_bench(lambda: mixer_step(**mix, conv_state=states[0][0], ssm_state=states[0][1]),
                        return_mode="median")
    tm_fused = do_bench(lambda: mixer_step_fused(**mix, conv_state=states[1][0], ssm_state=states[1][1]),
                        return_mode="median")
    log(f"decode step b{batch}: ssm torch {t_torch * 1e3:.0f} us fused {t_fused * 1e3:.0f} us (err {err:.1e}); "
        f"conv torch {tc_torch * 1e3:.0f} us fused {tc_fused * 1e3:.0f} us (err {e2:.1e}); "
        f"mixer step torch {tm_torch * 1e3:.0f} us fused {tm_fused * 1e3:.0f} us (err {em:.1e})")
    return {"state_update_ms": {"torch": t_torch, "fused": t_fused, "rel_err": err},
            "conv_update_ms": {"torch": tc_torch, "fused": tc_fused, "rel_err": e2},
            "mixer_step_ms": {"torch": tm_torch, "fused": tm_fused, "rel_err": em}}


def time_steps(report):
    """Decode-step kernels vs the torch versions, and the sequence conv vs its byte floor."""
    out = {f"b{batch}": time_decode_step(batch) for batch in (1, 64)}
    # Causal conv over the sequence (prefill / training): torch (cuDNN depthwise conv) and the fused Triton
    # kernels against the byte floor, on contiguous x and on the mixer's channels-last view of in_proj's output.
    w = torch.randn(2048, 4, device="cuda", requires_grad=True)
    cb = torch.randn(2048, device="cuda", requires_grad=True)
    layouts = {"contiguous": torch.randn(8, 2048, 2048, device="cuda", dtype=torch.bfloat16),
               "channels_last": torch.randn(8, 2048, 4096, device="cuda", dtype=torch.bfloat16).transpose(1, 2)[:, :2048]}
    for layout, x in layouts.items():
        x.requires_grad_(True)
        dy = torch.randn(x.shape, device="cuda", dtype=x.dtype)
        floor_f, floor_fb = 2 * x.numel() * 2 / COPY_BW * 1e3, 5 * x.numel() * 2 / COPY_BW * 1e3
        row = {"fwd_floor_ms": floor_f, "fwdbwd_floor_ms": floor_fb}
        for name, conv in (("torch", causal_conv1d), ("fused", causal_conv1d_fused)):
            fwd = do_bench(lambda conv=conv, x=x: conv(x, w, cb, "silu"), return_mode="median")
            fb = do_bench(lambda conv=conv, x=x, dy=dy: torch.autograd.grad(conv(x, w, cb, "silu"), (x, w, cb), dy),
                          return_mode="median")
            row[f"{name}_fwd_ms"], row[f"{name}_fwdbwd_ms"] = fwd, fb
        x32 = x.detach().float().requires_grad_(True)  # the fused kernels' outputs vs torch in float32
        fused = (causal_conv1d_fused(x, w, cb, "silu"), *torch.autograd.grad(causal_conv1d_fused(x, w, cb, "silu"),
                                                                           (x, w, cb), dy))
        ref = (causal_conv1d(x32, w, cb, "silu"), *torch.autograd.grad(causal_conv1d(x32, w, cb, "silu"),
                                                                     (x32, w, cb), dy.float()))
        row["fused_vs_fp32_rel_err"] = max(rel_error(a, b) for a, b in zip(fused, ref))
        out[f"causal_conv1d_b8_d2048_L2048_{layout}"] = row
        log(f"causal_conv1d {layout}: " + " ".join(f"{k}={v:.3g}" for k, v in row.items()))
    report["decode_and_conv"] = out


def main() -> int:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--no-sweep", action="store_true", help="use the default tile config, skip the sweep")
    parser.add_argument("--no-steps", action="store_true", help="skip the decode-step and conv timings")
    parser.add_argument("--no-baselines", action="store_true",
                        help="time only triton at the anchors (skip the torch backend, the naive loop and SDPA)")
    parser.add_argument("--lengths", default="512,1024,2048,4096,8192,16384,32768,65536")
    parser.add_argument("--budget-s", type=float, default=270.0, help="skip remaining sweep lengths past this")
    opts = parser.parse_args()
    if kernels.device() != "cuda":
        print("scan_gpu.py needs a CUDA GPU", file=sys.stderr)
        return 2
    report = {"checks": {}, "anchors": {}, "lengths": {}}
    log(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}")

    # 1. Correctness at full size (default config), outputs poisoned with NaN.
    check("fp32 b8 d2048 L2048", make_inputs(8, 2048, 2048, dtype=torch.float32), 1e-5, report)
    check("bf16 b8 d2048 L2048", make_inputs(8, 2048, 2048), 1e-2, report)
    check("fp32 varlen 7 seqs, G=4, d1024 L4000", make_inputs(1, 1024, 4000, groups=4, dtype=torch.float32,
                                                              varlen_seqs=7), 1e-5, report)
    write_result("scan_gpu", report, opts.out)

    # 2. Tile sweep; the rest runs with the best config.
    library_default = scan.default_config  # keeps its memory rule for the dB/dC partial buffers
    if not opts.no_sweep:
        best = sweep(report)
        # The library's memory rule decides partial buffers vs atomics, unless atomics won the sweep.
        tiles = {k: v for k, v in best.__dict__.items() if k != "bwd_partial_dbc" or not v}
        scan.default_config = lambda *args, **kw: dataclasses.replace(library_default(*args, **kw), **tiles)

    # 3. Anchors: L=2048 and 8192.
    for length in (2048, 8192):
        args = make_inputs(8, 2048, length)
        args.pop("initial_state")
        row = {
            "triton_fwd": time_scan(args, "triton", False),
            "triton_fwdbwd": time_scan(args, "triton", True),
            "triton_fwdbwd_library_default": with_config(library_default, time_scan, args, "triton", True),
        }
        if not opts.no_baselines:
            row["torch_fwd"] = time_scan(args, "torch", False, rep=30)
            row["torch_fwdbwd"] = time_scan(args, "torch", True, rep=30)
            row["sdpa_fwd"] = time_attention(8, length, False)
            row["sdpa_fwdbwd"] = time_attention(8, length, True)
        if length == 2048 and not opts.no_baselines:
            row["naive_loop_fwd"] = time_scan(args, "reference", False, rep=5)
        row["official_fwd"], row["official_fwdbwd"] = OFFICIAL["fwd"][length], OFFICIAL["fwdbwd"][length]
        profile = kernel_profile(args)
        report.setdefault("fwdbwd_kernels_us", {})[str(length)] = profile
        log(f"L={length} fwd+bwd kernels (us): " + ", ".join(f"{k[:40]}={v:.0f}" for k, v in profile.items()))
        row["target_fwd"], row["target_fwdbwd"] = TARGETS["fwd"][length], TARGETS["fwdbwd"][length]
        report["anchors"][str(length)] = row
        log(f"L={length}: " + " ".join(f"{k}={v:.3f}" for k, v in row.items()))
        write_result("scan_gpu", report, opts.out)

    if not opts.no_sweep:  # the best config at full size, after the anchors (its gradients were compared in the sweep)
        check("fp32 b8 d2048 L2048 (best config)", make_inputs(8, 2048, 2048, dtype=torch.float32), 1e-5, report)
        check("bf16 b8 d2048 L2048 (best config)", make_inputs(8, 2048, 2048), 1e-2, report)
        check("fp32 varlen 7 seqs, G=4, d1024 L4000 (best config)", make_inputs(
            1, 1024, 4000, groups=4, dtype=torch.float32, varlen_seqs=7), 1e-5, report)
        write_result("scan_gpu", report, opts.out)

    # 4. Decode-step kernels and the sequence conv.
    if not opts.no_steps:
        time_steps(report)
        write_result("scan_gpu", report, opts.out)
    # 5. L sweep: time, bandwidth, fraction of floor, peak extra memory.
    for length in map(int, opts.lengths.split(",")):
        if time.time() - T0 > opts.budget_s:
            log(f"time budget reached: skipping L={length} and above")
            break
        args = make_inputs(8, 2048, length)
        args.pop("initial_state")
        fwd, fb = time_scan(args, "triton", False, rep=50), time_scan(args, "triton", True, rep=50)
        bytes_f, _, floor_f = floors(8, 2048, length, 16, False)
        bytes_fb, _, floor_fb = floors(8, 2048, length, 16, True)
        row = {"fwd_ms": fwd, "fwdbwd_ms": fb, "fwd_TBps": bytes_f / fwd / 1e9, "fwdbwd_TBps": bytes_fb / fb / 1e9,
               "fwd_floor_ms": floor_f, "fwdbwd_floor_ms": floor_fb, "fwd_floor_frac": floor_f / fwd,
               "fwdbwd_floor_frac": floor_fb / fb, "peak_extra_GB": peak_extra_gb(args, "triton"),
               "official_fwd_ms": OFFICIAL["fwd"][length], "official_fwdbwd_ms": OFFICIAL["fwdbwd"][length]}
        report["lengths"][str(length)] = row
        log(f"L={length}: " + " ".join(f"{k}={v:.3f}" for k, v in row.items()))
        del args
        torch.cuda.empty_cache()
        write_result("scan_gpu", report, opts.out)

    print_table(report)
    return 0 if all(c["ok"] for c in report["checks"].values()) else 1


def print_table(report):
    print("\nchecks: " + ", ".join(f"{k}: {v['worst']:.1e} {'ok' if v['ok'] else 'FAIL'}"
                                    for k, v in report["checks"].items()))
    print(f"{'L':>6} {'fwd ms':>8} {'off.':>7} {'fwd+bwd':>8} {'off.':>7} {'fwd TB/s':>9} {'floor%':>7} "
          f"{'fb floor%':>9} {'peak GB':>8}")
    for length, r in report["lengths"].items():
        print(f"{length:>6} {r['fwd_ms']:8.3f} {r['official_fwd_ms']:7.3f} {r['fwdbwd_ms']:8.3f} "
              f"{r['official_fwdbwd_ms']:7.3f} {r['fwd_TBps']:9.2f} {100 * r['fwd_floor_frac']:6.0f}% "
              f"{100 * r['fwdbwd_floor_frac']:8.0f}% {r['peak_extra_GB']:8.2f}")
    for length, r in report["anchors"].items():
        print(f"L={length}: " + " ".join(f"{k}={v:.3f}" for k, v in r.items()))
    if "sweep" in report:
        for kind in ("fwd_ms", "bwd_ms"):
            print(f"sweep {kind} L={report['sweep']['L']}: "
                  + " ".join(f"{k}={v:.3f}" for k, v in report["sweep"][kind].items()))


if __name__ == "__main__":
    sys.exit(main())
