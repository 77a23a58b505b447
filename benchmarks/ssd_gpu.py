"""Mamba-2 SSD (`ssd_scan`) on one GPU: ours (backend "triton") against the official Triton
`mamba_chunk_scan_combined` on the same inputs in one process. One command, one device call (~3-6 min):

    PYTHONPATH=.:/path/to/mamba_ssm-2.3.2.post1 python3 benchmarks/ssd_gpu.py   # $OUT/ssd_gpu.json, else results/

The official package is optional (skipped with a note when `mamba_ssm` is not importable, e.g. no einops); its
SSD modules are imported without running `mamba_ssm/__init__.py`, which needs the built selective_scan_cuda.

Shapes (ANCHORS.md): b8, h24 and h32, head dim 64, N 128, one group, bf16 x/z/B/C/dt, float32 A/D/dt_bias,
dt_softplus, with z and D; L = 2048, 8192 and (b2) 32768; official at chunk 256. Steps: a tile sweep of our
kernels at L 2048 (forward and backward tiles chosen separately, `SSDConfig.state_mode` never mixed: see
best_combination), the decode step (eager and replayed from CUDA graphs, with our step kernel's tile choices
and its state-traffic floor), forward and forward+backward times (median of triton.testing.do_bench), the extra
peak memory of forward+backward and ours against official at every shape, and last (its float32
reference is slow) ours and official against the float32 torch backend on one sequence; then the registers,
spills and shared memory of every compiled variant of our kernels (`kernel_resources`). The table is printed
last. `--also state_mode=parallel` times that config at every shape too (its rows in the JSON and the log; the
sweep's L 2048 alone does not show how the walks scale with the chunks per sequence).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import sys
import time
import types

import torch
from triton.testing import do_bench

from benchmarks.common import base_parser, write_result
from benchmarks.kernel_resources import compiled_resources, summary
from mambalab.ops.ssd import ssd_scan, ssd_state_update
from mambalab.ops.ssd.triton_ssd import SSDConfig, kernels, ssd_triton
from mambalab.ops.ssd.triton_step import ssd_state_update_triton

DEVICE = "cuda"
OFFICIAL_CHUNK = 256
SWEEP_SHAPE = (8, 24, 2048)  # (b, h, L) of the tile sweep, the correctness check (at b1) and the decode step (h)
SHAPES = [(8, 24, 2048), (8, 32, 2048), (8, 24, 8192), (8, 32, 8192), (2, 24, 32768), (2, 32, 32768)]
HEAD_DIM, N = 64, 128
SWEEP = [  # SSDConfig fields; the first is the default
    {},
    {"forward_mode": "chunked"},  # the default's forward at b8 h24 is the fused one (1 program per SM or more)
    {"forward_mode": "fused", "chunk_fused": 64, "warps_fused": 8},
    {"warps_chunk_forward": 8},
    {"block_p_state": 64},
    {"chunk": 32, "warps_chunk_forward": 4, "warps_backward": 4},
    {"block_p_backward": 64},
    {"stages": 1},
    {"heads_per_program": 4},
    {"heads_per_program": 1},
    {"state_mode": "parallel"},
    {"state_mode": "parallel", "forward_mode": "chunked"},
]
# The rest (chunk, block_p_backward, block_p_state, warps_state/adjoint/backward, stages, heads_per_program)
# are taken from the config with the best backward (fwd+bwd − fwd).
FORWARD_FIELDS = {"forward_mode", "chunk_fused", "block_p_forward", "warps_fused", "warps_chunk_forward"}
SHARED_FIELDS = {"state_mode"}  # used by the chunked forward and by the backward alike
GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def load_official():
    """(mamba_chunk_scan_combined, selective_state_update) of mamba_ssm, or (None, why)."""
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or not spec.submodule_search_locations:
        return None, "mamba_ssm is not on PYTHONPATH"
    if "mamba_ssm" not in sys.modules:  # its __init__ imports the CUDA extension: import the Triton ops only
        package = types.ModuleType("mamba_ssm")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["mamba_ssm"] = package
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError as e:
        return None, f"official SSD not importable: {e}"
    return (mamba_chunk_scan_combined, selective_state_update), None


def make_inputs(batch, heads, length, seed=0):
    """Shaped like a Mamba-2 layer's: Δ = softplus(dt + dt_bias) around 0.001-0.1, A = -(1..16)."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    rnd = lambda *s, dtype=torch.bfloat16: torch.randn(*s, device=DEVICE, generator=g).to(dtype)
    dt_init = torch.exp(torch.rand(heads, device=DEVICE, generator=g) * math.log(100) + math.log(1e-3))
    return {
        "x": rnd(batch, length, heads, HEAD_DIM), "dt": rnd(batch, length, heads) * 0.5,
        "A": -torch.empty(heads, device=DEVICE).uniform_(1, 16, generator=g),
        "B": rnd(batch, length, 1, N), "C": rnd(batch, length, 1, N),
        "D": torch.randn(heads, device=DEVICE, generator=g), "z": rnd(batch, length, heads, HEAD_DIM),
        "dt_bias": dt_init + torch.log(-torch.expm1(-dt_init)),
    }


