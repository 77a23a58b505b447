"""Pretrained-config translation: a checkpoint's config.json <-> `ModelConfig`, for three formats.

    mambalab   config.json has a "mambalab" block holding the full `ModelConfig` (our own directories
               round-trip exactly), beside transformers' fields when transformers can represent the model;
    HF         model_type "mamba" (transformers' `MambaForCausalLM` / `MambaConfig`);
    official   d_model / n_layer / ssm_cfg (state-spaces/mamba's `MambaLMHeadModel`).

Mamba-2 models (model_type "mamba2", official ssm_cfg.layer "Mamba2", or any "mamba2" layer) are translated
by models/mamba2_hf.py; the entry points below (`load_config`, `to_hf_config`,
`transformers_incompatibility`, `pretrained_config_json`) send them there. Both use the field tables and
helpers of models/config_fields.py.

Config fields that would change the math in a way mambalab does not implement (e.g. hidden_act other than
silu, LayerNorm instead of RMSNorm) are refused; fields known to be irrelevant (use_cache, use_mambapy,
fused_add_norm, ...) are ignored; any other field is an error, unless loaded with strict=False (logged and
ignored; a required value or a clamp of Δ is refused either way). Every problem raises `CheckpointError` naming
the file and the field. This module imports no model, so the model can import it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mambalab.config import ModelConfig
from mambalab.errors import CheckpointError, ConfigError
from mambalab.models import mamba2_hf
from mambalab.models.config_fields import (
    HF_FREE_MODEL_FIELDS,
    HF_GENERIC_FIELDS,
    OFFICIAL_FIELDS,
    OFFICIAL_IRRELEVANT,
    OFFICIAL_NORM_EPS,
    OFFICIAL_REQUIRED,
    check_fields,
    get_path,
    non_default_fields,
    put_path,
    to_model_config,
)

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
FORMAT_VERSION = 1


# --- Config field tables -----------------------------------------------------------------------------------
# (transformers MambaConfig field, ModelConfig attribute path, transformers' default when the field is absent)
_HF_FIELDS = (
    ("vocab_size", "vocab_size", 50280),
    ("hidden_size", "d_model", 768),
    ("num_hidden_layers", "n_layer", 32),
    ("state_size", "ssm.d_state", 16),
    ("expand", "ssm.expand", 2),
    ("conv_kernel", "ssm.d_conv", 4),
    ("use_bias", "ssm.bias", False),
    ("use_conv_bias", "ssm.conv_bias", True),
    ("time_step_rank", "ssm.dt_rank", "auto"),
    ("time_step_min", "ssm.dt_min", 0.001),
    ("time_step_max", "ssm.dt_max", 0.1),
    ("time_step_init_scheme", "ssm.dt_init", "random"),
    ("time_step_floor", "ssm.dt_init_floor", 1e-4),
    ("time_step_scale", "ssm.dt_scale", 1.0),
    ("layer_norm_epsilon", "norm_eps", 1e-5),
    ("residual_in_fp32", "residual_in_fp32", True),
    ("tie_word_embeddings", "tie_embeddings", True),
    ("initializer_range", "initializer_range", 0.1),
    ("rescale_prenorm_residual", "rescale_prenorm_residual", False),
)
# Fields whose only value mambalab computes: any other value would silently change the math.
_HF_REQUIRED = {"model_type": "mamba", "hidden_act": "silu", "rms_norm": True}
# transformers' Mamba fields that do not change the logits (kernels, caching, generation, token ids), and
# leftovers of converted official configs that transformers itself ignores.
# fmt: off
_HF_IRRELEVANT = frozenset({
    "use_cache", "use_mambapy", "use_associative_scan", "pad_token_id", "bos_token_id", "eos_token_id",
    "fused_add_norm", "pad_vocab_size_multiple", "ssm_cfg", "tie_embeddings",
})
# fmt: on
# Converted configs may repeat a size under its official name; it must agree with the HF field.
_HF_ALIASES = {"n_layer": "num_hidden_layers", "d_model": "hidden_size"}

# ssm_cfg of the official Mamba-1 mixer: same names as our SSMConfig.
_OFFICIAL_SSM_FIELDS = (
    "d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor",
    "conv_bias", "bias",
)  # fmt: skip
_OFFICIAL_SSM_REQUIRED = {"layer": "Mamba1"}
_OFFICIAL_SSM_IRRELEVANT = frozenset({"use_fast_path"})

# SSMConfig fields transformers cannot express but which only affect initialisation or the choice of kernel
# (not the function the model computes).
_HF_FREE_SSM_FIELDS = frozenset({"A_init", "scan_backend"})


# --- ModelConfig <-> transformers MambaConfig ---------------------------------------------------------------
def transformers_incompatibility(config: ModelConfig) -> str | None:
    """Why transformers' `MambaForCausalLM` cannot compute this model, or None when it can."""
    if mamba2_hf.uses_mamba2(config):  # Mamba-2 layers: transformers' Mamba2ForCausalLM
        return mamba2_hf.transformers_incompatibility(config)
    other = sorted({kind for kind in config.layer_pattern if kind != "mamba"})
    if other:
        return f"layer_pattern has layers other than plain 'mamba': {other}"
    if float(config.ssm.expand) != int(config.ssm.expand):
        return f"ssm.expand={config.ssm.expand} is not a whole number (transformers' MambaConfig takes an int)"
    changed = [
        f"ssm.{name}" for name in non_default_fields(config.ssm, _HF_FREE_SSM_FIELDS | _hf_ssm_fields())
    ]
    changed += non_default_fields(config, HF_FREE_MODEL_FIELDS | _hf_model_fields())
    if changed:
        return f"options transformers' Mamba does not have are set: {changed}"
    return None


