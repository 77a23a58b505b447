"""Fused decode-step kernels (SSM state update, conv window update) vs the torch steps in float64, with a
state_batch_indices map into a larger pool of state slots. CPU runs use Triton's interpreter."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from mambalab.ops.causal_conv1d import causal_conv1d_update
from mambalab.ops.state_update import mixer_step, selective_state_update
from tests.conftest import rel_error
from tests.ops.conftest import TRITON_DEVICE as DEVICE

pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("triton_kernels")]

selective_state_update_fused = partial(selective_state_update, backend="triton")
causal_conv1d_update_fused = partial(causal_conv1d_update, backend="triton")
mixer_step_fused = partial(mixer_step, backend="triton")


def test_state_update_with_slot_indices():
    batch, slots, dim, n, groups = 3, 5, 12, 4, 2
    state = torch.randn(slots, dim, n)
    idx = torch.tensor([4, 0, 2])
    x, dt, z = torch.randn(batch, dim), torch.randn(batch, dim), torch.randn(batch, dim)
    A, D, bias = -torch.rand(dim, n) - 0.5, torch.randn(dim), torch.randn(dim)
    B, C = torch.randn(batch, groups, n), torch.randn(batch, groups, n)
    fused_state = state.clone().to(DEVICE)
    y = selective_state_update_fused(fused_state, *(t.to(DEVICE) for t in (x, dt, A, B, C, D, z, bias)), True,
                                     state_batch_indices=idx.to(DEVICE))
    ref_rows = state[idx].double()
    y_ref = selective_state_update(ref_rows, *(t.double() for t in (x, dt, A, B, C, D, z, bias)), True)
    expected = state.clone().double()
    expected[idx] = ref_rows  # untouched slots stay as they were
    assert rel_error(y, y_ref) <= 1e-5
    assert rel_error(fused_state, expected) <= 1e-6


def test_conv_update_with_slot_indices():
    batch, slots, dim, width = 2, 4, 10, 4
    conv_state = torch.randn(slots, dim, width)
    idx = torch.tensor([3, 1])
    x, weight, bias = torch.randn(batch, dim), torch.randn(dim, width), torch.randn(dim)
    fused_state = conv_state.clone().to(DEVICE)
    y = causal_conv1d_update_fused(x.to(DEVICE), fused_state, weight.to(DEVICE), bias.to(DEVICE), "silu",
                                   state_batch_indices=idx.to(DEVICE))
    ref_rows = conv_state[idx].double()
    y_ref = causal_conv1d_update(x.double(), ref_rows, weight.double(), bias.double(), "silu")
    expected = conv_state.clone().double()
    expected[idx] = ref_rows
    assert rel_error(y, y_ref) <= 1e-6
    assert rel_error(fused_state, expected) <= 1e-7


def test_bad_indices_shape():
    with pytest.raises(ValueError, match="state_batch_indices"):
        selective_state_update_fused(torch.zeros(2, 4, 2, device=DEVICE), torch.zeros(2, 4, device=DEVICE), None,
                                     None, None, None, state_batch_indices=torch.zeros(3, dtype=torch.long))


def mixer_inputs(batch=3, dim=70, n=5, rank=6, width=4, slots=None):
    """A mixer step's tensors, fresh: 70 channels span two 64-channel blocks, the second partial."""
    rows = slots or batch
    return {
        "x_t": torch.randn(batch, dim), "z_t": torch.randn(batch, dim),
        "conv_state": torch.randn(rows, dim, width), "ssm_state": torch.randn(rows, dim, n),
        "conv_weight": torch.randn(dim, width), "conv_bias": torch.randn(dim),
        "x_proj_weight": torch.randn(rank + 2 * n, dim) / dim**0.5, "dt_proj_weight": torch.randn(dim, rank) / rank**0.5,
        "dt_proj_bias": torch.randn(dim) * 0.5 - 3.0, "A_log": torch.randn(dim, n) * 0.5, "D": torch.randn(dim),
    }


@pytest.mark.parametrize(("batch", "with_indices"), [(3, False), (3, True), (19, False), (19, True)])
@pytest.mark.usefixtures("poisoned_kernel_outputs")
def test_mixer_step_fused_matches_composition(batch, with_indices):
    """The two-launch mixer step against the single ops in float64: y and both states; outputs poisoned."""
    slots = batch + 4 if with_indices else None
    args = mixer_inputs(batch=batch, slots=slots)
    idx = torch.randperm(slots)[:batch] if with_indices else torch.arange(batch)
    fused = {k: v.clone().to(DEVICE) for k, v in args.items()}
    y = mixer_step_fused(**fused, state_batch_indices=idx.to(DEVICE) if with_indices else None)
    ref = {k: v.double() for k, v in args.items()}
    rows = {k: ref[k][idx].clone() for k in ("conv_state", "ssm_state")}
    y_ref = mixer_step(**{**ref, **rows})
    assert rel_error(y, y_ref) <= 1e-5
    for k in ("conv_state", "ssm_state"):
        expected = ref[k].clone()
        expected[idx] = rows[k]  # untouched slots stay as they were
        assert rel_error(fused[k], expected) <= 1e-6, k


def test_mixer_step_fused_bad_shape():
    args = {k: v.to(DEVICE) for k, v in mixer_inputs().items()}
    args["dt_proj_weight"] = args["dt_proj_weight"][:, :4]
    with pytest.raises(ValueError, match=r"x_proj_weight must be \(14, 70\)"):
        mixer_step_fused(**args)


def test_model_parallel_equals_recurrent_through_the_kernels():
    """A LanguageModel on the Triton path end to end (fused conv and scan in parallel mode, the fused mixer step
    in recurrent mode): every position's logits agree in float32."""
    from mambalab import LanguageModel, ModelConfig, SSMConfig

    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(d_model=32, n_layer=2, vocab_size=61,
                                      ssm=SSMConfig(d_state=8, scan_backend="triton"))).to(DEVICE).eval()
    backends = model.backbone.layers[0].mixer.kernel_backends(torch.empty(1, device=DEVICE))
    assert set(backends.values()) == {"triton"}, backends
    ids = torch.randint(0, 61, (2, 14), device=DEVICE)
    with torch.no_grad():
        full = model(ids)  # (b, l, V)
        logits, state = model.prefill(ids[:, :5])
        errors = [rel_error(logits, full[:, :5])]
        errors += [rel_error(model.step(ids[:, t], state), full[:, t]) for t in range(5, 14)]
    assert max(errors) <= 1e-5, errors
