"""Training throughput and peak memory through `mambalab.train.Trainer` (AdamW, fp32 params, bf16 autocast).

    PYTHONPATH=. python3 benchmarks/train.py            # GPU, one device call (~4-6 min): $OUT/train.json
    PYTHONPATH=. python3 benchmarks/train.py --quick    # tiny models on CPU, ~1 min: train_quick.json

Models: the mamba-130m shape (24 × 768, vocab 50280) beside the zoo's matched Transformer++ (transformer-125m,
Llama-style 12 × 768, SwiGLU, RoPE, SDPA). Shapes: L = 2048 at batch 8, and L = 8192 at the largest batch of
8, 4, 2, 1 that fits. Each run: `warmup` optimizer steps (kernel compilation, allocator warm-up), then `steps`
timed steps; tokens/s = tokens of the timed steps / their wall time (every step ends with a host sync on the
loss). Peak memory = torch.cuda.max_memory_allocated over the whole run. Random token ids (throughput does
not depend on the data). Anchors (ANCHORS.md, H200): official mamba-ssm 120,600 tokens/s at 25.4 GB, HF
Llama 12×768 + SDPA 198,600 tokens/s at 23.8 GB (b8, L=2048); target ≥160,000 tokens/s for Mamba.
"""

from __future__ import annotations

import gc
import logging
import time

import torch

from benchmarks.common import base_parser, write_result
from mambalab import LanguageModel
from mambalab.models.zoo import get_preset
from mambalab.train.trainer import TrainConfig, Trainer

FULL = {"models": ["mamba-130m", "transformer-125m"], "shapes": [(2048, [8]), (8192, [8, 4, 2, 1])],
        "warmup": 3, "steps": 10, "device": "cuda", "precision": "bf16"}
QUICK = {"models": ["tiny-mamba", "tiny-transformer"], "shapes": [(64, [4]), (256, [8, 4, 2, 1])],
         "warmup": 1, "steps": 2, "device": "cpu", "precision": "fp32"}
ANCHORS = {"official mamba-130m b8 L2048": {"tokens_per_s": 120_600, "peak_gb": 25.4},
           "HF Llama 12x768 b8 L2048": {"tokens_per_s": 198_600, "peak_gb": 23.8},
           "target mamba-130m b8 L2048": {"tokens_per_s": 160_000}}


def random_batches(vocab: int, batch: int, seq_len: int, device: str):
    """Endless batches of uniform random ids, generated once on the device."""
    ids = torch.randint(vocab, (batch, seq_len + 1), device=device)  # (b, l + 1)
    batch_dict = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
    while True:
        yield batch_dict


def measure(preset: str, seq_len: int, batch: int, plan: dict, compile_model: bool, scan_backend: str | None) -> dict:
    config = get_preset(preset)
    if scan_backend is not None:
        config.ssm.scan_backend = scan_backend
    model = LanguageModel(config)
    total = plan["warmup"] + plan["steps"]
    cfg = TrainConfig(lr=6e-4, min_lr=6e-5, warmup_steps=0, max_steps=total, log_every=plan["warmup"],
                      eval_every=0, ckpt_every=0, batch_size=batch, seq_len=seq_len, precision=plan["precision"],
                      compile=compile_model, device=plan["device"], progress=False)
    cuda = plan["device"] == "cuda"
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(model, cfg, random_batches(config.vocab_size, batch, seq_len, plan["device"]))
    start = time.perf_counter()
    records = trainer.fit()
    wall = time.perf_counter() - start
    first, last = records[0], records[-1]  # first = end of the warmup steps
    tokens_per_s = (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])
    return {
        "model": preset, "params": sum(p.numel() for p in model.parameters()), "seq_len": seq_len, "batch": batch,
        "tokens_per_s": tokens_per_s, "step_ms": 1000 * batch * seq_len / tokens_per_s,
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
        "loss": last["loss"], "wall_s": wall, "compile": compile_model,
    }


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def main() -> None:
    parser = base_parser(__doc__, raw_description=True,
                         out_help="JSON path or folder (default $OUT/train.json, else benchmarks/results/train.json)")
    parser.add_argument("--quick", action="store_true", help="tiny models on CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--scan-backend", default=None, help="override ssm.scan_backend (default: the preset's)")
    parser.add_argument("--models", default=None, help="comma-separated presets (default: the plan's two)")
    parser.add_argument("--lengths", default=None, help="comma-separated sequence lengths of the plan to run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    plan = dict(QUICK if args.quick else FULL)
    if args.models:
        plan["models"] = args.models.split(",")
    if args.lengths:
        keep = {int(v) for v in args.lengths.split(",")}
        plan["shapes"] = [(seq_len, batches) for seq_len, batches in plan["shapes"] if seq_len in keep]
    results = []
    for preset in plan["models"]:
        for seq_len, batches in plan["shapes"]:
            for batch in batches:
                try:
                    row = measure(preset, seq_len, batch, plan, args.compile, args.scan_backend)
                except RuntimeError as exc:  # torch.OutOfMemoryError is one
                    if not is_oom(exc):
                        raise
                    print(f"{preset} L={seq_len} b={batch}: out of memory, trying a smaller batch")
                    continue
                results.append(row)
                peak = f"{row['peak_gb']:.1f} GB" if row["peak_gb"] is not None else "-"
                print(f"{preset:>18} L={seq_len:<5} b={batch:<2} {row['tokens_per_s']:>12,.0f} tokens/s"
                      f" {row['step_ms']:>9.1f} ms/step  peak {peak}")
                break
    payload = {"device": plan["device"], "quick": args.quick, "precision": plan["precision"],
               "optimizer": "AdamW (mambalab.train.optim)", "results": results, "anchors": ANCHORS}
    print(f"wrote {write_result('train_quick' if args.quick else 'train', payload, args.out)}")


if __name__ == "__main__":
    main()
