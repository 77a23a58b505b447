"""SwiGLU: the width rule and the formula."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mambalab.config import ModelConfig
from mambalab.layers.mlp import SwiGLU, swiglu_width
from tests.conftest import rel_error


def test_width_rule():
    assert swiglu_width(768, None, 64) == 2048  # 8/3 · 768 exactly
    assert swiglu_width(1024, None, 64) == 2752  # 2730.7 rounded up to a multiple of 64
    assert swiglu_width(1024, 1000, 64) == 1000


def test_swiglu_formula_no_bias_and_protocol():
    cfg = ModelConfig(d_model=16, n_layer=1, vocab_size=10, layer_pattern=["mamba+mlp"])
    mlp = SwiGLU.from_config(cfg, 0).double()
    assert all(m.bias is None for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    assert mlp.gate_proj.out_features == 64
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    y, aux = mlp(x)
    expected = F.linear(F.silu(F.linear(x, mlp.gate_proj.weight)) * F.linear(x, mlp.up_proj.weight),
                        mlp.down_proj.weight)
    assert aux is None and rel_error(y, expected) < 1e-15
