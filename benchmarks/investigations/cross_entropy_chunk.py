"""The LM head's per-chunk softmax cross-entropy: torch ops vs the Triton kernel (ops/triton/cross_entropy.py)

    PYTHONPATH=. python3 benchmarks/investigations/cross_entropy_chunk.py --out $OUT    # needs a GPU

At mamba-130m's head (d 768, vocab 50277 padded to 50280) and a training step of 16384 tokens (b2 × L8192 or
b8 × L2048), bf16 logits:
- one chunk of `linear_cross_entropy` (CHUNK_LOGITS / 50280 rows): the torch softmax on the float32 upcast
  with the gradient cast back to bf16 (the reference path) vs the kernel at several column blocks, each
  checked against float64 first; effective bandwidth counts the kernel's 6 bytes per logit (two bf16 reads,
  one write);
- the whole op, forward and backward, `linear_cross_entropy` on 16384 tokens with the kernel and with the
  torch softmax, and its peak memory: the per-step change that benchmarks/notes/train.md predicts.
Times are CUDA-event medians (benchmarks.common.time_call).
"""

from __future__ import annotations

import torch

from benchmarks.common import base_parser, time_call, write_result
from mambalab.ops import linear_cross_entropy as lce
from mambalab.ops.triton.cross_entropy import cross_entropy_rows

VOCAB, PADDED, D_MODEL, TOKENS = 50277, 50280, 768, 16384
BLOCKS = (1024, 2048, 4096)


def torch_softmax(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference path of one chunk: loss sum and bf16 gradient from the float32 upcast."""
    total, grad = lce._softmax_cross_entropy(logits.float(), labels, VOCAB, lce.IGNORE_INDEX, True)
    return total, grad.to(logits.dtype)


def check(logits: torch.Tensor, labels: torch.Tensor, grad: torch.Tensor, loss: torch.Tensor) -> dict:
    """Relative errors of the kernel's loss sum and gradient against float64, on the first 64 rows."""
    x = logits[:64, :VOCAB].double()
    want = torch.nn.functional.cross_entropy(x, labels[:64], ignore_index=lce.IGNORE_INDEX, reduction="none")
    want_grad = torch.zeros(64, PADDED, dtype=torch.float64, device=logits.device)
    want_grad[:, :VOCAB] = x.softmax(-1) - torch.nn.functional.one_hot(labels[:64].clamp(0), VOCAB)
    want_grad *= (labels[:64] != lce.IGNORE_INDEX)[:, None]
    return {"loss_rel_err": ((loss[:64].double() - want).norm() / want.norm()).item(),
            "grad_rel_err": ((grad[:64].double() - want_grad).norm() / want_grad.norm()).item()}


def chunk_timings(repeats: int) -> dict:
    rows = lce.CHUNK_LOGITS // PADDED
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(rows, PADDED, device="cuda", generator=g) * 3).to(torch.bfloat16)  # (c, v_padded)
    labels = torch.randint(VOCAB, (rows,), device="cuda", generator=g)
    labels[::7] = lce.IGNORE_INDEX
    grad = torch.empty_like(logits)  # a separate buffer keeps the logits for every repeat (same bytes moved)
    out = {"rows": rows, "torch_ms": time_call(lambda: torch_softmax(logits, labels), "cuda",
                                               repeats=repeats).median_s * 1e3, "kernel": []}
    for block in BLOCKS:
        loss = cross_entropy_rows(logits, labels, VOCAB, lce.IGNORE_INDEX, grad=grad, block=block)
        def run(b=block):
            return cross_entropy_rows(logits, labels, VOCAB, lce.IGNORE_INDEX, grad=grad, block=b)

        timing = time_call(run, "cuda", repeats=repeats)
        ms = timing.median_s * 1e3
        out["kernel"].append({"block": block, "ms": ms, "tb_per_s": 6 * logits.numel() / (ms * 1e-3) / 1e12,
                              **check(logits, labels, grad, loss)})
        print(f"chunk of {rows} rows: block {block}: {ms:.3f} ms ({out['kernel'][-1]['tb_per_s']:.2f} TB/s), "
              f"torch {out['torch_ms']:.3f} ms", flush=True)
    return out


def step_timings(repeats: int) -> dict:
    """linear_cross_entropy forward + backward over a step's tokens under bf16 autocast, kernel vs torch."""
    g = torch.Generator(device="cuda").manual_seed(1)
    hidden = torch.randn(TOKENS, D_MODEL, device="cuda", generator=g).requires_grad_()
    weight = (torch.randn(PADDED, D_MODEL, device="cuda", generator=g) / D_MODEL**0.5).requires_grad_()
    labels = torch.randint(VOCAB, (TOKENS,), device="cuda", generator=g)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            total, _ = lce.linear_cross_entropy(hidden, weight, labels, VOCAB)
        total.backward()
        return total

    out = {}
    for name, triton_softmax in (("kernel", True), ("torch", False)):
        lce.TRITON_SOFTMAX = triton_softmax
        loss = step().item()
        torch.cuda.reset_peak_memory_stats()
        ms = time_call(step, "cuda", repeats=repeats).median_s * 1e3
        out[name] = {"ms": ms, "loss": loss, "peak_gb": torch.cuda.max_memory_allocated() / 1e9}
        print(f"linear_cross_entropy fwd+bwd, {TOKENS} tokens, {name} softmax: {ms:.2f} ms, "
              f"peak {out[name]['peak_gb']:.2f} GB, loss {loss:.4f}", flush=True)
    return out


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0], repeats=20)
    opts = parser.parse_args()
    result = {"vocab": VOCAB, "padded": PADDED, "d_model": D_MODEL, "tokens": TOKENS,
              "chunk": chunk_timings(opts.repeats)}
    write_result("cross_entropy_chunk", result, opts.out)
    result["step"] = step_timings(max(5, opts.repeats // 4))
    lce.TRITON_SOFTMAX = True
    write_result("cross_entropy_chunk", result, opts.out)


if __name__ == "__main__":
    main()