def bench(fn) -> float:
    """Median ms of fn: triton.testing.do_bench on the GPU; one timed call after a warm-up in --smoke (CPU)."""
    if DEVICE == "cuda":
        return do_bench(fn, return_mode="median")
    fn()
    start = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - start)


def ours(args, config=None, **kw):
    return ssd_triton(**args, dt_softplus=True, config=config, **kw)


def official_fn(fn):
    def run(args, return_final_state=False):
        a = dict(args)
        return fn(a.pop("x"), a.pop("dt"), a.pop("A"), a.pop("B"), a.pop("C"), OFFICIAL_CHUNK, **a,
                  dt_softplus=True, return_final_states=return_final_state)
    return run


def fwd_bwd(call, args):
    leaves = {k: v.detach().requires_grad_() for k, v in args.items()}
    y = call(leaves)
    dy = torch.randn_like(y)
    return lambda: torch.autograd.grad(call(leaves), [leaves[k] for k in GRAD_NAMES], dy)


def forward(call, args):
    def run():
        with torch.no_grad():
            return call(args)
    return run


def rel_error(out, ref) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def outputs_and_grads(call, args):
    """y, final state and the gradients of <y, gy> + <final, gh> for every input (fixed gy, gh)."""
    leaves = {k: v.detach().requires_grad_() for k, v in args.items()}
    y, final = call(leaves, return_final_state=True)
    gen = torch.Generator(device=DEVICE).manual_seed(1234)
    gy = torch.randn(y.shape, device=DEVICE, generator=gen).to(y.dtype)
    gh = torch.randn(final.shape, device=DEVICE, generator=gen).to(final.dtype)
    grads = torch.autograd.grad((y, final), [leaves[k] for k in GRAD_NAMES], (gy, gh))
    return {"y": y, "final_state": final, **{f"d{k}": g for k, g in zip(GRAD_NAMES, grads, strict=True)}}


def compare(a, b) -> dict:
    return {k: rel_error(a[k], b[k]) for k in a}


def peak_extra_gb(fn) -> float | None:
    if DEVICE != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    del out
    return (torch.cuda.max_memory_allocated() - base) / 1e9


