"""Fused decode-step kernels (SSM state update, conv window update) vs the torch steps in float64, with a
state_batch_indices map into a larger pool of state slots. CPU runs use Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from mambalab.ops.conv1d import causal_conv1d_update, causal_conv1d_update_fused
from mambalab.ops.state_update import selective_state_update, selective_state_update_fused
from tests.conftest import rel_error
from tests.ops.conftest import TRITON_DEVICE as DEVICE

pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("triton_kernels")]


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
