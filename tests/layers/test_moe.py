"""MoE: top-k routing, the capacity limit (training only), the Switch load-balancing loss, gradients."""

from __future__ import annotations

import torch

from mambalab.config import MoEConfig
from mambalab.layers.moe import MoE
from tests.conftest import rel_error


def make(n_experts=4, top_k=2, capacity_factor=1.25, d=8, d_int=12) -> MoE:
    return MoE(d, d_int, MoEConfig(n_experts=n_experts, top_k=top_k, capacity_factor=capacity_factor)).double()


def test_output_is_gate_weighted_sum_of_top_k_experts():
    moe = make().eval()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    y, _ = moe(x)
    tokens = x.reshape(-1, 8)
    probs = torch.softmax(moe.router(tokens), -1)
    expected = torch.zeros_like(tokens)
    for t in range(tokens.shape[0]):
        top = probs[t].topk(2)
        for p, e in zip(top.values / top.values.sum(), top.indices):
            expected[t] += p * moe.experts[int(e)].mlp(tokens[t])
    assert rel_error(y.reshape(-1, 8), expected) < 1e-12


def test_top1_gate_is_the_router_probability():
    moe = make(top_k=1).eval()
    x = torch.randn(6, 8, dtype=torch.float64)
    probs, _experts, gates = moe.route(x)
    assert rel_error(gates[:, 0], probs.max(-1).values) == 0


def test_capacity_drops_overflow_in_training_only():
    """All tokens routed to expert 0: with capacity ceil(1.0 · T · 1 / 4) only the first T/4 tokens get an
    output; the rest are dropped (zero output: the block's residual passes them through). Eval drops none."""
    moe = make(top_k=1, capacity_factor=1.0)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 1.0
    x = torch.rand(16, 8, dtype=torch.float64) + 0.1  # positive: expert 0 wins for every token
    capacity = moe.capacity(16)
    assert capacity == 4
    y_train, _ = moe.train()(x)
    assert (y_train[:capacity].abs().sum(-1) > 0).all() and (y_train[capacity:] == 0).all()
    y_eval, _ = moe.eval()(x)
    assert (y_eval.abs().sum(-1) > 0).all()
    assert rel_error(y_eval[:capacity], y_train[:capacity]) == 0


def test_capacity_serves_first_choices_before_second_choices():
    moe = make(n_experts=2, top_k=2, capacity_factor=0.5)  # capacity = ceil(0.5 · T · 2 / 2) = T/2
    experts = torch.tensor([[0, 1], [0, 1], [1, 0], [0, 1]])  # expert 0: three first choices, one second
    kept = moe.within_capacity(experts)
    # expert 0's queue: tokens 0, 1, 3 (first choices), then 2 (second) -> keeps 0 and 1;
    # expert 1's queue: token 2 (first), then 0, 1, 3 (second choices) -> keeps 2 and 0
    assert kept.tolist() == [[True, True], [True, False], [True, False], [False, False]]


def test_aux_loss_balanced_and_concentrated():
    moe = make(n_experts=4, top_k=1)
    x = torch.randn(32, 8, dtype=torch.float64)
    with torch.no_grad():
        moe.router.weight.zero_()  # uniform probabilities: E · Σ f_e / E = 1
    _, aux = moe(x)
    assert abs(aux.item() - moe.cfg.aux_loss_weight) < 1e-12
    with torch.no_grad():
        moe.router.weight[0] = 100.0
    _, aux = moe(x.abs() + 0.1)  # everything to expert 0 with probability ~1: E · 1 · 1
    assert abs(aux.item() - 4 * moe.cfg.aux_loss_weight) < 1e-6


def test_every_expert_receiving_tokens_gets_gradient():
    moe = make(n_experts=6, top_k=2, capacity_factor=2.0).train()
    x = torch.randn(4, 10, 8, dtype=torch.float64, requires_grad=True)
    y, aux = moe(x)
    (y.pow(2).sum() + aux).backward()
    _, experts, _ = moe.route(x.detach().reshape(-1, 8))
    kept = moe.within_capacity(experts)
    receiving = set(experts[kept].tolist())
    assert receiving, "no expert received tokens"
    for e, expert in enumerate(moe.experts):
        grads = [p.grad for p in expert.parameters()]
        if e in receiving:
            assert all(g is not None and g.abs().sum() > 0 for g in grads), e
        else:
            assert all(g is None or g.abs().sum() == 0 for g in grads), e
    assert moe.router.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