def best_combination(ok: dict) -> tuple[SSDConfig, float]:
    """The best forward fields (FORWARD_FIELDS of the row with the least forward time) with the best backward
    fields (the others, from the row with the least forward+backward − forward time), and the forward+backward
    time that combination is estimated to take. A SHARED_FIELDS value (state_mode: the chunked forward and
    the backward both use it) is never mixed: rows are grouped by it, each group combined on its own, and the
    group with the least estimated forward+backward time wins (training pays for both passes)."""
    groups = {}
    for r in ok.values():
        shared = tuple(r["fields"].get(k, getattr(SSDConfig(), k)) for k in sorted(SHARED_FIELDS))
        groups.setdefault(shared, []).append(r)
    candidates = []
    for shared, rows in groups.items():
        best_f = min(rows, key=lambda r: r["fwd_ms"])
        best_b = min(rows, key=lambda r: r["fwdbwd_ms"] - r["fwd_ms"])
        fields = {**{k: v for k, v in best_b["fields"].items() if k not in FORWARD_FIELDS | SHARED_FIELDS},
                  **{k: v for k, v in best_f["fields"].items() if k in FORWARD_FIELDS},
                  **dict(zip(sorted(SHARED_FIELDS), shared, strict=True))}
        estimate = best_f["fwd_ms"] + best_b["fwdbwd_ms"] - best_b["fwd_ms"]
        candidates.append((estimate, dataclasses.replace(SSDConfig(), **fields)))
    estimate, best = min(candidates, key=lambda c: c[0])
    return best, estimate


def sweep(report) -> SSDConfig:
    """Time each tile config at b8 h24 L2048; the best forward fields and the best backward fields combine
    (best_combination)."""
    args = make_inputs(*SWEEP_SHAPE)
    rows, first = {}, None
    for fields in SWEEP:
        key = ",".join(f"{k}={v}" for k, v in fields.items()) or "default"
        cfg = dataclasses.replace(SSDConfig(), **fields)
        try:
            out = outputs_and_grads(lambda a, cfg=cfg, **kw: ours(a, cfg, **kw), args)
            first = first or out
            diff = max(compare(out, first).values())
            t_f = bench(forward(lambda a, cfg=cfg: ours(a, cfg), args))
            t_fb = bench(fwd_bwd(lambda a, cfg=cfg: ours(a, cfg), args))
            rows[key] = {"fields": fields, "fwd_ms": t_f, "fwdbwd_ms": t_fb, "max_rel_diff_to_default": diff}
            log(f"sweep {key}: fwd {t_f:.3f} ms, fwd+bwd {t_fb:.3f} ms (diff to default {diff:.1e})")
        except Exception as e:  # noqa: BLE001  (a config that fails to compile or launch is reported, skipped)
            rows[key] = {"fields": fields, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            log(f"sweep {key} failed: {rows[key]['error']}")
    ok = {k: r for k, r in rows.items() if "error" not in r and r["max_rel_diff_to_default"] < 2e-2}
    if not ok:
        report["sweep"] = {"shape": SWEEP_SHAPE, "rows": rows, "best": None}
        return SSDConfig()
    best, estimate = best_combination(ok)
    report["sweep"] = {"shape": SWEEP_SHAPE, "rows": rows, "best": dataclasses.asdict(best),
                       "best_fwdbwd_estimate_ms": estimate}
    log(f"best config {best} (fwd+bwd estimated {estimate:.3f} ms)")
    return best


def correctness(report, official, also=()):
    """On one sequence (b1 h24 L2048): ours (default and each config of `also`) and official (bf16) against
    the torch backend in float32."""
    args = make_inputs(1, *SWEEP_SHAPE[1:], seed=1)
    ref = outputs_and_grads(lambda a, **kw: ssd_scan(**{k: v.float() for k, v in a.items()}, dt_softplus=True,
                                                     backend="torch", chunk_size=64, **kw), args)
    report["correctness_vs_torch_fp32"] = {"ours": compare(outputs_and_grads(ours, args), ref)}
    for fields in also:
        report["correctness_vs_torch_fp32"][config_name(fields)] = compare(
            outputs_and_grads(ours_with(fields), args), ref)
    if official:
        report["correctness_vs_torch_fp32"]["official"] = compare(outputs_and_grads(official, args), ref)
    log(f"correctness vs torch fp32: {json.dumps(report['correctness_vs_torch_fp32'], default=lambda v: f'{v:.1e}')}")


def measure(row: dict, name: str, call, args) -> None:
    """row[name_fwd_ms], [name_fwdbwd_ms], [name_fwdbwd_extra_gb]; an error (e.g. out of memory) is recorded."""
    try:
        row[f"{name}_fwd_ms"] = bench(forward(call, args))
        run = fwd_bwd(call, args)
        row[f"{name}_fwdbwd_ms"] = bench(run)
        row[f"{name}_fwdbwd_extra_gb"] = peak_extra_gb(run)
    except Exception as e:  # noqa: BLE001  (one failing measurement must not lose the others)
        row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        log(f"{name} failed: {row[f'{name}_error']}")


def parse_config(spec: str) -> dict:
    """SSDConfig fields from "field=value,field=value" (ints where the field is an int)."""
    types = {f.name: f.type for f in dataclasses.fields(SSDConfig)}
    fields = {}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"--also {spec}: {key!r} is not an SSDConfig field ({', '.join(types)})")
        fields[key] = int(value) if types[key] == "int" else value
    dataclasses.replace(SSDConfig(), **fields)  # a bad value fails here, before any device time is spent
    return fields


