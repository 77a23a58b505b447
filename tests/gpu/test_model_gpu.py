"""On the GPU, a whole model's fast paths against each other (was benchmarks/model_gpu_check.py).

Per dtype: decoding in recurrent mode (the fused Triton step kernels) matches the parallel forward (the fused
Triton scan); the inference forward and step (no gradient recorded: the fused RMSNorm and out_proj + residual
kernels) match the training path's (the torch composition, cuBLAS); `generate` replayed from CUDA graphs (the
step and the greedy choice) gives the eager tokens, EOS included. Skipped without CUDA.

Tolerances: about 10x the errors measured on an H200 (float32 ≈ 4e-7 to 8e-7; bfloat16 recurrent vs parallel
8.4e-3, inference vs training 7.5e-4, fused vs unfused step 4.3e-4).
"""

from __future__ import annotations

import importlib

import pytest
import torch

from mambalab import LanguageModel, ModelConfig
from mambalab.inference.generate import generate
from tests.conftest import rel_error

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PROMPT, STEPS = 100, 28
TOLERANCE = {  # (recurrent vs parallel and prefill, inference vs training forward, fused vs unfused step)
    torch.float32: (1e-5, 1e-5, 1e-5),
    torch.bfloat16: (5e-2, 5e-3, 5e-3),
}


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def model_and_ids(request):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    cfg = ModelConfig(d_model=256, n_layer=4, vocab_size=1000)
    model = LanguageModel(cfg).cuda().to(request.param).eval()
    ids = torch.randint(0, cfg.vocab_size, (4, PROMPT + STEPS), device="cuda")
    return model, ids, request.param


@torch.no_grad()
def test_fused_kernels_are_used(model_and_ids):
    model, _, dtype = model_and_ids
    chosen = model.backbone.layers[0].mixer.kernel_backends(torch.empty(1, device="cuda", dtype=dtype))
    assert set(chosen.values()) == {"triton"}, chosen


@torch.no_grad()
def test_recurrent_matches_parallel(model_and_ids):
    model, ids, dtype = model_and_ids
    tol = TOLERANCE[dtype][0]
    full = model(ids)  # (b, l, V): the Triton scan
    logits, state = model.prefill(ids[:, :PROMPT])
    assert rel_error(logits, full[:, :PROMPT]) <= tol
    for t in range(PROMPT, PROMPT + STEPS):
        assert rel_error(model.step(ids[:, t], state), full[:, t]) <= tol, f"step {t}"


@torch.no_grad()
def test_inference_forward_and_step_match_training_path(model_and_ids):
    model, ids, dtype = model_and_ids
    _, forward_tol, step_tol = TOLERANCE[dtype]
    full = model(ids)  # no gradient recorded: the fused norm and out_proj kernels
    with torch.enable_grad():
        training = model(ids).detach()  # parameters require grad: every norm is the torch composition
        _, unfused_state = model.prefill(ids[:, :PROMPT])
        unfused = model.step(ids[:, PROMPT], unfused_state).detach()  # cuBLAS out_proj, then the add
    assert rel_error(full, training) <= forward_tol
    _, fused_state = model.prefill(ids[:, :PROMPT])
    fused_step = model.step(ids[:, PROMPT], fused_state)  # out_proj + add in one launch (batch ≤ 4)
    assert rel_error(fused_step, unfused) <= step_tol


@torch.no_grad()
def test_generate_from_cuda_graphs_equals_eager(model_and_ids):
    model, ids, _ = model_and_ids
    prompts = ids[:3, :12]
    eos = generate(model, prompts, 24, use_cuda_graph=False).sequences[0][10]
    eager = generate(model, prompts, 24, eos_token_id=eos, use_cuda_graph=False)
    assert eager.finish_reasons[0] == "stop"
    graphed = [generate(model, prompts, 24, eos_token_id=eos) for _ in range(2)]  # the second reuses the graphs
    assert all(g.sequences == eager.sequences for g in graphed)
    cache = importlib.import_module("mambalab.inference.generate")._GRAPH_CHOOSERS  # the module, not the function
    choosers = [c for cs in cache.values() for c in cs.values()]
    assert choosers and all(graph is not None for _, graph in choosers), "the greedy choice was not captured"
