"""Decode steps on a 16-bit SSM state (inference/state_dtype.py) against the same step on a float32 state,
for Mamba (`selective_state_update`, `mixer_step`) and Mamba-2 (`ssd_state_update`), reference (torch) and
Triton backends (Triton's interpreter on CPU), kernel outputs poisoned with NaN.

Why these bounds: the 16-bit state is read exactly (its values are those of the float32 state) and every
step computes in float32, so y, which is read from the updated state before it is rounded, is the float32
run's y up to float32 summation order (1e-6); the stored state is the float32 run's state rounded once:
to nearest by torch and on the GPU (half a unit in the last place), toward zero by Triton's CPU interpreter
(its float32 -> bfloat16 cast truncates), so within one unit in the last place: |h16 - h32| <= eps · |h32|
(eps = 2^-7 bf16, 2^-10 fp16) plus the smallest normal for values rounded into the subnormal range, and
exactly the torch cast where torch stores it. Computing in the 16-bit dtype instead would miss the y bound by
orders of magnitude (~eps)."""

from __future__ import annotations

import pytest
import torch

from mambalab.ops.ssd import ssd_state_update
from mambalab.ops.state_update import mixer_step, selective_state_update
from tests.conftest import rel_error
from tests.ops.conftest import TRITON_DEVICE

STATE_DTYPES = [torch.bfloat16, torch.float16]


def selective_inputs(batch, dim=70, n=5, groups=2):
    """`selective_state_update`'s arguments after the state: 70 channels span two 64-channel blocks."""
    return {"x_t": torch.randn(batch, dim), "dt_t": torch.randn(batch, dim), "A": -torch.rand(dim, n) - 0.5,
            "B_t": torch.randn(batch, groups, n), "C_t": torch.randn(batch, groups, n), "D": torch.randn(dim),
            "z_t": torch.randn(batch, dim), "dt_bias": torch.randn(dim), "dt_softplus": True}


def mixer_inputs(batch, dim=70, n=5, rank=6, width=4):
    """`mixer_step`'s arguments but the SSM state (the conv state is cloned per call by the case)."""
    return {"x_t": torch.randn(batch, dim), "z_t": torch.randn(batch, dim), "conv_state": torch.randn(batch, dim, width),
            "conv_weight": torch.randn(dim, width), "conv_bias": torch.randn(dim),
            "x_proj_weight": torch.randn(rank + 2 * n, dim) / dim**0.5,
            "dt_proj_weight": torch.randn(dim, rank) / rank**0.5, "dt_proj_bias": torch.randn(dim) * 0.5 - 3.0,
            "A_log": torch.randn(dim, n) * 0.5, "D": torch.randn(dim)}


def ssd_inputs(batch, heads=4, head_dim=5, groups=2, n=7):
    return {"x_t": torch.randn(batch, heads, head_dim), "dt_t": torch.randn(batch, heads),
            "A": -(torch.rand(heads) + 0.1), "B_t": torch.randn(batch, groups, n), "C_t": torch.randn(batch, groups, n),
            "D": torch.randn(heads, head_dim), "z_t": torch.randn(batch, heads, head_dim), "dt_bias": torch.randn(heads),
            "dt_softplus": True}


# op name -> (the op, its inputs, the shape of one row's state)
OPS = {
    "selective_state_update": (selective_state_update, selective_inputs, (70, 5)),
    "mixer_step": (mixer_step, mixer_inputs, (70, 5)),
    "ssd_state_update": (ssd_state_update, ssd_inputs, (4, 5, 7)),
}