def parse_shape(spec: str) -> tuple[int, int, int]:
    """(batch, heads, length) from "b,h,L"."""
    try:
        batch, heads, length = (int(v) for v in spec.split(","))
    except ValueError:
        raise SystemExit(f"--shape {spec!r}: expected three integers batch,heads,length (e.g. 8,24,8192)") from None
    return batch, heads, length


def config_name(fields: dict) -> str:
    """"ours_field=value,...": how a config of `--also` is named in the report."""
    return "ours_" + ",".join(f"{k}={v}" for k, v in fields.items())


def ours_with(fields: dict):
    """ours(args, **kw) under the default SSDConfig with `fields` replaced."""
    cfg = dataclasses.replace(SSDConfig(), **fields)
    return lambda a, **kw: ours(a, cfg, **kw)


def time_shapes(report, official, best, save, budget_s, also=()):
    """Forward and forward+backward of ours (default, the sweep's best if different, each config of `also`)
    and official at every shape, with their extra peak memory and their agreement."""
    for batch, heads, length in SHAPES:
        key = f"b{batch}_h{heads}_L{length}"
        if time.time() - T0 > budget_s:
            report["shapes"][key] = {"skipped": f"time budget of {budget_s} s spent"}
            continue
        args = make_inputs(batch, heads, length)
        row = {}
        calls = {"ours": ours}
        if best != SSDConfig():
            calls["ours_best"] = lambda a, **kw: ours(a, best, **kw)
        for fields in also:
            calls[config_name(fields)] = ours_with(fields)
        if official:
            calls["official"] = official
        for name, call in calls.items():
            measure(row, name, call, args)
        if all(f"{n}_fwdbwd_ms" in row for n in calls):
            default = outputs_and_grads(ours, args)
            for name, call in calls.items():  # every other config of ours against the default, on the same inputs
                if name not in ("ours", "official"):
                    row[f"{name}_vs_ours_rel_err"] = errors = compare(outputs_and_grads(call, args), default)
                    log(f"{key} {name} against the default: largest error {max(errors.values()):.1e}")
            if official:
                row["ours_vs_official_rel_err"] = compare(default, outputs_and_grads(official, args))
                for t in ("fwd", "fwdbwd"):  # the default's (what users get), and the fastest config's
                    row[f"speedup_{t}"] = row[f"official_{t}_ms"] / row[f"ours_{t}_ms"]
                    row[f"best_speedup_{t}"] = row[f"official_{t}_ms"] / min(row[f"{n}_{t}_ms"] for n in calls
                                                                             if n != "official")
        report["shapes"][key] = row
        log(f"{key}: " + " ".join(f"{k}={v:.3f}" for k, v in row.items() if isinstance(v, float)))
        del args
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        save()


