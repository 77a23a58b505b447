"""The one registry: every op registers a reference and a triton backend and its own "auto"."""

from __future__ import annotations

import pytest
import torch

from mambalab.ops import backends
from mambalab.ops.causal_conv1d import OP as CONV
from mambalab.ops.causal_conv1d import UPDATE_OP as CONV_UPDATE
from mambalab.ops.causal_conv1d import causal_conv1d
from mambalab.ops.selective_scan import OP as SCAN
from mambalab.ops.state_update import MIXER_STEP_OP
from mambalab.ops.state_update import OP as STATE_UPDATE
from mambalab.ops.triton import resolve_for

STEP_OPS = (CONV, CONV_UPDATE, STATE_UPDATE, MIXER_STEP_OP)


def test_every_op_registers_its_backends():
    assert backends.names(SCAN) == ["cpu", "reference", "torch", "triton"]
    for op in STEP_OPS:
        assert backends.names(op) == ["reference", "triton"], op


def test_auto_never_picks_the_interpreted_kernels_on_cpu_and_float64_is_the_reference():
    cpu64 = torch.empty(1, dtype=torch.float64)
    for op in STEP_OPS:
        assert backends.resolve(op, "auto", torch.device("cpu")) == "reference", op
        assert resolve_for(op, "auto", cpu64) == "reference", op
        assert resolve_for(op, "triton", cpu64) == "triton", op  # a named backend is taken as named


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown backend 'fast' for causal_conv1d; available: \['reference', 'triton'\]"):
        causal_conv1d(torch.randn(1, 2, 3), torch.randn(2, 4), backend="fast")
