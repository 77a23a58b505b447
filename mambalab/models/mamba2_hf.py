"""Mamba-2 checkpoints: `ModelConfig` <-> transformers' `Mamba2Config` and official state-spaces configs.

Weights need no renaming: the mixer's parameters already carry the names of transformers' `Mamba2Mixer`
(`in_proj`, `conv1d`, `dt_bias`, `A_log`, `D`, `norm.weight`, `out_proj`), which are also those of official
`mamba_ssm.modules.mamba2.Mamba2`; the official `backbone.embedding.weight` is renamed by the common weights
reader (models/weights_io.py). models/hf_config.py sends Mamba-2 configs here to be translated:

    HF        model_type "mamba2": hidden_size, num_hidden_layers, state_size, head_dim, n_groups, expand,
              conv_kernel, chunk_size, time_step_*, layer_norm_epsilon (block norms and the gated norm)
    official  d_model / n_layer / ssm_cfg {"layer": "Mamba2", d_state, headdim, ngroups, ...}; norms eps 1e-5

Options mambalab does not compute are refused with the field's name: a clamp of Δ (time_step_limit /
dt_limit other than (0, inf)), official norm_before_gate true, no gated norm (rmsnorm false), an SSM narrower
than d_inner (d_ssm, with a gated MLP beside it).
"""

from __future__ import annotations

import math
from typing import Any

from mambalab.config import ModelConfig
from mambalab.errors import CheckpointError, ConfigError
from mambalab.models.config_fields import (
    HF_FREE_MODEL_FIELDS,
    HF_GENERIC_FIELDS,
    OFFICIAL_FIELDS,
    OFFICIAL_IRRELEVANT,
    OFFICIAL_NORM_EPS,
    OFFICIAL_REQUIRED,
    as_int,
    check_fields,
    get_path,
    non_default_fields,
    put_path,
    to_model_config,
)