def decode_inputs(batch, heads):
    rnd = lambda *shape, dtype=torch.bfloat16: torch.randn(*shape, device=DEVICE).to(dtype)
    return {"state": rnd(batch, heads, HEAD_DIM, N, dtype=torch.float32), "x_t": rnd(batch, heads, HEAD_DIM),
            "dt_t": rnd(batch, heads), "A": -torch.rand(heads, device=DEVICE) - 0.5, "B_t": rnd(batch, 1, N),
            "C_t": rnd(batch, 1, N), "D": rnd(heads, dtype=torch.float32), "z_t": rnd(batch, heads, HEAD_DIM),
            "dt_bias": rnd(heads, dtype=torch.float32)}


def our_step(a, state):
    args = {k: v for k, v in a.items() if k != "state"}
    return ssd_state_update(state, **args, dt_softplus=True, backend="triton")


def official_step_call(step, a, state):
    """Official selective_state_update with Mamba2.step's layout: A, dt, D, dt_bias broadcast over p (and n)."""
    batch, heads, p = a["x_t"].shape
    return step(state, a["x_t"], a["dt_t"][..., None].expand(batch, heads, p),
                a["A"][:, None, None].expand(heads, p, N), a["B_t"], a["C_t"], a["D"][:, None].expand(heads, p),
                z=a["z_t"], dt_bias=a["dt_bias"][:, None].expand(heads, p), dt_softplus=True)


STEP_TILES = [(block_p, warps) for block_p in (16, 32, 64) for warps in (1, 2, 4, 8)]  # the step kernel's choices
GRAPH_STEPS = 16  # steps captured per CUDA graph: a replay's time over them is the kernel's, without the host


def graph_us(step) -> float | None:
    """µs per call of `step` replayed from a CUDA graph of GRAPH_STEPS calls (None off the GPU)."""
    if DEVICE != "cuda":
        return None
    step()  # compile and warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(GRAPH_STEPS):
            step()
    return 1e3 * bench(graph.replay) / GRAPH_STEPS


def state_floor_us(state: torch.Tensor) -> float | None:
    """The step's floor: its state read and written once, timed as a copy of the state on this GPU (the same
    bytes each way, whichever GPU this is), from a CUDA graph like the steps (None off the GPU)."""
    copy = torch.empty_like(state)
    return graph_us(functools.partial(copy.copy_, state))


def step_tiles(a, state) -> dict:
    """Our step kernel at every (block_p, warps) of STEP_TILES, from CUDA graphs: {"p32w4": µs, ...}."""
    args = {k: v for k, v in a.items() if k != "state"}
    return {f"p{block_p}w{warps}": graph_us(functools.partial(
        ssd_state_update_triton, state, **args, dt_softplus=True, block_p=block_p, num_warps=warps))
        for block_p, warps in STEP_TILES}


def time_decode(report, official_step):
    """One decode step at the sweep's head count, p64, N128 and a float32 state, batch 1 and 64: µs per call
    with the launch (eager) and per step replayed from a CUDA graph (as decoding runs it), with the tile
    choices of our kernel and the state-traffic floor."""
    out = {}
    for batch in (1, 64):
        a = decode_inputs(batch, SWEEP_SHAPE[1])
        mine = a["state"].clone()
        row = {"ours_us": 1e3 * bench(functools.partial(our_step, a, mine)),
               "ours_graph_us": graph_us(functools.partial(our_step, a, mine)),
               "floor_us": state_floor_us(mine), "ours_tiles_graph_us": step_tiles(a, mine)}
        if official_step:
            theirs = a["state"].clone()
            row["official_us"] = 1e3 * bench(functools.partial(official_step_call, official_step, a, theirs))
            row["official_graph_us"] = graph_us(functools.partial(official_step_call, official_step, a, theirs))
            s3, s4 = a["state"].clone(), a["state"].clone()
            y3, y4 = our_step(a, s3), official_step_call(official_step, a, s4)
            row["rel_err_y"], row["rel_err_state"] = rel_error(y3, y4), rel_error(s3, s4)
        out[f"b{batch}"] = row
        log(f"decode b{batch}: {row}")
    report["decode_step"] = out


def _cell(row, key):
    value = row.get(key)
    return f"{value:.3f}" if isinstance(value, float) else "—"


