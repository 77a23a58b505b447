"""The Mamba mixer's ablation switches: inits, LTI (time invariance), selective_A, and that the generic
path agrees with the selective_scan path when the switches are inert."""

from __future__ import annotations

import torch

from mambalab.config import SSMConfig
from mambalab.layers.mamba import Mamba
from mambalab.layers.mamba_ablations import mamba_class
from tests.conftest import rel_error


def mamba(**kw) -> Mamba:
    ssm = SSMConfig(d_state=4, scan_backend="reference", **kw)
    return mamba_class(ssm)(16, ssm).double()


def test_A_inits():
    assert rel_error(-mamba().A_log.exp()[0], -torch.arange(1.0, 5.0)) < 1e-7  # S4D-Real
    assert rel_error(-mamba(A_init="s4d_lin").A_log.exp(), torch.full((32, 4), -0.5)) < 1e-7
    random = mamba(A_init="random").A_log
    assert random.std() > 0.5 and random.shape == (32, 4)


def test_default_parameter_names_unchanged():
    names = {n for n, _ in mamba().named_parameters()}
    assert names == {"in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
                     "dt_proj.bias", "A_log", "D", "out_proj.weight"}
    lti = {n for n, _ in mamba(selective=False, selective_A=True).named_parameters()}
    assert {"dt_bias", "B", "C", "A_proj.weight"} <= lti and "x_proj.weight" not in lti


def test_generic_path_equals_selective_scan_when_A_proj_is_zero():
    """selective_A with A_proj = 0 (its init) is the paper's Mamba computed by the for-loop recurrence."""
    base, varied = mamba(), mamba(selective_A=True)
    varied.load_state_dict({**base.state_dict(), "A_proj.weight": varied.A_proj.weight}, strict=True)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    assert not varied.uses_selective_scan
    assert rel_error(varied(x), base(x)) < 1e-12
    with torch.no_grad():
        varied.A_proj.weight.normal_()
    assert rel_error(varied(x), base(x)) > 1e-3


def test_lti_ssm_is_linear_in_its_input_and_selective_is_not():
    """selective=False: Δ, B, C do not depend on x, so the SSM (before the gate) is linear in x."""
    x1, x2 = torch.randn(2, 32, 10, dtype=torch.float64), torch.randn(2, 32, 10, dtype=torch.float64)
    z = torch.randn(2, 32, 10, dtype=torch.float64)
    for selective, linear in ((False, True), (True, False)):
        m = mamba(selective=selective, discretization="zoh")
        gap = rel_error(m._ssm(x1 + x2, z, None), m._ssm(x1, z, None) + m._ssm(x2, z, None))
        assert (gap < 1e-12) == linear, (selective, gap)


def test_discretizations_differ_and_state_dtype_kept():
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    outs = {}
    for method in ("mamba", "zoh", "bilinear", "euler"):
        torch.manual_seed(0)
        m = mamba(discretization=method)
        outs[method] = m(x)
        state = m.allocate_state(2, dtype=torch.float64)
        m(x, state)
        assert state["ssm"].dtype == torch.float64 and state["ssm"].shape == (2, 32, 4)
    assert all(rel_error(outs[k], outs["mamba"]) > 1e-6 for k in ("zoh", "bilinear", "euler"))


def test_ablation_switches_need_the_ablation_class_and_the_block_picks_it():
    import pytest

    from mambalab.config import MIXER_KINDS, ModelConfig
    from mambalab.errors import InputError
    from mambalab.layers.block import MIXERS, Block
    from mambalab.layers.mamba_ablations import MambaAblation

    with pytest.raises(InputError, match="MambaAblation"):
        Mamba(16, SSMConfig(selective=False))
    assert set(MIXERS) == set(MIXER_KINDS)
    for ssm, cls in ((SSMConfig(), Mamba), (SSMConfig(discretization="zoh"), MambaAblation)):
        block = Block(ModelConfig(d_model=16, n_layer=1, vocab_size=8, ssm=ssm), 0)
        assert type(block.mixer) is cls
