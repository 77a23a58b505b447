"""Training throughput and peak memory side by side, one process, one loop: official mamba-ssm's Mamba, our
Mamba, HF Llama (12 × 768, SDPA) and our Transformer++, at the mamba-130m shape (24 × 768, vocab 50280).

    # on the GPU machine, the official kernels built first (../shared/anchors/README.md):
    (bash .official-src/build_official.sh /tmp/official > build.log 2>&1 &)
    PYTHONPATH=. python3 benchmarks/train_vs_official.py --official /tmp/official --wait-official 300 \
        --models mambalab-mamba,hf-llama,mambalab-transformer,official-mamba
    PYTHONPATH=. python3 benchmarks/train_vs_official.py --quick      # tiny shapes on CPU: the loop itself

The loop (the same for every model): fp32 parameters, `torch.optim.AdamW(fused=True)` on CUDA, bf16 autocast,
random token ids drawn once per shape (throughput does not depend on the data), loss = cross-entropy of the
next token. Each model computes its loss the way its library offers: official and HF through their logits and
`F.cross_entropy` (what their users write), ours through `LanguageModel.forward(ids, labels=...)` (the chunked
fused lm_head + cross-entropy: the (b, l, vocab) logits are never stored); the variant
`mambalab-mamba+logits-loss` times ours through its logits too, so the loss path's share is measured. Per shape (L = 2048, 8192, 32768 at batch 8, 2, 1):
`warmup` steps, then `steps` steps each timed with CUDA events; tokens/s from the median step. Peak memory =
torch.cuda.max_memory_allocated over the model's run (weights, optimizer state and activations). One step of
each Mamba is profiled (torch.profiler): the top CUDA kernels with calls and time per call. `--interleave`
holds every model at once and steps them in turn, one step each per round in a rotating order, so that a noisy
stretch of the host CPU (these steps are partly launch-bound) falls on every model alike.

Writes `train_vs_official.json` (to $OUT when set, else benchmarks/results/) after each model, with the
environment (GPU, git commit) embedded.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import add_official_to_path, rotation, seconds_of, write_result
from mambalab import LanguageModel
from mambalab.models.zoo import get_preset
from mambalab.ops import linear_cross_entropy

FULL = {"shapes": [(2048, 8), (8192, 2), (32768, 1)], "warmup": 5, "steps": 20, "vocab": 50277,
        "d_model": 768, "n_layer": 24, "llama_layers": 12, "llama_ffn": 2048, "llama_heads": 12,
        "ours_mamba": "mamba-130m", "ours_mamba2": "mamba2-130m", "ours_transformer": "transformer-125m"}
QUICK = {"shapes": [(64, 2), (128, 1)], "warmup": 1, "steps": 3, "vocab": 256,
         "d_model": 64, "n_layer": 2, "llama_layers": 2, "llama_ffn": 128, "llama_heads": 2,
         "ours_mamba": "tiny-mamba", "ours_mamba2": "tiny-mamba2", "ours_transformer": "tiny-transformer"}
MODELS = ("official-mamba", "mambalab-mamba", "hf-llama", "mambalab-transformer", "official-mamba2",
          "mambalab-mamba2")
# A/B variants of our Mamba: "+logits-loss" scores through the (b, l, vocab) logits as the others do,
# "+eager-norm" keeps RMSNorm's torch composition in training (not torch.compile'd), "+torch-softmax" computes
# the fused head's per-chunk softmax in torch ops instead of the Triton kernel (ops/linear_cross_entropy.py).
VARIANTS = ("+logits-loss", "+eager-norm", "+torch-softmax")


def logits_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over (b, l, v) logits, in float32 (what the official/HF users write)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))


def build(name: str, plan: dict, device: str):
    """(model, loss_fn(ids, labels) -> scalar loss) for `name` (a model of MODELS, ours with VARIANTS suffixes),
    fp32 parameters on `device`. The official model pads its vocabulary (as its users run it); ids are drawn
    below every model's vocabulary (plan["vocab"], the GPT-NeoX tokenizer's 50277)."""
    if name in ("official-mamba", "official-mamba2"):
        from mamba_ssm.models.config_mamba import MambaConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

        # Mamba-2's default memory-efficient fused path needs causal_conv1d (anchors/build_official.sh
        # --with-conv); without it, the plain path
        mem_eff = importlib.util.find_spec("causal_conv1d") is not None
        ssm_cfg = {"layer": "Mamba1"} if name == "official-mamba" else {"layer": "Mamba2", "use_mem_eff_path": mem_eff}
        config = MambaConfig(d_model=plan["d_model"], n_layer=plan["n_layer"], d_intermediate=0,
                             vocab_size=plan["vocab"], ssm_cfg=ssm_cfg, rms_norm=True,
                             residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=8)
        model = MambaLMHeadModel(config, device=device)
        return model, lambda ids, labels: logits_loss(model(ids).logits, labels)
    if name == "hf-llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(hidden_size=plan["d_model"], intermediate_size=plan["llama_ffn"],
                             num_hidden_layers=plan["llama_layers"], num_attention_heads=plan["llama_heads"],
                             num_key_value_heads=plan["llama_heads"], vocab_size=plan["vocab"],
                             max_position_embeddings=max(length for length, _ in plan["shapes"]),
                             tie_word_embeddings=False)
        model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa").to(device)
        return model, lambda ids, labels: logits_loss(model(input_ids=ids).logits, labels)
    base, *variants = name.split("+")
    preset = {"mambalab-mamba": plan["ours_mamba"], "mambalab-mamba2": plan["ours_mamba2"],
              "mambalab-transformer": plan["ours_transformer"]}[base]
    model = LanguageModel(get_preset(preset)).to(device)
    if "eager-norm" in variants:
        from mambalab.layers import norm

        norm._compiled_composition = lambda: norm.rms_norm_composition
    if "logits-loss" in variants:
        return model, lambda ids, labels: logits_loss(model(ids), labels)

    triton_softmax = "torch-softmax" not in variants

    def loss_fn(ids, labels):
        linear_cross_entropy.TRITON_SOFTMAX = triton_softmax  # per call: each model of the run sets its own
        total, count = model(ids, labels=labels)
        return total / count

    return model, loss_fn


def make_optimizer(model, cuda: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, fused=cuda)


def timed_step(model, loss_fn, optimizer, ids, labels, cuda: bool) -> tuple[float, torch.Tensor]:
    """One optimizer step under bf16 autocast (on CUDA); its time in ms (benchmarks.common.seconds_of) and its
    loss."""
    out = {}

    def step():
        with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
            out["loss"] = loss_fn(ids, labels)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return 1000 * seconds_of(step, "cuda" if cuda else "cpu"), out["loss"]


def train_steps(model, loss_fn, ids, labels, warmup: int, steps: int, cuda: bool) -> dict:
    """Run warmup + steps optimizer steps; per-step times (ms) of the timed ones and the last loss."""
    optimizer = make_optimizer(model, cuda)
    times, loss = [], None
    for step in range(warmup + steps):
        elapsed, loss = timed_step(model, loss_fn, optimizer, ids, labels, cuda)
        if step >= warmup:
            times.append(elapsed)
    return {"step_ms": times, "loss": loss.item()}


def step_stats(times: list[float], batch: int, length: int) -> dict:
    median = statistics.median(times)
    return {"step_ms_median": median, "step_ms_min": min(times), "step_ms_max": max(times),
            "tokens_per_s": batch * length / (median / 1000)}


def profile_step(model, loss_fn, ids, labels, top: int = 25) -> list[dict]:
    """The top CUDA kernels of one forward+backward (no optimizer step): name, calls, total and per-call ms."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(ids, labels)
        loss.backward()
        torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    rows = []
    for event in prof.key_averages():
        total_us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if total_us > 0:
            rows.append({"kernel": event.key[:120], "calls": event.count, "total_ms": total_us / 1000,
                         "per_call_ms": total_us / 1000 / max(event.count, 1)})
    rows.sort(key=lambda r: -r["total_ms"])
    return rows[:top]


