"""Greedy decoding tokens/s of our `LanguageModel` beside official mamba-ssm's
`MambaLMHeadModel.generate(cg=True)` with the same weights, for Mamba-1 (the mamba-130m shape) and Mamba-2
(the mamba2-130m shape: 24 × 768, d_state 128, headdim 64, 1 group), bf16.

    # on the GPU machine: the official kernels first, causal_conv1d included as its users run it (about 8
    # minutes: a call of its own; build/ is git-ignored, so a warm machine keeps it for the next call)
    mkdir -p build && bash .official-src/build_official.sh $PWD/build/official --with-conv >build/log 2>&1
    PYTHONPATH=. python3 benchmarks/decode_vs_official.py --official build/official --wait-official 60
    PYTHONPATH=. python3 benchmarks/decode_vs_official.py --quick    # tiny shapes on CPU: our side only

Same weights: the official model is built with its own random init, as its users build it
(`MambaLMHeadModel(config, device="cuda", dtype=torch.bfloat16)`, seeded), written by its `save_pretrained`
(config.json in the state-spaces format + pytorch_model.bin) and read back by
`LanguageModel.from_pretrained` in bf16: the path of a user loading an official checkpoint. Without the
official package (--quick, or no build) a random model of ours is written in that format instead, so loading
and timing still run. Checks first, on one prompt: the prefill logits of both (relative error) and how many
of the first 16 greedy tokens agree before the first difference (bf16 rounding may flip a near-tie: reported,
not asserted).

Timing, per (model, batch): the same random 16-token prompts for both, 128 new tokens, greedy. Official:
`model.generate(ids, max_length=16 + 128, cg=True, top_k=1)`; its CUDA-graph cache is dropped before each
batch size, so every batch captures its graphs in its own warm-up call (its cache, sized by the largest batch
seen, is not meant to serve a smaller one). Ours: `mambalab.inference.generate.generate` with its CUDA-graph
decode, in each batch's section with the default float32 SSM state ("cuda-graph") and with the state in the
model's dtype ("cuda-graph+model-dtype-state", `state_dtype="model"`: bf16, half the bytes each decode step
reads and writes, as official keeps it); then, last and only while the run is under COMPILE_AFTER_S, with
`compile_step=True`. Official and our rows of a batch are timed against each other: one warm-up call each,
then `repeats` rounds of one call of each in a rotating order (benchmarks.common.time_interleaved), each call
between CUDA events after a synchronize, so that a slow stretch of the machine falls on all of them alike; the
median per row (the late rows are timed alone, after every section). tokens/s = batch · new tokens / seconds,
prefill included, for both; ratio = ours / official.
Each timed row also gives how many new tokens agree with the official ones before the first difference (mean
over rows), and ours the bytes of the inference state per row (`state_bytes_per_row`).

Writes decode_vs_official.json (to --out, else $OUT, else benchmarks/results/) after every section.
"""

from __future__ import annotations

import copy
import faulthandler
import gc
import json
import signal
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import add_official_to_path, base_parser, time_interleaved, write_result
from mambalab import LanguageModel
from mambalab.inference.cuda_graph import GraphStep, decode_step
from mambalab.inference.generate import generate
from mambalab.models.hf_config import load_config

FULL = {
    "d_model": 768, "n_layer": 24, "vocab": 50277,
    "mamba2_ssm": {"d_state": 128, "headdim": 64, "ngroups": 1},
    "batches": [1, 64], "prompt_len": 16, "new_tokens": 128, "check_tokens": 16, "repeats": 5,
    "dtype": "bfloat16", "device": "cuda", "variants": ["cuda-graph", "cuda-graph+model-dtype-state"],
    "late_variants": ["cuda-graph+compile"],
}
QUICK = {
    "d_model": 64, "n_layer": 2, "vocab": 256,
    "mamba2_ssm": {"d_state": 16, "headdim": 16, "ngroups": 1, "chunk_size": 16},
    "batches": [1, 4], "prompt_len": 16, "new_tokens": 8, "check_tokens": 8, "repeats": 2,
    "dtype": "float32", "device": "cpu", "variants": ["cuda-graph", "cuda-graph+model-dtype-state"],
    "late_variants": [],
}
MODELS = ("mamba", "mamba2")
# generate() options of our rows (CUDA graphs need CUDA: on CPU the "cuda-graph" rows run eagerly). "variants"
# are timed in each batch's section beside official, "late_variants" after every section (while the run is
# within --late-budget seconds).
VARIANTS = {"cuda-graph": {}, "cuda-graph+model-dtype-state": {"state_dtype": "model"},
            "cuda-graph+compile": {"compile_step": True}}
