"""`backend="cpu"`: the fused C kernels of cpu_scan.c, compiled on first use, as differentiable torch ops.

The C source is plain C (no torch headers, so it compiles in about 3 s). On first use in a process it is
compiled with the system compiler (`$CC`, else `cc`) as `-O3 -march=native -fopenmp -shared -fPIC` into
the cache folder (`$MAMBALAB_CACHE_DIR`, else `~/.cache/mambalab`), under a name keyed by a hash of the
source, the flags, the compiler's version and the instruction sets `-march=native` selects here; it is
compiled under a temporary name and moved into place with `os.replace`, so concurrent processes are safe.
The library is loaded with ctypes. No compiler, or a failed compile: `BackendUnavailable` saying what failed,
the compiler's last lines and how to fix it (`backend="auto"` then uses "torch", logged once).

Two torch.library custom ops, `mambalab::selective_scan_cpu_fwd` and `mambalab::selective_scan_cpu_bwd`, with
fake implementations and autograd (fused.py), so `torch.compile(fullgraph=True)` traces a mixer using them.

Compute dtype as the reference: float64 when any of u, delta, A is float64, else float32 (bf16/fp16 inputs
computed in float32); y comes back in u's dtype, the final state in the compute dtype. What gets copied:
every floating input not already in the compute dtype (one cast, e.g. bf16 -> float32), and every input
(and the incoming gradients) not contiguous, e.g. the mixer's B and C (views of x_proj's output). The kernels
vectorise over channels (see cpu_scan.c), so B and C are read in their own (b, G, n, l) layout. The forward
keeps the state every CHECKPOINT_STEPS steps, and only when a gradient is needed: (slots, d, n) with
slots ≈ b·L / CHECKPOINT_STEPS, never a (b, d, l, n) tensor. The backward adds a workspace of one
(b, G, n, l) dB and dC buffer per thread (summed at the end; no races).

Threads: OpenMP over independent blocks of channels of one sequence, `torch.get_num_threads()` of them.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from mambalab.ops.backends import BackendUnavailable
from mambalab.ops.selective_scan.fused import FusedScan, sequence_count

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_scan.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
# Steps per checkpointed segment: the backward recomputes one segment's states from its checkpoint, one state
# index at a time; the checkpoints take n / CHECKPOINT_STEPS values per (b, d, l) element (a quarter of u's
# size at n = 16).
CHECKPOINT_STEPS = 64
_COMPILE_TIMEOUT_S = 300


def empty(*shape, dtype) -> torch.Tensor:
    """Uninitialised buffers the kernels write (tests replace this to poison them with NaN)."""
    return torch.empty(*shape, dtype=dtype)


def cache_dir() -> Path:
    return Path(os.environ.get("MAMBALAB_CACHE_DIR") or Path.home() / ".cache" / "mambalab")


def _compiler_output(cc: str, args: list[str]) -> str:
    """stdout of `cc args`; BackendUnavailable when the compiler cannot be run."""
    try:
        proc = subprocess.run([cc, *args], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BackendUnavailable(
            f"selective_scan backend 'cpu' needs a C compiler: running `{cc} {' '.join(args)}` failed ({e}). "
            "Install one (e.g. `apt install gcc`) or point $CC at it; or use backend='torch'"
        ) from e
    if proc.returncode != 0:
        raise BackendUnavailable(
            f"selective_scan backend 'cpu': `{cc} {' '.join(args)}` exited with {proc.returncode}: "
            f"{_tail(proc.stderr)}. Point $CC at a working C compiler (gcc or clang), or use backend='torch'"
        )
    return proc.stdout


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


def build(extra_flags: tuple[str, ...] = ()) -> Path:
    """The compiled library, from the cache or compiled now; BackendUnavailable when that fails. `extra_flags`
    follow FLAGS (the tests build the portable kernels with `-mno-avx512f`)."""
    cc = os.environ.get("CC") or "cc"
    flags = [*FLAGS, *extra_flags]
    version = _compiler_output(cc, ["--version"])
    target = _compiler_output(cc, [*flags, "-dM", "-E", "-x", "c", os.devnull])  # predefined macros
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), cc.encode(), version.encode(),
                                     target.encode()])).hexdigest()[:20]
    folder = cache_dir()
    library = folder / f"cpu_scan-{key}.so"
    if library.exists():
        return library
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".cpu_scan-{key}-", suffix=".so")
    except OSError as e:
        raise BackendUnavailable(
            f"selective_scan backend 'cpu': cannot write the compiled kernels to {folder} ({e}); "
            "set $MAMBALAB_CACHE_DIR to a writable folder"
        ) from e
    os.close(fd)
    command = [cc, *flags, "-o", tmp, str(SOURCE), "-lm"]
    logger.info("selective_scan backend 'cpu': compiling %s (once; cached in %s)", SOURCE.name, folder)
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S, check=False)
        if proc.returncode != 0:
            raise BackendUnavailable(
                f"selective_scan backend 'cpu': compiling the kernels failed (`{' '.join(command)}` exited with "
                f"{proc.returncode}):\n{_tail(proc.stderr)}\nFix: point $CC at a C compiler with OpenMP support "
                "(gcc, or clang with libomp), or use backend='torch'"
            )
        os.replace(tmp, library)
    except subprocess.TimeoutExpired as e:
        raise BackendUnavailable(
            f"selective_scan backend 'cpu': compiling the kernels took over {_COMPILE_TIMEOUT_S} s; "
            "use backend='torch'"
        ) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return library


class _Shape(ctypes.Structure):
    _fields_ = [
        ("batch", ctypes.c_int64), ("dim", ctypes.c_int64), ("length", ctypes.c_int64), ("n", ctypes.c_int64),
        ("groups", ctypes.c_int64), ("num_seqs", ctypes.c_int64), ("cu_seqlens", ctypes.c_void_p),
        ("checkpoint_steps", ctypes.c_int64), ("delta_softplus", ctypes.c_int32), ("threads", ctypes.c_int32),
    ]


class _Inputs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0")]


class _Grads(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in
                ("du", "ddelta", "dz", "dA", "dB", "dC", "dD", "ddelta_bias", "dh0", "workspace")]


_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_library: ctypes.CDLL | None = None
_failure: str | None = None


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    pointer = ctypes.c_void_p
    for suffix in _SUFFIX.values():
        forward = getattr(lib, f"mambalab_scan_forward_{suffix}")
        forward.argtypes = [ctypes.POINTER(_Shape), ctypes.POINTER(_Inputs), pointer, pointer, pointer]
        backward = getattr(lib, f"mambalab_scan_backward_{suffix}")
        backward.argtypes = [ctypes.POINTER(_Shape), ctypes.POINTER(_Inputs), pointer, pointer, pointer,
                             ctypes.POINTER(_Grads)]
        forward.restype = backward.restype = ctypes.c_int
    lib.mambalab_exp2_f32.argtypes = [pointer, pointer, ctypes.c_int64]
    lib.mambalab_exp2_f32.restype = None
    return lib


@torch.compiler.assume_constant_result
def compiled() -> bool:
    """Compile (or find in the cache) and load the kernels, once per process; False when that failed (the
    reason is logged once). Under torch.compile this runs eagerly and its result is a constant of the graph,
    so a first call inside a traced model compiles here instead of breaking the graph."""
    global _library, _failure
    if _library is None and _failure is None:
        try:
            _library = _load(build())
        except BackendUnavailable as e:
            _failure = str(e)
            logger.warning("%s\n(backend='auto' uses 'torch' on CPU instead)", _failure)
    return _library is not None


def load_cpu_scan():
    """The cpu `selective_scan`, or BackendUnavailable saying why it cannot run here."""
    if not compiled():
        raise BackendUnavailable(_failure)
    return selective_scan_cpu


def library() -> ctypes.CDLL:
    """The loaded kernels (compiled first if needed)."""
    load_cpu_scan()
    return _library


def selective_scan_cpu(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, return_final_state=False, cu_seqlens=None,
):
    """Same signature and semantics as `mambalab.ops.selective_scan.selective_scan` (arguments validated there)."""
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias,
               "initial_state": initial_state}
    for name, t in tensors.items():
        if t is not None and t.device.type != "cpu":
            raise BackendUnavailable(f"selective_scan backend 'cpu' runs on CPU tensors; {name} is on {t.device}")
    compute = torch.float64 if torch.float64 in (u.dtype, delta.dtype, A.dtype) else torch.float32
    cast = {k: None if t is None else t.to(compute) for k, t in tensors.items()}
    out = _OPS(cast["u"], cast["delta"], cast["A"], cast["B"], cast["C"], cast["D"], cast["z"], cast["delta_bias"],
               delta_softplus, cast["initial_state"], return_final_state, cu_seqlens)
    if return_final_state:
        return out[0].to(u.dtype), out[1]
    return out.to(u.dtype)


def _checkpoint_slots(u, A, B, cu_seqlens) -> int:
    """Checkpoint slots (see cpu_scan.c): rows · ceil(L / K), or L // K + num_seqs when packed."""
    rows, length, k = sequence_count(u, cu_seqlens), u.shape[2], CHECKPOINT_STEPS
    return length // k + rows if cu_seqlens is not None else rows * -(-length // k)


