"""Decoding in recurrent (RNN) mode: throughput, cost vs cached-prefix length, time to first token.

    PYTHONPATH=. python benchmarks/decode.py            # GPU, one device call: writes $OUT/decode.{json,png}
    PYTHONPATH=. python benchmarks/decode.py --quick    # tiny models on CPU, < 60 s

(a) decode tokens/s at batch 1, 8, 64 (greedy, 16-token prompts, 128 new tokens, prefill included) for the
    mamba-130m shape with random weights in bf16: mambalab eager, replayed from CUDA graphs, and CUDA graphs of
    a torch.compile'd step, beside HF transformers' MambaForCausalLM with the same weights (through
    `save_pretrained`). Checks first: graph logits == eager logits, HF prefill logits == ours. The compiled
    variant runs last (batch 1 and 64; each batch size compiles once) and is skipped past COMPILE_AFTER_S;
    the JSON is rewritten after every section.
(b) per-token decode latency (batch 1) after a cached prefix of 128 … 16384 tokens, for Mamba and for the
    zoo's Transformer++ of matched size (transformer-125m) with its KV cache.
(c) time to first token for a system prompt of 1K … 16K tokens (8K is the headline) + a 32-token user turn:
    without a cache hit, with a hit in memory, and with a hit read from a `PrefixCache` directory.
Targets (ANCHORS.md): ≥2,800 tokens/s at batch 1 and ≥100,000 at batch 64; 16K-prefix latency within 3% of
512; TTFT with a hit flat within 10% from 1K to 16K. Results are printed, and written as JSON + PNG.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import base_parser, default_out, time_call, write_result
from mambalab import LanguageModel
from mambalab.inference.cuda_graph import GraphStep, decode_step
from mambalab.inference.generate import generate, prefill
from mambalab.inference.prefix_cache import PrefixCache
from mambalab.models.zoo import get_preset

FULL = {
    "mamba": "mamba-130m", "transformer": "transformer-125m", "dtype": "bfloat16", "device": "cuda",
    "batches": [1, 8, 64], "prompt_len": 16, "new_tokens": 128, "variants": ["eager", "graph", "graph+compile"],
    "prefixes": [128, 256, 512, 1024, 2048, 4096, 8192, 16384], "latency_steps": 128,
    "systems": [1024, 2048, 4096, 8192, 16384], "user_len": 32, "repeats": 5,
}
QUICK = {
    "mamba": "tiny-mamba", "transformer": "tiny-transformer", "dtype": "float32", "device": "cpu",
    "batches": [1, 8, 64], "prompt_len": 16, "new_tokens": 8, "variants": ["eager"],
    "prefixes": [128, 512, 2048], "latency_steps": 16, "systems": [256, 512, 1024], "user_len": 16, "repeats": 2,
}
T0 = time.time()
COMPILE_AFTER_S = 300  # the torch.compile variant is skipped when the run has already taken this long


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs (after one warm-up run)."""
    return time_call(fn, device, repeats=repeats, warmup=1).median_s


def build(preset: str, cfg: dict) -> LanguageModel:
    torch.manual_seed(0)
    model = LanguageModel(get_preset(preset))
    return model.to(device=cfg["device"], dtype=getattr(torch, cfg["dtype"])).eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def random_tokens(model, *shape) -> torch.Tensor:
    return torch.randint(0, model.config.vocab_size, shape, device=model.device)


# (a) ---------------------------------------------------------------------------------------------------------
VARIANTS = {"eager": {"use_cuda_graph": False}, "graph": {}, "graph+compile": {"compile_step": True}}