OFFICIAL = "official cg=True"
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def official_config(kind: str, plan: dict) -> dict:
    """The state-spaces config.json of `kind` ("mamba" or "mamba2"): every field of official `MambaConfig`, as
    its `save_pretrained` writes them."""
    ssm_cfg = {"layer": "Mamba1"} if kind == "mamba" else {"layer": "Mamba2", **plan["mamba2_ssm"]}
    return {"d_model": plan["d_model"], "d_intermediate": 0, "n_layer": plan["n_layer"],
            "vocab_size": plan["vocab"], "ssm_cfg": ssm_cfg, "attn_layer_idx": [], "attn_cfg": {},
            "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8,
            "tie_embeddings": True}


def official_importable() -> str | None:
    """None when official mamba-ssm imports, else why not."""
    try:
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel  # noqa: F401
    except Exception as e:  # noqa: BLE001 (a missing or broken baseline is reported, not fatal)
        return f"{type(e).__name__}: {e}"
    return None


def official_has_conv() -> bool:
    """Whether official mamba-ssm found causal_conv1d (its fused conv kernels)."""
    from mamba_ssm.modules import mamba2

    return mamba2.causal_conv1d_fn is not None


def build_official(config: dict, plan: dict):
    """Official `MambaLMHeadModel` of `config` with its random init (seeded), in the plan's device and dtype.
    Mamba-2's memory-efficient prefill needs causal_conv1d: without it the plain path (same function)."""
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    config = copy.deepcopy(config)
    if config["ssm_cfg"]["layer"] == "Mamba2" and not official_has_conv():
        config["ssm_cfg"]["use_mem_eff_path"] = False
    torch.manual_seed(0)
    dtype = getattr(torch, plan["dtype"])
    model = MambaLMHeadModel(MambaConfig(**config), device=plan["device"], dtype=dtype)
    return model.eval()


def write_checkpoint(config: dict, directory: Path, official=None) -> None:
    """An official-format checkpoint of `config` in `directory`: the official model's own `save_pretrained`;
    without one, config.json + pytorch_model.bin of a random model of ours under the official key names."""
    if official is not None:
        official.save_pretrained(str(directory))
        return
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    state = LanguageModel(load_config(directory)[0]).state_dict()
    state["backbone.embedding.weight"] = state.pop("backbone.embeddings.weight")  # the official name
    torch.save(state, directory / "pytorch_model.bin")


