"""Study (a): are the parallel (CNN / scan) and recurrent (RNN) modes really equal in floating point?

For each dtype and length, the same computation runs in each mode and is compared with a float64 oracle:

- op level, Mamba: `selective_scan` (parallel, the default backend) and a loop of `selective_state_update`
  (recurrent) against the for-loop reference in float64;
- logits level, the comparison's Mamba and matched S4D models (random init, the preset's size): the parallel
  forward (the scan; for S4D the FFT convolution "cnn" and the scan "rnn") and token-by-token `step`,
  against `step` in float64.

Error per position t: ‖out_t − ref_t‖ / ‖ref_t‖ over batch and channels; each row reports its max and mean
over positions, so the growth with length is visible.
"""

from __future__ import annotations

import logging

import torch

from mambalab.experiments.families import family_config
from mambalab.experiments.presets import ModelSize, PrecisionStudy
from mambalab.models.lm import LanguageModel
from mambalab.ops.selective_scan import selective_scan
from mambalab.ops.state_update import selective_state_update

log = logging.getLogger(__name__)

DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
VOCAB = 64


def position_errors(out: torch.Tensor, ref: torch.Tensor, time_dim: int) -> dict[str, float]:
    """Max and mean over positions of ‖out_t − ref_t‖ / ‖ref_t‖ (norms over all other dims), in float64."""
    out, ref = out.double().movedim(time_dim, 0).flatten(1), ref.double().movedim(time_dim, 0).flatten(1)
    err = (out - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-300)  # (l,)
    if not torch.isfinite(err).all():
        return {"max_rel_error": float("inf"), "mean_rel_error": float("inf")}
    return {"max_rel_error": err.max().item(), "mean_rel_error": err.mean().item()}


def scan_inputs(
    length: int, batch: int, dim: int, n: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """float64 inputs of a Mamba-like scan: Δ near softplus's working range, A = -(1..N) (S4D-Real)."""

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    return {
        "u": randn(batch, dim, length),  # (b, d, l)
        "delta": randn(batch, dim, length) - 2.0,  # (b, d, l)
        "A": -torch.arange(1, n + 1, dtype=torch.float64).repeat(dim, 1),  # (d, n)
        "B": randn(batch, n, length),  # (b, n, l)
        "C": randn(batch, n, length),  # (b, n, l)
        "D": randn(dim),
        "z": randn(batch, dim, length),  # (b, d, l)
        "delta_bias": randn(dim) * 0.5,
    }


def scan_recurrent(x: dict[str, torch.Tensor]) -> torch.Tensor:
    """The scan as a loop of one-token state updates: the decode path. Returns y (b, d, l)."""
    u = x["u"]
    state_dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    state = u.new_zeros(u.shape[0], u.shape[1], x["A"].shape[1], dtype=state_dtype)  # (b, d, n)
    ys = [
        selective_state_update(
            state,
            u[..., t],
            x["delta"][..., t],
            x["A"],
            x["B"][..., t],
            x["C"][..., t],
            x["D"],
            x["z"][..., t],
            dt_bias=x["delta_bias"],
            dt_softplus=True,
        )
        for t in range(u.shape[-1])
    ]
    return torch.stack(ys, dim=-1)  # (b, d, l)


def _cast_scan_inputs(x: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Activations in `dtype`; A, D and the Δ bias stay float32 (float64 for float64), as in the model."""
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return {k: v.to(param_dtype if k in ("A", "D", "delta_bias") else dtype) for k, v in x.items()}


def op_rows(study: PrecisionStudy, dim: int, n: int, seed: int) -> list[dict]:
    rows = []
    for length in study.lengths:
        x64 = scan_inputs(length, study.batch_size, dim, n, torch.Generator().manual_seed(seed + length))
        ref = selective_scan(**x64, delta_softplus=True, backend="reference")  # (b, d, l) float64 oracle
        for dtype_name in study.dtypes:
            x = _cast_scan_inputs(x64, DTYPES[dtype_name])
            outputs = {
                "parallel": lambda x=x: selective_scan(**x, delta_softplus=True),
                "recurrent": lambda x=x: scan_recurrent(x),
            }
            for mode, fn in outputs.items():
                rows.append(
                    {
                        "model": "mamba",
                        "level": "op",
                        "mode": mode,
                        "dtype": dtype_name,
                        "length": length,
                        **_measured(fn, ref, time_dim=-1),
                    }
                )
    return rows


def _measured(fn, ref: torch.Tensor, time_dim: int) -> dict:
    try:
        with torch.no_grad():
            return position_errors(fn(), ref, time_dim)
    except (RuntimeError, NotImplementedError, ValueError) as e:  # a dtype a kernel does not support here
        log.warning("precision: %s", e)
        return {"max_rel_error": None, "mean_rel_error": None, "error": f"{type(e).__name__}: {e}"}


def _stepped_logits(model: LanguageModel, ids: torch.Tensor) -> torch.Tensor:
    state = model.allocate_state(ids.shape[0])
    return torch.stack([model.step(ids[:, t], state) for t in range(ids.shape[1])], dim=1)  # (b, l, v)


# The parallel modes of each family: Mamba's scan; S4D's FFT convolution ("cnn") and its scan ("rnn").
PARALLEL_MODES = {
    "mamba": {"parallel": {}},
    "s4d": {"cnn": {"s4d": {"mode": "cnn"}}, "rnn": {"s4d": {"mode": "rnn"}}},
}


def logits_rows(study: PrecisionStudy, size: ModelSize, seed: int) -> list[dict]:
    """The matched Mamba and S4D models of the comparison, random init, in every dtype and mode."""
    rows = []
    for family, modes in PARALLEL_MODES.items():
        torch.manual_seed(seed)
        model64 = LanguageModel(family_config(family, size, VOCAB)).double().eval()
        weights = model64.state_dict()
        for length in study.lengths:
            ids = torch.randint(
                0, VOCAB, (study.batch_size, length), generator=torch.Generator().manual_seed(seed)
            )
            with torch.no_grad():
                ref = _stepped_logits(model64, ids)  # (b, l, v) float64 recurrent oracle
            for dtype_name in study.dtypes:
                for mode, overrides in (*modes.items(), ("recurrent", {})):
                    model = LanguageModel(family_config(family, size, VOCAB, overrides)).eval()
                    model.load_state_dict(weights)
                    model = model.to(DTYPES[dtype_name])
                    fn = (
                        (lambda m=model, ids=ids: _stepped_logits(m, ids))
                        if mode == "recurrent"
                        else (lambda m=model, ids=ids: m(ids))
                    )
                    rows.append(
                        {
                            "model": family,
                            "level": "logits",
                            "mode": mode,
                            "dtype": dtype_name,
                            "length": length,
                            **_measured(fn, ref, time_dim=1),
                        }
                    )
    return rows


def precision_study(study: PrecisionStudy, size: ModelSize, seed: int) -> list[dict]:
    """All rows of study (a): op-level scan errors and logits-level errors for Mamba and S4D."""
    d_inner = 2 * size.d_model
    return op_rows(study, d_inner, size.d_state, seed) + logits_rows(study, size, seed)
