"""A/B of `generate`'s in-graph greedy choice on one host: tokens/s with the choice replayed from a CUDA graph
(the default) and with it chosen eagerly (the ~8 launches per token from Python it replaced), alternated.

    PYTHONPATH=. python3 benchmarks/investigations/decode_choice_ab.py --out $OUT    # needs a GPU

mamba-130m shape, bf16, random weights, 16-token prompts, 128 new tokens, prefill included (as decode.py's
"graph" variant); launch costs differ a lot between hosts, so only an A/B in one process compares.
"""

from __future__ import annotations

import importlib

import torch

from benchmarks.common import base_parser, write_result
from benchmarks.decode import FULL, build, timed

generate_module = importlib.import_module("mambalab.inference.generate")  # the module (its graph_choice is swapped)


def tokens_per_s(model, batch: int, in_graph: bool, repeats: int) -> float:
    original = generate_module.graph_choice
    generate_module._GRAPH_CHOOSERS.clear()  # each variant captures (or not) its own choice
    if not in_graph:
        generate_module.graph_choice = lambda step, choose: None
    try:
        prompts = torch.randint(0, model.config.vocab_size, (batch, 16), device="cuda")
        return batch * 128 / timed(lambda: generate_module.generate(model, prompts, 128), "cuda", repeats)
    finally:
        generate_module.graph_choice = original
        generate_module._GRAPH_CHOOSERS.clear()


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0], repeats=5)
    opts = parser.parse_args()
    model = build(FULL["mamba"], FULL)  # decode.py's model: mamba-130m shape, bf16, on the GPU
    rows = []
    for batch in (1, 64):
        for rnd in range(2):
            for in_graph in (True, False):
                rows.append({"batch": batch, "round": rnd, "choice_in_graph": in_graph,
                             "tokens_per_s": tokens_per_s(model, batch, in_graph, opts.repeats)})
                print(rows[-1], flush=True)
    print(f"wrote {write_result('decode_choice_ab', {'rows': rows}, opts.out)}")


if __name__ == "__main__":
    main()
