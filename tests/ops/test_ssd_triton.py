"""ssd_scan and ssd_state_update backend "triton" against the float64 for-loop: compiled on a GPU, in Triton's
interpreter on CPU (tiny shapes), with every kernel output poisoned with NaN before the kernels run."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mambalab.errors import ConfigError
from mambalab.ops import backends
from mambalab.ops.ssd import OP, STEP_OP, ssd_scan, ssd_state_update, triton_ssd
from mambalab.ops.ssd.triton_ssd import STATE_MODES, STATE_SIDES, SSDConfig, ssd_triton
from tests.conftest import rel_error
from tests.ops import ssd_cases
from tests.ops.conftest import TRITON_DEVICE
from tests.ops.ssd_cases import check_against_reference, grads_of, make_inputs, requiring_grad, run

pytestmark = pytest.mark.usefixtures("triton_kernels", "poisoned_kernel_outputs")

BOUNDS = {torch.float64: (1e-9, 1e-7), torch.float32: (1e-5, 3e-5)}


@pytest.fixture(params=STATE_MODES)
def state_mode(request, monkeypatch):
    """Both ways of getting the chunk states and adjoints (SSDConfig.state_mode) under ssd_scan's default tiles."""
    default = triton_ssd.default_config
    monkeypatch.setattr(triton_ssd, "default_config",
                        lambda chunk_size: dataclasses.replace(default(chunk_size), state_mode=request.param))
    return request.param


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("options,length,chunk_size", [
    (frozenset({"D", "z", "dt_bias", "softplus", "initial_state"}), 37, 16),  # l not a multiple of the chunk
    (frozenset(), 16, 16),  # exactly one chunk, nothing optional
    (frozenset({"z", "initial_state"}), 50, 64),  # chunk_size 64: one partial chunk
])
def test_matches_reference(dtype, options, length, chunk_size, state_mode):
    out_bound, grad_bound = BOUNDS[dtype]
    # g < h, p and n odd
    kw = make_inputs(2, length, 4, 3, 2, 5, options, dtype=dtype)
    check_against_reference("triton", kw, out_bound, grad_bound, device=TRITON_DEVICE, chunk_size=chunk_size)


@pytest.mark.parametrize("name", ["dt", "A", "B", "C", "D", "initial_state"])
def test_one_float64_input_among_float32_ones(name):
    """Computed in float64 (final state float64) when one of dt, A, B, C is, as the other backends are."""
    kw = ssd_cases.with_one_float64(make_inputs(1, 19, 2, 3, 1, 4, frozenset({"D", "softplus", "initial_state"})), name)
    check_against_reference("triton", kw, *BOUNDS[torch.float32], device=TRITON_DEVICE, chunk_size=16)


def test_d_per_channel_blocks_of_channels_and_state(state_mode):
    """p and n above one tile (p 40 > the backward's 32-channel blocks, n 20 pads to 32; p·n 800 = one and a
    half blocks of the state passing), D of shape (h, p)."""
    kw = make_inputs(1, 21, 2, 40, 1, 20, d_matrix=True)
    check_against_reference("triton", kw, *BOUNDS[torch.float64], device=TRITON_DEVICE, chunk_size=16)


