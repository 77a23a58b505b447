"""What the Triton kernels of every op share: where they run (`device`, `require`), the CPU interpreter for
tests (`interpreter`), the "auto" rule of the ops with a reference and a triton backend, the @triton.jit math
helpers (common.py), and the kernels the layers call directly, outside any op's backend switch: RMSNorm
(norm.py, layers/norm.py), Mamba-2's gated RMSNorm (gated_norm.py, layers/mamba2.py), out_proj plus the
residual add at decode (linear.py, layers/mamba.py) and the LM head's softmax cross-entropy (cross_entropy.py,
ops/linear_cross_entropy.py).
Each op's own kernels live in its folder (mambalab/ops/<op>/triton_kernels.py).

Importing a kernel module imports triton. The kernels are compiled for CUDA, or run by Triton's
CPU interpreter when TRITON_INTERPRET=1: triton reads that variable when `@triton.jit` decorates a function
(so it must be set before the kernel modules are first imported) and again while interpreted kernels run.
`device()` says which tensors the kernels take now; `interpreter()` runs a block with the kernels
interpreted, for CPU tests.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable

from mambalab.errors import InputError

_KERNEL_MODULES = ("mambalab.ops.triton.common", "mambalab.ops.selective_scan.triton_kernels",
                   "mambalab.ops.state_update.triton_kernels", "mambalab.ops.causal_conv1d.triton_kernels",
                   "mambalab.ops.triton.norm", "mambalab.ops.triton.gated_norm", "mambalab.ops.triton.linear",
                   "mambalab.ops.triton.cross_entropy")


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def device() -> str | None:
    """"cuda" when the kernels are compiled and a GPU is visible; "cpu" when they are interpreted and
    TRITON_INTERPRET is still set; None when they cannot run here."""
    import torch

    from mambalab.ops.triton import common

    if common.INTERPRETED:
        return "cpu" if _interpret_env() else None
    return "cuda" if torch.cuda.is_available() else None


@contextlib.contextmanager
def interpreter():
    """Within the block, the kernels run on CPU tensors in Triton's interpreter (slow: numpy per block op).

    Sets TRITON_INTERPRET=1, (re)imports the kernel modules so that they are interpreted, and restores the
    variable on exit (afterwards the interpreted kernels refuse to run: `device()` is None).
    """
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        for name in _KERNEL_MODULES:
            module = sys.modules.get(name)
            if module is None:
                importlib.import_module(name)
            elif not module.INTERPRETED:
                importlib.reload(module)
        yield
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


def require(op: str) -> None:
    """BackendUnavailable, saying why and what to do, unless op's triton backend can run here."""
    from mambalab.ops.backends import BackendUnavailable

    if importlib.util.find_spec("triton") is None:
        raise BackendUnavailable(f"{op} backend 'triton' needs the triton package: pip install 'mambalab[triton]'")
    if device() is None:
        raise BackendUnavailable(
            f"{op} backend 'triton' needs a CUDA GPU (none is visible); on CPU, use another backend, or run "
            "the kernels in Triton's interpreter (mambalab.ops.triton.interpreter(), or TRITON_INTERPRET=1 set "
            "before mambalab.ops.triton is imported)"
        )


def check_device(op: str, x) -> None:
    """InputError unless the kernels can take tensors on x's device here."""
    where = device()
    if where != x.device.type:
        raise InputError(f"{op}: tensors are on {x.device}, but the Triton kernels run on {where or 'no device here'}")


def dense(t):
    """t laid out contiguously (None stays None): the kernels read their 1-D per-channel and per-head parameters
    (A, D, biases) at ptr + index, without a stride, so a strided or expanded view must be copied first (free
    when t is contiguous already; autograd flows through the copy)."""
    return None if t is None else t.contiguous()


def auto_chooser(op: str) -> Callable:
    """The "auto" of an op with a "reference" and a "triton" backend: "triton" on CUDA where it runs, else
    "reference" (interpreted kernels are for tests: "auto" never picks them on CPU)."""
    from mambalab.ops import backends

    def choose(device) -> str:
        return "triton" if device.type == "cuda" and backends.is_available(op, "triton") else "reference"

    return choose


def resolve_for(op: str, name: str, x) -> str:
    """`backends.resolve` for x, except that "auto" is "reference" for float64 x (the kernels compute in float32,
    the reference in x's precision)."""
    import torch

    from mambalab.ops import backends

    if name == "auto" and x.dtype == torch.float64:
        return "reference"
    return backends.resolve(op, name, x.device)


def runs_on(target) -> bool:
    """Whether the compiled kernels take tensors on the device `target` (the layers' fused norm, on CUDA)."""
    return target.type == "cuda" and importlib.util.find_spec("triton") is not None and device() == "cuda"
