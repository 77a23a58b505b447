"""The Mamba-2 mixer: HF `Mamba2Mixer`'s parameter names and outputs, parallel == chunked == recurrent,
gradients, float32 SSM parameters under casts, the gated norm, and clear errors for impossible shapes."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from mambalab.config import Mamba2Config, ModelConfig
from mambalab.layers.mamba2 import GatedRMSNorm, Mamba2
from tests.conftest import rel_error


def mixer(seed: int = 0, dtype=torch.float64, d_model: int = 12, **kw) -> Mamba2:
    """A small mixer with odd sizes (3 heads of 8, 5 states) and every parameter moved off its init."""
    torch.manual_seed(seed)
    cfg = Mamba2Config(**{"d_state": 5, "head_dim": 8, "d_conv": 3, "chunk_size": 4, **kw})
    m = Mamba2(d_model, cfg).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def hf_mixer(ours: Mamba2):
    """transformers' Mamba2Mixer of the same shape holding our weights (its torch path is the oracle)."""
    from transformers import Mamba2Config as HFConfig
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    cfg = ours.cfg
    hf_cfg = HFConfig(
        hidden_size=ours.d_model,
        num_heads=ours.n_heads,
        head_dim=cfg.head_dim,
        expand=cfg.expand,
        state_size=cfg.d_state,
        n_groups=cfg.n_groups,
        conv_kernel=cfg.d_conv,
        chunk_size=cfg.chunk_size,
        use_bias=cfg.bias,
        use_conv_bias=cfg.conv_bias,
        layer_norm_epsilon=cfg.rmsnorm_eps,
        num_hidden_layers=1,
    )
    hf = Mamba2Mixer(hf_cfg, layer_idx=0).to(ours.in_proj.weight.dtype)
    hf.load_state_dict(ours.state_dict(), strict=True)
    return hf.eval()


def test_parameter_names_and_shapes_are_transformers_mamba2mixer():
    ours = mixer(n_groups=3, bias=True)
    theirs = hf_mixer(ours)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }


@pytest.mark.parametrize("kw", [{}, {"n_groups": 3}, {"bias": True, "conv_bias": False, "expand": 4}])
def test_forward_equals_transformers_mamba2mixer(kw):
    ours = mixer(dtype=torch.float32, **kw)
    theirs = hf_mixer(ours)
    if ours.n_groups > 1 and not hasattr(theirs.norm, "group_size"):
        pytest.skip("this transformers normalizes the gated norm over all groups at once; official mamba-ssm "
                    "and newer transformers normalize each group (tested against the recurrence below)")
    hidden = torch.randn(2, 11, 12)  # 11: not a multiple of chunk_size
    with torch.no_grad():
        assert rel_error(ours(hidden), theirs(hidden)) < 1e-5


def test_forward_against_the_recurrence_written_out():
    """Steps 1-6 spelled out with one state per head: catches a wrong split order, group or gate."""
    m = mixer(n_groups=3, D_has_hdim=True)
    hidden = torch.randn(2, 7, 12, dtype=torch.float64)
    d, h, p, g, n = m.d_inner, m.n_heads, m.head_dim, m.n_groups, m.d_state
    z, xBC, dt = m.in_proj(hidden).split([d, m.conv_dim, h], -1)
    xBC = F.silu(m.conv1d(xBC.transpose(1, 2))[..., :7].transpose(1, 2))
    x, B, C = xBC.split([d, g * n, g * n], -1)
    x, B, C = x.unflatten(-1, (h, p)), B.unflatten(-1, (g, n)), C.unflatten(-1, (g, n))
    delta, A, D = F.softplus(dt + m.dt_bias), -torch.exp(m.A_log), m.D.view(h, p)
    y = torch.zeros(2, 7, h, p, dtype=torch.float64)
    for head in range(h):
        group, state = head // (h // g), torch.zeros(2, p, n, dtype=torch.float64)
        for t in range(7):
            a = torch.exp(delta[:, t, head] * A[head])[:, None, None]
            state = (
                a * state + delta[:, t, head, None, None] * x[:, t, head, :, None] * B[:, t, group, None, :]
            )
            y[:, t, head] = (state * C[:, t, group, None, :]).sum(-1) + D[head] * x[:, t, head]
    gated = y.flatten(-2) * F.silu(z)
    groups = gated.unflatten(-1, (g, -1))
    normed = (groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + m.cfg.rmsnorm_eps)).flatten(-2)
    expected = m.out_proj(normed * m.norm.weight)
    with torch.no_grad():
        assert rel_error(m(hidden), expected) < 1e-12


@pytest.mark.parametrize("split", [1, 3, 6])
def test_forward_with_state_continues_and_step_equals_forward(split):
    m = mixer(n_groups=3)
    hidden = torch.randn(2, 9, 12, dtype=torch.float64)
    with torch.no_grad():
        full = m(hidden)
        state = m.allocate_state(2)
        first = m(hidden[:, :split], state=state)
        steps = [m.step(hidden[:, t], state) for t in range(split, 9)]
    assert rel_error(torch.cat([first, torch.stack(steps, 1)], 1), full) < 1e-12


