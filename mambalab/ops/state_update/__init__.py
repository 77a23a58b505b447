"""The recurrent (RNN-mode, decode) steps: `selective_state_update`, one token of the selective SSM (the
decode-time counterpart of `selective_scan`), and `mixer_step`, one token of the Mamba-1 mixer between in_proj
and out_proj (Figure 3 of arXiv 2312.00752: conv window update, SiLU, x_proj, dt_proj, the state update, the
gate). The arguments are validated once here, then a named backend runs.

Backends (ops "selective_state_update" and "mixer_step" in `mambalab.ops.backends`): "reference" (torch,
reference.py; the oracle), "triton" (triton_step.py: one launch for the state update, two for the mixer step,
where the torch path takes eight kernels per layer even compiled). "auto": "triton" for CUDA tensors where the
kernels run, else "reference"; float64 always "reference".

An optional `state_batch_indices` (b,) maps batch row i to state slot state_batch_indices[i] (the states then
hold any number of slots), so a server decodes a subset of its state pool in place.
Official implementation: `selective_state_update` in https://github.com/state-spaces/mamba
"""

from __future__ import annotations

from mambalab.errors import InputError
from mambalab.ops import backends
from mambalab.ops.causal_conv1d import check_state_batch_indices
from mambalab.ops.checks import check_tensors
from mambalab.ops.triton import auto_chooser, resolve_for

OP = "selective_state_update"
MIXER_STEP_OP = "mixer_step"


def _load(name):
    def load():
        from mambalab.ops.state_update import reference

        return getattr(reference, name)

    return load


def _load_triton(op, name):
    def load():
        from mambalab.ops import triton as kernels

        kernels.require(op)
        from mambalab.ops.state_update import triton_step

        return getattr(triton_step, name)

    return load


backends.register(OP, "reference", _load("selective_state_update_reference"))
backends.register(OP, "triton", _load_triton(OP, "selective_state_update_triton"))
backends.set_auto(OP, auto_chooser(OP))
backends.register(MIXER_STEP_OP, "reference", _load("mixer_step_reference"))
backends.register(MIXER_STEP_OP, "triton", _load_triton(MIXER_STEP_OP, "mixer_step_triton"))
backends.set_auto(MIXER_STEP_OP, auto_chooser(MIXER_STEP_OP))


def selective_state_update(state, x_t, dt_t, A, B_t, C_t, D=None, z_t=None, dt_bias=None, dt_softplus=False,
                           state_batch_indices=None, backend="auto"):
    """h ← exp(Δ A) h + Δ B x; returns y = (C·h + D x) · silu(z)  (b, d) in x_t's dtype.

    state: (b, d, n) float32, float64 or 16-bit (or (slots, d, n) with state_batch_indices), updated in place:
    a 16-bit state is read, updated in float32 and rounded on store, y is computed before that rounding;
    x_t, dt_t, z_t: (b, d); A: (d, n); B_t, C_t: (b, n) or (b, g, n); D, dt_bias: (d,). Δ = dt_t (+ dt_bias) (then softplus)."""
    validate(state, x_t, dt_t, A, B_t, C_t, D, z_t, dt_bias, state_batch_indices)
    impl = backends.get(OP, resolve_for(OP, backend, x_t))
    return impl(state, x_t, dt_t, A, B_t, C_t, D, z_t, dt_bias, dt_softplus, state_batch_indices)


def mixer_step(x_t, z_t, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias,
               A_log, D=None, state_batch_indices=None, backend="auto"):
    """One token of the mixer: x_t, z_t (b, d) (the two halves of in_proj's output) -> y (b, d) in x_t's dtype.

    conv_state (b, d, w) and ssm_state (b, d, n) (or (slots, d, ·) with state_batch_indices), both updated in
    place (ssm_state float32, float64 or 16-bit, as in `selective_state_update`); conv_weight (d, w), conv_bias (d,); x_proj_weight (r + 2n, d); dt_proj_weight (d, r),
    dt_proj_bias (d,); A_log (d, n) (A = -exp(A_log)); D (d,)."""
    validate_mixer_step(x_t, z_t, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                        dt_proj_bias, A_log, D, state_batch_indices)
    impl = backends.get(MIXER_STEP_OP, resolve_for(MIXER_STEP_OP, backend, x_t))
    return impl(x_t, z_t, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                dt_proj_bias, A_log, D, state_batch_indices)


