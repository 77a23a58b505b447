"""Decoding steps: eager, or replayed from CUDA graphs.

A decode step launches hundreds of tiny kernels (every layer's projections, conv update, state update,
norms); issued one by one from Python it is launch-bound. On CUDA, `GraphStep` captures the whole step once
per batch size and state layout on static buffers: the state being advanced lives in those buffers, each
call copies the token ids in, replays the graph and copies the logits out. Elsewhere `EagerStep` calls
`model._step` directly. `decode_step(model, state)` picks one and returns it with the state to advance.
`GraphChoice` captures the choice of the next tokens (greedy decoding) over a GraphStep's buffers as well.

Capturing needs a step that updates its state tensors in place and never synchronises with the host. Both
are checked during warm-up, before capturing (host syncs raise under `torch.cuda.set_sync_debug_mode`); a
model whose step fails them (e.g. attention that grows its KV cache by reallocation) decodes eagerly, with a
logged warning.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable

import torch

from mambalab.inference.state import InferenceState

logger = logging.getLogger(__name__)

WARMUP_STEPS = 3


class EagerStep:
    """Advance `state` one token per call with the model's own step: tokens (b,) -> logits (b, vocab)."""

    def __init__(self, step_fn: Callable, state: InferenceState):
        self.step_fn, self.state = step_fn, state

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.step_fn(tokens, self.state)


class GraphStep:
    """One captured decode step for one batch size and state layout, on static buffers.

    `load(state)` copies a state into the static buffers (then `self.state` is the state being advanced);
    each call copies tokens (b,) in, replays, and returns a copy of the logits (b, vocab)."""

    def __init__(self, step_fn: Callable, template: InferenceState):
        self.state = template.clone()  # static state buffers
        self.tokens = torch.zeros(template.batch_size, dtype=torch.long, device=template.device)  # (b,)
        side = torch.cuda.Stream(device=template.device)
        side.wait_stream(torch.cuda.current_stream(template.device))
        with torch.cuda.stream(side):  # warm up off the capture
            step_fn(self.tokens, self.state)  # the first call may initialise, compile, autotune, allocate
            pointers = _pointers(self.state)
            with _host_syncs_raise():
                for _ in range(WARMUP_STEPS - 1):
                    step_fn(self.tokens, self.state)
        torch.cuda.current_stream(template.device).wait_stream(side)
        _check_in_place(self.state, pointers)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = step_fn(self.tokens, self.state)  # (b, vocab) static output
        _check_in_place(self.state, pointers)

    def load(self, state: InferenceState) -> None:
        for static, layer in zip(self.state.layers, state.layers):
            for key, t in layer.items():
                static[key].copy_(t)
        self.state.seqlen.copy_(state.seqlen)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.graph.replay()
        return self.logits.clone()


class GraphChoice:
    """The choice of the next tokens, `choose(logits) -> (tokens (b,), record)`, captured as a second graph over
    a GraphStep's static buffers: each call replays it on the step's logits, writes the tokens into the step's
    input and returns the (static) record. A decode token then costs two replays and a copy to the host
    instead of ~10 launches from Python (+2-3 % tokens/s at batch 1 on an H200 host, benchmarks/notes/decode.md).
    `choose` must keep its own state in tensors it updates in place."""

    def __init__(self, step: GraphStep, choose: Callable):
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            tokens, self.record = choose(step.logits)
            step.tokens.copy_(tokens)

    def __call__(self) -> torch.Tensor:
        self.graph.replay()
        return self.record


def graph_choice(step: GraphStep, choose: Callable) -> GraphChoice | None:
    """GraphChoice(step, choose), or None (logged) when it cannot be captured: the caller then chooses eagerly."""
    try:
        return GraphChoice(step, choose)
    except Exception as e:  # noqa: BLE001 (any capture failure: choose eagerly, as before)
        logger.warning("CUDA graph capture of the token choice failed (%s: %s); choosing eagerly",
                       type(e).__name__, e)
        return None


class _GraphCache:
    """The captured steps of one model (for the parameters' current storage), keyed by state layout."""

    def __init__(self):
        self.steps: dict[tuple, GraphStep | None] = {}  # None = capture failed, decode eagerly
        self.params: tuple = ()


_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def decode_step(model, state: InferenceState, use_cuda_graph: bool = True, compile_step: bool = False):
    """A callable tokens (b,) -> logits (b, vocab) whose `.state` is the state it advances: `state` itself
    when eager, static buffers loaded from `state` when replaying a CUDA graph (CUDA and `use_cuda_graph`).

    `compile_step` runs the captured step through `torch.compile` first (fuses the elementwise work)."""
    if not (use_cuda_graph and state.device.type == "cuda"):
        return EagerStep(model._step, state)
    cache = _CACHES.setdefault(model, _GraphCache())
    params = tuple(p.data_ptr() for p in model.parameters())
    if params != cache.params:  # the model was moved or cast: its old graphs read freed storage
        cache.steps.clear()
        cache.params = params
    key = (compile_step, _layout(state))
    if key not in cache.steps:
        step_fn = torch.compile(model._step) if compile_step else model._step
        try:
            cache.steps[key] = GraphStep(step_fn, state)
            logger.info("captured a CUDA graph of the decode step for batch %d", state.batch_size)
        except Exception as e:  # noqa: BLE001 (any failure to warm up, compile or capture: decode eagerly)
            logger.warning("CUDA graph capture of the decode step failed (%s: %s); decoding eagerly",
                           type(e).__name__, e)
            cache.steps[key] = None
    graph = cache.steps[key]
    if graph is None:
        return EagerStep(model._step, state)
    graph.load(state)
    return graph


@contextlib.contextmanager
def _host_syncs_raise():
    """Make operations that wait for the GPU (e.g. `.item()`, `int(tensor)`) raise a RuntimeError."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _layout(state: InferenceState) -> tuple:
    return tuple(
        tuple((k, tuple(t.shape), t.dtype) for k, t in sorted(layer.items())) for layer in state.layers
    ) + (state.batch_size, str(state.device))


def _pointers(state: InferenceState) -> tuple:
    return tuple(t.data_ptr() for layer in state.layers for t in layer.values()) + (state.seqlen.data_ptr(),)


def _check_in_place(state: InferenceState, pointers: tuple) -> None:
    if _pointers(state) != pointers:
        raise RuntimeError("the model's step replaces state tensors instead of updating them in place")
