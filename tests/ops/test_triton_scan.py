"""Triton selective-scan kernels vs the float64 for-loop reference, forward and gradients.

Without a GPU the kernels run in Triton's CPU interpreter (`mambalab.ops.triton.interpreter()`, entered for
this module only); shapes are small because the interpreter is slow. Every output the kernels allocate is
pre-filled with NaN, so an element they fail to write fails the comparison.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mambalab.ops.selective_scan import selective_scan
from tests.conftest import rel_error
from tests.ops.conftest import TRITON_DEVICE as DEVICE

pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("triton_kernels", "poisoned_kernel_outputs")]


def make_inputs(batch=2, dim=8, length=21, n=4, groups=1, dtype=torch.float32, seqlens=None, extras=True):
    """Fresh inputs; Δ around inverse_softplus(0.001..0.1) like a Mamba layer's. seqlens packs sequences."""
    bc = (batch, n, length) if groups == 1 else (batch, groups, n, length)
    args = {
        "u": torch.randn(batch, dim, length),
        "delta": torch.randn(batch, dim, length) * 0.5 - 3.0,
        "A": -torch.rand(dim, n) * n - 0.5,
        "B": torch.randn(*bc),
        "C": torch.randn(*bc),
    }
    if extras:
        args.update(D=torch.randn(dim), z=torch.randn(batch, dim, length), delta_bias=torch.randn(dim) * 0.3)
    rows = batch
    if seqlens is not None:
        args["cu_seqlens"] = torch.tensor([0, *torch.tensor(seqlens).cumsum(0).tolist()], dtype=torch.int32)
        rows = len(seqlens)
    args["initial_state"] = torch.randn(rows, dim, n)
    low = {k: v.to(dtype) for k, v in args.items() if k in ("u", "delta", "B", "C", "z")}
    return {**args, **low}


def compare(args, tol, softplus=True):
    """Triton vs the reference in float64 on the same inputs: y, final state and every input gradient."""
    fixed = {k: v for k, v in args.items() if not v.is_floating_point()}
    leaves = {k: v.detach().to(DEVICE).requires_grad_(True) for k, v in args.items() if v.is_floating_point()}
    leaves64 = {k: v.detach().double().requires_grad_(True) for k, v in args.items() if v.is_floating_point()}
    y, final = selective_scan(**leaves, **{k: v.to(DEVICE) for k, v in fixed.items()}, delta_softplus=softplus,
                              return_final_state=True, backend="triton")
    y64, final64 = selective_scan(**leaves64, **fixed, delta_softplus=softplus, return_final_state=True,
                                  backend="reference")
    gy, gh = torch.randn_like(y64), torch.randn_like(final64)
    torch.autograd.backward((y, final), (gy.to(y.dtype).to(DEVICE), gh.float().to(DEVICE)))
    torch.autograd.backward((y64, final64), (gy, gh))
    errors = {"y": rel_error(y, y64), "final_state": rel_error(final, final64)}
    errors.update({f"d{k}": rel_error(leaves[k].grad, leaves64[k].grad) for k in leaves})
    assert max(errors.values()) <= tol, errors


def test_all_options_fp32():
    """D, z, Δ bias + softplus, initial state; L=21 spans a partial last chunk in both directions."""
    compare(make_inputs(), 1e-5)