def official_generate(model, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The official greedy decode with CUDA graphs: the new tokens (b, new_tokens)."""
    sequences = model.generate(ids, max_length=ids.shape[1] + new_tokens, cg=True, top_k=1)  # (b, l + new)
    return sequences[:, ids.shape[1]:]


def ours_generate(model, ids: torch.Tensor, new_tokens: int, variant: str) -> list[list[int]]:
    """Our greedy decode (`generate`'s defaults: CUDA graphs on CUDA) with the variant's options."""
    return generate(model, ids, new_tokens, **VARIANTS[variant]).sequences


def agreeing_prefix(ours, official) -> list[int]:
    """Per row, how many leading tokens of `ours` equal those of `official` (both (b, n))."""
    ours, official = torch.as_tensor(ours).cpu(), torch.as_tensor(official).cpu()
    same = (ours == official).int().cumprod(dim=1)  # (b, n): 1 until the first difference
    return same.sum(dim=1).tolist()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def random_prompts(plan: dict, batch: int) -> torch.Tensor:
    return torch.randint(0, plan["vocab"], (batch, plan["prompt_len"]), device=plan["device"])  # (b, l)


@torch.no_grad()
def check(ours, official, plan: dict) -> dict:
    """Prefill logits of both on one prompt, and the agreeing prefix of their first greedy tokens. A failure
    is reported in the result (the timing still runs)."""
    if official is None:
        return {}
    ids = random_prompts(plan, 1)
    n = plan["check_tokens"]
    try:
        logits = ours(ids).float()  # (1, l, vocab); the official pads its vocabulary to a multiple of 8
        out = {"prefill_logits_rel_err": rel(logits, official(ids).logits[..., :logits.shape[-1]].float()),
               "greedy_tokens_checked": n,
               "greedy_tokens_agreeing": agreeing_prefix(ours_generate(ours, ids, n, plan["variants"][0]),
                                                         official_generate(official, ids, n))[0]}
    except Exception as e:  # noqa: BLE001 (reported beside the timings, not fatal)
        log(f"check failed: {type(e).__name__}: {e}")
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        official._decoding_cache = None  # captured for batch 1 and n tokens: the timing captures its own
    log(f"check: prefill logits rel. error {out['prefill_logits_rel_err']:.2e}; first {n} greedy tokens: "
        f"{out['greedy_tokens_agreeing']} agree before the first difference")
    return out


def timed_rows(kind: str, batch: int, plan: dict, calls: dict) -> tuple[list[dict], dict]:
    """Rows of every impl of `calls` {impl: fn} timed against each other (benchmarks.common.time_interleaved:
    one warm-up call each, then `repeats` rounds of one call each in a rotating order) and each impl's last
    output. An impl whose warm-up fails is reported in its row and left out of the rounds."""
    outputs, runnable, failed = {}, {}, {}
    for impl, fn in calls.items():
        try:
            outputs[impl] = fn()  # the warm-up: captures the CUDA graphs
        except Exception as e:  # noqa: BLE001 (a variant that cannot run here is reported, not fatal)
            failed[impl] = f"{type(e).__name__}: {e}"
            log(f"{kind} {impl} batch {batch}: failed: {failed[impl]}")
        else:
            runnable[impl] = lambda impl=impl, fn=fn: outputs.__setitem__(impl, fn())
    timings = time_interleaved(runnable, plan["device"], repeats=plan["repeats"], warmup=0)
    rows = []
    for impl in calls:
        row = {"model": kind, "impl": impl, "batch": batch}
        if impl in failed:
            rows.append({**row, "error": failed[impl]})
            continue
        timing = timings[impl]
        row.update(seconds=timing.median_s, tokens_per_s=batch * plan["new_tokens"] / timing.median_s,
                   timing=timing.as_dict(), timed_with=sorted(runnable))
        log(f"{kind:6s} {impl:38s} batch {batch:3d}: {row['tokens_per_s']:12,.0f} tokens/s")
        rows.append(row)
    return rows, outputs


def our_call(model, ids: torch.Tensor, plan: dict, variant: str):
    return lambda: ours_generate(model, ids, plan["new_tokens"], variant)


def describe_ours(row: dict, variant: str, plan: dict, model, ids: torch.Tensor) -> dict:
    """Our row with its state's bytes per row and, on CUDA, whether the decode step replayed a CUDA graph
    (False: the capture failed and it decoded eagerly)."""
    if "error" in row:
        return row
    options = VARIANTS[variant]
    _, state = model.prefill(ids, state_dtype=options.get("state_dtype"))
    row["state_bytes_per_row"] = state.nbytes() // ids.shape[0]
    if plan["device"] == "cuda":
        step = decode_step(model, state, compile_step=options.get("compile_step", False))
        row["cuda_graph_captured"] = isinstance(step, GraphStep)
    return row


def agreement(row: dict, tokens, reference) -> dict:
    """The row with how many of its new tokens agree with official's (mean over prompts) when both exist."""
    if "error" not in row and reference is not None and tokens is not None:
        agree = agreeing_prefix(tokens, reference)
        row["tokens_agreeing_with_official"] = sum(agree) / len(agree)
    return row


def batch_rows(kind: str, batch: int, plan: dict, variants: list[str], model, ids: torch.Tensor, official,
               reference=None) -> tuple[list[dict], object]:
    """The rows of official (when given) and of our `variants` on the same prompts, timed against each other;
    and official's tokens (the reference of our rows' agreement; `reference` when official is not timed here)."""
    calls = {}
    if official is not None:
        official._decoding_cache = None  # this batch captures its own graphs in its warm-up call
        calls[OFFICIAL] = lambda: official_generate(official, ids, plan["new_tokens"])
    for variant in variants:
        calls[f"mambalab {variant}"] = our_call(model, ids, plan, variant)
    rows, outputs = timed_rows(kind, batch, plan, calls)
    reference = outputs.get(OFFICIAL, reference)
    for row in rows:
        if row["impl"] != OFFICIAL:
            variant = row["impl"].removeprefix("mambalab ")
            describe_ours(agreement(row, outputs.get(row["impl"]), reference), variant, plan, model, ids)
    return rows, reference


def ratios(rows: list[dict]) -> list[dict]:
    """ours / official tokens/s per (model, batch, our variant)."""
    rate = {(r["model"], r["impl"], r["batch"]): r["tokens_per_s"] for r in rows if "tokens_per_s" in r}
    out = []
    for (kind, impl, batch), value in rate.items():
        official = rate.get((kind, OFFICIAL, batch))
        if impl != OFFICIAL and official:
            out.append({"model": kind, "batch": batch, "impl": impl, "ours_over_official": value / official})
    return out


def print_table(rows: list[dict]) -> None:
    ratio = {(r["model"], r["impl"], r["batch"]): r["ours_over_official"] for r in ratios(rows)}
    print(f"\n{'model':7s} {'batch':>5s}  {'impl':38s} {'tokens/s':>12s} {'ours/official':>14s}"
          f" {'agree':>7s}")
    for r in rows:
        rate = f"{r['tokens_per_s']:12,.0f}" if "tokens_per_s" in r else f"{'failed':>12s}"
        share = ratio.get((r["model"], r["impl"], r["batch"]))
        agree = r.get("tokens_agreeing_with_official")
        print(f"{r['model']:7s} {r['batch']:5d}  {r['impl']:38s} {rate} "
              f"{f'{share:.2f}' if share else '':>14s} {f'{agree:.1f}' if agree is not None else '':>7s}")


def find_official(plan: dict, root: Path, wait_s: float) -> tuple[bool, list[str]]:
    """(whether the official side runs, notes saying why not, or whether it found causal_conv1d)."""
    if plan["device"] != "cuda" or not torch.cuda.is_available():
        return False, [f"official mamba-ssm skipped: needs CUDA (device {plan['device']})"]
    if not add_official_to_path(root, wait_s):
        return False, [f"official mamba-ssm skipped: not built under {root}"]
    if (why := official_importable()) is not None:
        return False, [f"official mamba-ssm skipped: not importable ({why})"]
    conv = "found" if official_has_conv() else "missing: its torch conv fallback runs"
    return True, [f"official causal_conv1d {conv}"]


def parse_args(argv=None):
    parser = base_parser(__doc__, raw_description=True)
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes on CPU: our side only, no timing claim")
    parser.add_argument("--official", type=Path, default=Path("/tmp/official"),
                        help="where anchors/build_official.sh built the official package"
                             " (default /tmp/official)")
    parser.add_argument("--wait-official", type=float, default=0.0,
                        help="seconds to wait for that build, run beside this script (default 0)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {MODELS}")
    parser.add_argument("--batches", default=None,
                        help="comma-separated batch sizes (default 1,64; --quick 1,4)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per row (default 5; --quick 2)")
    parser.add_argument("--late-budget", type=float, default=120.0,
                        help="seconds into the run after which the late rows (the compiled step) are skipped"
                             " (default 120)")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; expected names from {MODELS}")
    args.models = models
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>` prints every thread's stack: where a stalled run waits
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    plan = dict(QUICK if args.quick else FULL)
    if args.batches:
        plan["batches"] = [int(b) for b in args.batches.split(",") if b]
    if args.repeats:
        plan["repeats"] = args.repeats
    use_official, notes = find_official(plan, args.official, args.wait_official)
    global T0
    T0 = time.time()  # the budget counts from here, the official build ready
    for note in notes:
        log(note)
    results = {"plan": dict(plan), "notes": notes, "checks": {}, "rows": [], "ratios": []}

    def save() -> None:
        results["ratios"] = ratios(results["rows"])
        results["wall_s"] = time.time() - T0
        write_result("decode_vs_official", results, args.out)

    ours_models, prompts, references = {}, {}, {}
    with torch.no_grad():
        for kind in args.models:
            config = official_config(kind, plan)
            official = build_official(config, plan) if use_official else None
            with tempfile.TemporaryDirectory() as tmp:
                write_checkpoint(config, Path(tmp) / kind, official)
                ours = ours_models[kind] = LanguageModel.from_pretrained(
                    Path(tmp) / kind, device=plan["device"], dtype=getattr(torch, plan["dtype"]))
            results["checks"][kind] = check(ours, official, plan)
            save()
            for batch in plan["batches"]:
                ids = prompts[kind, batch] = random_prompts(plan, batch)
                rows, references[kind, batch] = batch_rows(kind, batch, plan, plan["variants"], ours, ids, official)
                results["rows"].extend(rows)
                save()
            official = None
            gc.collect()
            if plan["device"] == "cuda":
                torch.cuda.empty_cache()
        for variant in plan["late_variants"]:
            for (kind, batch), ids in prompts.items():
                if time.time() - T0 > args.late_budget:
                    notes.append(f"mambalab {variant} {kind} batch {batch}: skipped, past {args.late_budget:g} s")
                    log(notes[-1])
                    continue
                rows, _ = batch_rows(kind, batch, plan, [variant], ours_models[kind], ids, None,
                                     references.get((kind, batch)))
                results["rows"].extend(rows)
                save()
    save()
    print_table(results["rows"])
    log("done")


if __name__ == "__main__":
    main()
