"""S4DMixer: CNN and RNN modes agree at the layer level, state layout, dtype handling, parameter flags."""

from __future__ import annotations

import torch

from mambalab.config import S4DConfig
from mambalab.layers.s4d import S4DMixer
from tests.conftest import rel_error


def test_cnn_and_rnn_modes_give_the_same_layer_output_and_state():
    for gate, expand in (("glu", 1), ("silu", 2)):
        cnn = S4DMixer(16, S4DConfig(d_state=8, mode="cnn", gate=gate, expand=expand)).double()
        rnn = S4DMixer(16, S4DConfig(d_state=8, mode="rnn", gate=gate, expand=expand)).double()
        rnn.load_state_dict(cnn.state_dict())
        x = torch.randn(2, 30, 16, dtype=torch.float64)
        s_cnn, s_rnn = cnn.allocate_state(2, dtype=torch.float64), rnn.allocate_state(2, dtype=torch.float64)
        assert s_cnn["ssm"].shape == (2, 16 * expand, 4, 2) and s_cnn["ssm"].dtype == torch.float64
        assert rel_error(cnn(x, s_cnn), rnn(x, s_rnn)) < 1e-10
        assert rel_error(s_cnn["ssm"], s_rnn["ssm"]) < 1e-10
        assert s_cnn["ssm"].abs().sum() > 0


def test_bf16_cast_keeps_ssm_parameters_float32():
    mixer = S4DMixer(16, S4DConfig(d_state=8)).to(torch.bfloat16)
    assert all(getattr(mixer, n).dtype == torch.float32 for n in ("log_dt", "A_log", "A_imag", "B", "C", "D"))
    assert mixer.out_proj.weight.dtype == torch.bfloat16
    state = mixer.allocate_state(2)
    assert state["ssm"].dtype == torch.float32
    y = mixer(torch.randn(2, 12, 16, dtype=torch.bfloat16), state)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


def test_init_is_stable_and_flags_no_weight_decay():
    mixer = S4DMixer(16, S4DConfig(d_state=8, init="s4d_lin", dt_min=0.01, dt_max=0.02))
    dA, _, _ = mixer.discrete_ssm()
    assert (dA.abs() < 1).all()  # Re A < 0 and ZOH: |Ā| = exp(Δ Re A) < 1
    dt = mixer.log_dt.exp()
    assert (dt >= 0.01 - 1e-6).all() and (dt <= 0.02 + 1e-6).all()
    assert all(getattr(getattr(mixer, n), "_no_weight_decay", False) for n in ("log_dt", "A_log", "A_imag", "D"))


def test_empty_sequence_gives_empty_output_and_leaves_the_state():
    for mode in ("cnn", "rnn"):
        mixer = S4DMixer(8, S4DConfig(d_state=4, mode=mode))
        state = mixer.allocate_state(2)
        state["ssm"].normal_()
        before = state["ssm"].clone()
        assert mixer(torch.randn(2, 0, 8)).shape == (2, 0, 8)
        assert mixer(torch.randn(2, 0, 8), state).shape == (2, 0, 8)
        assert torch.equal(state["ssm"], before), mode
