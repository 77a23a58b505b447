"""Where a decode step's time goes: the GPU kernels of one CUDA-graph replay of `model._step`, per token.

    PYTHONPATH=. python3 benchmarks/investigations/decode_profile.py --out $OUT   # needs a GPU

For each batch size, SSM state dtype (--state-dtypes: default = float32, "model" = the model's dtype) and variant
(graph, graph + torch.compile), the step is captured as `mambalab generate`
captures it (mambalab/inference/cuda_graph.py), replayed under the torch profiler, and the kernels are summed
by name: calls and µs per step, the sum of kernel time against the wall time per step (the difference is the
gaps between the graph's kernels).
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import base_parser, write_result
from mambalab.inference.cuda_graph import GraphStep, decode_step
from mambalab.models.lm import LanguageModel
from mambalab.models.zoo import get_preset


def profile_step(model, batch: int, compile_step: bool, state_dtype: str, steps: int = 20) -> dict:
    prompt = torch.randint(0, model.config.vocab_size, (batch, 16), device="cuda")
    _, state = model.prefill(prompt, state_dtype=None if state_dtype == "default" else state_dtype)
    step = decode_step(model, state, compile_step=compile_step)
    assert isinstance(step, GraphStep), "the step was not captured"
    tokens = prompt[:, -1]
    for _ in range(5):
        step(tokens)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step.graph.replay()
    torch.cuda.synchronize()
    wall_us = (time.perf_counter() - start) / steps * 1e6
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step.graph.replay()
        torch.cuda.synchronize()
    kernels = {}
    for e in prof.key_averages():
        if e.self_device_time_total > 0:
            kernels[e.key[:90]] = {"calls_per_step": e.count / steps, "us_per_step": e.self_device_time_total / steps}
    kernels = dict(sorted(kernels.items(), key=lambda kv: -kv[1]["us_per_step"]))
    busy = sum(k["us_per_step"] for k in kernels.values())
    return {"batch": batch, "state_dtype": state_dtype, "compiled": compile_step, "wall_us_per_step": wall_us, "kernel_us_per_step": busy,
            "kernels_per_step": sum(k["calls_per_step"] for k in kernels.values()), "kernels": kernels}


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0], dtype="bfloat16")
    parser.add_argument("--preset", default="mamba-130m")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--state-dtypes", default="default",
                        help="comma-separated SSM state dtypes: default (float32), model, bfloat16, ...")
    parser.add_argument("--no-compile", action="store_true")
    opts = parser.parse_args()
    torch.manual_seed(0)
    model = LanguageModel(get_preset(opts.preset)).to(device="cuda", dtype=getattr(torch, opts.dtype)).eval()
    rows = []
    with torch.no_grad():
        for compiled in (False,) if opts.no_compile else (False, True):
            for batch in map(int, opts.batches.split(",")):
                for state_dtype in opts.state_dtypes.split(","):
                    r = profile_step(model, batch, compiled, state_dtype)
                    rows.append(r)
                    top = ", ".join(f"{k[:50]} ×{v['calls_per_step']:.0f} {v['us_per_step']:.0f}us"
                                    for k, v in list(r["kernels"].items())[:10])
                    print(f"batch {batch} state {state_dtype} compiled={compiled}: {r['wall_us_per_step']:.0f} us/step"
                          f" wall, {r['kernel_us_per_step']:.0f} us in {r['kernels_per_step']:.0f} kernels; {top}",
                          flush=True)
    print(f"wrote {write_result('decode_profile', {'preset': opts.preset, 'dtype': opts.dtype, 'rows': rows}, opts.out)}")


if __name__ == "__main__":
    main()