def test_continuation_and_final_state_only_gradient(state_mode):
    """Two calls chained through the final state equal one call; a loss on the final state alone (no dy)
    gives the same gradients as the reference."""
    kw = make_inputs(1, 40, 2, 3, 1, 5, frozenset({"D", "softplus", "dt_bias"}))
    kw = {k: v.to(TRITON_DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    y_full, h_full = run("triton", kw, return_final_state=True, chunk_size=16)
    head = {k: (v[:, :23] if k in ("x", "dt", "B", "C") else v) for k, v in kw.items()}
    tail = {k: (v[:, 23:] if k in ("x", "dt", "B", "C") else v) for k, v in kw.items()}
    y1, h1 = run("triton", head, return_final_state=True, chunk_size=16)
    y2, h2 = run("triton", tail, initial_state=h1, return_final_state=True, chunk_size=16)
    assert rel_error(torch.cat([y1, y2], dim=1), y_full) <= 1e-12
    assert rel_error(h2, h_full) <= 1e-12
    ref_kw, tri_kw = requiring_grad(kw), requiring_grad(kw)
    _, h_ref = run("reference", ref_kw, return_final_state=True)
    _, h_tri = run("triton", tri_kw, return_final_state=True, chunk_size=16)
    gh = torch.randn_like(h_ref)
    names = ["x", "dt", "A", "B", "dt_bias"]  # the final state does not depend on C
    g_ref = torch.autograd.grad((h_ref * gh).sum(), [ref_kw[k] for k in names])
    g_tri = torch.autograd.grad((h_tri * gh).sum(), [tri_kw[k] for k in names])
    for name, a, b in zip(names, g_tri, g_ref, strict=True):
        assert rel_error(a, b) <= 1e-9, name


def test_strided_inputs_like_a_split_projection():
    """x, z, B, C, dt as slices of one (b, l, ·) projection, as the Mamba-2 mixer produces them."""
    b, length, h, p, g, n = 2, 19, 2, 4, 1, 3
    width = 2 * h * p + 2 * g * n + h
    proj = torch.randn(b, length, width, dtype=torch.float64, device=TRITON_DEVICE)
    z, x, B, C, dt = torch.split(proj, [h * p, h * p, g * n, g * n, h], dim=-1)
    args = (x.view(b, length, h, p), dt, -torch.rand(h, dtype=torch.float64, device=TRITON_DEVICE) - 0.1,
            B.view(b, length, g, n), C.view(b, length, g, n))
    kw = {"z": z.view(b, length, h, p), "dt_softplus": True, "chunk_size": 16}
    y = ssd_scan(*args, **kw, backend="triton")
    y_ref = ssd_scan(*(t.cpu() for t in args), **{**kw, "z": kw["z"].cpu()}, backend="reference")
    assert rel_error(y, y_ref) <= 1e-12


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_16_bit_inputs(low):
    kw = make_inputs(2, 40, 4, 16, 2, 16, dtype=torch.float32)
    kw = {k: (v.to(low) if k in ("x", "B", "C", "z") else v) for k, v in kw.items()}
    y_ref = run("reference", kw)
    y, h = run("triton", {k: v.to(TRITON_DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kw.items()},
               return_final_state=True, chunk_size=16)
    assert y.dtype == low and h.dtype == torch.float32
    assert rel_error(y, y_ref) <= 2e-2


def test_16_bit_decay_gradients():
    """dA and dΔ from 16-bit products (float16: interpreted, Triton multiplies float16 tiles as float16, as the
    GPU does bfloat16 ones) against float64 on the same rounded inputs. The in-chunk pairs' part of dΔ is a
    difference of two sums dominated by the pairs near the diagonal: with each sum's operands rounded
    differently, this difference kept 16-bit rounding: over six seeds here, dA 0.6-3.3e-2 and d(dt_bias) 0.3-2e-2
    against ≤ 6.3e-4 and ≤ 5.1e-4 with both from one rounded product (27x dA on the GPU)."""
    kw = make_inputs(1, 150, 4, 32, 2, 64, dtype=torch.float32)
    kw = {k: (v.to(torch.float16) if k in ("x", "B", "C", "z") else v) for k, v in kw.items()}
    ref_kw = requiring_grad({k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    tri_kw = requiring_grad({k: v.to(TRITON_DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    y_ref, h_ref = run("torch", ref_kw, return_final_state=True)
    y, h = run("triton", tri_kw, return_final_state=True)
    gy, gh = torch.randn_like(y_ref), torch.randn_like(h_ref)
    g_ref = grads_of(ref_kw, y_ref, h_ref, gy, gh)
    g = grads_of(tri_kw, y, h, gy.to(TRITON_DEVICE, y.dtype), gh.to(TRITON_DEVICE, h.dtype))
    for name, bound in (("A", 3e-3), ("dt", 1e-3), ("dt_bias", 2e-3)):
        assert rel_error(g[name], g_ref[name]) <= bound, name


def test_registered_and_chosen_on_cuda():
    assert backends.is_available(OP, "triton") and backends.is_available(STEP_OP, "triton")
    if TRITON_DEVICE == "cuda":
        assert backends.resolve(OP, "auto", torch.device("cuda")) == "triton"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("pool", [False, True])
def test_state_update_matches_reference(dtype, pool):
    batch, heads, head_dim, groups, n = 3, 4, 5, 2, 7
    slots = 6 if pool else batch
    state = torch.randn(slots, heads, head_dim, n, dtype=dtype)
    args = {
        "x_t": torch.randn(batch, heads, head_dim, dtype=dtype), "dt_t": torch.randn(batch, heads, dtype=dtype),
        "A": -(torch.rand(heads, dtype=dtype) + 0.1), "B_t": torch.randn(batch, groups, n, dtype=dtype),
        "C_t": torch.randn(batch, groups, n, dtype=dtype), "D": torch.randn(heads, head_dim, dtype=dtype),
        "z_t": torch.randn(batch, heads, head_dim, dtype=dtype), "dt_bias": torch.randn(heads, dtype=dtype),
        "dt_softplus": True,
    }
    indices = torch.tensor([4, 0, 2]) if pool else None
    ref_state = state.clone()
    y_ref = ssd_state_update(ref_state, **args, state_batch_indices=indices, backend="reference")
    dev = {k: v.to(TRITON_DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    tri_state = state.to(TRITON_DEVICE)
    y = ssd_state_update(tri_state, **dev, state_batch_indices=None if indices is None else indices.to(TRITON_DEVICE),
                         backend="triton")
    bound = 1e-12 if dtype == torch.float64 else 1e-5
    assert rel_error(y, y_ref) <= bound
    assert rel_error(tri_state, ref_state) <= bound


@pytest.mark.parametrize("block_p,num_warps", [(2, 1), (8, 8)])
def test_state_update_tiles_match_reference(block_p, num_warps):
    """The step kernel's tile choices (benchmarks/ssd_gpu.py times them): 2 channels a program splits p=5 into
    three blocks, the last partial; 8 covers it in one masked block."""
    from mambalab.ops.ssd.triton_step import ssd_state_update_triton

    batch, heads, head_dim, groups, n = 2, 4, 5, 2, 7
    state = torch.randn(batch, heads, head_dim, n, dtype=torch.float64)
    args = {
        "x_t": torch.randn(batch, heads, head_dim), "dt_t": torch.randn(batch, heads), "A": -(torch.rand(heads) + 0.1),
        "B_t": torch.randn(batch, groups, n), "C_t": torch.randn(batch, groups, n), "D": torch.randn(heads),
        "z_t": torch.randn(batch, heads, head_dim), "dt_bias": torch.randn(heads), "dt_softplus": True,
    }
    args = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    ref_state = state.clone()
    y_ref = ssd_state_update(ref_state, **args, backend="reference")
    tri_state = state.to(TRITON_DEVICE)
    y = ssd_state_update_triton(tri_state, **{k: v.to(TRITON_DEVICE) if isinstance(v, torch.Tensor) else v
                                              for k, v in args.items()}, block_p=block_p, num_warps=num_warps)
    assert rel_error(y, y_ref) <= 1e-12 and rel_error(tri_state, ref_state) <= 1e-12


def test_state_update_takes_A_log():
    """A_is_log (what the Mamba-2 mixer's decode step passes): A_log in, A = −exp(A_log) on chip."""
    from mambalab.ops.ssd.triton_step import ssd_state_update_triton

    state = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    args = {"x_t": torch.randn(2, 3, 4, dtype=torch.float64), "dt_t": torch.rand(2, 3, dtype=torch.float64),
            "B_t": torch.randn(2, 1, 5, dtype=torch.float64), "C_t": torch.randn(2, 1, 5, dtype=torch.float64)}
    A_log = torch.randn(3, dtype=torch.float64)
    ref_state = state.clone()
    y_ref = ssd_state_update(ref_state, args["x_t"], args["dt_t"], -A_log.exp(), args["B_t"], args["C_t"],
                             backend="reference")
    tri_state = state.to(TRITON_DEVICE)
    dev = {k: v.to(TRITON_DEVICE) for k, v in args.items()}
    y = ssd_state_update_triton(tri_state, dev["x_t"], dev["dt_t"], A_log.to(TRITON_DEVICE), dev["B_t"],
                                dev["C_t"], A_is_log=True)
    assert rel_error(y, y_ref) <= 1e-12 and rel_error(tri_state, ref_state) <= 1e-12


def test_state_update_d_per_head_no_gate():
    state = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    args = (torch.randn(2, 2, 3, dtype=torch.float64), torch.rand(2, 2, dtype=torch.float64),
            -torch.rand(2, dtype=torch.float64) - 0.1, torch.randn(2, 1, 4, dtype=torch.float64),
            torch.randn(2, 1, 4, dtype=torch.float64))
    D = torch.randn(2, dtype=torch.float64)
    ref_state = state.clone()
    y_ref = ssd_state_update(ref_state, *args, D=D, backend="reference")
    tri_state = state.to(TRITON_DEVICE)
    y = ssd_state_update(tri_state, *(t.to(TRITON_DEVICE) for t in args), D=D.to(TRITON_DEVICE), backend="triton")
    assert rel_error(y, y_ref) <= 1e-12 and rel_error(tri_state, ref_state) <= 1e-12


def test_grads_of_partial_use():
    """Only y is used (final state not returned): its gradients match the reference's."""
    kw = make_inputs(1, 17, 2, 3, 1, 5, frozenset({"z", "D"}))
    ref_kw = requiring_grad(kw)
    tri_kw = requiring_grad({k: v.to(TRITON_DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    y_ref = run("reference", ref_kw)
    y = run("triton", tri_kw, chunk_size=16)
    assert rel_error(y, y_ref) <= 1e-12
    gy = torch.randn_like(y_ref)
    g_ref = grads_of(ref_kw, y_ref, torch.zeros(()), gy, torch.zeros(()))
    g = grads_of(tri_kw, y, torch.zeros((), device=TRITON_DEVICE), gy.to(TRITON_DEVICE),
                 torch.zeros((), device=TRITON_DEVICE))
    for name in g_ref:
        assert rel_error(g[name], g_ref[name]) <= 1e-9, name


def _check_packed(kw, lengths, cfg):
    """ssd_triton(config=cfg) over packed sequences of `lengths` against the loop: y, final state and every
    gradient (cotangents from a fixed seed, so that two configs on the same inputs get the same ones). Returns
    the gradients."""
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    tri_kw = requiring_grad({k: v.to(TRITON_DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    ref_kw = requiring_grad(kw)
    y_ref, h_ref = run("reference", ref_kw, return_final_state=True, cu_seqlens=offsets)
    y, h = ssd_triton(**tri_kw, return_final_state=True, cu_seqlens=offsets.to(TRITON_DEVICE), config=cfg)
    assert rel_error(y, y_ref) <= 1e-12 and rel_error(h, h_ref) <= 1e-12
    gen = torch.Generator().manual_seed(0)
    gy = torch.randn(y_ref.shape, generator=gen, dtype=y_ref.dtype)
    gh = torch.randn(h_ref.shape, generator=gen, dtype=h_ref.dtype)
    g_ref = grads_of(ref_kw, y_ref, h_ref, gy, gh)
    g = grads_of(tri_kw, y, h, gy.to(TRITON_DEVICE), gh.to(TRITON_DEVICE))
    for name in g_ref:
        assert rel_error(g[name], g_ref[name]) <= 1e-9, name
    return g


@pytest.mark.parametrize("state_mode", STATE_MODES)
@pytest.mark.parametrize("mode", ["fused", "chunked"])
def test_forward_modes_and_tiles(mode, state_mode):
    """Both forward algorithms (walk whole sequences / pass states then chunks in parallel) with both ways of
    getting the chunk states, the fused walk's chunk and the other kernels' chunk of different sizes, packed
    sequences (one empty) with initial states, against the loop."""
    lengths = [7, 33, 0, 18]
    kw = make_inputs(1, sum(lengths), 4, 3, 2, 5, rows=len(lengths))
    _check_packed(kw, lengths, SSDConfig(chunk=32, chunk_fused=16, block_p_state=16, forward_mode=mode,
                                         state_mode=state_mode))


@pytest.mark.parametrize("state_side", STATE_SIDES)
@pytest.mark.parametrize("heads_per_program", [2, 0])
def test_heads_per_program(heads_per_program, state_side, monkeypatch):
    """Several heads of one group per gradient program (2 of each group's 4: two programs add into each dB, dC
    row; 0: auto, which on a device of one multiprocessor takes all 4): every gradient against the loop and
    equal to one head per program on the same inputs; two channel blocks (p 17), n odd, packed sequences with
    an empty one, D per channel."""
    monkeypatch.setattr(triton_ssd, "_multiprocessors", lambda device: 1)
    lengths = [37, 0, 9]
    kw = make_inputs(1, sum(lengths), 8, 17, 2, 7, rows=len(lengths), d_matrix=True)
    cfg = SSDConfig(chunk=16, block_p_backward=16, block_p_state=16, forward_mode="chunked", state_side=state_side)
    several = _check_packed(kw, lengths, dataclasses.replace(cfg, heads_per_program=heads_per_program))
    one = _check_packed(kw, lengths, cfg)
    for name, grad in one.items():
        assert rel_error(several[name], grad) <= 1e-12, name


@pytest.mark.parametrize("heads_per_program,block_p", [(2, 16), (0, 32)])
def test_state_side_kernel(heads_per_program, block_p, monkeypatch):
    """dB and dC in their own kernel (SSDConfig.state_side "kernel", the default), at channel blocks of their
    own: every gradient against the loop and equal to the gradient kernel's inline sums ("inline") on the same
    inputs; p 17, n odd, packed sequences with an empty one. (2, 16): two programs of channels and of heads add
    into each row of dB, dC; (0, 32): one program a row stores them (into poisoned buffers)."""
    monkeypatch.setattr(triton_ssd, "_multiprocessors", lambda device: 1)
    plan = triton_ssd._StateSidePlan.of(4, 8, 2, 17, SSDConfig(heads_per_program=heads_per_program,
                                                              block_p_state_side=block_p, warps_state_side=4),
                                        torch.device("cpu"))
    assert plan.sole == (heads_per_program == 0)
    lengths = [37, 0, 9]
    kw = make_inputs(1, sum(lengths), 8, 17, 2, 7, rows=len(lengths), d_matrix=True)
    cfg = SSDConfig(chunk=16, block_p_backward=16, block_p_state=16, forward_mode="chunked",
                    heads_per_program=heads_per_program)
    inline = _check_packed(kw, lengths, dataclasses.replace(cfg, state_side="inline"))
    separate = _check_packed(kw, lengths, dataclasses.replace(cfg, state_side="kernel", block_p_state_side=block_p,
                                                              warps_state_side=4))
    for name, grad in inline.items():
        assert rel_error(separate[name], grad) <= 1e-12, name


def test_heads_per_program_choice():
    """Auto: the most heads of a group that leave ≥ 2 programs per multiprocessor (132 off CUDA); a value that
    does not divide heads / groups is refused."""
    auto, cpu = SSDConfig(heads_per_program=0), torch.device("cpu")
    assert triton_ssd._heads_per_program(1024, 24, 24, 2, auto, cpu) == 24  # b8 L8192 h24 one group: 2048 programs
    assert triton_ssd._heads_per_program(16, 24, 24, 2, auto, cpu) == 2  # 3 would leave 16 × 8 × 2 = 256 < 264
    assert triton_ssd._heads_per_program(4, 8, 4, 1, auto, cpu) == 1
    with pytest.raises(ConfigError, match="heads_per_program=5"):
        triton_ssd._heads_per_program(4, 24, 12, 1, SSDConfig(heads_per_program=5), cpu)


def test_state_side_plan():
    """The state-side kernel's heads per program fill the multiprocessors at its programs per multiprocessor
    (one at 8 warps, two at 4); its programs store dB, dC (sole) only with one channel block and a whole group
    each."""
    cpu = torch.device("cpu")
    plan = triton_ssd._StateSidePlan.of(1024, 24, 1, 64, SSDConfig(), cpu)  # b8 h24 L8192
    assert (plan.block_p, plan.p_blocks, plan.per_program, plan.sole) == (64, 1, 24, True)
    assert triton_ssd._StateSidePlan.of(256, 32, 1, 64, SSDConfig(), cpu).sole  # b8 h32 L2048: 256 ≥ 132 programs
    assert triton_ssd._StateSidePlan.of(256, 32, 1, 64, SSDConfig(warps_state_side=4), cpu).per_program == 16
    assert not triton_ssd._StateSidePlan.of(1024, 24, 1, 64, SSDConfig(block_p_state_side=32), cpu).sole
    assert not triton_ssd._StateSidePlan.of(1024, 24, 2, 64, SSDConfig(heads_per_program=6), cpu).sole
    assert triton_ssd._StateSidePlan.of(1024, 24, 2, 64, SSDConfig(heads_per_program=12), cpu).sole
    assert triton_ssd._StateSidePlan.of(64, 24, 1, 64, SSDConfig(), cpu).per_program == 8  # 64 × 3 ≥ 132


def test_walk_block_choice():
    """Auto: the narrowest channel block whose walk programs all fit at once (132 multiprocessors off CUDA; the
    state walk 3 per multiprocessor at 16-32 channels, 2 at 64; the adjoint walk 2), else 64; the adjoint walk
    at 4 warps for 64 channels, 8 below. Set fields win."""
    auto, cpu = SSDConfig(), torch.device("cpu")
    walk = triton_ssd._walk_block
    assert (walk(2 * 24, 64, "state", auto, cpu), walk(2 * 24, 64, "adjoint", auto, cpu)) == (16, 16)  # 192 programs
    assert (walk(8 * 24, 64, "state", auto, cpu), walk(8 * 24, 64, "adjoint", auto, cpu)) == (32, 64)  # 384 ≤ 396
    assert (walk(8 * 32, 64, "state", auto, cpu), walk(8 * 32, 64, "adjoint", auto, cpu)) == (64, 64)  # 512 > 396
    assert walk(64 * 24, 64, "state", auto, cpu) == 64  # no block fits: the widest
    assert walk(8 * 24, 24, "adjoint", auto, cpu) == 32  # 24 channels: one block of 32
    set_ = SSDConfig(block_p_state=16, block_p_adjoint=32)
    assert (walk(8 * 24, 64, "state", set_, cpu), walk(8 * 24, 64, "adjoint", set_, cpu)) == (16, 32)
    assert [triton_ssd._adjoint_warps(b, auto) for b in (16, 32, 64)] == [8, 8, 4]
    assert triton_ssd._adjoint_warps(64, SSDConfig(warps_adjoint=2)) == 2


def test_forward_mode_choice():
    """Auto: the fused forward when (sequences × heads × channel blocks) give ≥ 1 program per multiprocessor (132
    off CUDA), as timed on one H100: b8 h24 p64 (192 programs) fused, b2 h32 (64) chunked; a set mode is kept."""
    auto, cpu = SSDConfig(), torch.device("cpu")
    assert SSDConfig().forward_mode == "auto" and SSDConfig().heads_per_program == 0
    assert triton_ssd._fused_forward(8 * 24, 64, auto, cpu)
    assert not triton_ssd._fused_forward(2 * 32, 64, auto, cpu)
    assert triton_ssd._fused_forward(2 * 32, 256, auto, cpu)  # 4 channel blocks of 64: 256 programs
    assert not triton_ssd._fused_forward(8 * 24, 64, SSDConfig(forward_mode="chunked"), cpu)


def test_parallel_state_passing_equals_walk():
    """state_mode "parallel" gives the walk's outputs, final state and gradients on the same inputs: packed
    sequences (one empty) with initial states, a loss on y and on the final state, p·n 35 over three blocks
    of the state passing (the last partial), 3 chunks in 2 groups of its steps (the last partial)."""
    lengths = [40, 0, 23]
    kw = make_inputs(1, sum(lengths), 4, 5, 2, 7, rows=len(lengths), device=TRITON_DEVICE)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=TRITON_DEVICE)
    gy = torch.randn_like(kw["x"])
    gh = torch.randn_like(kw["initial_state"])
    results = {}
    for mode in STATE_MODES:
        cfg = SSDConfig(chunk=16, block_p_local=16, block_pass=16, pass_steps=2, forward_mode="chunked",
                        state_mode=mode)
        tri_kw = requiring_grad(kw)
        y, h = ssd_triton(**tri_kw, return_final_state=True, cu_seqlens=offsets, config=cfg)
        results[mode] = {"y": y, "final_state": h, **grads_of(tri_kw, y, h, gy, gh)}
    for name, value in results["walk"].items():
        assert rel_error(results["parallel"][name], value) <= 1e-12, name


def test_config_rejects_unknown_modes():
    with pytest.raises(ConfigError, match="state_mode"):
        SSDConfig(state_mode="scan")
    with pytest.raises(ConfigError, match="forward_mode"):
        SSDConfig(forward_mode="fast")
    with pytest.raises(ConfigError, match="state_side"):
        SSDConfig(state_side="split")
    with pytest.raises(ConfigError, match="block_pass"):
        SSDConfig(block_pass=100)
    with pytest.raises(ConfigError, match="pass_steps"):
        SSDConfig(pass_steps=0)


@pytest.mark.slow
@pytest.mark.parametrize("case", range(6))
def test_random_shapes_and_tiles(case):
    """Random sizes, options, packing and tiles (seeded by the case) against the loop in float64."""
    gen = torch.Generator().manual_seed(case)
    pick = lambda *values: values[int(torch.randint(len(values), (1,), generator=gen))]
    groups = pick(1, 2)
    heads, head_dim, n = groups * pick(1, 2, 3), pick(1, 5, 17, 33), pick(1, 7, 16, 20)
    options = frozenset(o for o in ("D", "z", "dt_bias", "softplus", "initial_state") if pick(True, False))
    packed = pick(True, False)
    lengths = [pick(*((0,) if packed else ()), 1, 15, 16, 17, 40) for _ in range(pick(1, 2, 3))]
    batch = 1 if packed else len(lengths)
    length = sum(lengths) if packed else lengths[0]
    kw = make_inputs(batch, length, heads, head_dim, groups, n, options, rows=len(lengths) if packed else None,
                     d_matrix=pick(True, False))
    extra = {}
    if packed:
        extra["cu_seqlens"] = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    per_group = heads // groups
    cfg = SSDConfig(chunk=pick(16, 32), chunk_fused=pick(16, 32), block_p_forward=pick(16, 32),
                    block_p_backward=pick(16, 32), block_p_state=pick(0, 16), forward_mode=pick("fused", "chunked"),
                    heads_per_program=pick(*(k for k in range(1, per_group + 1) if per_group % k == 0)),
                    state_mode=pick(*STATE_MODES), block_p_local=pick(16, 32), block_pass=pick(16, 64),
                    pass_steps=pick(1, 2, 8), state_side=pick(*STATE_SIDES), block_p_state_side=pick(16, 32))
    ref_kw = requiring_grad(kw)
    tri_kw = requiring_grad({k: v.to(TRITON_DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    y_ref, h_ref = run("reference", ref_kw, return_final_state=True, **extra)
    y, h = ssd_triton(**tri_kw, return_final_state=True, config=cfg,
                      **{k: v.to(TRITON_DEVICE) for k, v in extra.items()})
    assert rel_error(y, y_ref) <= 1e-9 and rel_error(h, h_ref) <= 1e-9, (cfg, options, lengths)
    gy, gh = torch.randn_like(y_ref), torch.randn_like(h_ref)
    g_ref = grads_of(ref_kw, y_ref, h_ref, gy, gh)
    g = grads_of(tri_kw, y, h, gy.to(TRITON_DEVICE), gh.to(TRITON_DEVICE))
    for name in g_ref:
        assert rel_error(g[name], g_ref[name]) <= 1e-7, (name, cfg, options, lengths)


@pytest.mark.skipif(TRITON_DEVICE != "cuda", reason="the compiled kernels at a model's tile sizes need a GPU")
@pytest.mark.parametrize("state_mode,state_side,heads_per_program", [
    ("walk", "inline", 0), ("parallel", "inline", 0), ("walk", "kernel", 0), ("walk", "kernel", 4)])
@pytest.mark.parametrize("mode", ["fused", "chunked"])
@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_model_sized_on_gpu(mode, state_mode, state_side, heads_per_program, dtype, bound):
    """A Mamba-2 layer's sizes (p 64, n 128, 2 groups, 1000 positions: a partial last chunk), compiled, against
    the torch backend in float64 on the same (rounded) inputs: outputs, final state, every gradient. With a whole
    group per program (4), the state-side kernel stores dB, dC in the inputs' dtype instead of adding them."""
    kw = make_inputs(2, 1000, 8, 64, 2, 128, dtype=torch.float32)
    kw = {k: (v.to(dtype) if k in ("x", "B", "C", "z") else v) for k, v in kw.items()}
    ref_kw = requiring_grad({k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    tri_kw = requiring_grad({k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    y_ref, h_ref = run("torch", ref_kw, return_final_state=True)
    cfg = SSDConfig(forward_mode=mode, state_mode=state_mode, state_side=state_side,
                    heads_per_program=heads_per_program)
    y, h = ssd_triton(**tri_kw, return_final_state=True, config=cfg)
    assert rel_error(y, y_ref) <= bound and rel_error(h, h_ref) <= bound
    gy, gh = torch.randn_like(y_ref), torch.randn_like(h_ref)
    g_ref = grads_of(ref_kw, y_ref, h_ref, gy, gh)
    g = grads_of(tri_kw, y, h, gy.cuda().to(y.dtype), gh.cuda().float())
    for name in g_ref:
        assert rel_error(g[name], g_ref[name]) <= bound, name
