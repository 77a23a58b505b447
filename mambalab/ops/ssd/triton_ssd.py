"""`backend="triton"`: the fused chunked kernels of triton_kernels.py as one differentiable op.

Forward: one sequence walk computing y (fused), or the chunk states plus every chunk in parallel (chunked),
chosen by `SSDConfig.forward_mode`. It saves only its inputs. Backward: the state entering each chunk and the
adjoint of the state leaving each chunk (both transient, (chunks, h, p, n) in the matrix-product dtype), then
a chunk-parallel kernel for every gradient but dB and dC and one for those (`SSDConfig.state_side`); the sums
left per channel block or chunk (dΔ, dA, dD, dt_bias) are finished here with torch reductions.

The chunk states and adjoints (chunked forward and backward) come from `SSDConfig.state_mode`: "walk" (a
sequential program per (sequence, head, channel block), `_sequence_pass` / `_chunk_adjoints`) or "parallel"
(`_local_states`: every chunk's own contribution at once, float32, then `_passed_states`: an elementwise
pass over each sequence's chunks). The walk's parallelism is sequences × heads × channel blocks and its time
grows with the chunks per sequence; the parallel path moves 8 more bytes per state element through HBM.

The kernels' chunks are powers of two ≤ chunk_size, within [16, 32] (fused forward) and [16, 64] (the rest),
so that the (p, n) state and the (Q, Q) tiles fit on chip (`SSDConfig`); the result does not depend on them.

Runs on CUDA when compiled, on CPU in Triton's interpreter when TRITON_INTERPRET=1 (tests, tiny shapes).
Float64 is computed in float64 (interpreter and GPU); 16-bit inputs use 16-bit matrix products with float32
accumulation and state; float32 inputs use exact ("ieee") float32 products.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import itertools
import os
import sys
from dataclasses import dataclass

import torch

from mambalab.errors import ConfigError
from mambalab.ops.backends import BackendUnavailable, records_grad
from mambalab.ops.ssd.common import compute_dtype
from mambalab.ops.triton import dense

_KERNELS = "mambalab.ops.ssd.triton_kernels"
FORWARD_MODES = ("auto", "fused", "chunked")
STATE_MODES = ("walk", "parallel")
STATE_SIDES = ("inline", "kernel")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def kernels():
    """The kernel module, (re)imported so that it is interpreted exactly when TRITON_INTERPRET is set now."""
    module = sys.modules.get(_KERNELS) or importlib.import_module(_KERNELS)
    if module.INTERPRETED != _interpret_env():
        module = importlib.reload(module)
    return module


def load_triton_ssd():
    """The triton `ssd_scan`, or BackendUnavailable saying why it cannot run here."""
    from mambalab.ops.triton import require

    require("ssd_scan")
    return ssd_triton


def check_runnable(op: str, tensors: dict) -> None:
    """BackendUnavailable unless every tensor is on the device the kernels run on and of a float dtype they take."""
    from mambalab.ops.triton import device

    where = device()
    for name, t in tensors.items():
        if t is None:
            continue
        if t.device.type != where:
            raise BackendUnavailable(f"{op} backend 'triton': {name} is on {t.device}, but the kernels run on "
                                     f"{where or 'no device here'} tensors")
        if t.dtype not in _FLOAT_DTYPES:
            raise BackendUnavailable(f"{op} backend 'triton': {name} is {t.dtype}; the kernels take float16, "
                                     "bfloat16, float32 or float64")


@dataclass(frozen=True)
class SSDConfig:
    """Tile sizes of the kernels. The fused forward walks chunks of `chunk_fused` positions; everything else
    (the chunked forward, the state and adjoint walks, the chunk-parallel gradients) works in chunks of
    `chunk`. Channel blocks (block_p_*) of head_dim per program; warps per program of each kernel. The gradient
    kernel's programs each take `heads_per_program` heads of one group, summing their dB and dC on chip before
    one atomic add per element (0: the most that still fill the GPU, `_heads_per_program`).

    `state_mode` chooses how the chunked forward and the backward get the state entering each chunk and the
    adjoint of the state leaving it: "walk" (one sequential program per (sequence, head, channel block), a
    tile product per chunk inside its loop) or "parallel" (every chunk's local contribution at once, then an
    elementwise pass over the chunks: `_passed_states`). The fused forward computes its states on the fly and
    ignores it. `state_side` chooses where dB and dC are summed over a group's heads: in a second head loop of
    the gradient kernel ("inline") or in `ssd_chunk_state_side_kernel` after it ("kernel": the gradient kernel
    keeps only its per-head loop, and the sums run in a kernel of their own tiles, warps and stages).

    Defaults from sm_90 builds (triton 3.9 on the CPU machine, b8 h24 p64 n128 bf16) and the tile sweep on one
    H100 (benchmarks/results/ssd_gpu.json): the fused forward at 32 positions × 64 channels × 4 warps (255
    registers, no spills; 64 × 64 spills 150-270 B), the chunk-parallel forward at 64 × 64 × 4 warps (the chunked
    forward 0.28 ms at b8 h24 L2048 against 0.43 at 8 warps), the gradient kernel at 64 × 32 × 4 warps (forward+backward
    1.24-1.33× faster than at 8 warps at every shape of ssd_gpu.py but once, 8× slower at 2; 64 channels or 16 slower at
    4 warps: results/ssd_gpu_backward_tiles.json); state_mode "parallel": the local states at 64 × 64 ×
    4 warps (106 registers), the passing at 1024 state elements × 8 chunks × 4 warps (128 registers, no shared
    memory in its loop; benchmarks/notes/ssd.md); state_mode "walk", forward_mode "auto" (`_fused_forward`),
    heads_per_program 0 (4 or 8 heads 1.06-1.26× slower); the gradient kernel at 3 pipeline stages (2: 1.11-1.13×
    slower at b8 h24 / h32 L8192, 4: 1.40×; results/ssd_backward_configs.json; the other kernels gain nothing from
    3). state_side "kernel": the gradient kernel's per-head loop (1.52 ms at b8 h24 L8192) and the state-side
    kernel at 64 channels, 8 warps, 2 stages (0.73 ms: no spills; at 32 channels 1.03) took 0.82 of the inline
    kernel's 2.76 ms, forward+backward 4.09-4.10 ms against 4.61-4.62 at h24 and 5.03-5.05 against 5.68-5.69 at
    h32, the same gradients to the bf16 outputs' rounding (one H100, two runs; results/ssd_gpu_state_side*.json).
    The earlier split gradient kernels (the seventh session's per-head and per-group pair) and shared scores
    (C Bᵀ once per gradient program) were timed on one H100, slower, and removed (benchmarks/notes/ssd.md)."""

    chunk: int = 64
    chunk_fused: int = 32
    block_p_forward: int = 64
    block_p_backward: int = 32
    block_p_state: int = 0  # channels per program of the state walk; 0: chosen (_walk_block)
    block_p_adjoint: int = 0  # channels per program of the adjoint walk; 0: chosen (_walk_block)
    warps_fused: int = 4
    warps_chunk_forward: int = 4
    warps_state: int = 4
    warps_adjoint: int = 0  # 0: 4 at 64 channels per program, 8 below (2 programs per multiprocessor either way)
    warps_backward: int = 4
    stages: int = 2
    stages_backward: int = 3  # the gradient kernel's pipeline stages (the other kernels take `stages`)
    forward_mode: str = "auto"  # "fused" (walk whole sequences), "chunked" (pass states, then chunks in parallel)
    heads_per_program: int = 0  # heads of one group per gradient program (dividing heads / groups); 0: chosen
    state_mode: str = "walk"  # how the chunked forward and the backward get the chunk states and adjoints
    block_p_local: int = 64  # state_mode "parallel": channels per program of the local-state kernel
    warps_local: int = 4
    # state_mode "parallel": flattened (p·n) state elements per program of the passing and chunks whose local
    # states it loads at once; block_pass ≥ 256 × warps_pass keeps each thread's steps in its registers (sm_90
    # builds: the scan over the steps goes through shared memory otherwise)
    block_pass: int = 1024
    pass_steps: int = 8
    warps_pass: int = 4
    # dB and dC summed over the heads of a group: "inline" (the gradient kernel's second head loop) or "kernel"
    # (`ssd_chunk_state_side_kernel` after it: its channels, warps and stages below, heads_per_program as above)
    state_side: str = "kernel"
    block_p_state_side: int = 64
    warps_state_side: int = 8
    stages_state_side: int = 2

    def __post_init__(self):
        for name, allowed in (("forward_mode", FORWARD_MODES), ("state_mode", STATE_MODES),
                              ("state_side", STATE_SIDES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"SSDConfig.{name} is {getattr(self, name)!r}; expected one of {', '.join(allowed)}")
        for name, least in (("block_pass", 16), ("pass_steps", 1)):
            value = getattr(self, name)
            if value < least or value & (value - 1):
                raise ConfigError(f"SSDConfig.{name} is {value}; expected a power of two ≥ {least}")


def _pow2_at_most(v: int) -> int:
    return 1 << (max(v, 1).bit_length() - 1)


def default_config(chunk_size: int) -> SSDConfig:
    """Chunks of the largest power of two ≤ chunk_size, within [16, the default]: results do not depend on
    the chunk; a small chunk_size asks for small tiles."""
    chunk = max(_pow2_at_most(chunk_size), 16)
    base = SSDConfig()
    return dataclasses.replace(base, chunk=min(chunk, base.chunk), chunk_fused=min(chunk, base.chunk_fused))


def _block(size: int, cap: int) -> int:
    """A power-of-two tile ≥ 16 (tl.dot's minimum) covering `size`, at most `cap` unless size needs less."""
    return max(16, min(_next_pow2(size), cap))


def _next_pow2(v: int) -> int:
    return 1 << (max(v, 1) - 1).bit_length()


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t (b, l, ...) whose batch and position axes merge into one row axis of stride t.stride(1)."""
    if t.shape[0] > 1 and t.stride(0) != t.shape[1] * t.stride(1):
        t = t.contiguous()
    return t


def _acc_dtypes(x, dt, A, B, C):
    """(tl accumulator dtype, tl matrix-product operand dtype, input precision, torch accumulator dtype, torch
    dtype of the stored chunk states = the operand dtype: they are only ever matrix-product operands).
    Float64 when any input that enters the state is float64, as in the other backends (`compute_dtype`)."""
    import triton.language as tl

    if compute_dtype(x, dt, A, B, C) == torch.float64:
        return tl.float64, tl.float64, "ieee", torch.float64, torch.float64
    if x.dtype == B.dtype == C.dtype == torch.float16:
        return tl.float32, tl.float16, "tf32", torch.float32, torch.float16
    # Triton's interpreter multiplies bfloat16 tiles as their raw bits: interpreted, they are multiplied in float32.
    if x.dtype == B.dtype == C.dtype == torch.bfloat16 and not kernels().INTERPRETED:
        return tl.float32, tl.bfloat16, "tf32", torch.float32, torch.bfloat16
    return tl.float32, tl.float32, "ieee", torch.float32, torch.float32


@dataclass
class _Sequences:
    """What the forward's output pass needs: where each sequence starts along the flattened (b·l) rows."""

    seq_starts: torch.Tensor  # (seqs + 1,) int64
    seqs: int
    first_chunks = None  # the output pass stores no chunk states

    @classmethod
    def of(cls, x, cu_seqlens):
        if cu_seqlens is None:
            return cls(torch.arange(x.shape[0] + 1, device=x.device, dtype=torch.int64) * x.shape[1], x.shape[0])
        return cls(cu_seqlens.to(dtype=torch.int64), cu_seqlens.numel() - 1)


@dataclass
class _Layout:
    """Sequences along the flattened (b·l) row axis and their chunks: sequence s is rows
    seq_starts[s]:seq_starts[s+1] and chunks first_chunks[s]:first_chunks[s+1]; chunk j belongs to chunk_seq[j]."""

    seq_starts: torch.Tensor  # (seqs + 1,) int64
    first_chunks: torch.Tensor  # (seqs + 1,) int64
    chunk_seq: torch.Tensor  # (chunks,) int32
    seqs: int
    chunks: int
    chunk: int  # positions per chunk

    @classmethod
    def of(cls, batch, length, cu_seqlens, chunk, device):
        if cu_seqlens is None:
            per_seq = -(-length // chunk)
            starts = torch.arange(batch + 1, device=device, dtype=torch.int64) * length
            first = torch.arange(batch + 1, device=device, dtype=torch.int64) * per_seq
            chunk_seq = torch.arange(batch, device=device, dtype=torch.int32).repeat_interleave(per_seq)
            return cls(starts, first, chunk_seq, batch, batch * per_seq, chunk)
        offsets = cu_seqlens.tolist()  # validated already (a host copy there too)
        counts = [-(-(b - a) // chunk) for a, b in itertools.pairwise(offsets)]
        first = [0, *itertools.accumulate(counts)]
        seqs = len(counts)
        chunk_seq = torch.repeat_interleave(torch.arange(seqs, dtype=torch.int32), torch.tensor(counts, dtype=torch.int64))
        return cls(cu_seqlens.to(device=device, dtype=torch.int64), torch.tensor(first, device=device),
                   chunk_seq.to(device), seqs, first[-1], chunk)


def _empty(*shape, device, dtype):
    from mambalab.ops.triton import common

    return common.empty(*shape, device=device, dtype=dtype)


def _sequence_pass(x, dt, A, B, C, D, z, dt_bias, initial_state, layout, softplus, cfg, mode):
    """One launch of the sequence-walking kernel (grid: sequences × heads × channel blocks).

    mode "output": (y, final state (seqs, h, p, n)) at chunks of cfg.chunk_fused (the fused forward);
    "states": (states entering each chunk (chunks, h, p, n) in the matrix-product dtype, final state) at the
    layout's chunk (the chunked forward and the backward; no y)."""
    batch, length, heads, head_dim = x.shape
    n = B.shape[3]
    acc, dot, precision, acc_torch, state_torch = _acc_dtypes(x, dt, A, B, C)
    dev = x.device
    store_y = mode == "output"
    y = _empty(batch, length, heads, head_dim, device=dev, dtype=x.dtype) if store_y else None
    final = _empty(layout.seqs, heads, head_dim, n, device=dev, dtype=acc_torch)
    states = None if store_y else _empty(layout.chunks, heads, head_dim, n, device=dev, dtype=state_torch)
    Dm = _d_matrix(D, heads, head_dim)
    h0 = initial_state.contiguous() if initial_state is not None else None
    if store_y:
        block_p, chunk, warps = _block(head_dim, cfg.block_p_forward), cfg.chunk_fused, cfg.warps_fused
    else:
        block_p = _walk_block(layout.seqs * heads, head_dim, "state", cfg, dev)
        chunk, warps = layout.chunk, cfg.warps_state
    out = y if store_y else x
    kernels().ssd_forward_kernel[(layout.seqs, heads, -(-head_dim // block_p))](
        x, dt, A, B, C, _or(Dm, x), _or(z, x), _or(dt_bias, x), _or(h0, x), layout.seq_starts,
        _or(layout.first_chunks, layout.seq_starts), out, _or(states, x), final,
        *x.stride()[1:], *dt.stride()[1:], *B.stride()[1:], *C.stride()[1:], *_strides2(Dm), *_strides_lhp(z),
        *out.stride()[1:],
        heads, heads // B.shape[2], head_dim, n,
        BLOCK_Q=chunk, BLOCK_P=block_p, BLOCK_N=_block(n, 1 << 30), ACC=acc, DOT=dot, PRECISION=precision,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=softplus,
        HAS_INIT=initial_state is not None, STORE_Y=store_y, STORE_STATES=not store_y, STORE_FINAL=True,
        num_warps=warps, num_stages=cfg.stages,
    )
    return (y, final) if store_y else (states, final)


def _chunk_states(x, dt, A, B, C, D, z, dt_bias, initial_state, layout, softplus, cfg):
    """(the state entering each chunk (chunks, h, p, n) in the matrix-product dtype, the final state (seqs, h,
    p, n) in the accumulation dtype), walked or passed as cfg.state_mode says."""
    if cfg.state_mode == "walk":
        return _sequence_pass(x, dt, A, B, C, D, z, dt_bias, initial_state, layout, softplus, cfg, "states")
    dtypes = _acc_dtypes(x, dt, A, B, C)
    local, decay = _local_states(x, dt, A, B, None, dt_bias, layout, softplus, cfg, dtypes, adjoint=False)
    return _passed_states(local, decay, initial_state, layout, cfg, dtypes[4], reverse=False)


def _chunk_adjoints(dy, dfinal, x, dt, A, B, C, z, dt_bias, layout, softplus, cfg):
    """(G = ∂loss/∂(state leaving each chunk) (chunks, h, p, n) in the matrix-product dtype, ∂loss/∂(initial
    state) (seqs, h, p, n) in the accumulation dtype), walked backwards or passed as cfg.state_mode says."""
    heads, head_dim, n = x.shape[2], x.shape[3], C.shape[3]
    dtypes = _acc_dtypes(x, dt, A, B, C)
    acc, dot, precision, acc_torch, state_torch = dtypes
    dfinal = dfinal.contiguous() if dfinal is not None else None
    if cfg.state_mode == "parallel":
        local, decay = _local_states(dy, dt, A, C, z, dt_bias, layout, softplus, cfg, dtypes, adjoint=True)
        return _passed_states(local, decay, dfinal, layout, cfg, state_torch, reverse=True)
    dev = x.device
    adjoints = _empty(layout.chunks, heads, head_dim, n, device=dev, dtype=state_torch)
    dh0 = _empty(layout.seqs, heads, head_dim, n, device=dev, dtype=acc_torch)
    block_p = _walk_block(layout.seqs * heads, head_dim, "adjoint", cfg, dev)
    kernels().ssd_adjoint_kernel[(layout.seqs, heads, -(-head_dim // block_p))](
        dt, A, C, _or(z, x), _or(dt_bias, x), dy, layout.seq_starts, layout.first_chunks, _or(dfinal, x), adjoints,
        dh0, *dt.stride()[1:], *C.stride()[1:], *_strides_lhp(z), *dy.stride()[1:],
        heads, heads // C.shape[2], head_dim, n,
        BLOCK_Q=cfg.chunk, BLOCK_P=block_p, BLOCK_N=_block(n, 1 << 30), ACC=acc, DOT=dot, PRECISION=precision,
        HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=softplus, HAS_DFINAL=dfinal is not None,
        num_warps=_adjoint_warps(block_p, cfg), num_stages=cfg.stages,
    )
    return adjoints, dh0


def _local_states(rows, dt, A, other, z, dt_bias, layout, softplus, cfg, dtypes, adjoint):
    """Every chunk's local state (chunks, h, p, n) and log decay Λ_Q (chunks, h), both in the accumulation
    dtype, in one chunk-parallel launch (grid: chunks × heads × channel blocks): rows x and other B (forward),
    or rows dy gated by z and other C (adjoint); dtypes: _acc_dtypes of the op's inputs.

    The local states stay in float32 for 16-bit inputs (each is added to the passed state once per chunk;
    rounding it to 16 bits would add that rounding to every later state). Their HBM cost over the walk, which
    writes only the 16-bit states: a float32 write here and a float32 read in the passing, 8 B per element of
    (chunks, h, p, n) besides the walk's 2 B; the decays are negligible (chunks × h)."""
    acc, dot, precision, acc_torch, _ = dtypes
    heads, head_dim, n = rows.shape[2], rows.shape[3], other.shape[3]
    local = _empty(layout.chunks, heads, head_dim, n, device=rows.device, dtype=acc_torch)
    decay = _empty(layout.chunks, heads, device=rows.device, dtype=acc_torch)
    block_p = _block(head_dim, cfg.block_p_local)
    if layout.chunks:
        kernels().ssd_local_state_kernel[(layout.chunks, heads, -(-head_dim // block_p))](
            rows, dt, A, other, _or(z, rows), _or(dt_bias, rows), layout.seq_starts, layout.first_chunks,
            layout.chunk_seq, local, decay,
            *rows.stride()[1:], *dt.stride()[1:], *other.stride()[1:], *_strides_lhp(z),
            heads, heads // other.shape[2], head_dim, n,
            BLOCK_Q=layout.chunk, BLOCK_P=block_p, BLOCK_N=_block(n, 1 << 30), ACC=acc, DOT=dot,
            PRECISION=precision, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=softplus,
            ADJOINT=adjoint, num_warps=cfg.warps_local, num_stages=cfg.stages,
        )
    return local, decay


def _passed_states(local, decay, init, layout, cfg, dtype, reverse):
    """The local states passed along each sequence (grid: sequences × heads × blocks of the flattened p·n):
    (the state before each chunk's step (chunks, h, p, n) in `dtype`, the state after the last step (seqs, h,
    p, n) in local's dtype). Forward: init the initial state, first chunk to last; reverse: init ∂loss/∂(final
    state), last chunk to first (see ssd_state_passing_kernel)."""
    _, heads, head_dim, n = local.shape
    passed = _empty(layout.chunks, heads, head_dim, n, device=local.device, dtype=dtype)
    final = _empty(layout.seqs, heads, head_dim, n, device=local.device, dtype=local.dtype)
    block = max(16, min(cfg.block_pass, _next_pow2(head_dim * n)))
    init = init.contiguous() if init is not None else None
    kernels().ssd_state_passing_kernel[(layout.seqs, heads, -(-head_dim * n // block))](
        local, decay, layout.first_chunks, _or(init, local), passed, final, heads, head_dim * n,
        BLOCK=block, STEPS=cfg.pass_steps, HAS_INIT=init is not None, REVERSE=reverse, num_warps=cfg.warps_pass,
        num_stages=cfg.stages,
    )
    return passed, final


def _multiprocessors(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


# How many programs of each walk fit on a multiprocessor at once, by channels per program, at the default warps
# (sm_90 builds, Triton 3.6; 64 K registers per multiprocessor): the state walk at 4 warps takes 168 registers at
# 32 channels (3 programs), 237 at 64 (2); the adjoint walk 128 at 32 channels and 8 warps (2), 255 at 64 and 4
# warps (2). Resources at 16 channels taken as at 32's.
_WALK_PROGRAMS_PER_SM = {"state": {16: 3, 32: 3, 64: 2}, "adjoint": {16: 2, 32: 2, 64: 2}}


def _walk_block(rows: int, head_dim: int, walk: str, cfg, device) -> int:
    """Channels per program of the state walk or the adjoint walk: cfg.block_p_state / block_p_adjoint, or (0)
    the narrowest block whose programs (rows × channel blocks) all fit on the GPU at once, else 64. These walks
    are sequential in l and each program takes as long as the longest: a second, partial wave of programs
    doubles the walk's time (the adjoint walk at 32 channels and b8 h24: 384 programs for 264 places, one H100;
    64 channels and 4 warps, 192 programs in one wave, took 0.2-0.4 ms off forward+backward at L8192,
    benchmarks/notes/ssd.md)."""
    chosen = cfg.block_p_state if walk == "state" else cfg.block_p_adjoint
    if chosen:
        return _block(head_dim, chosen)
    for cap in (16, 32, 64):
        block = _block(head_dim, cap)
        if rows * -(-head_dim // block) <= _WALK_PROGRAMS_PER_SM[walk][cap] * _multiprocessors(device):
            return block
    return _block(head_dim, 64)


def _adjoint_warps(block_p: int, cfg) -> int:
    """Warps per adjoint-walk program: cfg.warps_adjoint, or (0) 4 at 64 channels, 8 below (2 programs per
    multiprocessor either way; 64 channels at 8 warps take 180 registers: one program)."""
    return cfg.warps_adjoint or (4 if block_p >= 64 else 8)


def _heads_per_program(chunks: int, heads: int, heads_per_group: int, p_blocks: int, cfg, device,
                       per_sm: int = 2) -> int:
    """Heads per program of the gradient kernel (or the state-side kernel): cfg.heads_per_program, or (0) the
    most heads of a group (a divisor of heads / groups) that still give ≥ `per_sm` programs per multiprocessor,
    as many as fit on one (each program adds its dB, dC once per element: fewer programs, fewer atomic adds)."""
    k = cfg.heads_per_program
    if k < 0 or (k and heads_per_group % k):
        raise ConfigError(f"SSDConfig.heads_per_program={k}: expected 0 (auto) or a divisor of heads / groups = "
                          f"{heads_per_group}")
    if k:
        return k
    fill = per_sm * _multiprocessors(device)
    fits = [d for d in range(1, heads_per_group + 1)
            if heads_per_group % d == 0 and chunks * (heads // d) * p_blocks >= fill]
    return max(fits, default=1)


def _fused_forward(rows: int, head_dim: int, cfg, device) -> bool:
    """Whether the forward walks whole sequences (cfg.forward_mode "fused"), or passes states and then computes
    every chunk in parallel ("chunked"); "auto": fused when its grid gives ≥ 1 program per multiprocessor (on
    one H100, 192 programs: fused 1.8-1.9× faster; 48-64: chunked 1.2-1.4× faster; benchmarks/notes/ssd.md)."""
    if cfg.forward_mode != "auto":
        return cfg.forward_mode == "fused"
    return rows * -(-head_dim // _block(head_dim, cfg.block_p_forward)) >= _multiprocessors(device)


def _output_pass(x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, softplus, cfg):
    """(y, final state) of inputs whose batch and length axes merge (see _rows)."""
    heads, head_dim = x.shape[2], x.shape[3]
    seqs = x.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
    if _fused_forward(seqs * heads, head_dim, cfg, x.device):
        return _sequence_pass(x, dt, A, B, C, D, z, dt_bias, initial_state, _Sequences.of(x, cu_seqlens), softplus,
                              cfg, "output")
    layout = _Layout.of(x.shape[0], x.shape[1], cu_seqlens, cfg.chunk, x.device)
    states, final = _chunk_states(x, dt, A, B, C, D, z, dt_bias, initial_state, layout, softplus, cfg)
    acc, dot, precision, _, _ = _acc_dtypes(x, dt, A, B, C)
    y = _empty(*x.shape, device=x.device, dtype=x.dtype)
    Dm = _d_matrix(D, heads, head_dim)
    block_p = _block(head_dim, cfg.block_p_forward)
    if layout.chunks:
        kernels().ssd_chunk_forward_kernel[(layout.chunks, heads, -(-head_dim // block_p))](
            x, dt, A, B, C, _or(Dm, x), _or(z, x), _or(dt_bias, x), layout.seq_starts, layout.first_chunks,
            layout.chunk_seq, states, y,
            *x.stride()[1:], *dt.stride()[1:], *B.stride()[1:], *C.stride()[1:], *_strides2(Dm), *_strides_lhp(z),
            *y.stride()[1:],
            heads, heads // B.shape[2], head_dim, B.shape[3],
            BLOCK_Q=layout.chunk, BLOCK_P=block_p, BLOCK_N=_block(B.shape[3], 1 << 30), ACC=acc, DOT=dot,
            PRECISION=precision, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None,
            SOFTPLUS=softplus, num_warps=cfg.warps_chunk_forward, num_stages=cfg.stages,
        )
    return y, final


def _d_matrix(D, heads, head_dim):
    """D as (h, p) (a (h,) D broadcast with stride 0), or None."""
    return D if D is None or D.dim() == 2 else D[:, None].expand(heads, head_dim)


def _or(t, fallback):
    return fallback if t is None else t


def _strides2(t):
    return (t.stride(0), t.stride(1)) if t is not None else (0, 0)


def _strides_lhp(t):
    return (t.stride(1), t.stride(2), t.stride(3)) if t is not None else (0, 0, 0)


@dataclass(frozen=True)
class _StateSidePlan:
    """The grid of ssd_chunk_state_side_kernel: channels and heads per program; `sole` when each program is the
    only one to write its rows of dB and dC (one channel block, a whole group), which it then stores in their
    dtype instead of adding into zeroed float32 buffers (no zeroing, no atomics, no conversion after)."""

    block_p: int
    p_blocks: int
    per_program: int
    sole: bool

    @classmethod
    def of(cls, chunks: int, heads: int, groups: int, head_dim: int, cfg, device) -> _StateSidePlan:
        # 255 registers a thread at every sm_90 build of the kernel (Triton 3.6): 8 warps take a multiprocessor's
        # 64 K registers, so one program fills it; 4 warps, two.
        block_p = _block(head_dim, cfg.block_p_state_side)
        p_blocks = -(-head_dim // block_p)
        per_program = _heads_per_program(chunks, heads, heads // groups, p_blocks, cfg, device,
                                         per_sm=max(1, 8 // cfg.warps_state_side))
        return cls(block_p, p_blocks, per_program, p_blocks == 1 and per_program == heads // groups)


def _state_side(x, dt, A, B, C, z, dt_bias, dy, states, adjoints, dB, dC, layout, flags, plan, cfg):
    """dB and dC summed over each group's heads by their own kernel (SSDConfig.state_side "kernel"), stored
    into dB, dC or added into them (zeroed) as `plan` says."""
    heads, head_dim, groups, n = x.shape[2], x.shape[3], B.shape[2], B.shape[3]
    kernels().ssd_chunk_state_side_kernel[(layout.chunks, heads // plan.per_program, plan.p_blocks)](
        x, dt, A, B, C, _or(z, x), _or(dt_bias, x), dy, layout.seq_starts, layout.first_chunks, layout.chunk_seq,
        states, adjoints, dB, dC, *x.stride()[1:], *dt.stride()[1:], *B.stride()[1:], *C.stride()[1:],
        *_strides_lhp(z), *dy.stride()[1:],
        heads, groups, heads // groups, plan.per_program, head_dim, n, BLOCK_P=plan.block_p, **flags,
        SOLE=plan.sole, num_warps=cfg.warps_state_side, num_stages=cfg.stages_state_side,
    )


def _backward(dy, dfinal, x, dt, A, B, C, D, z, dt_bias, initial_state, layout, softplus, cfg):
    """Every input's gradient: the states entering each chunk (forward kernel), the adjoints leaving each chunk
    (backward walk), then all chunks at once; here only the sums over channel blocks and chunks."""
    k = kernels()
    batch, length, heads, head_dim = x.shape
    groups, n = B.shape[2], B.shape[3]
    acc, dot, precision, acc_torch, _ = _acc_dtypes(x, dt, A, B, C)
    dev = x.device
    flags = {"BLOCK_Q": cfg.chunk, "BLOCK_N": _block(n, 1 << 30), "ACC": acc, "DOT": dot, "PRECISION": precision,
             "HAS_Z": z is not None, "HAS_BIAS": dt_bias is not None, "SOFTPLUS": softplus}
    states, _ = _chunk_states(x, dt, A, B, C, D, z, dt_bias, initial_state, layout, softplus, cfg)
    adjoints, dh0 = _chunk_adjoints(dy, dfinal, x, dt, A, B, C, z, dt_bias, layout, softplus, cfg)

    block_p = _block(head_dim, cfg.block_p_backward)
    p_blocks = -(-head_dim // block_p)
    rows, chunks = batch * length, layout.chunks
    dx = _empty(batch, length, heads, head_dim, device=dev, dtype=x.dtype)
    dz = _empty(batch, length, heads, head_dim, device=dev, dtype=z.dtype) if z is not None else None
    ddt = _empty(rows, heads, p_blocks, device=dev, dtype=acc_torch)
    dA = _empty(chunks, heads, p_blocks, device=dev, dtype=acc_torch)
    dD = _empty(chunks, heads, head_dim, device=dev, dtype=acc_torch)
    Dm = _d_matrix(D, heads, head_dim)
    inline = cfg.state_side == "inline"
    plan = None if inline else _StateSidePlan.of(chunks, heads, groups, head_dim, cfg, dev)
    if plan is not None and plan.sole:  # stored once per element by the state-side kernel
        dB = _empty(rows, groups, n, device=dev, dtype=B.dtype)
        dC = _empty(rows, groups, n, device=dev, dtype=C.dtype)
    else:  # summed by atomic adds
        dB = torch.zeros(rows, groups, n, device=dev, dtype=acc_torch)
        dC = torch.zeros(rows, groups, n, device=dev, dtype=acc_torch)
    if chunks:
        per_program = _heads_per_program(chunks, heads, heads // groups, p_blocks, cfg, dev)
        k.ssd_chunk_backward_kernel[(chunks, heads // per_program, p_blocks)](
            x, dt, A, B, C, _or(Dm, x), _or(z, x), _or(dt_bias, x), dy, layout.seq_starts, layout.first_chunks,
            layout.chunk_seq, states, adjoints, dx, _or(dz, dx), ddt, dB, dC, dA, dD,
            *x.stride()[1:], *dt.stride()[1:], *B.stride()[1:], *C.stride()[1:], *_strides2(Dm), *_strides_lhp(z),
            *dy.stride()[1:], *dx.stride()[1:],
            heads, groups, heads // groups, per_program, head_dim, n, p_blocks, BLOCK_P=block_p, HAS_D=D is not None,
            ONE_PASS=inline and per_program == 1, STATE_SIDE=inline, **flags,
            num_warps=cfg.warps_backward, num_stages=cfg.stages_backward,
        )
        if not inline:
            _state_side(x, dt, A, B, C, z, dt_bias, dy, states, adjoints, dB, dC, layout, flags, plan, cfg)
    del states, adjoints  # back to the allocator (stream-ordered) before the sums below allocate: a lower peak

    ddt = ddt.sum(-1)  # (b·l, h): ∂loss/∂(dt + dt_bias)
    grads = {
        "x": dx, "dt": ddt.view(batch, length, heads).to(dt.dtype),
        "A": dA.sum((0, 2)).to(A.dtype),
        "B": dB.view(batch, length, groups, n).to(B.dtype), "C": dC.view(batch, length, groups, n).to(C.dtype),
        "D": None, "z": dz, "dt_bias": ddt.sum(0).to(dt_bias.dtype) if dt_bias is not None else None,
        "initial_state": dh0.to(initial_state.dtype) if initial_state is not None else None,
    }
    if D is not None:
        dD = dD.sum(0)  # (h, p)
        grads["D"] = (dD if D.dim() == 2 else dD.sum(-1)).to(D.dtype)
    return grads


class _SSDFunction(torch.autograd.Function):
    """(y, final_state) with a backward through the fused kernels; cu_seqlens, softplus and cfg are constants."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, softplus, cfg):
        x, dt, B, C = _rows(x), _rows(dt), _rows(B), _rows(C)
        z = _rows(z) if z is not None else None
        y, final = _output_pass(x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, softplus, cfg)
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_state)
        ctx.cu_seqlens, ctx.softplus, ctx.cfg = cu_seqlens, softplus, cfg
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, dt, A, B, C, D, z, dt_bias, initial_state = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(x)
        layout = _Layout.of(x.shape[0], x.shape[1], ctx.cu_seqlens, ctx.cfg.chunk, x.device)
        grads = _backward(_rows(dy), dfinal, x, dt, A, B, C, D, z, dt_bias, initial_state, layout,
                          ctx.softplus, ctx.cfg)
        names = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")
        return (*(grads[k] for k in names), None, None, None)


def ssd_triton(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None,
               return_final_state=False, cu_seqlens=None, chunk_size=64, config: SSDConfig | None = None):
    """Same signature and semantics as `mambalab.ops.ssd.ssd_scan` (arguments validated there); `config`
    overrides the tile sizes (benchmarks)."""
    check_runnable("ssd_scan", {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z, "dt_bias": dt_bias,
                                "initial_state": initial_state})
    cfg = config or default_config(chunk_size)
    A, dt_bias = dense(A), dense(dt_bias)  # read per head without a stride, forward and backward
    if records_grad(x, dt, A, B, C, D, z, dt_bias, initial_state):
        y, final = _SSDFunction.apply(x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, bool(dt_softplus),
                                      cfg)
    else:
        y, final = _output_pass(_rows(x), _rows(dt), A, _rows(B), _rows(C), D, None if z is None else _rows(z),
                                dt_bias, initial_state, cu_seqlens, bool(dt_softplus), cfg)
    return (y, final) if return_final_state else y
