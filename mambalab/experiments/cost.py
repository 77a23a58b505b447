"""What each family costs to run: training tokens/s, decode time per token vs prefix length, peak memory.

Decoding goes through the public recurrent API: `model.prefill(prefix)` once, then `model.step(token,
state)` per new token (greedy). A Mamba or S4D step reads a fixed-size state whatever the prefix; an
attention step reads a KV cache that grows with it. Timing uses wall-clock with device synchronisation:
the median (and min, max) of several timed loops after a warm-up loop, each model alone on the machine
(compare runs the cost profiles after every training run).
"""

from __future__ import annotations

import statistics
import time

import torch

from mambalab.experiments.presets import CostStudy, TaskPlan
from mambalab.experiments.runner import TaskBatches, train_model
from mambalab.models.lm import LanguageModel
from mambalab.tasks import build_task

COST_CORPUS_BYTES = 1 << 20  # throughput does not depend on the text; 1 MB holds any training window here


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def decode_latency(
    model: LanguageModel, prefix: int, n_tokens: int, device: torch.device, seed: int, repeats: int = 1
) -> dict:
    """ms per generated token (batch 1) after a `prefix`-token prompt: the median over `repeats` timed loops
    of `n_tokens` steps (with their min and max), after one untimed warm-up loop; and the state's size in
    bytes. The loops continue one generation, so the last one starts (repeats × n_tokens) tokens later than
    the first: negligible next to the prefixes profiled."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, prefix), generator=gen).to(device)  # (1, prefix)
    logits, state = model.prefill(ids)
    token = logits[:, -1].argmax(-1)  # (1,)
    times = []
    for loop in range(repeats + 1):  # loop 0 warms up
        _sync(device)
        start = time.perf_counter()
        for _ in range(n_tokens):
            token = model.step(token, state).argmax(-1)  # (1,)
        _sync(device)
        if loop:
            times.append(1e3 * (time.perf_counter() - start) / n_tokens)
    return {
        "prefix": prefix,
        "ms_per_token": statistics.median(times),
        "ms_min": min(times),
        "ms_max": max(times),
        "repeats": repeats,
        "state_bytes": state.nbytes(),
    }


def cost_profile(model: LanguageModel, study: CostStudy, device: torch.device, seed: int) -> dict:
    """Training throughput on the LM task at the study's shape, then decode latency at every prefix."""
    plan = TaskPlan({}, study.train_length, (), steps=study.train_steps, batch_size=study.train_batch)
    task = build_task("lm", max_bytes=COST_CORPUS_BYTES)
    train = train_model(model, TaskBatches(task, plan, seed), plan, device, seed, progress=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    decode = [
        decode_latency(model, p, study.decode_tokens, device, seed, study.repeats) for p in study.decode_prefixes
    ]
    return {
        "train_tokens_per_s": train["tokens_per_s"],
        "train_peak_memory_gb": train["peak_memory_gb"],
        "decode": decode,
        "decode_peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9
        if device.type == "cuda"
        else None,
    }