def _expect(op: str, cond: bool, message: str) -> None:
    if not cond:
        raise InputError(f"{op}: {message}")


def _shape(t):
    return None if t is None else tuple(t.shape)


def validate(state, x_t, dt_t, A, B_t, C_t, D=None, z_t=None, dt_bias=None, state_batch_indices=None) -> None:
    """Check `selective_state_update`'s arguments against state (b or slots, dim, N); an InputError names the
    bad one."""
    check_tensors(OP, {"state": state, "x_t": x_t, "dt_t": dt_t, "A": A, "B_t": B_t, "C_t": C_t, "D": D, "z_t": z_t,
                       "dt_bias": dt_bias})
    _expect(OP, state.dim() == 3, f"state must be (batch, dim, N), got shape {tuple(state.shape)}")
    check_state_batch_indices(OP, state_batch_indices, x_t)
    slots, dim, n = state.shape
    batch = slots if state_batch_indices is None else x_t.shape[0]
    for name, t in (("x_t", x_t), ("dt_t", dt_t), ("z_t", z_t)):
        _expect(OP, t is None or tuple(t.shape) == (batch, dim), f"{name} must be ({batch}, {dim}), got {_shape(t)}")
    _expect(OP, tuple(A.shape) == (dim, n), f"A must be ({dim}, {n}), got {tuple(A.shape)}")
    groups = B_t.shape[1] if B_t.dim() == 3 else 1
    expected = (batch, n) if B_t.dim() == 2 else (batch, groups, n)
    _expect(OP, tuple(B_t.shape) == expected and dim % groups == 0,
            f"B_t must be ({batch}, {n}) or ({batch}, G, {n}) with G dividing {dim}, got {tuple(B_t.shape)}")
    _expect(OP, C_t.shape == B_t.shape, f"C_t must have B_t's shape {tuple(B_t.shape)}, got {tuple(C_t.shape)}")
    _check_optional_vectors(OP, dim, {"D": D, "dt_bias": dt_bias})


def _check_optional_vectors(op: str, dim: int, tensors: dict) -> None:
    """Each of the optional per-channel parameters is None or (dim,) (the kernels read dim entries of it)."""
    for name, t in tensors.items():
        _expect(op, t is None or tuple(t.shape) == (dim,), f"{name} must be None or ({dim},), got {_shape(t)}")


def validate_mixer_step(x_t, z_t, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                        dt_proj_bias, A_log, D=None, state_batch_indices=None) -> None:
    """Check `mixer_step`'s arguments against x_t (b, d), dt_proj_weight's rank r and A_log's N."""
    op = MIXER_STEP_OP
    check_tensors(op, {"x_t": x_t, "z_t": z_t, "conv_state": conv_state, "ssm_state": ssm_state,
                       "conv_weight": conv_weight, "conv_bias": conv_bias, "x_proj_weight": x_proj_weight,
                       "dt_proj_weight": dt_proj_weight, "dt_proj_bias": dt_proj_bias, "A_log": A_log, "D": D})
    _expect(op, x_t.dim() == 2, f"x_t must be (batch, dim), got shape {tuple(x_t.shape)}")
    check_state_batch_indices(op, state_batch_indices, x_t)
    batch, dim = x_t.shape
    rank, n = dt_proj_weight.shape[1], A_log.shape[1]
    _expect(op, conv_state.dim() == 3 and conv_state.shape[1] == dim,
            f"conv_state must be (batch or slots, {dim}, width), got {tuple(conv_state.shape)}")
    rows = conv_state.shape[0] if state_batch_indices is not None else batch
    expected = {"conv_state": (conv_state, (rows, dim, conv_state.shape[-1])), "ssm_state": (ssm_state, (rows, dim, n)),
                "z_t": (z_t, (batch, dim)), "conv_weight": (conv_weight, (dim, conv_state.shape[-1])),
                "x_proj_weight": (x_proj_weight, (rank + 2 * n, dim)), "dt_proj_weight": (dt_proj_weight, (dim, rank)),
                "dt_proj_bias": (dt_proj_bias, (dim,)), "A_log": (A_log, (dim, n))}
    for name, (t, shape) in expected.items():
        _expect(op, tuple(t.shape) == shape, f"{name} must be {shape}, got {tuple(t.shape)}")
    _check_optional_vectors(op, dim, {"conv_bias": conv_bias, "D": D})
