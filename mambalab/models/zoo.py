"""The model zoo: named presets, parameter and FLOP counts without building a model, and size matching.

Families (layer patterns of `ModelConfig`):
    mamba        ["mamba"] · n                        the Mamba paper's homogeneous stack
    transformer  ["attention+mlp"] · n                Transformer++ (RoPE, SwiGLU, RMSNorm, no biases)
    s4d          ["s4d+mlp"] · n                      S4D layers interleaved with SwiGLU MLPs
    hybrid       `hybrid_pattern`: Jamba-style, one attention layer per 8, an MLP in every layer
    moe          ["mamba+moe"] · n                    MoE-Mamba: Mamba layers interleaved with MoE layers
    mamba2       ["mamba2"] · n                       Mamba-2 (SSD): scalar A per head, a larger state N
The published Mamba-2 shapes are the mamba2-* presets; mixing "mamba2" with attention or MoE layers is a
matter of the layer pattern.

`match_config(config, family)` gives a config of another family with the same d_model and a parameter
count within ±3% (MoE: total parameters, all experts counted), by searching the depth together with the
family's width knob (Mamba's expand, the MLP/expert width, Mamba-2's state size N), preferring the knob's
default.
"""

from __future__ import annotations

import copy
import math

from mambalab.config import (
    AttentionConfig,
    Mamba2Config,
    ModelConfig,
    MoEConfig,
    S4DConfig,
    SSMConfig,
    parse_layer_kind,
)
from mambalab.errors import ConfigError
from mambalab.layers.mlp import swiglu_width

FAMILIES = ("mamba", "transformer", "s4d", "hybrid", "moe", "mamba2")
MAMBA2_D_STATES = tuple(2**k for k in range(2, 9))  # N of a matched Mamba-2: powers of two, 4..256
MAMBA2_D_STATE = 64  # the preferred N of a small Mamba-2 (the mamba2-* checkpoints use 128)
MAMBA2_MIN_HEADS = 4  # a matched Mamba-2 has at least this many heads where d_inner allows


# Layer patterns --------------------------------------------------------------------------------------------
def hybrid_pattern(n_layer: int, attention_every: int = 8, attention_offset: int = 4,
                   moe_every: int | None = 2, moe_offset: int = 1, ffn: str | None = "mlp") -> list[str]:
    """A Jamba-style pattern: layer i is attention when i % attention_every == attention_offset, else Mamba;
    its FFN is MoE when i % moe_every == moe_offset, else `ffn` ("mlp" or None). Jamba itself is the
    default (1 attention : 7 Mamba, MoE every other layer); moe_every=None gives the MoE-free hybrid."""
    if attention_every < 1 or not 0 <= attention_offset < attention_every:
        raise ConfigError(f"hybrid_pattern: need attention_every >= 1 and 0 <= attention_offset < attention_every,"
                         f" got {attention_every}, {attention_offset}")
    pattern = []
    for i in range(n_layer):
        mixer = "attention" if i % attention_every == attention_offset else "mamba"
        block_ffn = "moe" if moe_every and i % moe_every == moe_offset else ffn
        pattern.append(mixer if block_ffn is None else f"{mixer}+{block_ffn}")
    return pattern


def moe_mamba_pattern(n_layer: int) -> list[str]:
    """MoE-Mamba (arXiv 2401.04081): every Mamba layer followed by an MoE layer."""
    return ["mamba+moe"] * n_layer