# (transformers Mamba2Config field, ModelConfig attribute path, transformers' default when absent)
_HF_FIELDS = (
    ("vocab_size", "vocab_size", 32768),
    ("hidden_size", "d_model", 4096),
    ("num_hidden_layers", "n_layer", 64),
    ("state_size", "mamba2.d_state", 128),
    ("expand", "mamba2.expand", 2),
    ("conv_kernel", "mamba2.d_conv", 4),
    ("head_dim", "mamba2.head_dim", 64),
    ("n_groups", "mamba2.n_groups", 8),
    ("chunk_size", "mamba2.chunk_size", 256),
    ("use_bias", "mamba2.bias", False),
    ("use_conv_bias", "mamba2.conv_bias", True),
    ("time_step_min", "mamba2.dt_min", 0.001),
    ("time_step_max", "mamba2.dt_max", 0.1),
    ("time_step_floor", "mamba2.dt_init_floor", 1e-4),
    ("layer_norm_epsilon", "norm_eps", 1e-5),
    ("residual_in_fp32", "residual_in_fp32", True),
    ("tie_word_embeddings", "tie_embeddings", False),
    ("initializer_range", "initializer_range", 0.1),
    ("rescale_prenorm_residual", "rescale_prenorm_residual", False),
)
_HF_REQUIRED = {"model_type": "mamba2", "hidden_act": "silu", "rms_norm": True}
# Fields that do not change the logits: caching, token ids, time_step_rank (Mamba-2 has no dt_proj), and
# norm_before_gate, which transformers 4.44 wrote (default true) but whose PyTorch path always gated first,
# as the checkpoints were trained; later versions dropped the field.
HF_IRRELEVANT = frozenset(
    {"use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "time_step_rank", "norm_before_gate"}
)
_NO_LIMIT = (0.0, math.inf)

# ssm_cfg of official Mamba-2: (official name, Mamba2Config field)
_OFFICIAL_SSM_FIELDS = (
    ("d_state", "d_state"), ("d_conv", "d_conv"), ("expand", "expand"), ("headdim", "head_dim"),
    ("ngroups", "n_groups"), ("chunk_size", "chunk_size"), ("A_init_range", "A_init_range"),
    ("D_has_hdim", "D_has_hdim"), ("dt_min", "dt_min"), ("dt_max", "dt_max"),
    ("dt_init_floor", "dt_init_floor"), ("bias", "bias"), ("conv_bias", "conv_bias"),
)  # fmt: skip
_OFFICIAL_SSM_REQUIRED = {"layer": "Mamba2", "rmsnorm": True, "norm_before_gate": False}
_OFFICIAL_SSM_IRRELEVANT = frozenset({"conv_init", "use_mem_eff_path", "sequence_parallel"})

# Mamba2Config fields that only shape the initialisation or pick a kernel.
_HF_FREE_MAMBA2_FIELDS = frozenset({"A_init_range", "ssd_backend"})


def uses_mamba2(config: ModelConfig) -> bool:
    """Whether any layer of `config` is a Mamba-2 mixer (its checkpoints then go through this module)."""
    return "mamba2" in config.mixer_kinds


def _json_float(value: Any) -> Any:
    """A number of a config.json: transformers 5 writes infinity as {"__float__": "Infinity"}, older
    versions as the bare `Infinity` that Python's json reads as inf."""
    return float(value["__float__"]) if isinstance(value, dict) and set(value) == {"__float__"} else value


def check_no_dt_limit(value: Any, key: str, where: str) -> None:
    """Refuse a clamp of Δ: only (0, inf), or no field, is what mambalab computes."""
    if value is None:
        return
    limit = tuple(_json_float(v) for v in value) if isinstance(value, (list, tuple)) else None
    if limit != _NO_LIMIT:
        raise CheckpointError(
            f"{where}: field {key!r} = {value!r} is not supported; mambalab computes only (0, inf) (no clamp"
            " of Δ), and loading anyway would give different outputs"
        )


# --- transformers Mamba2Config ------------------------------------------------------------------------------
def transformers_incompatibility(config: ModelConfig) -> str | None:
    """Why transformers' `Mamba2ForCausalLM` cannot compute this model, or None when it can."""
    other = sorted({kind for kind in config.layer_pattern if kind != "mamba2"})
    if other:
        return f"layer_pattern has layers other than plain 'mamba2': {other}"
    mapped = {path.split(".", 1)[1] for _, path, _ in _HF_FIELDS if path.startswith("mamba2.")}
    exempt = _HF_FREE_MAMBA2_FIELDS | mapped | {"rmsnorm_eps"}  # rmsnorm_eps: compared with norm_eps below
    changed = [f"mamba2.{name}" for name in non_default_fields(config.mamba2, exempt)]
    model_mapped = {path for _, path, _ in _HF_FIELDS if "." not in path}
    changed += non_default_fields(config, HF_FREE_MODEL_FIELDS | model_mapped | {"ssm"})
    if changed:
        return f"options transformers' Mamba2 does not have are set: {changed}"
    if config.mamba2.rmsnorm_eps != config.norm_eps:
        return (f"mamba2.rmsnorm_eps = {config.mamba2.rmsnorm_eps} differs from norm_eps = {config.norm_eps};"
                " transformers' Mamba2 uses one layer_norm_epsilon for both")
    return None


def to_hf_config(config: ModelConfig) -> dict[str, Any]:
    """transformers `Mamba2Config` fields of a pure Mamba-2 `config` (vocab_size is the padded vocabulary)."""
    reason = transformers_incompatibility(config)
    if reason is not None:
        raise ConfigError(f"config cannot be expressed as a transformers Mamba2Config: {reason}")
    fields = {hf: get_path(config, path) for hf, path, _ in _HF_FIELDS}
    # rescale_prenorm_residual False: transformers' init would otherwise rescale the loaded out_proj weights.
    fields.update(vocab_size=config.padded_vocab_size, rescale_prenorm_residual=False,
                  num_heads=config.mamba2.n_heads(config.d_model))
    fields.update(architectures=["Mamba2ForCausalLM"], model_type="mamba2", hidden_act="silu",
                  pad_token_id=0, bos_token_id=0, eos_token_id=0)
    return fields


def from_hf_config(data: dict, where: str, strict: bool = True) -> ModelConfig:
    allowed = {hf for hf, _, _ in _HF_FIELDS} | HF_IRRELEVANT | HF_GENERIC_FIELDS
    allowed |= {"num_heads", "time_step_limit"}  # checked below
    check_fields(data, where, _HF_REQUIRED, allowed, strict)
    check_no_dt_limit(data.get("time_step_limit"), "time_step_limit", where)
    tree: dict = {"pad_vocab_size_multiple": 1}  # the stored vocab_size is already the embedding's size
    for hf, path, default in _HF_FIELDS:
        put_path(tree, path, data.get(hf, default))
    tree["layer_pattern"] = ["mamba2"] * as_int(tree["n_layer"], "num_hidden_layers", where)
    tree["mamba2"]["expand"] = as_int(tree["mamba2"]["expand"], "expand", where)
    tree["mamba2"]["rmsnorm_eps"] = tree["norm_eps"]
    config = to_model_config(tree, where)
    if "num_heads" in data and data["num_heads"] != config.mamba2.n_heads(config.d_model):
        raise CheckpointError(
            f"{where}: field 'num_heads' = {data['num_heads']!r} but expand·hidden_size / head_dim ="
            f" {config.mamba2.n_heads(config.d_model)}"
        )
    return config


# --- official state-spaces Mamba-2 -------------------------------------------------------------------------
def is_official_mamba2(data: dict) -> bool:
    """Whether an official `MambaConfig` (d_model / n_layer / ssm_cfg) describes Mamba-2 layers."""
    ssm_cfg = data.get("ssm_cfg")
    return isinstance(ssm_cfg, dict) and ssm_cfg.get("layer") == "Mamba2"


def from_official_config(data: dict, where: str, strict: bool = True) -> ModelConfig:
    allowed = {name for name, _, _ in OFFICIAL_FIELDS} | OFFICIAL_IRRELEVANT | {"ssm_cfg"}
    check_fields(data, where, OFFICIAL_REQUIRED, allowed, strict)
    ssm_cfg = data["ssm_cfg"]
    ssm_where = f"{where} (ssm_cfg)"
    allowed_ssm = {name for name, _ in _OFFICIAL_SSM_FIELDS} | _OFFICIAL_SSM_IRRELEVANT
    allowed_ssm |= {"dt_limit", "d_ssm"}  # checked below
    check_fields(ssm_cfg, ssm_where, _OFFICIAL_SSM_REQUIRED, allowed_ssm, strict)
    check_no_dt_limit(ssm_cfg.get("dt_limit"), "dt_limit", ssm_where)
    tree: dict = {
        "norm_eps": OFFICIAL_NORM_EPS,
        "mamba2": {ours: ssm_cfg[name] for name, ours in _OFFICIAL_SSM_FIELDS if name in ssm_cfg},
    }
    for name, path, default in OFFICIAL_FIELDS:
        put_path(tree, path, data.get(name, default))
    tree["mamba2"]["rmsnorm_eps"] = OFFICIAL_NORM_EPS  # RMSNormGated(eps=1e-5) in official Mamba2
    tree["layer_pattern"] = ["mamba2"] * as_int(tree["n_layer"], "n_layer", where)
    config = to_model_config(tree, where)
    d_ssm = ssm_cfg.get("d_ssm")
    if d_ssm is not None and d_ssm != config.mamba2.expand * config.d_model:
        raise CheckpointError(
            f"{ssm_where}: field 'd_ssm' = {d_ssm!r} is not supported; mambalab runs the SSM on all"
            f" d_inner = {config.mamba2.expand * config.d_model} channels (no gated MLP beside it)"
        )
    return config
