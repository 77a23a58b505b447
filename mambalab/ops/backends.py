"""Registry of op backends by name.

Each op (e.g. "selective_scan") has named backends ("reference", "torch", "triton", "cpu"). A backend is
registered with a loader that imports it lazily, so optional dependencies (triton, a C compiler) are only
needed when that backend is used; an unavailable backend raises `BackendUnavailable` with the reason and how
to fix it. `"auto"` resolves through the op's own preference function. The ops: "selective_scan",
"causal_conv1d", "causal_conv1d_update", "selective_state_update", "mixer_step" (each registers its backends
when its package, `mambalab.ops.<folder>`, is imported).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mambalab.errors import MambalabError


class BackendUnavailable(MambalabError, RuntimeError):
    """The backend exists but cannot run here (missing package, no GPU, not built yet)."""


@dataclass
class _Backend:
    loader: Callable[[], Callable]
    _fn: Callable | None = None

    def load(self) -> Callable:
        if self._fn is None:
            self._fn = self.loader()
        return self._fn


_REGISTRY: dict[str, dict[str, _Backend]] = {}
_AUTO: dict[str, Callable[[torch.device], str]] = {}


def register(op: str, name: str, loader: Callable[[], Callable]) -> None:
    """Register `loader` (returns the implementation; may raise BackendUnavailable) as `op`'s `name`."""
    _REGISTRY.setdefault(op, {})[name] = _Backend(loader)


def set_auto(op: str, chooser: Callable[[torch.device], str]) -> None:
    """Register how `op` resolves "auto": chooser(device) returns a backend name (it may probe availability)."""
    _AUTO[op] = chooser


def resolve(op: str, name: str, device: torch.device) -> str:
    """The backend `name` stands for on `device`: "auto" through the op's chooser, any other name unchanged."""
    if name != "auto":
        return name
    if op not in _AUTO:
        raise KeyError(f"op {op!r} has no 'auto' chooser registered")
    return _AUTO[op](device)


def names(op: str) -> list[str]:
    return sorted(_REGISTRY.get(op, {}))


def get(op: str, name: str) -> Callable:
    """The implementation of `op` named `name`; a clear error if unknown or unavailable here."""
    backends = _REGISTRY.get(op)
    if not backends:
        raise KeyError(f"no backends registered for op {op!r}")
    if name not in backends:
        raise ValueError(f"unknown backend {name!r} for {op}; available: {sorted(backends)} or 'auto'")
    return backends[name].load()


def is_available(op: str, name: str) -> bool:
    try:
        get(op, name)
    except BackendUnavailable:
        return False
    return True


def records_grad(*tensors) -> bool:
    """Whether autograd records an op on these tensors (None allowed). The fused kernels' custom ops are
    needed then, and under torch.compile (fake tensors); otherwise (inference) the kernels are called directly:
    a custom op's dispatch costs host time per call, which a short prefill pays per layer."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
