"""The training path's CUDA-only pieces against their references (skipped without CUDA): the compiled RMSNorm
against the torch composition, the fused head + cross-entropy under bf16 autocast against float64, and the
trainer's waits for the GPU per step."""

import itertools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from mambalab.layers.norm import RMSNorm, rms_norm_composition
from mambalab.ops.linear_cross_entropy import linear_cross_entropy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def rel_err(a, b):
    err = ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()
    assert math.isfinite(err), "NaN"
    return err


@pytest.mark.parametrize("shape", [(2, 37, 768), (3, 5, 130)])
def test_compiled_rms_norm_matches_composition(shape):
    norm = RMSNorm(shape[-1]).cuda()
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(*shape, device="cuda", requires_grad=True)
    y = norm(x, round_to_weight_dtype=True)  # records a gradient: the compiled path
    dy = torch.randn_like(y)
    dx, dw = torch.autograd.grad(y, (x, norm.weight), dy)
    x64, w64 = x.detach().double().requires_grad_(), norm.weight.detach().double().requires_grad_()
    y64 = rms_norm_composition(x64, w64, norm.eps, round_to_weight_dtype=True)
    dx64, dw64 = torch.autograd.grad(y64, (x64, w64), dy.double())
    assert rel_err(y, y64) < 1e-6 and rel_err(dx, dx64) < 1e-5 and rel_err(dw, dw64) < 1e-5


def test_fused_cross_entropy_under_autocast():
    tokens, d, vocab = 3000, 256, 5000
    hidden = torch.randn(tokens, d, device="cuda", requires_grad=True)
    weight = (torch.randn(vocab + 8, d, device="cuda") / d**0.5).requires_grad_()
    labels = torch.randint(vocab, (tokens,), device="cuda")
    labels[::7] = -100
    with torch.autocast("cuda", dtype=torch.bfloat16):
        total, count = linear_cross_entropy(hidden, weight, labels, vocab)
    total.backward()
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref = F.cross_entropy(h64 @ w64[:vocab].t(), labels, ignore_index=-100, reduction="sum")
    ref.backward()
    assert int(count) == int((labels != -100).sum())
    assert rel_err(total, ref) < 5e-3 and rel_err(hidden.grad, h64.grad) < 2e-2 and rel_err(weight.grad, w64.grad) < 2e-2


def _device_waits(fn) -> list[str]:
    """Where `fn()` makes the host wait for the GPU: 'file:line' of each of CUDA's synchronizing calls, as torch
    reports them (the Python line that called the op)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{w.filename}:{w.lineno}" for w in caught if "called a synchronizing" in str(w.message)]


def test_a_training_step_waits_for_the_gpu_once_more_than_its_model():
    """The model reads the extremes of its ids and labels in one transfer, the trainer loss, aux loss and grad
    norm in another before the optimizer step and checks its stop flag on the host: the model's forward +
    backward waits for the GPU once, a step at most once more."""
    from mambalab import LanguageModel
    from mambalab.models.zoo import get_preset
    from mambalab.train.trainer import TrainConfig, Trainer

    model = LanguageModel(get_preset("tiny-mamba"))
    ids = torch.randint(model.config.vocab_size, (2, 33))
    batch = {"input_ids": ids[:, :-1].pin_memory(), "labels": ids[:, 1:].pin_memory()}
    trainer = Trainer(model, TrainConfig(device="cuda", batch_size=2, seq_len=32, max_steps=10, progress=False),
                      itertools.repeat(batch))
    batches = itertools.repeat(batch)
    trainer._train_step(batches)  # warm-up: compilation, allocator
    on_gpu = {k: v.cuda() for k, v in batch.items()}

    def model_only():
        with trainer._autocast():
            (total, count), aux = trainer.model(on_gpu["input_ids"], labels=on_gpu["labels"], return_aux_loss=True)
        (total / count.clamp(min=1) + aux.float()).backward()
        trainer.model.zero_grad(set_to_none=True)

    model_only()
    step, model_alone = _device_waits(lambda: trainer._train_step(batches)), _device_waits(model_only)
    assert len(model_alone) <= 1, f"the model's forward + backward waits at {model_alone}: its id checks once"
    assert len(step) <= len(model_alone) + 1, f"a step waits at {step}; the model alone at {model_alone}"
    assert _device_waits(trainer._stop_requested) == []