def test_groups_without_options_odd_n():
    """G=2 groups of B/C, no D/z/bias/softplus, N=3 (padded to 4 in the kernel), channels not a power of 2."""
    args = make_inputs(batch=1, dim=6, n=3, groups=2, extras=False)
    args["delta"] = torch.rand_like(args["delta"]) * 0.2  # Δ ≥ 0 without softplus
    compare(args, 1e-5, softplus=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    """16-bit u/Δ/B/C/z, float32 state arithmetic: within the 16-bit rounding of y and the gradients."""
    compare(make_inputs(batch=1, length=18, dtype=dtype), 1e-2)


def test_varlen_with_empty_sequence():
    """Packed sequences (one empty) reset the state at boundaries; per-sequence initial and final states."""
    compare(make_inputs(batch=1, length=30, seqlens=[11, 0, 17, 2]), 1e-5)


def test_non_contiguous_inputs():
    """The mixer's layouts: Δ and z channel-last views, B/C transposed out of one (b, l, 2n) tensor."""
    args = make_inputs(batch=1, length=17)
    args["delta"] = args["delta"].transpose(1, 2).contiguous().transpose(1, 2)
    args["z"] = args["z"].transpose(1, 2).contiguous().transpose(1, 2)
    bc = torch.cat([args["B"], args["C"]], dim=1).transpose(1, 2).contiguous()  # (b, l, 2n)
    args["B"], args["C"] = bc[..., :4].transpose(1, 2), bc[..., 4:].transpose(1, 2)
    assert not args["B"].is_contiguous() and not args["delta"].is_contiguous()
    compare(args, 1e-5)


@pytest.mark.parametrize("channels_last", [True, False])
def test_outputs_and_gradients_follow_the_input_layout(channels_last):
    """y, du, dΔ and dz are laid out like u, Δ and z (channels-last stays channels-last, so the mixer's
    projections take them without a copy), and the custom ops' fakes report the same strides as the kernels."""
    from mambalab.ops.selective_scan.triton_scan import _OPS

    args = {k: v.to(DEVICE) for k, v in make_inputs(batch=2, length=13).items()}
    for name in ("u", "delta", "z") if channels_last else ():
        args[name] = args[name].transpose(1, 2).contiguous().transpose(1, 2)
    leaves = {k: v.requires_grad_(True) for k, v in args.items()}
    y = selective_scan(**leaves, delta_softplus=True, backend="triton")
    grads = torch.autograd.grad(y, [leaves["u"], leaves["delta"], leaves["z"]], torch.randn_like(y))
    for t in (y, *grads):
        _, d, length = t.shape
        assert t.stride() == ((length * d, 1, d) if channels_last else (d * length, length, 1)), t.stride()
    op_args = (*(leaves[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")), None,
               True, True)
    torch.library.opcheck(_OPS.forward_op, op_args, test_utils=("test_faketensor",))


def test_expanded_output_gradients_and_empty_sequence():
    """Gradients of y.sum() + final.sum() arrive as stride-0 expanded tensors; L = 0 returns the initial state."""
    for length in (0, 5):
        args = {k: v.to(DEVICE).requires_grad_(True) for k, v in make_inputs(batch=2, length=length).items()}
        args64 = {k: v.detach().double().cpu().requires_grad_(True) for k, v in args.items()}
        outs = [selective_scan(**a, delta_softplus=True, return_final_state=True, backend=backend)
                for a, backend in ((args, "triton"), (args64, "reference"))]
        grads = [torch.autograd.grad(y.sum() + h.sum(), a["initial_state"])[0] for (y, h), a in zip(outs, (args, args64))]
        assert rel_error(outs[0][1], outs[1][1]) <= 1e-5 and rel_error(grads[0], grads[1]) <= 1e-5


@pytest.mark.parametrize("loss_of", ["y", "final_state"])
def test_gradient_of_one_output_only(loss_of):
    """A loss of y alone or of the final state alone: autograd hands the op no gradient (None, not zeros) for the
    other output and none for the checkpoints; the gradients still match the oracle's."""
    args = {k: v.to(DEVICE).requires_grad_(True) for k, v in make_inputs(batch=2, length=11).items()}
    args64 = {k: v.detach().double().cpu().requires_grad_(True) for k, v in args.items()}
    grads = []
    for a, backend in ((args, "triton"), (args64, "reference")):
        y, final = selective_scan(**a, delta_softplus=True, return_final_state=True, backend=backend)
        out = y if loss_of == "y" else final
        weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape).to(out.device)
        grads.append(torch.autograd.grad((out * weight).sum(), list(a.values()), materialize_grads=True))
    for name, g, g64 in zip(args, *grads):
        if loss_of == "final_state" and name in ("C", "D", "z"):  # the final state does not depend on them
            assert not g.any() and not g64.any(), name
        else:
            assert rel_error(g, g64) <= 1e-5, name


SLOW_ADJOINT = {"bwd_reuse_decay": False, "bwd_forward_adjoint": False}  # the adjoint before v6


@pytest.mark.parametrize(
    ("tiles", "groups", "seqlens"),
    [
        ({"bwd_block_d": 8, "bwd_chunk": 8, "bwd_partial_dbc": False, **SLOW_ADJOINT}, 1, None),
        ({"bwd_block_d": 8, "bwd_chunk": 8, "bwd_partial_dbc": True}, 1, [12, 7]),
        ({"chunk": 16, "bwd_block_d": 8, "bwd_chunk": 8, "bwd_partial_dbc": True, **SLOW_ADJOINT}, 1, [2, 0, 17]),
        ({"bwd_block_d": 8, "bwd_chunk": 4, "bwd_sub": 2, "bwd_partial_dbc": True}, 2, None),
        ({"bwd_block_d": 16, "bwd_chunk": 8, "bwd_sub": 4, "bwd_partial_dbc": False, "bwd_maxnreg": 128,
          **SLOW_ADJOINT}, 1, [5, 14]),
        ({"bwd_block_d": 8, "bwd_chunk": 8, "bwd_reuse_decay": True, "bwd_forward_adjoint": False}, 2, [9, 0, 10]),
        ({"chunk": 16, "bwd_block_d": 8, "bwd_chunk": 8, "bwd_reuse_decay": True, "bwd_forward_adjoint": True}, 1,
         None),
        ({"bwd_block_d": 16, "bwd_chunk": 4, "bwd_sub": 2, "bwd_reuse_decay": False, "bwd_forward_adjoint": True},
         1, [5, 0, 14]),
        ({"segment": 8, "bwd_partial_dbc": True}, 1, None),  # 3 segments of 8, 8 and 3 steps
        ({"segment": 16, "chunk": 16, "fwd_chunk": 8, "bwd_chunk": 8, "bwd_partial_dbc": False}, 2, None),
        ({"segment": 8, "bwd_reuse_decay": False, "bwd_forward_adjoint": False}, 1, [12, 7]),  # packed: no segments
    ],
)
def test_other_tile_configs(monkeypatch, tiles, groups, seqlens):
    """A forward chunk smaller than the checkpoint interval (8 or 16), a backward tile of a whole interval or of
    half of it (the later half from the recomputed mid-interval state), channel sub-blocks per thread (bwd_sub,
    with channels masked off inside a sub-block: 6 channels per group), dB/dC by atomics or by per-block
    partial sums, a register cap, the adjoint's decay read off the recomputed Ā of the next step, the adjoint as
    a forward scan over flipped steps, the sequence split into segments run side by side (also with initial and
    final state gradients: `compare` checks both)."""
    from mambalab.ops.selective_scan import triton_kernels as scan

    config = scan.ScanConfig(**{"block_d": 8, "chunk": 8, "fwd_chunk": 4, **tiles})
    monkeypatch.setattr(scan, "default_config", lambda *args, **kwargs: config)
    compare(make_inputs(batch=1 if seqlens else 2, dim=12 if groups > 1 else 8, length=19, groups=groups,
                        seqlens=seqlens), 1e-5)


@pytest.mark.parametrize("length", [16, 17, 40])
def test_segments_without_options(monkeypatch, length):
    """Segments with no D, z, Δ bias or softplus, and segments that end exactly at the sequence's end."""
    from mambalab.ops.selective_scan import triton_kernels as scan

    config = scan.ScanConfig(block_d=8, chunk=8, fwd_chunk=8, bwd_block_d=8, segment=8)
    monkeypatch.setattr(scan, "default_config", lambda *args, **kwargs: config)
    args = make_inputs(batch=2, dim=8, length=length, extras=False)
    args["delta"] = torch.rand_like(args["delta"]) * 0.1 + 1e-3  # Δ itself (no softplus): positive
    compare(args, 1e-5, softplus=False)


def test_segment_rule():
    """Segments only where the programs would not fill the SMs, at least MIN_SEGMENT steps, aligned."""
    from mambalab.ops.selective_scan import triton_kernels as scan

    assert scan.segment_length(32768, programs=96, sm_count=132) == 3008  # 11 segments
    assert scan.segment_length(8192, programs=192, sm_count=132) == 1408  # 6 segments
    assert scan.segment_length(2048, programs=768, sm_count=132) == 0  # 5.8 programs per SM: filled
    assert scan.segment_length(1024, programs=1, sm_count=132) == 512  # never shorter than MIN_SEGMENT
    assert scan.segment_length(32768, programs=96, sm_count=0) == 0  # the interpreter: no segments
    assert scan.default_config(1536, 16, 1, 1, 32768, sm_count=132, varlen=True).segment == 0
    with pytest.raises(ValueError, match="segment=12"):
        scan.ScanConfig(segment=12)


def test_backward_tile_validation():
    from mambalab.ops.selective_scan import triton_kernels as scan

    with pytest.raises(ValueError, match="bwd_chunk=4"):
        scan.ScanConfig(chunk=16, bwd_chunk=4)
    with pytest.raises(ValueError, match="bwd_sub=3"):
        scan.ScanConfig(bwd_block_d=8, bwd_sub=3)


def test_torch_compile_has_no_graph_break():
    """The custom ops trace under torch.compile(fullgraph=True); forward and backward match eager."""
    args = {k: v.to(DEVICE) for k, v in make_inputs(batch=1, length=9).items()}
    leaves = {k: v.requires_grad_(True) for k, v in args.items()}

    def f(u, delta, A, B, C, D, z, delta_bias, initial_state):
        y, h = selective_scan(u, delta, A, B, C, D, z, delta_bias, True, initial_state, True, backend="triton")
        return y.sum() + h.square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    eager_grads = torch.autograd.grad(f(**leaves), list(leaves.values()))
    compiled_grads = torch.autograd.grad(compiled(**leaves), list(leaves.values()))
    for a, b in zip(compiled_grads, eager_grads):
        assert rel_error(a, b) <= 1e-6


@pytest.mark.slow
def test_compiled_mamba_mixer_matches_reference():
    """torch.compile(fullgraph=True) over the whole Mamba mixer with the triton scan: no graph break, and the
    output and input gradient match the mixer running the for-loop reference."""
    from mambalab.config import SSMConfig
    from mambalab.layers.mamba import Mamba

    mixer = Mamba(16, SSMConfig(d_state=4, scan_backend="triton")).to(DEVICE)
    oracle = Mamba(16, SSMConfig(d_state=4, scan_backend="reference")).double()
    oracle.load_state_dict({k: v.double() for k, v in mixer.state_dict().items()})
    x = torch.randn(1, 9, 16, device=DEVICE, requires_grad=True)
    x64 = x.detach().double().cpu().requires_grad_(True)
    y = torch.compile(mixer, fullgraph=True, backend="aot_eager")(x)
    y64 = oracle(x64)
    (gx,) = torch.autograd.grad(y.sum(), x)
    (gx64,) = torch.autograd.grad(y64.sum(), x64)
    assert rel_error(y, y64) <= 1e-5 and rel_error(gx, gx64) <= 1e-5


def test_triton_unavailable_on_cpu_without_interpreter():
    """In a fresh process without a GPU or TRITON_INTERPRET: a clear BackendUnavailable; auto does not pick it."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: triton is available")
    code = (
        "import torch\n"
        "from mambalab.ops import backends\n"
        "from mambalab.ops.selective_scan import OP, resolve_backend\n"
        "assert resolve_backend('auto', torch.device('cpu')) in ('cpu', 'torch')\n"
        "try:\n"
        "    backends.get(OP, 'triton')\n"
        "except backends.BackendUnavailable as e:\n"
        "    print('unavailable:', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "unavailable:" in out.stdout and "CUDA GPU" in out.stdout