def _hf_model_fields() -> frozenset[str]:
    return frozenset(path for _, path, _ in _HF_FIELDS if "." not in path) | {"ssm"}


def _hf_ssm_fields() -> frozenset[str]:
    return frozenset(path.split(".", 1)[1] for _, path, _ in _HF_FIELDS if path.startswith("ssm."))


def to_hf_config(config: ModelConfig) -> dict[str, Any]:
    """transformers `MambaConfig` fields of a pure-Mamba `config` (vocab_size is the padded vocabulary)."""
    if mamba2_hf.uses_mamba2(config):  # transformers' Mamba2Config
        return mamba2_hf.to_hf_config(config)
    reason = transformers_incompatibility(config)
    if reason is not None:
        raise ConfigError(f"config cannot be expressed as a transformers MambaConfig: {reason}")
    fields = {hf: get_path(config, path) for hf, path, _ in _HF_FIELDS}
    # rescale_prenorm_residual only shapes a fresh init, but transformers' `_init_weights` (5.x) divides
    # out_proj.weight by sqrt(n_layer) even when that weight was loaded from the checkpoint: write False.
    fields.update(
        vocab_size=config.padded_vocab_size, time_step_rank=config.dt_rank, rescale_prenorm_residual=False,
        expand=int(config.ssm.expand),  # an official config's 2.0: transformers' strict MambaConfig takes an int
    )
    fields.update(
        architectures=["MambaForCausalLM"],
        model_type="mamba",
        hidden_act="silu",
        intermediate_size=config.d_inner,
    )
    return fields


def _from_hf_config(data: dict, where: str, strict: bool = True) -> ModelConfig:
    allowed = (
        {hf for hf, _, _ in _HF_FIELDS}
        | _HF_IRRELEVANT
        | HF_GENERIC_FIELDS
        | set(_HF_ALIASES)
        | {"intermediate_size"}
    )
    check_fields(data, where, _HF_REQUIRED, allowed, strict)
    tree: dict = {"pad_vocab_size_multiple": 1}  # the stored vocab_size is already the embedding's size
    for hf, path, default in _HF_FIELDS:
        put_path(tree, path, data.get(hf, default))
    for alias, hf in _HF_ALIASES.items():
        if alias in data and data[alias] != data.get(hf):
            raise CheckpointError(
                f"{where}: field {alias!r} = {data[alias]!r} disagrees with {hf!r} = {data.get(hf)!r}"
            )
    config = to_model_config(tree, where)
    if "intermediate_size" in data and data["intermediate_size"] != config.d_inner:
        raise CheckpointError(
            f"{where}: field 'intermediate_size' = {data['intermediate_size']!r} but expand·hidden_size ="
            f" {config.d_inner}; mambalab supports only intermediate_size = expand·hidden_size"
        )
    return config


def _from_official_config(data: dict, where: str, strict: bool = True) -> ModelConfig:
    allowed = {name for name, _, _ in OFFICIAL_FIELDS} | OFFICIAL_IRRELEVANT | {"ssm_cfg"}
    check_fields(data, where, OFFICIAL_REQUIRED, allowed, strict)
    ssm_cfg = data.get("ssm_cfg", {})
    if not isinstance(ssm_cfg, dict):
        raise CheckpointError(f"{where}: field 'ssm_cfg' must be an object, got {ssm_cfg!r}")
    check_fields(
        ssm_cfg,
        f"{where} (ssm_cfg)",
        _OFFICIAL_SSM_REQUIRED,
        set(_OFFICIAL_SSM_FIELDS) | _OFFICIAL_SSM_IRRELEVANT,
        strict,
    )
    tree: dict = {
        "norm_eps": OFFICIAL_NORM_EPS,
        "ssm": {k: ssm_cfg[k] for k in _OFFICIAL_SSM_FIELDS if k in ssm_cfg},
    }
    for name, path, default in OFFICIAL_FIELDS:
        put_path(tree, path, data.get(name, default))
    return to_model_config(tree, where)


