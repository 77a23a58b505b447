"""SSD's state space duality, measured on CPU: the same layer computed four ways, how closely they agree per
dtype, and which is cheaper at which sequence length.

    PYTHONPATH=. python3 benchmarks/ssd_duality.py            # ~1 min -> benchmarks/results/ssd_duality.json
    PYTHONPATH=. python3 benchmarks/ssd_duality.py --quick    # tiny sizes, seconds (the test runs this)

The forms (all through the public ops of `mambalab.ops.ssd`):
- "quadratic": `ssd_scan(backend="quadratic")`, the dual masked-attention form y = (L ∘ C Bᵀ)(Δ x);
- "chunked": `ssd_scan(backend="torch")`, the quadratic form inside chunks of Q positions plus state passing;
- "reference": `ssd_scan(backend="reference")`, the recurrence as a for-loop over positions;
- "step": the decode step `ssd_state_update` called once per token (the recurrent mode of inference), its
  state in float32 for 16-bit inputs (as the model keeps it), and "step_state_bf16" with the state itself
  stored in bfloat16 between tokens.

(a) Agreement: each form in float64, float32 and bfloat16 against the float64 for-loop run on the same
(rounded) inputs, y and final state, relative Frobenius error; "input_rounding" says how far the float64
answer moves when the inputs are rounded to the dtype, and "output_rounding_y" what rounding the exact y to
the dtype alone costs (y is returned in the input dtype; the final state in float32 for 16-bit inputs), so a
form's error can be read against both.
(b) Cost: wall time per call (median of --repeats, benchmarks.common.time_call) vs L at b1 h4 p16 n16 in
float32, each form dropped once a call exceeds --budget-s; one sweep per --threads count (2, then 1: on a
shared 2-core machine a 2-thread op can wait tens of ms for a core, and the 1-thread sweep shows the forms'
own costs); the L from which chunked stays faster than quadratic (and the other pairs), the fastest form at
each L, and the FLOPs of each form (multiply and add counted as 2, exponentials not counted) beside the time.
"""

from __future__ import annotations

import os
import time

import torch

from benchmarks.common import base_parser, time_call, write_result
from mambalab.ops.ssd import ssd_scan, ssd_state_update

SCAN_FORMS = {"quadratic": "quadratic", "chunked": "torch", "reference": "reference"}
AGREEMENT_DTYPES = ("float64", "float32", "bfloat16")
# (b, l, h, p, n, g, chunk): odd sizes, l not a multiple of the chunk, groups shared by heads
AGREEMENT_SHAPES = [(2, 37, 4, 5, 7, 2, 16), (1, 128, 4, 16, 16, 1, 32), (1, 200, 2, 8, 32, 1, 64)]
QUICK_AGREEMENT_SHAPES = [(2, 21, 2, 3, 5, 1, 8)]
TIMING_SHAPE = {"b": 1, "h": 4, "p": 16, "n": 16, "g": 1}
TIMING_LENGTHS = (64, 128, 256, 512, 1024, 2048)
QUICK_TIMING_LENGTHS = (16, 32)
TIMING_CHUNK = 64