def _grouped(B) -> torch.Tensor:
    """(b, n, l) or (b, G, n, l) -> contiguous (b, G, n, l)."""
    return (B.unsqueeze(1) if B.dim() == 3 else B).contiguous()


def _pointer(t) -> int | None:
    return None if t is None else t.data_ptr()


def _shape(u, A, B, cu_seqlens, delta_softplus) -> _Shape:
    batch, dim, length = u.shape
    return _Shape(
        batch=batch, dim=dim, length=length, n=A.shape[1], groups=1 if B.dim() == 3 else B.shape[1],
        num_seqs=sequence_count(u, cu_seqlens), cu_seqlens=_pointer(cu_seqlens), checkpoint_steps=CHECKPOINT_STEPS,
        delta_softplus=int(delta_softplus), threads=torch.get_num_threads(),
    )


def _inputs(u, delta, A, B, C, D, z, delta_bias, initial_state) -> _Inputs:
    """The C view of the inputs (contiguous tensors; B, C (b, G, n, l))."""
    return _Inputs(*(_pointer(t) for t in (u, delta, A, B, C, D, z, delta_bias, initial_state)))


def _contiguous(*tensors):
    return [None if t is None else t.contiguous() for t in tensors]


def _check(ok: int, what: str) -> None:
    if not ok:
        raise MemoryError(f"selective_scan backend 'cpu': the {what} kernel could not allocate its scratch memory")