def family_pattern(family: str, n_layer: int) -> list[str]:
    """The layer pattern of a family (see the module doc) at depth n_layer."""
    if family not in FAMILIES:
        raise ConfigError(f"family must be one of {FAMILIES}, got {family!r}")
    if family == "hybrid":
        return hybrid_pattern(n_layer, attention_offset=min(4, n_layer // 2), moe_every=None)  # ≥ 1 attention
    if family == "moe":
        return moe_mamba_pattern(n_layer)
    return [{"mamba": "mamba", "transformer": "attention+mlp", "s4d": "s4d+mlp", "mamba2": "mamba2"}[family]] * n_layer


# Parameter counts ------------------------------------------------------------------------------------------
def _mamba_params(config: ModelConfig) -> int:
    ssm, d_model, d, n, r = config.ssm, config.d_model, config.d_inner, config.ssm.d_state, config.dt_rank
    total = d_model * 2 * d + (2 * d if ssm.bias else 0)  # in_proj
    total += d * ssm.d_conv + (d if ssm.conv_bias else 0)  # conv1d
    total += d * (r + 2 * n) + r * d + d if ssm.selective else d + 2 * d * n  # x_proj, dt_proj | dt_bias, B, C
    total += d * n if ssm.selective_A else 0  # A_proj
    total += d * n + d  # A_log, D
    return total + d * d_model + (d_model if ssm.bias else 0)  # out_proj


def _mamba2_sizes(config: ModelConfig) -> tuple[int, int, int]:
    """(d_inner, heads, conv_dim) of the Mamba-2 mixer."""
    cfg = config.mamba2
    d = cfg.expand * config.d_model
    return d, cfg.n_heads(config.d_model), d + 2 * cfg.n_groups * cfg.d_state


def _mamba2_projection_params(config: ModelConfig) -> int:
    """in_proj (-> z, x, B, C, Δ) and out_proj of the Mamba-2 mixer, biases included."""
    (d, h, conv_dim), d_model, bias = _mamba2_sizes(config), config.d_model, config.mamba2.bias
    in_proj = d_model * (d + conv_dim + h) + (d + conv_dim + h if bias else 0)
    return in_proj + d * d_model + (d_model if bias else 0)


def _mamba2_params(config: ModelConfig) -> int:
    (d, h, conv_dim), cfg = _mamba2_sizes(config), config.mamba2
    conv = conv_dim * cfg.d_conv + (conv_dim if cfg.conv_bias else 0)
    D = d if cfg.D_has_hdim else h
    return _mamba2_projection_params(config) + conv + 2 * h + D + d  # dt_bias, A_log, D, norm


def _attention_params(config: ModelConfig) -> int:
    cfg = config.attention
    hd = cfg.head_dim or config.d_model // cfg.n_heads
    kv = cfg.n_kv_heads or cfg.n_heads
    return config.d_model * hd * (2 * cfg.n_heads + 2 * kv)  # q, o and k, v


def _s4d_params(config: ModelConfig) -> int:
    cfg, d_model = config.s4d, config.d_model
    H, n = cfg.expand * d_model, cfg.d_state // 2
    if cfg.gate == "silu":
        projections = d_model * 2 * H + H * d_model
    else:
        projections = (d_model * H if H != d_model else 0) + H * 2 * d_model
    return projections + H + 2 * H * n + 4 * H * n + H  # log_dt, A (2 reals), B and C (complex), D


def _ffn_params(config: ModelConfig, kind: str) -> int:
    if kind == "mlp":
        return 3 * config.d_model * swiglu_width(config.d_model, config.mlp.d_intermediate, config.mlp.multiple_of)
    d_int = swiglu_width(config.d_model, config.moe.d_intermediate, config.mlp.multiple_of)
    return config.moe.n_experts * (config.d_model + 3 * config.d_model * d_int)  # router + experts


_MIXER_PARAMS = {
    "mamba": _mamba_params, "attention": _attention_params, "s4d": _s4d_params, "mamba2": _mamba2_params,
}


def count_params(config: ModelConfig) -> int:
    """The number of parameters of `LanguageModel(config)`, computed from the config alone (a tied lm_head
    counted once)."""
    embeddings = config.padded_vocab_size * config.d_model
    total = embeddings + config.d_model + (0 if config.tie_embeddings else embeddings)  # + norm_f
    for entry in config.layer_pattern:
        mixer, ffn = parse_layer_kind(entry)
        total += config.d_model + _MIXER_PARAMS[mixer](config)  # norm + mixer
        if ffn is not None:
            total += config.d_model + _ffn_params(config, ffn)  # norm2 + FFN
    return total


# FLOPs -----------------------------------------------------------------------------------------------------
def _mixer_flops(config: ModelConfig, mixer: str, seq_len: int) -> float:
    """Forward FLOPs per token of one mixer: 2 per weight of its matmuls plus its sequence op."""
    if mixer == "mamba":
        d, n, ssm = config.d_inner, config.ssm.d_state, config.ssm
        weights = _mamba_params(config) - d * n - d - (d if ssm.conv_bias else 0) - d * ssm.d_conv
        # scan: 9·d·n as mamba-ssm's FLOP counter (discretize, update, readout), + D·x and the gate
        return 2 * weights + 2 * d * ssm.d_conv + 9 * d * n + 2 * d
    if mixer == "mamba2":
        (d, _, conv_dim), cfg = _mamba2_sizes(config), config.mamba2
        # SSD in its recurrent form: the state update (3·d·n) and readout (2·d·n), + D·x and the gated norm
        return 2 * _mamba2_projection_params(config) + 2 * conv_dim * cfg.d_conv + 5 * d * cfg.d_state + 8 * d
    if mixer == "attention":
        cfg = config.attention
        hd = cfg.head_dim or config.d_model // cfg.n_heads
        # QKᵀ and the weighted sum over the whole context (PaLM's MFU convention, causal mask not halved)
        return 2 * _attention_params(config) + 4 * seq_len * cfg.n_heads * hd
    H, n = config.s4d.expand * config.d_model, config.s4d.d_state // 2
    ssm_only = H + 6 * H * n + H
    # three length-2L real FFTs (≈ 5·log2(2L) each per token and channel), the Vandermonde kernel (8 per
    # complex multiply-add per channel, mode and position), D·x
    return 2 * (_s4d_params(config) - ssm_only) + H * (15 * math.log2(2 * seq_len) + 8 * n + 2)


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward ≈ 3 × forward) at context length `seq_len`: every
    matmul (2 per weight and token; the lm_head included, the embedding lookup free), attention's
    quadratic term, the scan and the S4D convolution. Elementwise work (norms, activations) is left out;
    an MoE counts its router and the top_k experts a token visits."""
    if seq_len < 1:
        raise ConfigError(f"seq_len must be >= 1, got {seq_len}")
    forward = 2 * config.d_model * config.padded_vocab_size  # lm_head
    for entry in config.layer_pattern:
        mixer, ffn = parse_layer_kind(entry)
        forward += _mixer_flops(config, mixer, seq_len)
        if ffn == "mlp":
            forward += 2 * _ffn_params(config, "mlp")
        elif ffn == "moe":
            d_int = swiglu_width(config.d_model, config.moe.d_intermediate, config.mlp.multiple_of)
            forward += 2 * config.d_model * config.moe.n_experts + config.moe.top_k * 6 * config.d_model * d_int
    return 3 * forward


# Matching --------------------------------------------------------------------------------------------------
def _with(config: ModelConfig, family: str, n_layer: int, knob: int) -> ModelConfig:
    """`config` turned into `family` at depth n_layer, with the family's width knob set to `knob`."""
    new = copy.deepcopy(config)
    new.n_layer, new.layer_pattern = n_layer, family_pattern(family, n_layer)
    if family == "mamba":
        new.ssm.expand = knob
    elif family == "mamba2":
        new.mamba2.d_state, new.mamba2.n_groups = knob, 1
        new.mamba2.head_dim = mamba2_head_dim(new.mamba2.expand * new.d_model, config.mamba2.head_dim)
    elif family == "moe":
        new.moe.d_intermediate = knob
    else:
        new.mlp.d_intermediate = knob
    if family in ("transformer", "hybrid") and config.d_model % new.attention.n_heads:
        new.attention.n_heads = max(1, config.d_model // 64)
        new.attention.n_kv_heads = None
    return ModelConfig.from_dict(new.to_dict())  # re-validated


def mamba2_head_dim(d_inner: int, largest: int) -> int:
    """The head_dim of a matched Mamba-2: the largest power of two ≤ `largest` that divides d_inner into at
    least MAMBA2_MIN_HEADS heads (1 when none does)."""
    p = 1 << (largest.bit_length() - 1)
    while p > 1 and (d_inner % p or d_inner // p < MAMBA2_MIN_HEADS):
        p //= 2
    return p


def _knob_candidates(config: ModelConfig, family: str, n_layer: int, target: int) -> list[tuple[int, int]]:
    """(knob, default knob) pairs to try at this depth: Mamba's expand in 1..4; for an FFN width, the
    width (a multiple of 8) that makes the count hit the target, found from the count's linearity in it."""
    if family == "mamba":
        return [(e, 2) for e in (1, 2, 3, 4)]
    if family == "mamba2":
        return [(n, MAMBA2_D_STATE) for n in MAMBA2_D_STATES]
    default = swiglu_width(config.d_model, None, config.mlp.multiple_of)
    low, high = count_params(_with(config, family, n_layer, 8)), count_params(_with(config, family, n_layer, 16))
    width = 8 + (target - low) * 8 / (high - low)
    return [(max(8, 8 * round(width / 8)), default)]


def _best_match(config: ModelConfig, family: str, target: int, tolerance: float,
                same_depth: bool) -> ModelConfig | None:
    """The preferred config of `family` at config's d_model within `tolerance` of `target` (see
    match_config), or None."""
    best, best_key = None, None
    for n_layer in [config.n_layer] if same_depth else range(1, 4 * config.n_layer + 9):
        for knob, default in _knob_candidates(config, family, n_layer, target):
            candidate = _with(config, family, n_layer, knob)
            error = abs(count_params(candidate) / target - 1)
            key = (abs(math.log(knob / default)) + 0.5 * abs(math.log(n_layer / config.n_layer)), error)
            if error <= tolerance and (best_key is None or key < best_key):
                best, best_key = candidate, key
    return best


def _mamba2_widths(d_model: int) -> list[int]:
    """d_model first, then the multiples of 8 within a factor of two of it, nearest first: a Mamba-2 layer
    carries B, C (2·N per position) that a narrow Mamba's parameter budget may not afford at its width."""
    others = [w for w in range(8, 2 * d_model + 1, 8) if w != d_model and 2 * w >= d_model]
    return [d_model] + sorted(others, key=lambda w: (abs(math.log(w / d_model)), w))


def match_config(config: ModelConfig, family: str, tolerance: float = 0.03, same_depth: bool = False) -> ModelConfig:
    """A config of `family` with config's d_model (and vocabulary, norms, sub-configs) whose parameter count
    is within `tolerance` of config's. Among the depths and knob values that fit, the one closest to the
    knob's default (Mamba expand 2, the LLaMA MLP width, Mamba-2 N = 64) and, at half that weight, to
    config's depth wins (distances in log scale), then the closest count. Mamba-2 alone may change d_model
    (the nearest multiple of 8 that fits) when nothing fits at config's. `same_depth`: config's depth only,
    the knob alone meeting the count (Zoology's recall protocol: every model the same number of layers)."""
    if family not in FAMILIES:
        raise ConfigError(f"family must be one of {FAMILIES}, got {family!r}")
    target = count_params(config)
    widths = _mamba2_widths(config.d_model) if family == "mamba2" else [config.d_model]
    for d_model in widths:
        at_width = copy.deepcopy(config)
        at_width.d_model = d_model  # validated by `_with`, once the Mamba-2 head_dim fits the width
        best = _best_match(at_width, family, target, tolerance, same_depth)
        if best is not None:
            return best
    raise ConfigError(
        f"match_config: no {family} config with d_model={config.d_model}"
        f"{' (or a multiple of 8 within 2× of it)' if family == 'mamba2' else ''} within {tolerance:.0%} of"
        f" {target:,} parameters (depth {config.n_layer if same_depth else f'1..{4 * config.n_layer + 8}'})"
    )


# Presets ---------------------------------------------------------------------------------------------------
def _mamba(d_model: int, n_layer: int, **kw) -> ModelConfig:
    return ModelConfig(d_model=d_model, n_layer=n_layer, vocab_size=50277, **kw)


def _mamba2(d_model: int, n_layer: int) -> ModelConfig:
    """The published state-spaces/mamba2-* shapes: N 128, head_dim 64, one group, vocabulary padded to 16."""
    return ModelConfig(d_model=d_model, n_layer=n_layer, vocab_size=50277, pad_vocab_size_multiple=16,
                       layer_pattern=["mamba2"] * n_layer)


def _transformer(d_model: int, n_layer: int, n_heads: int) -> ModelConfig:
    return ModelConfig(d_model=d_model, n_layer=n_layer, vocab_size=50277, attention=AttentionConfig(n_heads=n_heads),
                       layer_pattern=family_pattern("transformer", n_layer))


def _tiny(family: str, **kw) -> ModelConfig:
    base = ModelConfig(d_model=128, n_layer=4, vocab_size=256, ssm=SSMConfig(d_state=16),
                       attention=AttentionConfig(n_heads=4), moe=MoEConfig(n_experts=4, top_k=2),
                       s4d=S4DConfig(d_state=32), **kw)
    return base if family == "mamba" else match_config(base, family)


PRESETS: dict[str, ModelConfig] = {
    # the Mamba paper's checkpoints (vocab 50277 of GPT-NeoX, padded to 50280)
    "mamba-130m": _mamba(768, 24),
    "mamba-370m": _mamba(1024, 48),
    "mamba-790m": _mamba(1536, 48),
    "mamba-1.4b": _mamba(2048, 48),
    "mamba-2.8b": _mamba(2560, 64),
    # the Mamba-2 paper's checkpoints (state-spaces/mamba2-*)
    "mamba2-130m": _mamba2(768, 24),
    "mamba2-370m": _mamba2(1024, 48),
    "mamba2-780m": _mamba2(1536, 48),
    "mamba2-1.3b": _mamba2(2048, 48),
    "mamba2-2.7b": _mamba2(2560, 64),
    # the Mamba paper's Transformer++ baselines (Table 12: layers × d_model, heads of 64 or 96)
    "transformer-125m": _transformer(768, 12, 12),
    "transformer-350m": _transformer(1024, 24, 16),
    "transformer-760m": _transformer(1536, 24, 16),
    "transformer-1.3b": _transformer(2048, 24, 32),
    # CPU sizes: ~0.5M parameters, vocabulary 256 (bytes); the other families matched to tiny-mamba
    "tiny-mamba": _tiny("mamba"),
    "tiny-transformer": _tiny("transformer"),
    "tiny-s4d": _tiny("s4d"),
    "tiny-hybrid": _tiny("hybrid"),
    "tiny-moe": _tiny("moe"),
    # Mamba-2 at CPU size: 8 heads of 32 channels, N = 64, chunks of 16 (0.51M parameters, tiny-mamba 0.50M)
    "tiny-mamba2": ModelConfig(d_model=128, n_layer=4, vocab_size=256, layer_pattern=["mamba2"] * 4,
                               mamba2=Mamba2Config(d_state=64, head_dim=32, chunk_size=16)),
    # Jamba's layout at CPU size: 8 layers, attention at layer 4, MoE (4 experts, top-2) every other layer
    "tiny-jamba": ModelConfig(d_model=64, n_layer=8, vocab_size=256, layer_pattern=hybrid_pattern(8),
                              attention=AttentionConfig(n_heads=4), moe=MoEConfig(n_experts=4, top_k=2)),
}


def get_preset(name: str) -> ModelConfig:
    """A fresh copy of the preset `name` (see PRESETS)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[name])
