"""Where `generate`'s time goes at batch 1: the whole call against its parts, timed alone on one host.

    PYTHONPATH=. python3 benchmarks/investigations/generate_breakdown.py --out $OUT   # needs a GPU

mamba-130m shape, bf16, random weights, a 16-token prompt, 128 new tokens (decode.py's throughput setting):
generate(128) and generate(2); prefill alone; `decode_step` (finding the captured graph and loading the
state into it); 128 replays of the step graph. What is left of generate(128) is the per-token loop on the host.
Also the host (CPU) and GPU time of one prefill by op, from the torch profiler.
"""

from __future__ import annotations

import importlib

import torch

from benchmarks.common import base_parser, write_result
from benchmarks.decode import FULL, build, timed
from mambalab.inference.cuda_graph import decode_step

generate_module = importlib.import_module("mambalab.inference.generate")  # the module, not the function


def ms(fn, repeats: int) -> float:
    return timed(fn, "cuda", repeats) * 1e3


@torch.no_grad()
def main() -> None:
    parser = base_parser(__doc__.split("\n")[0], repeats=10)
    opts = parser.parse_args()
    model = build(FULL["mamba"], FULL)  # decode.py's model: mamba-130m shape, bf16, on the GPU
    prompt = torch.randint(0, model.config.vocab_size, (1, 16), device="cuda")
    rows = prompt.tolist()
    _, state = generate_module.prefill(model, rows)
    step = decode_step(model, state)
    parts = {
        "generate_128_ms": ms(lambda: generate_module.generate(model, prompt, 128), opts.repeats),
        "generate_2_ms": ms(lambda: generate_module.generate(model, prompt, 2), opts.repeats),
        "prefill_ms": ms(lambda: generate_module.prefill(model, rows), opts.repeats),
        "decode_step_lookup_and_load_ms": ms(lambda: decode_step(model, state), opts.repeats),
        "replays_128_ms": ms(lambda: [step.graph.replay() for _ in range(128)], opts.repeats),
    }
    parts["rest_of_generate_128_ms"] = (parts["generate_128_ms"] - parts["prefill_ms"]
                                        - parts["decode_step_lookup_and_load_ms"] - parts["replays_128_ms"])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        generate_module.prefill(model, rows)
        torch.cuda.synchronize()
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
    prefill_ops = [{"op": e.key, "calls": e.count, "host_us": e.self_cpu_time_total,
                    "gpu_us": e.self_device_time_total} for e in ops]
    for k, v in parts.items():
        print(f"{k:34s} {v:8.2f}")
    for row in prefill_ops:
        print(f"  prefill {row['op'][:50]:50s} ×{row['calls']:<4d} host {row['host_us']:8.0f} us  gpu {row['gpu_us']:6.0f} us")
    print(f"wrote {write_result('generate_breakdown', {'parts': parts, 'prefill_ops': prefill_ops}, opts.out)}")


if __name__ == "__main__":
    main()
