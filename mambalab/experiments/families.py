"""Matched model configs for the comparison: one Mamba reference per size, every other family matched to it.

`family_config("transformer", size, vocab)` builds the Mamba config of `size` and asks the model zoo's
`match_config` for the Transformer++ (or S4D, hybrid, MoE, Mamba-2) config within ±3% of its parameters. Study
overrides (an init, a state size) are applied afterwards as nested config fields, e.g.
`{"s4d": {"init": "random"}}`; those that change the parameter count go into `size` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from mambalab.config import AttentionConfig, Mamba2Config, ModelConfig, MoEConfig, SSMConfig, deep_merge


@dataclass(frozen=True)
class ModelSize:
    """The reference (Mamba) model; other families are matched to its parameter count."""

    d_model: int
    n_layer: int
    d_state: int = 16


@dataclass(frozen=True)
class Family:
    """A model family of the comparison: how findings and tables name it, which colour plots give it."""

    name: str
    display: str
    color: str


# Every family `compare` knows, in report order; a new family is one line here (its config comes from the
# model zoo's `match_config`).
FAMILY_INFO: dict[str, Family] = {
    f.name: f
    for f in (
        Family("mamba", "Mamba", "C0"),
        Family("transformer", "Transformer++", "C1"),
        Family("s4d", "S4D", "C2"),
        Family("hybrid", "hybrid", "C3"),
        Family("moe", "MoE-Mamba", "C4"),
        Family("mamba2", "Mamba-2", "C5"),
    )
}

HEAD_DIM = 32  # attention heads of the matched Transformer++ / hybrid: d_model // 32 of them
N_EXPERTS, TOP_K = 4, 2  # small MoE: 8 experts of the smallest width would not fit a tiny model's budget
FEWER_EXPERTS = 2  # when 4 experts cannot meet ±3% (the expert width moves in steps of 8): 2, top-1
MAMBA2_CHUNK = 64  # the matched Mamba-2's SSD chunk: the tasks' sequences are short (the default 256 pads them)


def reference_config(size: ModelSize, vocab_size: int) -> ModelConfig:
    """The Mamba model every family is matched to (the Mamba paper's synthetic-task block: no MLP). Its
    attention, MoE and Mamba-2 sub-configs are what the matched families inherit."""
    return ModelConfig(
        d_model=size.d_model,
        n_layer=size.n_layer,
        vocab_size=vocab_size,
        layer_pattern=["mamba"] * size.n_layer,
        ssm=SSMConfig(d_state=size.d_state),
        attention=AttentionConfig(n_heads=max(1, size.d_model // HEAD_DIM)),
        moe=MoEConfig(n_experts=N_EXPERTS, top_k=TOP_K),
        mamba2=Mamba2Config(chunk_size=MAMBA2_CHUNK),
    )


def family_config(
    family: str, size: ModelSize, vocab_size: int, overrides: dict | None = None, same_depth: bool = False
) -> ModelConfig:
    """The config of `family` matched (±3% parameters) to the Mamba reference of `size`, with `overrides`;
    `same_depth`: at the reference's depth (match_config)."""
    from mambalab.models.zoo import match_config

    config = reference_config(size, vocab_size)
    if family == "moe":
        try:
            config = match_config(config, family, same_depth=same_depth)
        except ValueError:
            config.moe.n_experts, config.moe.top_k = FEWER_EXPERTS, 1
            config = match_config(config, family, same_depth=same_depth)
    elif family != "mamba":
        config = match_config(config, family, same_depth=same_depth)
    if overrides:
        config = ModelConfig.from_dict(deep_merge(config.to_dict(), overrides, where="overrides"), where="overrides")
    return config
