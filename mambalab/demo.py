"""`mambalab demo`: a two-minute tour on any CPU, no download.

1. the selective-scan backends agree with the for-loop reference (relative error per backend and dtype);
2. a small model prefills a prompt in parallel mode, then decodes token by token in recurrent mode, and
   the recurrent logits match the parallel forward;
3. the parallel scan against the per-timestep loop, timed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from mambalab.config import ModelConfig, SSMConfig
from mambalab.models.lm import LanguageModel
from mambalab.ops import backends
from mambalab.ops.selective_scan import OP, selective_scan


@dataclass
class DemoResult:
    agreement: list[dict]  # backend, dtype, forward/final-state relative error vs the float64 reference
    decode: dict  # prompt, generated tokens, max relative error recurrent vs parallel
    timing: list[dict]  # L, reference_ms, and <backend>_ms per fast CPU backend


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def random_scan_inputs(batch: int, dim: int, n: int, length: int, dtype=torch.float32, generator=None):
    """Inputs shaped like a Mamba layer's: Δ before softplus, A = -(1..N)·U(0.5, 1.5), u/B/C/z ~ N(0, 1)."""
    g = {"generator": generator}
    u = torch.randn(batch, dim, length, **g).to(dtype)
    delta = (torch.rand(batch, dim, length, **g) * 2 - 3).to(dtype)  # softplus(-3..-1) ≈ 0.05..0.3
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(dim, 1) * (0.5 + torch.rand(dim, 1, **g))
    B, C = (torch.randn(batch, n, length, **g).to(dtype) for _ in range(2))
    D = torch.randn(dim, **g)
    z = torch.randn(batch, dim, length, **g).to(dtype)
    bias = torch.randn(dim, **g) * 0.1
    return {
        "u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": bias, "delta_softplus": True
    }


def scan_agreement(generator=None) -> list[dict]:
    inputs = random_scan_inputs(2, 16, 8, 129, torch.float64, generator)
    ref_y, ref_h = selective_scan(**inputs, return_final_state=True, backend="reference")
    rows = []
    for name in backends.names(OP):
        if name == "reference" or not backends.is_available(OP, name):
            continue
        for dtype in (torch.float64, torch.float32):
            cast = {k: (v.to(dtype) if torch.is_tensor(v) and k in ("u", "delta", "B", "C", "z") else v)
                    for k, v in inputs.items()}
            try:
                y, h = selective_scan(**cast, return_final_state=True, backend=name)
            except (TypeError, ValueError, RuntimeError) as e:  # e.g. a GPU backend given CPU tensors
                rows.append({"backend": name, "dtype": str(dtype), "error": str(e)})
                continue
            rows.append({"backend": name, "dtype": str(dtype).replace("torch.", ""),
                         "y_rel_err": _rel(y, ref_y), "state_rel_err": _rel(h, ref_h)})
    return rows


@torch.no_grad()
def decode_demo(prompt_len: int = 24, new_tokens: int = 16) -> dict:
    cfg = ModelConfig(d_model=64, n_layer=2, vocab_size=256, ssm=SSMConfig(d_state=16))
    model = LanguageModel(cfg).eval()
    prompt = torch.randint(0, 256, (1, prompt_len))
    logits, state = model.prefill(prompt)
    tokens = [int(logits[0, -1].argmax())]
    step_logits = []
    for _ in range(new_tokens - 1):
        step_logits.append(model.step(torch.tensor(tokens[-1:]), state))
        tokens.append(int(step_logits[-1][0].argmax()))
    full = model(torch.cat([prompt, torch.tensor([tokens[:-1]])], dim=1))  # teacher-forced parallel forward
    errors = [_rel(s[0], full[0, prompt_len + i]) for i, s in enumerate(step_logits)]
    return {"prompt_len": prompt_len, "tokens": tokens, "max_rel_err_recurrent_vs_parallel": max(errors),
            "state_bytes": state.nbytes()}


def _time_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


FAST_CPU_BACKENDS = ("torch", "cpu")  # the parallel pure-PyTorch scan; the compiled kernels, where they build


def scan_timing(lengths=(256, 1024), generator=None) -> list[dict]:
    """Per length: the for-loop reference's ms and, per fast CPU backend available here, its ms."""
    names = [name for name in FAST_CPU_BACKENDS if backends.is_available(OP, name)]
    rows = []
    for length in lengths:
        inputs = random_scan_inputs(1, 256, 16, length, torch.float32, generator)
        row = {"L": length, "reference_ms": _time_ms(lambda x=inputs: selective_scan(**x, backend="reference"), 1)}
        for name in names:
            row[f"{name}_ms"] = _time_ms(lambda x=inputs, n=name: selective_scan(**x, backend=n), repeats=5)
        rows.append(row)
    return rows


def run_demo(seed: int = 0) -> DemoResult:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    return DemoResult(scan_agreement(generator), decode_demo(), scan_timing(generator=generator))