def _from_mambalab_config(data: dict, where: str, strict: bool = True) -> ModelConfig:
    block = data["mambalab"]
    if not isinstance(block, dict):
        raise CheckpointError(f"{where}: field 'mambalab' must be an object, got {type(block).__name__}")
    check_fields(
        block,
        f"{where} (mambalab)",
        {"format_version": FORMAT_VERSION},
        {"transformers_loadable", "note", "model"},
        strict,
    )
    if "model" not in block:
        raise CheckpointError(f"{where}: field 'mambalab.model' (the ModelConfig) is missing")
    config = to_model_config(block["model"], f"{where}: mambalab.model")
    # The HF fields beside the block (written by save_pretrained) must describe the same model.
    hf = to_hf_config(config) if transformers_incompatibility(config) is None else {}
    rest = {k: v for k, v in data.items() if k != "mambalab"}
    irrelevant = _HF_IRRELEVANT
    if mamba2_hf.uses_mamba2(config):  # transformers re-saves a Mamba2Config with its time_step_limit
        irrelevant = mamba2_hf.HF_IRRELEVANT | {"time_step_limit"}
        mamba2_hf.check_no_dt_limit(rest.get("time_step_limit"), "time_step_limit", where)
    check_fields(rest, where, {}, set(hf) | irrelevant | HF_GENERIC_FIELDS, strict)
    for key in sorted(set(rest) & set(hf) - irrelevant - HF_GENERIC_FIELDS):
        if rest[key] != hf[key]:
            raise CheckpointError(
                f"{where}: field {key!r} = {rest[key]!r} disagrees with the 'mambalab' block,"
                f" which gives {hf[key]!r}"
            )
    return config


def load_config(directory: str | Path, strict: bool = True) -> tuple[ModelConfig, str]:
    """(ModelConfig, format) of a checkpoint directory; format is "mambalab", "hf" or "official". With
    strict=False, fields this module does not know are logged and ignored instead of refused."""
    path = checkpoint_dir(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: config file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    where = str(path)
    if "mambalab" in data:
        return _from_mambalab_config(data, where, strict), "mambalab"
    if data.get("model_type") == "mamba2":
        return mamba2_hf.from_hf_config(data, where, strict), "hf"
    if "model_type" in data or "hidden_size" in data:
        return _from_hf_config(data, where, strict), "hf"
    if "d_model" in data and mamba2_hf.is_official_mamba2(data):
        return mamba2_hf.from_official_config(data, where, strict), "official"
    if "d_model" in data:
        return _from_official_config(data, where, strict), "official"
    raise CheckpointError(
        f"{where}: not a Mamba config: expected a 'mambalab' block, transformers' model_type 'mamba' or"
        " 'mamba2', or the official d_model/n_layer/ssm_cfg fields"
    )


def checkpoint_dir(directory: str | Path) -> Path:
    """`directory` as a Path after checking it is an existing directory (not, say, the weights file)."""
    directory = Path(directory)
    if directory.is_file():
        raise CheckpointError(f"{directory}: is a file; pass the directory that holds {CONFIG_NAME}")
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    return directory


def pretrained_config_json(config: ModelConfig, dtype_name: str, tokenizer=None) -> dict[str, Any]:
    """The config.json `save_pretrained` writes: transformers' `MambaConfig` (or `Mamba2Config`) fields
    (vocab_size = the padded vocabulary, so shapes match) when transformers can compute the model, plus the
    "mambalab" block holding the full `ModelConfig`. A model transformers cannot represent (attention/MoE/S4D
    layers, SSM ablations) gets only the block, with `transformers_loadable: false` and the reason. The
    special-token ids are the `tokenizer`'s (e.g. the byte tokenizer's BOS 256, EOS 257, PAD 258), null when
    it is not given."""
    reason = transformers_incompatibility(config)
    fields: dict[str, Any] = {} if reason else {**to_hf_config(config), "dtype": dtype_name}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id") if reason is None else ():
        fields[name] = None if tokenizer is None else getattr(tokenizer, name)
    if reason is None:
        note = f"also loadable by transformers.{fields['architectures'][0]}.from_pretrained"
    else:
        note = f"mambalab-only checkpoint: transformers cannot load it because {reason}"
    fields["mambalab"] = {
        "format_version": FORMAT_VERSION,
        "transformers_loadable": reason is None,
        "note": note,
        "model": config.to_dict(),
    }
    return fields
