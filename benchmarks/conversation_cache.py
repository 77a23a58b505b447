"""Time to first token of each turn of a growing chat conversation, served with and without the prefix cache.

    PYTHONPATH=. python benchmarks/conversation_cache.py                 # CPU, tiny-mamba, 16 turns (~1 min)
    PYTHONPATH=. python benchmarks/conversation_cache.py --device cuda --preset mamba-130m --dtype bfloat16

One conversation through the serving scheduler (no HTTP): a system prompt, then `--turns` turns of a user
message and the model's reply, each turn's prompt (default chat template, byte tokenizer) holding the whole
conversation so far. "cached": the requests the server makes (the system prompt and each whole prompt kept in
the prefix cache's memory), so turn k resumes from turn k-1's prompt and runs only the reply and the new
message. "uncached": the same prompts with no prefix cache, so turn k prefills the whole conversation. Random
weights (seeded); every reply is exactly `--reply-tokens` tokens (ignore_eos). The TTFT of each turn is the
fastest of `--repeats` conversations. Predicted: uncached TTFT grows with the conversation (prefill is linear
in its length), cached TTFT stays flat at the cost of ~user + reply tokens.
"""

from __future__ import annotations

import dataclasses
import random
import time

import torch

from benchmarks.common import base_parser, write_result
from mambalab import LanguageModel
from mambalab.models.zoo import get_preset
from mambalab.serve.chat import ChatFormat
from mambalab.serve.engine import Engine
from mambalab.serve.scheduler import Request
from mambalab.tokenizer import load_tokenizer

WORDS = ["state", "space", "selective", "scan", "token", "model", "memory", "recall", "copy", "induction"]


def _text(rng: random.Random, n_bytes: int) -> str:
    text = ""
    while len(text) < n_bytes:
        text += rng.choice(WORDS) + " "
    return text[:n_bytes]


def conversation(engine: Engine, chat: ChatFormat, cached: bool, args, seed: int) -> list[dict]:
    """Run one conversation; per turn: prompt tokens, tokens resumed from the cache, TTFT."""
    rng = random.Random(seed)
    messages = [("system", _text(rng, args.system_bytes))]
    turns = []
    for _ in range(args.turns):
        messages.append(("user", _text(rng, args.user_bytes)))
        prompt, shared = chat.tokens_and_shared_prefix(messages)
        request = Request(prompt, args.reply_tokens, ignore_eos=True,
                          shared_prefix=shared if cached else 0, cache_prompt=cached)
        engine.scheduler.submit([request])
        engine.scheduler.run_until_done([request])
        if request.error is not None:
            raise RuntimeError(request.error)
        turns.append({"prompt_tokens": len(prompt), "cached_tokens": request.cached_tokens,
                      "ttft_s": request.first_token_time - request.created})
        messages.append(("assistant", request.text.emitted))
    return turns


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0], device="cpu", dtype="float32", repeats=3)
    parser.add_argument("--preset", default="tiny-mamba")
    parser.add_argument("--turns", type=int, default=16)
    parser.add_argument("--system-bytes", type=int, default=1024)
    parser.add_argument("--user-bytes", type=int, default=128)
    parser.add_argument("--reply-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer("byte")
    config = get_preset(args.preset)
    if args.preset.startswith("tiny"):  # its vocabulary is the byte tokenizer's
        config = dataclasses.replace(config, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(0)
    model = LanguageModel(config).to(device=args.device, dtype=getattr(torch, args.dtype)).eval()
    chat = ChatFormat(tokenizer)
    results = {"config": vars(args)}
    for mode in ("uncached", "cached"):
        runs = []
        for repeat in range(args.repeats + 1):  # the first conversation warms up (allocations, kernels)
            engine = Engine(model, tokenizer, cache_bytes=(1 << 30) if mode == "cached" else 0)
            engine.scheduler.warm_up()
            start = time.perf_counter()
            turns = conversation(engine, chat, mode == "cached", args, seed=1)
            if repeat:
                runs.append({"turns": turns, "wall_s": time.perf_counter() - start})
        best = [min(r["turns"][k]["ttft_s"] for r in runs) for k in range(args.turns)]
        results[mode] = {"ttft_s": best, "prompt_tokens": [t["prompt_tokens"] for t in runs[0]["turns"]],
                         "cached_tokens": [t["cached_tokens"] for t in runs[0]["turns"]],
                         "conversation_wall_s": [r["wall_s"] for r in runs]}
    uncached, cached = results["uncached"]["ttft_s"], results["cached"]["ttft_s"]
    results["last_turn_speedup"] = uncached[-1] / cached[-1]
    results["cached_last_over_second_turn"] = cached[-1] / cached[1]
    print(f"{'turn':>4} {'prompt':>7} {'resumed':>8} {'uncached ms':>12} {'cached ms':>10}")
    for k in range(args.turns):
        print(f"{k + 1:>4} {results['cached']['prompt_tokens'][k]:>7} {results['cached']['cached_tokens'][k]:>8}"
              f" {uncached[k] * 1e3:>12.2f} {cached[k] * 1e3:>10.2f}")
    print(f"last turn: cached {results['last_turn_speedup']:.1f}x faster to its first token;"
          f" cached TTFT last / second turn {results['cached_last_over_second_turn']:.2f}")
    print("wrote", write_result(f"conversation_cache_{args.device}", results, args.out))


if __name__ == "__main__":
    main()