def _forward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, store_checkpoints):
    batch, dim, length = u.shape
    n, rows = A.shape[1], sequence_count(u, cu_seqlens)
    args = [*_contiguous(u, delta, A), _grouped(B), _grouped(C), *_contiguous(D, z, delta_bias, initial_state)]
    y = empty(batch, dim, length, dtype=u.dtype)  # (b, d, l)
    final = empty(rows, dim, n, dtype=u.dtype)  # (rows, d, n)
    ckpt = empty(_checkpoint_slots(u, A, B, cu_seqlens) if store_checkpoints else 0, dim, n, dtype=u.dtype)
    kernel = getattr(library(), f"mambalab_scan_forward_{_SUFFIX[u.dtype]}")
    _check(kernel(_shape(u, A, B, cu_seqlens, delta_softplus), _inputs(*args), y.data_ptr(), final.data_ptr(),
                  ckpt.data_ptr() if store_checkpoints else None), "forward")
    return y, final, ckpt


def _backward(dy, d_final, u, delta, A, B, C, D, z, delta_bias, cu_seqlens, ckpt, delta_softplus):
    batch, dim, length = u.shape
    n, rows, groups = A.shape[1], sequence_count(u, cu_seqlens), 1 if B.dim() == 3 else B.shape[1]
    dtype = u.dtype
    shape = _shape(u, A, B, cu_seqlens, delta_softplus)
    args = [*_contiguous(u, delta, A), _grouped(B), _grouped(C), *_contiguous(D, z, delta_bias), None]
    dy, d_final = _contiguous(dy.to(dtype), None if d_final is None else d_final.to(dtype))
    du, ddelta = empty(batch, dim, length, dtype=dtype), empty(batch, dim, length, dtype=dtype)  # (b, d, l)
    dz = empty(batch, dim, length, dtype=dtype) if z is not None else None
    dA = empty(rows, dim, n, dtype=dtype)  # per-sequence partials                                  (rows, d, n)
    dB, dC = empty(batch, groups, n, length, dtype=dtype), empty(batch, groups, n, length, dtype=dtype)
    dD = empty(rows, dim, dtype=dtype) if D is not None else None  # (rows, d)
    dbias = empty(rows, dim, dtype=dtype) if delta_bias is not None else None
    dh0 = empty(rows, dim, n, dtype=dtype)  # (rows, d, n)
    workspace = empty(shape.threads, 2, batch, groups, n, length, dtype=dtype)  # each thread's dB, dC sums
    grads = _Grads(*(_pointer(t) for t in (du, ddelta, dz, dA, dB, dC, dD, dbias, dh0, workspace)))
    kernel = getattr(library(), f"mambalab_scan_backward_{_SUFFIX[dtype]}")
    _check(kernel(shape, _inputs(*args), ckpt.data_ptr(), dy.data_ptr(), _pointer(d_final), grads), "backward")
    dB, dC = (g.view(B.shape) for g in (dB, dC))
    return (du, ddelta, dz, dA.sum(0), dB, dC, None if dD is None else dD.sum(0),
            None if dbias is None else dbias.sum(0), dh0)


_OPS = FusedScan("selective_scan_cpu", _forward, _backward, _checkpoint_slots, state_dtype=lambda u: u.dtype,
                 index_dtype=torch.int64)