def make_inputs(b, l, h, p, n, g, seed=0) -> dict:
    """Float64 inputs of `ssd_scan` with every optional part on (D, z, dt_bias with softplus, initial state)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    return {"x": randn(b, l, h, p), "dt": randn(b, l, h, scale=0.5), "A": -torch.rand(h, generator=gen,
            dtype=torch.float64) * 2 - 0.1, "B": randn(b, l, g, n, scale=n ** -0.5),
            "C": randn(b, l, g, n, scale=n ** -0.5), "D": randn(h), "z": randn(b, l, h, p),
            "dt_bias": randn(h, scale=0.5), "initial_state": randn(b, h, p, n, scale=0.5)}


def cast(inputs: dict, dtype: torch.dtype) -> dict:
    """The inputs in `dtype`, except A, D and dt_bias, which stay float32 for 16-bit dtypes (as in the model)."""
    params = dtype if dtype in (torch.float64, torch.float32) else torch.float32
    return {k: v.to(params if k in ("A", "D", "dt_bias") else dtype) for k, v in inputs.items()}


def upcast(inputs: dict) -> dict:
    return {k: v.double() for k, v in inputs.items()}


def run_scan(backend: str, inputs: dict, chunk_size: int):
    """(y, final_state) of ssd_scan."""
    return ssd_scan(**inputs, dt_softplus=True, return_final_state=True, chunk_size=chunk_size, backend=backend)


def run_steps(inputs: dict, state_dtype: torch.dtype | None = None):
    """(y, final_state) of `ssd_state_update` called once per position; the state in `state_dtype` (default:
    float64 for float64 inputs, else float32)."""
    x = inputs["x"]
    if state_dtype is None:
        state_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    state = inputs["initial_state"].to(state_dtype).clone()  # (b, h, p, n)
    ys = [ssd_state_update(state, inputs["x"][:, t], inputs["dt"][:, t], inputs["A"], inputs["B"][:, t],
                           inputs["C"][:, t], D=inputs["D"], z_t=inputs["z"][:, t], dt_bias=inputs["dt_bias"],
                           dt_softplus=True) for t in range(x.shape[1])]
    return torch.stack(ys, dim=1), state  # (b, l, h, p), (b, h, p, n)


def relative_error(value: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double()
    return float((value.double() - expected).norm() / expected.norm().clamp_min(1e-300))


def forms_for(dtype: torch.dtype) -> dict:
    """name -> callable(inputs, chunk) -> (y, final_state), for the forms run at `dtype`."""
    forms = {name: (lambda inputs, chunk, backend=backend: run_scan(backend, inputs, chunk))
             for name, backend in SCAN_FORMS.items()}
    forms["step"] = lambda inputs, chunk: run_steps(inputs)
    if dtype == torch.bfloat16:
        forms["step_state_bf16"] = lambda inputs, chunk: run_steps(inputs, torch.bfloat16)
    return forms


def agreement(shapes) -> list[dict]:
    rows = []
    for b, l, h, p, n, g, chunk in shapes:
        exact = make_inputs(b, l, h, p, n, g, seed=l)
        y_exact, state_exact = run_scan("reference", exact, chunk)
        for dtype_name in AGREEMENT_DTYPES:
            dtype = getattr(torch, dtype_name)
            inputs = cast(exact, dtype)
            y_ref, state_ref = run_scan("reference", upcast(inputs), chunk)  # the oracle on the rounded inputs
            row = {"shape": {"b": b, "l": l, "h": h, "p": p, "n": n, "g": g, "chunk": chunk}, "dtype": dtype_name,
                   "input_rounding": {"y": relative_error(y_ref, y_exact),
                                      "state": relative_error(state_ref, state_exact)},
                   "output_rounding_y": relative_error(y_ref.to(dtype), y_ref),
                   "forms": {}}
            for name, form in forms_for(dtype).items():
                y, state = form(inputs, chunk)
                row["forms"][name] = {"y": relative_error(y, y_ref), "state": relative_error(state, state_ref),
                                      "y_dtype": str(y.dtype).removeprefix("torch."),
                                      "state_dtype": str(state.dtype).removeprefix("torch.")}
            rows.append(row)
            print(f"agreement l={l} {dtype_name}: " + ", ".join(
                f"{k} y {v['y']:.1e} state {v['state']:.1e}" for k, v in row["forms"].items()), flush=True)
    return rows


def flops(form: str, b: int, l: int, h: int, p: int, n: int, g: int, chunk: int) -> int:
    """FLOPs of one call as each form computes it (multiply-add = 2; exp, masks and casts not counted).

    quadratic: C Bᵀ over all (t, s) pairs and its product with Δx, 2·l²·(n + p) per head, plus the final
    state and the initial state's share of y, 4·l·p·n. chunked (Q = chunk, l padded to a multiple of Q):
    scores 2·l·Q·n per group and their product with Δx 2·l·Q·p per head, the chunk states and the entering
    state's share of y 4·l·p·n, state passing 2·p·n per chunk. Any other form is the recurrence (reference,
    step): per position decay·H + Δx ⊗ B (3·p·n) and H·C (2·p·n)."""
    if form == "quadratic":
        return b * h * (2 * l * l * (n + p) + 4 * l * p * n)
    if form == "chunked":
        chunks = -(-l // chunk)
        padded = chunks * chunk
        return b * (g * 2 * padded * chunk * n + h * (2 * padded * chunk * p + 4 * padded * p * n
                                                      + 2 * chunks * p * n))
    return b * h * 5 * l * p * n


def timing(lengths, repeats: int, budget_s: float, threads: int) -> dict:
    """Median wall time of each form at each L with `threads` torch threads."""
    torch.set_num_threads(threads)
    b, h, p, n, g = (TIMING_SHAPE[k] for k in ("b", "h", "p", "n", "g"))
    calls = {name: (lambda inputs, backend=backend: run_scan(backend, inputs, TIMING_CHUNK))
             for name, backend in SCAN_FORMS.items()}
    calls["step"] = run_steps
    rows = {name: [] for name in calls}
    stopped: dict[str, int] = {}
    for l in lengths:
        inputs = cast(make_inputs(b, l, h, p, n, g, seed=l), torch.float32)
        for name, call in calls.items():
            if name in stopped:
                continue
            with torch.inference_mode():
                t = time_call(lambda call=call, inputs=inputs: call(inputs), "cpu", repeats=repeats, warmup=1)
            count = flops(name, b, l, h, p, n, g, TIMING_CHUNK)
            rows[name].append({"form": name, "l": l, **t.as_dict(), "flops": count,
                               "gflop_per_s": round(count / t.median_s / 1e9, 3)})
            print(f"time threads={threads} l={l} {name}: {t.median_s * 1e3:.2f} ms ({count / 1e6:.1f} MFLOP)",
                  flush=True)
            if t.median_s > budget_s:
                stopped[name] = l
    return {"threads": threads, "shape": {**TIMING_SHAPE, "chunk": TIMING_CHUNK, "dtype": "float32"},
            "lengths": list(lengths), "forms": rows, "stopped_after_l": stopped, "crossovers": crossovers(rows),
            "fastest_by_l": {l: min((r for name in rows for r in rows[name] if r["l"] == l),
                                    key=lambda r: r["median_s"])["form"] for l in lengths}}


def crossovers(rows: dict) -> dict:
    """For pairs (a, b): the smallest measured L from which a's median time stays below b's (None if never)."""
    def median_by_l(name):
        return {r["l"]: r["median_s"] for r in rows[name]}

    out = {}
    for faster, slower in (("chunked", "quadratic"), ("chunked", "reference"), ("chunked", "step"),
                           ("reference", "quadratic"), ("reference", "step")):
        a, b = median_by_l(faster), median_by_l(slower)
        common = sorted(set(a) & set(b))
        winning = [l for i, l in enumerate(common) if all(a[k] < b[k] for k in common[i:])]
        out[f"{faster}_beats_{slower}_from_l"] = winning[0] if winning else None
    return out


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0], repeats=9)
    parser.add_argument("--quick", action="store_true", help="tiny shapes and lengths (seconds; for the test)")
    parser.add_argument("--threads", default="2,1",
                        help="comma-separated torch thread counts, one timing sweep each (default 2,1)")
    parser.add_argument("--budget-s", type=float, default=2.0,
                        help="drop a form from larger L once one call takes longer (default 2 s)")
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    torch.set_num_threads(thread_counts[0])
    started, load_average = time.time(), round(os.getloadavg()[0], 2)
    repeats = 1 if args.quick else args.repeats
    payload = {"quick": args.quick, "load_average_1min_at_start": load_average,
               "agreement": agreement(QUICK_AGREEMENT_SHAPES if args.quick else AGREEMENT_SHAPES)}
    lengths = QUICK_TIMING_LENGTHS if args.quick else TIMING_LENGTHS
    payload["timing"] = [timing(lengths, repeats, args.budget_s, threads) for threads in thread_counts]
    payload["wall_s"] = round(time.time() - started, 1)
    path = write_result("ssd_duality", payload, args.out)
    for sweep in payload["timing"]:
        print(f"threads {sweep['threads']}: {sweep['crossovers']}, fastest {sweep['fastest_by_l']}")
    print(f"wrote {path} ({payload['wall_s']} s)")


if __name__ == "__main__":
    main()
