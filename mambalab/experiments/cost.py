"""What each family costs to run: training tokens/s, decode time per token vs prefix length, peak memory.

Decoding goes through the public recurrent API: `model.prefill(prefix)` once, then `model.step(token,
state)` per new token (greedy). A Mamba or S4D step reads a fixed-size state whatever the prefix; an
attention step reads a KV cache that grows with it. Timing uses wall-clock with device synchronisation,
after one warm-up step.
"""

from __future__ import annotations

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
def decode_latency(model: LanguageModel, prefix: int, n_tokens: int, device: torch.device, seed: int) -> dict:
    """ms per generated token (batch 1) after a `prefix`-token prompt, and the state's size in bytes."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, prefix), generator=gen).to(device)  # (1, prefix)
    logits, state = model.prefill(ids)
    token = logits[:, -1].argmax(-1)  # (1,)
    token = model.step(token, state).argmax(-1)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(n_tokens):
        token = model.step(token, state).argmax(-1)  # (1,)
    _sync(device)
    elapsed = time.perf_counter() - start
    return {"prefix": prefix, "ms_per_token": 1e3 * elapsed / n_tokens, "state_bytes": state.nbytes()}


def cost_profile(model: LanguageModel, study: CostStudy, device: torch.device, seed: int) -> dict:
    """Training throughput on the LM task at the study's shape, then decode latency at every prefix."""
    plan = TaskPlan({}, study.train_length, (), steps=study.train_steps, batch_size=study.train_batch)
    task = build_task("lm", max_bytes=COST_CORPUS_BYTES)
    train = train_model(model, TaskBatches(task, plan, seed), plan, device, seed, progress=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    decode = [decode_latency(model, p, study.decode_tokens, device, seed) for p in study.decode_prefixes]
    return {
        "train_tokens_per_s": train["tokens_per_s"],
        "train_peak_memory_gb": train["peak_memory_gb"],
        "decode": decode,
        "decode_peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9
        if device.type == "cuda"
        else None,
    }
