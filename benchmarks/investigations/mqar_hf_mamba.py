"""Is Mamba's MQAR plateau ours? The quick preset's MQAR (vocabulary 64, length 64, 4 key-value pairs) with a
2-block Mamba of width 32 and N 8, trained three ways from seed 0 on the same batches and evaluated by the
compare's evaluation:

- "ours": mambalab's Mamba (its init), our trainer (what `compare` runs);
- "hf-init": transformers' MambaForCausalLM initialised by its own `_init_weights`, loaded into mambalab,
  our trainer;
- "hf": transformers' MambaForCausalLM trained by its own forward and backward (its PyTorch path) in a plain
  AdamW loop with our schedule (warmup 10%, cosine to lr/10, betas 0.9/0.95, clip 1.0), then loaded into
  mambalab for the evaluation only.

    PYTHONPATH=. python3 benchmarks/investigations/mqar_hf_mamba.py --lr 5e-3 --steps 1500    # CPU, ~3 min
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile

import torch
import torch.nn.functional as F

import mambalab
from mambalab.experiments.families import ModelSize, family_config
from mambalab.experiments.presets import get_compare_preset
from mambalab.experiments.runner import TaskBatches, evaluate, train_model
from mambalab.tasks import build_task

SIZE = ModelSize(d_model=32, n_layer=2, d_state=8)


def hf_model(vocab_size: int):
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    return MambaForCausalLM(MambaConfig(
        vocab_size=vocab_size, hidden_size=SIZE.d_model, state_size=SIZE.d_state, num_hidden_layers=SIZE.n_layer,
        expand=2, conv_kernel=4, residual_in_fp32=True, tie_word_embeddings=True))


def as_ours(hf) -> mambalab.LanguageModel:
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        return mambalab.load(tmp).float()


def lr_at(step: int, plan) -> float:
    warm = max(1, plan.steps // 10)
    if step < warm:
        return plan.lr * (step + 1) / warm
    progress = (step - warm) / max(1, plan.steps - warm)
    return plan.lr / 10 + 0.5 * (plan.lr - plan.lr / 10) * (1 + math.cos(math.pi * progress))


def train_hf(hf, task, plan) -> None:
    opt = torch.optim.AdamW(hf.parameters(), lr=plan.lr, betas=(0.9, 0.95), weight_decay=0.0)
    batches = TaskBatches(task, plan, 0)
    for step in range(plan.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, plan)
        batch = next(batches)
        logits = hf(batch["input_ids"]).logits  # (b, l, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--steps", type=int, default=1500)
    opts = parser.parse_args()
    plan = dataclasses.replace(get_compare_preset("quick").tasks["mqar"], lr=opts.lr, steps=opts.steps)
    task = build_task("mqar", **plan.options)
    cpu = torch.device("cpu")
    for way in ("ours", "hf-init", "hf"):
        if way == "ours":
            torch.manual_seed(0)
            model = mambalab.LanguageModel(family_config("mamba", SIZE, task.vocab_size))
        elif way == "hf-init":
            model = as_ours(hf_model(task.vocab_size))
        else:
            hf = hf_model(task.vocab_size)
            train_hf(hf, task, plan)
            model = as_ours(hf)
        if way != "hf":
            train_model(model, TaskBatches(task, plan, 0), plan, cpu, 0, None, False)
        accuracy = {k: round(100 * v["token_accuracy"], 1) for k, v in evaluate(model, task, plan, 0, cpu).items()}
        print(f"{way:8s} lr {plan.lr:g} steps {plan.steps}: token accuracy % by length {accuracy}", flush=True)


if __name__ == "__main__":
    main()