@torch.no_grad()
def verify(model, cfg: dict, variants: list[str], batch: int) -> dict:
    """Decode logits of graph variants against eager ones over 16 steps."""
    out = {}
    _, start = model.prefill(random_tokens(model, batch, cfg["prompt_len"]))
    for variant in variants:
        eager_state = start.clone()
        step = decode_step(model, start, **VARIANTS[variant])
        tokens, worst = random_tokens(model, batch), 0.0
        for _ in range(16):
            eager = model.step(tokens, eager_state)
            worst = max(worst, rel(step(tokens), eager))
            tokens = eager.argmax(-1)
        out[f"{variant}_captured"] = isinstance(step, GraphStep)  # False: capture failed, it ran eagerly
        out[f"{variant}_vs_eager_logits_rel_err"] = worst
        log(f"verify: {variant} (captured: {out[f'{variant}_captured']}) logits vs eager, max rel. error over"
            f" 16 steps {worst:.2e}")
    return out


@torch.no_grad()
def throughput(model, cfg: dict, variants: list[str], batches: list[int]) -> list[dict]:
    rows = []
    for variant in variants:
        for b in batches:
            prompts = random_tokens(model, b, cfg["prompt_len"])
            options = VARIANTS[variant]
            try:
                secs = timed(lambda p=prompts, o=options: generate(model, p, cfg["new_tokens"], **o),
                             cfg["device"], cfg["repeats"])
            except Exception as e:  # noqa: BLE001 (a variant that cannot run here is reported, not fatal)
                log(f"(a) {variant} batch {b}: failed: {type(e).__name__}: {e}")
                rows.append({"impl": f"mambalab {variant}", "batch": b, "error": f"{type(e).__name__}: {e}"})
                continue
            rows.append({"impl": f"mambalab {variant}", "batch": b, "seconds": secs,
                         "tokens_per_s": b * cfg["new_tokens"] / secs})
            log(f"(a) mambalab {variant:13s} batch {b:3d}: {rows[-1]['tokens_per_s']:12,.0f} tokens/s")
    return rows


@torch.no_grad()
def hf_throughput(model, cfg: dict, checks: dict) -> list[dict]:
    """The same weights in transformers' MambaForCausalLM (its slow path unless mamba-ssm is installed)."""
    from transformers import MambaForCausalLM

    from mambalab.models.pretrained import save_pretrained

    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        hf = MambaForCausalLM.from_pretrained(tmp, dtype=model.dtype).to(model.device).eval()
    ids = random_tokens(model, 2, cfg["prompt_len"])
    vocab = model.config.vocab_size
    checks["hf_vs_mambalab_prefill_logits_rel_err"] = rel(hf(ids).logits[..., :vocab].float(), model(ids).float())
    log(f"verify: HF prefill logits vs mambalab, rel. error {checks['hf_vs_mambalab_prefill_logits_rel_err']:.2e}")
    rows = []
    for b in cfg["batches"]:
        ids = random_tokens(model, b, cfg["prompt_len"])
        kwargs = {"attention_mask": torch.ones_like(ids), "do_sample": False, "pad_token_id": 0}
        hf.generate(ids, max_new_tokens=2, **kwargs)
        n = cfg["new_tokens"]
        secs = timed(lambda i=ids, k=kwargs, n=n: hf.generate(i, max_new_tokens=n, min_new_tokens=n, **k),
                     cfg["device"], 1)
        rows.append({"impl": "HF transformers", "batch": b, "seconds": secs,
                     "tokens_per_s": b * cfg["new_tokens"] / secs})
        log(f"(a) HF transformers        batch {b:3d}: {rows[-1]['tokens_per_s']:12,.0f} tokens/s")
    return rows


# (b) ---------------------------------------------------------------------------------------------------------
@torch.no_grad()
def latency_vs_prefix(model, cfg: dict, use_cuda_graph: bool) -> list[dict]:
    """Per-token decode time (batch 1) after a prefix of each length: the median of 3 runs of N steps."""
    rows = []
    for length in cfg["prefixes"]:
        _, state = prefill(model, [random_tokens(model, length).tolist()])
        step = decode_step(model, state, use_cuda_graph=use_cuda_graph)
        greedy_steps(step, random_tokens(model, 1), 8)
        n = cfg["latency_steps"]
        secs = timed(lambda s=step, n=n: greedy_steps(s, random_tokens(model, 1), n), cfg["device"], 3)
        rows.append({"prefix": length, "ms_per_token": 1e3 * secs / n, "state_bytes": step.state.nbytes()})
        log(f"(b) prefix {length:6d}: {rows[-1]['ms_per_token']:.3f} ms/token, state {step.state.nbytes():,} bytes")
    return rows