def table(report) -> str:
    lines = [
        ("| shape | ours fwd | best fwd | official fwd | ours fwd+bwd | best fwd+bwd | official fwd+bwd "
        "| speedup fwd / fwd+bwd | fastest config's speedup | extra GB ours / official |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in report["shapes"].items():
        cells = [_cell(r, k) for k in ("ours_fwd_ms", "ours_best_fwd_ms", "official_fwd_ms", "ours_fwdbwd_ms",
                                       "ours_best_fwdbwd_ms", "official_fwdbwd_ms")]
        speed = f"{_cell(r, 'speedup_fwd')} / {_cell(r, 'speedup_fwdbwd')}"
        fastest = f"{_cell(r, 'best_speedup_fwd')} / {_cell(r, 'best_speedup_fwdbwd')}"
        memory = f"{_cell(r, 'ours_fwdbwd_extra_gb')} / {_cell(r, 'official_fwdbwd_extra_gb')}"
        lines.append(f"| {key} | {' | '.join(cells)} | {speed} | {fastest} | {memory} |")
    return "\n".join(lines)


def stage(report, name, fn):
    """fn(), or None with the error recorded in report["errors"] (later stages still run)."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        report.setdefault("errors", {})[name] = f"{type(e).__name__}: {str(e)[:500]}"
        log(f"stage {name} failed: {report['errors'][name]}")
        return None


def main() -> int:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--no-sweep", action="store_true", help="skip the tile sweep (time the default only)")
    parser.add_argument("--budget", type=float, default=500.0,
                        help="seconds after which the remaining shapes are skipped (the device allows 600 per call)")
    parser.add_argument("--also", action="append", default=[], type=parse_config, metavar="FIELD=VALUE[,...]",
                        help="an SSDConfig timed at every shape besides the default and the sweep's best, "
                        "e.g. state_mode=parallel (repeatable)")
    parser.add_argument("--shape", action="append", default=[], type=parse_shape, metavar="B,H,L",
                        help="time only these shapes (repeatable; default: the six of SHAPES)")
    parser.add_argument("--no-decode", action="store_true", help="skip the decode step's timings")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on CPU in Triton's interpreter (TRITON_INTERPRET=1): checks the script only")
    opts = parser.parse_args()
    global SHAPES
    SHAPES = opts.shape or SHAPES
    if opts.smoke:
        global DEVICE, SWEEP, SWEEP_SHAPE, HEAD_DIM, N
        DEVICE, SHAPES, SWEEP_SHAPE, HEAD_DIM, N = "cpu", [(2, 2, 40)], (2, 2, 40), 16, 16
        SWEEP = [{}, {"forward_mode": "fused", "chunk_fused": 16}, {"chunk": 16}, {"heads_per_program": 2},
                 {"state_mode": "parallel"}]
    report = {"shapes": {}}

    def save():  # after every stage: a run cut short by the device's time limit keeps what it measured
        report["table"] = table(report)
        write_result("ssd_gpu", report, opts.out)

    official, why = load_official()
    report["official"] = "mamba_ssm 2.3.2 mamba_chunk_scan_combined (Triton)" if official else f"skipped: {why}"
    log(f"official: {report['official']}")
    chunk_scan, step = official if official else (None, None)
    official_scan = official_fn(chunk_scan) if chunk_scan else None
    best = stage(report, "sweep", lambda: SSDConfig() if opts.no_sweep else sweep(report)) or SSDConfig()
    save()
    if not opts.no_decode:
        stage(report, "decode", lambda: time_decode(report, step))  # first: short, and never cut by --budget
        save()
    stage(report, "shapes", lambda: time_shapes(report, official_scan, best, save, opts.budget, opts.also))
    save()
    stage(report, "correctness", lambda: correctness(report, official_scan, opts.also))
    report["kernel_resources"] = compiled_resources(kernels())
    for line in summary(report["kernel_resources"]):
        log(line)
    save()
    print(report["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