def run_step(op: str, state: torch.Tensor, inputs: dict, backend: str, device, indices=None) -> torch.Tensor:
    """One step of `op` advancing `state` (on `device`) in place; tensors of `inputs` are copied there."""
    fn = OPS[op][0]
    args = {k: v.clone().to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    if op == "mixer_step":
        args["ssm_state"] = state
    else:
        args["state"] = state
    if indices is not None:
        args["state_batch_indices"] = indices.to(device)
    return fn(**args, backend=backend)


def assert_rounded_once(state16: torch.Tensor, state32: torch.Tensor, backend: str) -> None:
    """state16 is state32 rounded once to state16's dtype: the torch cast itself for the reference, within one
    ulp for a kernel (see the module docstring)."""
    if backend == "reference":
        assert torch.equal(state16, state32.to(state16.dtype))
        return
    info = torch.finfo(state16.dtype)
    a, b = state16.double().cpu(), state32.double().cpu()
    assert torch.isfinite(a).all()
    assert bool(((a - b).abs() <= info.eps * b.abs() + info.smallest_normal).all()), (a - b).abs().max()


def check_one_step(op: str, backend: str, state_dtype: torch.dtype, device, batch=3, slots=None):
    indices = None if slots is None else torch.tensor([4, 0, 2][:batch])
    inputs = OPS[op][1](batch)
    start = torch.randn(slots or batch, *OPS[op][2]).to(state_dtype)  # values exact in both dtypes
    state16, state32 = start.clone().to(device), start.float().to(device)
    y16 = run_step(op, state16, inputs, backend, device, indices)
    y32 = run_step(op, state32, inputs, backend, device, indices)
    state64 = start.double()
    y64 = run_step(op, state64, {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()},
                   "reference", "cpu", indices)
    assert state16.dtype == state_dtype
    assert rel_error(y16, y32) <= 1e-6
    assert rel_error(y16, y64) <= 1e-5
    assert_rounded_once(state16, state32, backend)
    if slots is not None:  # slots no row points at are untouched
        untouched = sorted(set(range(slots)) - set(indices.tolist()))
        assert torch.equal(state16[untouched].cpu(), start[untouched])


@pytest.mark.parametrize("state_dtype", STATE_DTYPES)
@pytest.mark.parametrize("op", list(OPS))
def test_reference_step_on_a_16bit_state_is_the_float32_step_rounded_on_store(op, state_dtype):
    check_one_step(op, "reference", state_dtype, "cpu")


@pytest.mark.triton
@pytest.mark.usefixtures("triton_kernels", "poisoned_kernel_outputs")
@pytest.mark.parametrize(("op", "state_dtype", "slots"), [
    ("selective_state_update", torch.bfloat16, None), ("selective_state_update", torch.float16, 5),
    ("mixer_step", torch.bfloat16, None),
    ("ssd_state_update", torch.bfloat16, None), ("ssd_state_update", torch.float16, 5),
])
def test_triton_step_on_a_16bit_state_is_the_float32_step_rounded_on_store(op, state_dtype, slots):
    check_one_step(op, "triton", state_dtype, TRITON_DEVICE, slots=slots)


@pytest.mark.parametrize("op", ["selective_state_update", "ssd_state_update"])
def test_rounding_does_not_accumulate_past_one_rounding_per_step(op):
    """Over k steps each store rounds once and exp(ΔA) <= 1 never amplifies an earlier rounding: the bf16 run's
    outputs stay within k · eps/2 of the float32 run's (here k = 8: 3 %)."""
    steps, start = 8, torch.randn(3, *OPS[op][2]).to(torch.bfloat16)
    state16, state32 = start.clone(), start.float()
    ys16, ys32 = [], []
    for _ in range(steps):
        inputs = OPS[op][1](3)
        ys16.append(run_step(op, state16, inputs, "reference", "cpu"))
        ys32.append(run_step(op, state32, inputs, "reference", "cpu"))
    bound = steps * torch.finfo(torch.bfloat16).eps / 2
    assert rel_error(torch.stack(ys16), torch.stack(ys32)) <= bound
    assert rel_error(state16, state32) <= bound


@pytest.mark.triton
@pytest.mark.usefixtures("triton_kernels", "poisoned_kernel_outputs")
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_scans_continue_from_a_16bit_state_as_from_its_float32_values(backend):
    """A prefill continuing a 16-bit state (a cached prefix, a chunked prompt): the scans read the initial
    state exactly, so y and the final state are those from the same values in float32."""
    from mambalab.ops.selective_scan import selective_scan
    from mambalab.ops.ssd import ssd_scan
    from tests.ops.ssd_cases import make_inputs

    device = TRITON_DEVICE if backend == "triton" else "cpu"
    batch, dim, n, length = 2, 70, 5, 9
    scan_args = {"u": torch.randn(batch, dim, length), "delta": torch.randn(batch, dim, length),
                 "A": -torch.rand(dim, n) - 0.5, "B": torch.randn(batch, n, length), "C": torch.randn(batch, n, length),
                 "D": torch.randn(dim), "z": torch.randn(batch, dim, length), "delta_bias": torch.randn(dim)}
    ssd_args = make_inputs(batch, 11, 4, 5, 2, 7, dtype=torch.float32)
    start_scan = torch.randn(batch, dim, n).to(torch.bfloat16)
    start_ssd = ssd_args.pop("initial_state").to(torch.bfloat16)
    for op, args, start in ((selective_scan, scan_args, start_scan), (ssd_scan, ssd_args, start_ssd)):
        args = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
        if op is selective_scan:
            args["delta_softplus"] = True
        y16, final16 = op(**args, initial_state=start.to(device), return_final_state=True, backend=backend)
        y32, final32 = op(**args, initial_state=start.float().to(device), return_final_state=True, backend=backend)
        assert rel_error(y16, y32) <= 1e-6 and rel_error(final16, final32) <= 1e-6
        assert final16.dtype == torch.float32  # rounded to the state dtype by the layer that stores it
