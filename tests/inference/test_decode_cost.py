"""Decoding cost does not grow with the cached prefix (the point of RNN-mode inference), and the CUDA-graph
step falls back cleanly on CPU (and matches eager decoding on a GPU)."""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mambalab.inference.cuda_graph import EagerStep, GraphStep, decode_step
from mambalab.inference.generate import generate
from tests.conftest import rel_error
from tests.inference.conftest import random_prompts, tiny_model


class OpTrace(TorchDispatchMode):
    """Records every aten op a computation runs, with the shapes of its tensor arguments."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = tree_leaves((args, kwargs))
        self.ops.append((str(func), tuple(tuple(t.shape) for t in leaves if isinstance(t, torch.Tensor))))
        return func(*args, **kwargs)


def step_trace(model, state) -> list[tuple[str, tuple]]:
    with OpTrace() as trace:
        model.step(torch.zeros(state.batch_size, dtype=torch.long), state)
    return trace.ops


@torch.no_grad()
def test_per_token_cost_is_independent_of_the_prefix_length(model):
    short, long = (model.prefill(torch.tensor(random_prompts([n])))[1] for n in (16, 1024))
    assert short.nbytes() == long.nbytes()  # the whole memory of the past: fixed size
    trace = step_trace(model, short.clone())
    assert len(trace) > 20 and trace == step_trace(model, long.clone())  # the same ops on the same shapes
    times = {id(short): [], id(long): []}
    for _ in range(60):  # interleaved; the fastest of many runs is robust to a busy machine
        for state in (short, long):
            start = time.perf_counter()
            model.step(torch.zeros(1, dtype=torch.long), state)
            times[id(state)].append(time.perf_counter() - start)
    ratio = min(times[id(long)]) / min(times[id(short)])
    assert ratio < 1.5, f"decode step with a 1024-token prefix is {ratio:.2f}x the 16-token one"


def test_decode_step_is_eager_off_cuda(model):
    state = model.allocate_state(2)
    step = decode_step(model, state)
    assert isinstance(step, EagerStep) and step.state is state


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@torch.no_grad()
def test_cuda_graph_step_matches_eager():
    model = tiny_model(dtype=torch.float32).cuda()
    prompts = random_prompts([5, 9, 2])
    _, state = model.prefill(torch.tensor([p[:2] for p in prompts], device="cuda"))
    eager_state = state.clone()
    graph = decode_step(model, state)
    assert isinstance(graph, GraphStep)
    for _ in range(5):
        tokens = torch.randint(0, 61, (3,), device="cuda")
        assert rel_error(graph(tokens), model.step(tokens, eager_state)) < 1e-5
    assert generate(model, prompts, 10).sequences == generate(model, prompts, 10, use_cuda_graph=False).sequences
    # with an EOS that row 0 reaches: the greedy choice replayed from its graph (captured once, then reused)
    eos = generate(model, prompts, 10, use_cuda_graph=False).sequences[0][4]
    eager = generate(model, prompts, 10, eos_token_id=eos, use_cuda_graph=False)
    assert eager.finish_reasons[0] == "stop"
    for _ in range(2):
        assert generate(model, prompts, 10, eos_token_id=eos).sequences == eager.sequences
