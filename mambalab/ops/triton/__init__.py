"""Fused Triton kernels (selective scan forward/backward, causal conv forward/backward, one-step state update,
conv window update, the mixer's decode step, RMSNorm for inference).

Importing this package's kernel modules imports triton. The kernels are compiled for CUDA, or run by Triton's
CPU interpreter when TRITON_INTERPRET=1: triton reads that variable when `@triton.jit` decorates a function
(so it must be set before the kernel modules are first imported) and again while interpreted kernels run.
`device()` says which tensors the kernels take now; `interpreter()` runs a block with the kernels
interpreted, for CPU tests.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

_KERNEL_MODULES = ("mambalab.ops.triton.common", "mambalab.ops.triton.scan", "mambalab.ops.triton.step",
                   "mambalab.ops.triton.conv", "mambalab.ops.triton.norm",
                   "mambalab.ops.triton.linear")


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


def check_device(op: str, x) -> None:
    """ValueError unless the kernels can take tensors on x's device here."""
    where = device()
    if where != x.device.type:
        raise ValueError(f"{op}: tensors are on {x.device}, but the Triton kernels run on {where or 'no device here'}")


def check_step_inputs(op: str, x_t, state_batch_indices) -> None:
    """ValueError unless the decode-step kernels can take x_t here and state_batch_indices is (b,) or None."""
    check_device(op, x_t)
    if state_batch_indices is not None and tuple(state_batch_indices.shape) != (x_t.shape[0],):
        raise ValueError(
            f"{op}: state_batch_indices must be ({x_t.shape[0]},), got {tuple(state_batch_indices.shape)}"
        )