def greedy_steps(step, tokens: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):
        tokens = step(tokens).argmax(-1)
    return tokens


# (c) ---------------------------------------------------------------------------------------------------------
@torch.no_grad()
def time_to_first_token(model, cfg: dict) -> list[dict]:
    rows = []
    for length in cfg["systems"]:
        system = random_tokens(model, length).tolist()
        prompt = system + random_tokens(model, cfg["user_len"]).tolist()
        memory = PrefixCache(model)
        memory.prefill(system)
        with tempfile.TemporaryDirectory() as tmp:
            disk = PrefixCache(model, max_bytes=0, directory=tmp)  # keeps nothing in memory: every hit reads a file
            disk.prefill(system)
            row = {"system_tokens": length}
            for name, cache in (("miss", None), ("memory_hit", memory), ("disk_hit", disk)):
                secs = timed(lambda c=cache, p=prompt: first_token(model, p, c), cfg["device"], cfg["repeats"])
                row[f"{name}_ms"] = 1e3 * secs
        rows.append(row)
        log(f"(c) system prompt {length:6d}: TTFT miss {row['miss_ms']:.2f} ms, memory hit {row['memory_hit_ms']:.2f}"
            f" ms, disk hit {row['disk_hit_ms']:.2f} ms")
    return rows


def first_token(model, prompt: list[int], cache: PrefixCache | None):
    """Generate one token for `prompt`, resuming from the longest prefix in `cache` when given."""
    n, state = (0, None) if cache is None else cache.lookup(prompt)
    return generate(model, [prompt[n:]], 1, state=state)