def release_memory(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def random_batch(plan: dict, length: int, batch: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids drawn once per shape: inputs and next-token labels, (b, l) each."""
    ids = torch.randint(plan["vocab"], (batch, length + 1), device=device)  # (b, l + 1)
    return ids[:, :-1], ids[:, 1:]


def measure(name: str, plan: dict, device: str, profile: bool) -> list[dict]:
    cuda = device == "cuda"
    results = []
    for length, batch in plan["shapes"]:
        release_memory(cuda)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(0)
        row = {"model": name, "seq_len": length, "batch": batch}
        saved_norm = _norm_module().__dict__["_compiled_composition"]
        try:
            model, loss_fn = build(name, plan, device)
            row["params"] = sum(p.numel() for p in model.parameters())
            inputs, labels = random_batch(plan, length, batch, device)
            run = train_steps(model, loss_fn, inputs, labels, plan["warmup"], plan["steps"], cuda)
            row.update(**step_stats(run["step_ms"], batch, length), loss=run["loss"],
                       peak_gb=torch.cuda.max_memory_allocated() / 1e9 if cuda else None)
            if profile and cuda and "mamba" in name:
                row["profile"] = profile_step(model, loss_fn, inputs, labels)
        except torch.OutOfMemoryError as exc:
            row["error"] = f"out of memory: {str(exc).splitlines()[0]}"
        finally:
            model = loss_fn = None
            _norm_module()._compiled_composition = saved_norm
        results.append(row)
        print_row(row)
    return results


def print_row(row: dict) -> None:
    rate = f"{row['tokens_per_s']:>10,.0f} tok/s" if "tokens_per_s" in row else row.get("error", "")
    peak = f"{row['peak_gb']:.1f} GB" if row.get("peak_gb") is not None else ""
    print(f"{row['model']:>22} L={row['seq_len']:<6} b={row['batch']:<2} {rate} {peak}", flush=True)


def resident_bytes(model, optimizer) -> int:
    """Bytes a model keeps between steps: parameters, buffers and optimizer state (gradients are set to None)."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)


def measure_interleaved(names: list[str], plan: dict, device: str) -> list[dict]:
    """Every model of `names` held at once per shape and stepped in turn (one step each per round, the order
    rotated every round), so a slow stretch of the host falls on all models alike instead of on whichever ran
    then. Peak memory per model: the largest (allocated during its step − allocated before it) plus what it
    keeps between steps, i.e. what it would peak at alone."""
    cuda = device == "cuda"
    results = []
    for length, batch in plan["shapes"]:
        release_memory(cuda)
        inputs, labels = random_batch(plan, length, batch, device)
        runs = []
        for name in names:
            torch.manual_seed(0)
            row = {"model": name, "seq_len": length, "batch": batch, "interleaved": True}
            try:
                model, loss_fn = build(name, plan, device)
                row["params"] = sum(p.numel() for p in model.parameters())
                runs.append({"row": row, "model": model, "loss_fn": loss_fn, "times": [], "peak": 0,
                             "optimizer": make_optimizer(model, cuda)})
            except torch.OutOfMemoryError as exc:
                row["error"] = f"out of memory: {str(exc).splitlines()[0]}"
            results.append(row)
        for step in range(plan["warmup"] + plan["steps"]):
            for run in rotation([r for r in runs if "error" not in r["row"]], step):
                before = torch.cuda.memory_allocated() if cuda else 0
                keeps = resident_bytes(run["model"], run["optimizer"])
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                try:
                    elapsed, loss = timed_step(run["model"], run["loss_fn"], run["optimizer"], inputs, labels, cuda)
                except torch.OutOfMemoryError as exc:
                    run["row"]["error"] = f"out of memory: {str(exc).splitlines()[0]}"
                    continue
                if cuda:
                    run["peak"] = max(run["peak"], torch.cuda.max_memory_allocated() - before + keeps)
                if step >= plan["warmup"]:
                    run["times"].append(elapsed)
                run["row"]["loss"] = loss.item()
        for run in runs:
            if "error" not in run["row"]:
                run["row"].update(**step_stats(run["times"], batch, length),
                                  peak_gb=run["peak"] / 1e9 if cuda else None)
            print_row(run["row"])
        runs = None
    return results


def _norm_module():
    from mambalab.layers import norm

    return norm


def ratios(results: list[dict]) -> list[dict]:
    """Ours over official (Mamba) and ours over HF (Transformer) per shape, plus Mamba over our Transformer."""
    def rate(model, length):
        for r in results:
            if r["model"] == model and r["seq_len"] == length and "tokens_per_s" in r:
                return r
        return None

    out = []
    for length in sorted({r["seq_len"] for r in results}):
        ours, official = rate("mambalab-mamba", length), rate("official-mamba", length)
        ours2, official2 = rate("mambalab-mamba2", length), rate("official-mamba2", length)
        transformer, llama = rate("mambalab-transformer", length), rate("hf-llama", length)
        row = {"seq_len": length}
        if ours and official:
            row["mamba_speed_vs_official"] = ours["tokens_per_s"] / official["tokens_per_s"]
            if ours["peak_gb"] and official["peak_gb"]:
                row["mamba_memory_vs_official"] = ours["peak_gb"] / official["peak_gb"]
        if ours2 and official2:
            row["mamba2_speed_vs_official"] = ours2["tokens_per_s"] / official2["tokens_per_s"]
            if ours2["peak_gb"] and official2["peak_gb"]:
                row["mamba2_memory_vs_official"] = ours2["peak_gb"] / official2["peak_gb"]
        if ours and transformer:
            row["our_mamba_vs_our_transformer"] = ours["tokens_per_s"] / transformer["tokens_per_s"]
        if transformer and llama:
            row["our_transformer_vs_hf_llama"] = transformer["tokens_per_s"] / llama["tokens_per_s"]
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes on CPU (checks the loop, no timing claim)")
    parser.add_argument("--official", type=Path, default=Path("/tmp/official"),
                        help="where anchors/build_official.sh built the official package")
    parser.add_argument("--wait-official", type=float, default=0.0,
                        help="seconds to wait for that build (run beside this script) when the official model's turn comes")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from {MODELS}; our models may take suffixes {VARIANTS}")
    parser.add_argument("--lengths", default=None, help="comma-separated subset of the plan's lengths")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-kernel profile of each Mamba")
    parser.add_argument("--interleave", action="store_true",
                        help="hold every model at once per shape and step them in turn (rotating order), so host "
                             "noise falls on all alike; no profile; not with +eager-norm (a module-wide switch)")
    parser.add_argument("--out", default=None, help="JSON path or folder (default: $OUT, else benchmarks/results)")
    args = parser.parse_args()
    plan = dict(QUICK if args.quick else FULL)
    if args.lengths:
        keep = {int(v) for v in args.lengths.split(",")}
        plan["shapes"] = [s for s in plan["shapes"] if s[0] in keep]
    device = "cpu" if args.quick else "cuda"
    models = [m for m in args.models.split(",") if m]
    notes = []
    if args.quick:  # no official package on CPU
        models = [m for m in models if not m.startswith("official")]
    header = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "plan": {k: plan[k] for k in ("shapes", "warmup", "steps")}, "notes": notes}
    if args.interleave and any("eager-norm" in m for m in models):
        raise SystemExit("--interleave: +eager-norm switches RMSNorm for every model in the process; time it alone")
    results, runnable = [], []
    for name in models:
        if name.startswith("official") and not add_official_to_path(args.official, args.wait_official):
            notes.append(f"official mamba-ssm not built under {args.official}: skipped")
            continue
        if name == "official-mamba2":
            conv = importlib.util.find_spec("causal_conv1d") is not None
            notes.append(f"official Mamba-2 with causal_conv1d: {conv} (its memory-efficient path: {conv})")
        if args.interleave:
            runnable.append(name)
            continue
        results.extend(measure(name, plan, device, profile=not args.no_profile and "+" not in name))
        write_result("train_vs_official", {**header, "results": results, "ratios": ratios(results)}, args.out)
    if args.interleave:
        results = measure_interleaved(runnable, plan, device)
        write_result("train_vs_official", {**header, "interleaved": True, "results": results,
                                           "ratios": ratios(results)}, args.out)
    for row in ratios(results):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