def test_state_shapes_and_dtypes():
    m = mixer(dtype=torch.bfloat16)
    state = m.allocate_state(3)
    assert state["conv"].shape == (3, m.d_inner + 2 * 5, 3) and state["conv"].dtype == torch.bfloat16
    assert state["ssm"].shape == (3, 3, 8, 5) and state["ssm"].dtype == torch.float32


def test_gradients_reach_every_parameter():
    m = mixer(n_groups=3, D_has_hdim=True, bias=True)
    m(torch.randn(2, 6, 12, dtype=torch.float64)).pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_ssm_parameters_stay_float32_and_get_no_weight_decay():
    m = mixer(dtype=torch.bfloat16)
    assert {m.A_log.dtype, m.D.dtype, m.dt_bias.dtype} == {torch.float32}
    assert m.in_proj.weight.dtype == torch.bfloat16
    assert all(getattr(p, "_no_weight_decay", False) for p in (m.A_log, m.D, m.dt_bias))
    assert m(torch.randn(1, 5, 12, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_init_follows_official_mamba2():
    torch.manual_seed(0)
    m = Mamba2(64, Mamba2Config(d_state=4, head_dim=2, A_init_range=(2.0, 3.0), dt_min=0.01, dt_max=0.02))
    A = torch.exp(m.A_log)
    assert m.n_heads == 64 and (A >= 2).all() and (A <= 3).all()
    dt = F.softplus(m.dt_bias)
    assert (dt >= 0.01 - 1e-6).all() and (dt <= 0.02 + 1e-6).all()
    assert torch.equal(m.D, torch.ones(64))


def test_gated_norm_normalises_each_group_separately():
    norm = GatedRMSNorm(6, group_size=3, eps=0.0).double()
    y, z = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    out = norm(y, z)
    gated = (y * F.silu(z)).view(4, 2, 3)
    assert rel_error(out, (gated / gated.pow(2).mean(-1, keepdim=True).sqrt()).view(4, 6)) < 1e-12


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"head_dim": 7}, "multiple of head_dim=7"),
        ({"n_groups": 2}, "multiple of n_groups=2"),
        ({"A_init_range": (0.0, 1.0)}, "A_init_range"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_impossible_shapes_are_refused_by_the_config(kw, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(
            d_model=12,
            n_layer=1,
            vocab_size=10,
            layer_pattern=["mamba2"],
            mamba2=Mamba2Config(**{"head_dim": 8, **kw}),
        )


@pytest.mark.triton
def test_triton_kernels_equal_the_reference_in_the_mixer():
    """ssd_backend="triton" (SSD, its decode step and the fused conv; compiled on a GPU, else interpreted)
    against "reference": forward, gradients of every parameter, prefill + steps."""
    from mambalab.ops import triton as kernels

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with contextlib.nullcontext() if device == "cuda" else kernels.interpreter():
        ref = mixer(dtype=torch.float32, n_groups=3, ssd_backend="reference").to(device)
        fast = Mamba2(12, Mamba2Config(**{**vars(ref.cfg), "ssd_backend": "triton"})).to(device)
        fast.load_state_dict(ref.state_dict())
        hidden = torch.randn(2, 9, 12, device=device)
        assert set(fast.kernel_backends(hidden).values()) == {"triton"}
        outputs, grads = [], []
        for m in (ref, fast):
            y = m(hidden)
            y.pow(2).sum().backward()
            outputs.append(y)
            grads.append({k: p.grad for k, p in m.named_parameters()})
            with torch.no_grad():
                state = m.allocate_state(2, device=device)
                m(hidden[:, :5], state=state)
                outputs.append(torch.stack([m.step(hidden[:, t], state) for t in range(5, 9)], 1))
    assert rel_error(outputs[2], outputs[0]) < 1e-5 and rel_error(outputs[3], outputs[1]) < 1e-5
    assert all(rel_error(grads[1][k], grads[0][k]) < 1e-4 for k in grads[0])


@pytest.mark.parametrize(("ssd_backend", "conv_and_step"), [("reference", "reference"), ("torch", "reference"),
                                                             ("quadratic", "reference"), ("auto", "reference")])
def test_each_op_runs_the_backend_the_mixer_asks_for(ssd_backend, conv_and_step):
    """ssd_backend names SSD's backend; the conv and the decode step take that name where they have a backend
    of it, else their own "auto" (reference on CPU)."""
    m = mixer(dtype=torch.float32, ssd_backend=ssd_backend)
    chosen = m.kernel_backends(torch.empty(1))
    assert chosen == {"ssd_scan": "torch" if ssd_backend == "auto" else ssd_backend,
                      **dict.fromkeys(("ssd_state_update", "causal_conv1d", "causal_conv1d_update"), conv_and_step)}


def test_the_decode_step_reads_nothing_back_from_the_device(monkeypatch):
    """No value of a tensor goes to the host during `step` (on a GPU each read is a sync, which a CUDA graph's
    warm-up refuses): bool(), item() and tolist() of any tensor fail inside it."""
    m = mixer(dtype=torch.float32)
    state = m.allocate_state(2)
    hidden = torch.randn(2, 12)
    m.step(hidden, state)  # the backends load (and may probe the device) on first use

    def host_read(*_):
        raise AssertionError("a tensor's value was read on the host during the decode step")

    for name in ("__bool__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    with torch.no_grad():
        m.step(hidden, state)