# Report ------------------------------------------------------------------------------------------------------
def targets(results: dict, cfg: dict) -> dict:
    def best(batch):
        found = [r["tokens_per_s"] for r in results["throughput"] if r["batch"] == batch and "mambalab" in r["impl"]
                 and "tokens_per_s" in r]
        return max(found, default=0.0)

    lat = {r["prefix"]: r["ms_per_token"] for r in results["latency"]["mamba"]}
    ttft = {r["system_tokens"]: r["memory_hit_ms"] for r in results["ttft"]}
    short = 512 if 512 in lat else min(lat)
    out = {
        "batch1_tokens_per_s": {"value": best(1), "target": 2800},
        "batch64_tokens_per_s": {"value": best(64), "target": 100000},
        "latency_longest_over_512": {"value": lat[max(lat)] / lat[short], "target": 1.03},
        "ttft_hit_longest_over_shortest": {"value": ttft[max(ttft)] / ttft[min(ttft)], "target": 1.10},
    }
    for name, t in out.items():
        t["met"] = t["value"] >= t["target"] if "tokens_per_s" in name else t["value"] <= t["target"]
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    impls = sorted({r["impl"] for r in results["throughput"]})
    batches = sorted({r["batch"] for r in results["throughput"]})
    width = 0.8 / len(impls)
    for i, impl in enumerate(impls):
        values = {r["batch"]: r.get("tokens_per_s", 0) for r in results["throughput"] if r["impl"] == impl}
        axes[0].bar([j + i * width for j in range(len(batches))], [values.get(b, 0) for b in batches], width,
                    label=impl)
    axes[0].set(xticks=[j + 0.4 - width / 2 for j in range(len(batches))], xticklabels=[f"batch {b}" for b in batches],
                yscale="log", ylabel="tokens / s", title=f"(a) decode throughput, {results['config']['mamba']}")
    axes[0].legend(fontsize=8)
    for name, rows in results["latency"].items():
        axes[1].plot([r["prefix"] for r in rows], [r["ms_per_token"] for r in rows], "o-",
                     label=results["config"][name])
    axes[1].set(xscale="log", xlabel="cached prefix (tokens)", ylabel="ms / token (batch 1)",
                title="(b) decode latency vs prefix length")
    axes[1].set_ylim(bottom=0)
    axes[1].legend()
    label_log_axis(axes[1], results["config"]["prefixes"])
    for key, label in (("miss_ms", "no cache hit"), ("memory_hit_ms", "hit (memory)"), ("disk_hit_ms", "hit (disk)")):
        axes[2].plot([r["system_tokens"] for r in results["ttft"]], [r[key] for r in results["ttft"]], "o-", label=label)
    axes[2].set(xscale="log", yscale="log", xlabel="system prompt (tokens)", ylabel="time to first token (ms)",
                title="(c) TTFT with and without a prefix-cache hit")
    axes[2].legend()
    label_log_axis(axes[2], results["config"]["systems"])
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def label_log_axis(ax, values: list[int]) -> None:
    """Tick a log x axis at exactly `values`, labelled as plain numbers."""
    from matplotlib.ticker import NullLocator

    ax.set_xticks(values, [str(v) for v in values])
    ax.xaxis.set_minor_locator(NullLocator())


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0], out_help="output folder (default $OUT, else benchmarks/results)")
    parser.add_argument("--quick", action="store_true", help="tiny models on CPU (< 60 s)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd graph variant")
    args = parser.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    if args.no_compile:
        cfg["variants"] = [v for v in cfg["variants"] if "compile" not in v]
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --quick for the CPU version")
    out = Path(args.out) if args.out else default_out()
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(0)
    if args.quick:
        torch.set_num_threads(1)  # tiny models: intra-op threads only add synchronisation

    name = "decode_quick" if args.quick else "decode"
    results = {"config": cfg}

    def save() -> None:  # after every section, so a run cut short still leaves its numbers
        results["wall_s"] = time.time() - T0
        write_result(name, results, out)

    plain = [v for v in cfg["variants"] if "compile" not in v]
    compiled = [v for v in cfg["variants"] if "compile" in v]
    mamba = build(cfg["mamba"], cfg)
    results["checks"] = verify(mamba, cfg, plain[1:], batch=8)
    results["throughput"] = throughput(mamba, cfg, plain, cfg["batches"])
    save()
    results["throughput"] += hf_throughput(mamba, cfg, results["checks"])
    save()
    results["latency"] = {"mamba": latency_vs_prefix(mamba, cfg, use_cuda_graph=True)}
    save()
    results["ttft"] = time_to_first_token(mamba, cfg)
    save()
    transformer = build(cfg["transformer"], cfg)  # its KV cache grows by reallocation: eager decoding
    results["latency"]["transformer"] = latency_vs_prefix(transformer, cfg, use_cuda_graph=False)
    del transformer
    results["targets"] = targets(results, cfg)
    save()
    plot(results, out / f"{name}.png")
    if compiled and time.time() - T0 > COMPILE_AFTER_S:
        log(f"skipping {compiled}: {time.time() - T0:.0f} s spent, compiling could overrun the device call")
    elif compiled:  # last, being the slowest to set up: one compilation per batch size
        batches = [min(cfg["batches"]), max(cfg["batches"])]
        results["checks"].update(verify(mamba, cfg, compiled, batch=batches[0]))
        results["throughput"] += throughput(mamba, cfg, compiled, batches)
        results["targets"] = targets(results, cfg)
        save()
        plot(results, out / f"{name}.png")
    print(f"\ntarget{' (for the GPU run)' if args.quick else ''}              value        target   met")
    for key, t in results["targets"].items():
        print(f"{key:34s} {t['value']:12,.3f} {t['target']:12,.2f}   {t['met']}")
    print(f"wrote {out / name}.json and .png ({results['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
