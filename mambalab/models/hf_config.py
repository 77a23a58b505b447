"""Pretrained-config translation: a checkpoint's config.json <-> `ModelConfig`, for three formats.

    mambalab   config.json has a "mambalab" block holding the full `ModelConfig` (our own directories
               round-trip exactly), beside transformers' fields when transformers can represent the model;
    HF         model_type "mamba" (transformers' `MambaForCausalLM` / `MambaConfig`);
    official   d_model / n_layer / ssm_cfg (state-spaces/mamba's `MambaLMHeadModel`).

Config fields that would change the math in a way mambalab does not implement (e.g. hidden_act other than
silu, LayerNorm instead of RMSNorm) are refused; fields known to be irrelevant (use_cache, use_mambapy,
fused_add_norm, ...) are ignored; any other field is an error, unless loaded with strict=False (logged, ignored). Every problem raises `CheckpointError`
naming the file and the field. This module imports no model, so the model can import it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from mambalab.config import ModelConfig
from mambalab.errors import CheckpointError, ConfigError

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
# Fields every transformers config may carry (v4 and v5), none of which touch the model's math.
# fmt: off
_HF_GENERIC = frozenset({
    "_name_or_path", "architectures", "dtype", "torch_dtype", "transformers_version", "id2label", "label2id",
    "problem_type", "is_encoder_decoder", "is_decoder", "add_cross_attention", "cross_attention_hidden_size",
    "tie_encoder_decoder", "chunk_size_feed_forward", "output_attentions", "output_hidden_states",
    "return_dict", "use_return_dict", "torchscript", "use_bfloat16", "pruned_heads", "tf_legacy_loss",
    "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id", "task_specific_params",
    "finetuning_task", "max_length", "min_length", "do_sample", "early_stopping", "num_beams",
    "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "_commit_hash", "_attn_implementation",
    "_attn_implementation_autoset",
})
# fmt: on
# Converted configs may repeat a size under its official name; it must agree with the HF field.
_HF_ALIASES = {"n_layer": "num_hidden_layers", "d_model": "hidden_size"}

# Official state-spaces `MambaConfig`: (field, ModelConfig attribute path, official default).
_OFFICIAL_FIELDS = (
    ("d_model", "d_model", 2560),
    ("n_layer", "n_layer", 64),
    ("vocab_size", "vocab_size", 50277),
    ("pad_vocab_size_multiple", "pad_vocab_size_multiple", 8),
    ("tie_embeddings", "tie_embeddings", True),
    ("residual_in_fp32", "residual_in_fp32", True),
)
_OFFICIAL_REQUIRED = {"rms_norm": True, "d_intermediate": 0, "attn_layer_idx": []}
_OFFICIAL_IRRELEVANT = frozenset({"fused_add_norm", "attn_cfg"})
# ssm_cfg of the official Mamba-1 mixer: same names as our SSMConfig.
_OFFICIAL_SSM_FIELDS = (
    "d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor",
    "conv_bias", "bias",
)  # fmt: skip
_OFFICIAL_SSM_REQUIRED = {"layer": "Mamba1"}
_OFFICIAL_SSM_IRRELEVANT = frozenset({"use_fast_path"})
_OFFICIAL_NORM_EPS = 1e-5  # MixerModel's norm_epsilon, not stored in the official config.json

# ModelConfig / SSMConfig fields transformers cannot express but which only affect initialisation or the
# choice of kernel (not the function the model computes), or are unused by a pure-Mamba model.
_HF_FREE_MODEL_FIELDS = frozenset(
    {"layer_pattern", "pad_vocab_size_multiple", "attention", "mlp", "moe", "s4d"}
)
_HF_FREE_SSM_FIELDS = frozenset({"A_init", "scan_backend"})


# --- Small helpers -----------------------------------------------------------------------------------------
def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _put(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def _non_default_fields(obj: Any, exempt: frozenset[str]) -> list[str]:
    """Names of `obj`'s dataclass fields, outside `exempt`, whose value differs from the field's default."""
    names = []
    for f in dataclasses.fields(obj):
        if f.name in exempt:
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if getattr(obj, f.name) != default:
            names.append(f.name)
    return names


def _check_fields(data: dict, where: str, required: dict, allowed: set[str] | frozenset[str], strict: bool) -> None:
    """Refuse fields outside `allowed` ∪ `required` (with `strict`; else log and ignore them), and a
    `required` field holding another value (always: it would change the outputs)."""
    unknown = sorted(set(data) - set(allowed) - set(required))
    if unknown and not strict:
        logger.warning("%s: ignoring unknown config field(s) %s (strict_config=False)", where, unknown)
    elif unknown:
        raise CheckpointError(
            f"{where}: unknown config field(s) {unknown}; if they are harmless, load with strict_config=False"
        )
    for key, expected in required.items():
        if key in data and data[key] != expected:
            raise CheckpointError(
                f"{where}: field {key!r} = {data[key]!r} is not supported; mambalab computes only"
                f" {key}={expected!r}, and loading anyway would give different outputs"
            )


def _to_model_config(tree: dict, where: str) -> ModelConfig:
    try:
        return ModelConfig.from_dict(tree, where=where)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: invalid config ({e})") from e


# --- ModelConfig <-> transformers MambaConfig ---------------------------------------------------------------
def transformers_incompatibility(config: ModelConfig) -> str | None:
    """Why transformers' `MambaForCausalLM` cannot compute this model, or None when it can."""
    other = sorted({kind for kind in config.layer_pattern if kind != "mamba"})
    if other:
        return f"layer_pattern has layers other than plain 'mamba': {other}"
    changed = [
        f"ssm.{name}" for name in _non_default_fields(config.ssm, _HF_FREE_SSM_FIELDS | _hf_ssm_fields())
    ]
    changed += _non_default_fields(config, _HF_FREE_MODEL_FIELDS | _hf_model_fields())
    if changed:
        return f"options transformers' Mamba does not have are set: {changed}"
    return None


def _hf_model_fields() -> frozenset[str]:
    return frozenset(path for _, path, _ in _HF_FIELDS if "." not in path) | {"ssm"}


def _hf_ssm_fields() -> frozenset[str]:
    return frozenset(path.split(".", 1)[1] for _, path, _ in _HF_FIELDS if path.startswith("ssm."))


def to_hf_config(config: ModelConfig) -> dict[str, Any]:
    """transformers `MambaConfig` fields of a pure-Mamba `config` (vocab_size is the padded vocabulary)."""
    reason = transformers_incompatibility(config)
    if reason is not None:
        raise ConfigError(f"config cannot be expressed as a transformers MambaConfig: {reason}")
    fields = {hf: _get(config, path) for hf, path, _ in _HF_FIELDS}
    # rescale_prenorm_residual only shapes a fresh init, but transformers' `_init_weights` (5.x) divides
    # out_proj.weight by sqrt(n_layer) even when that weight was loaded from the checkpoint: write False.
    fields.update(
        vocab_size=config.padded_vocab_size, time_step_rank=config.dt_rank, rescale_prenorm_residual=False
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
        | _HF_GENERIC
        | set(_HF_ALIASES)
        | {"intermediate_size"}
    )
    _check_fields(data, where, _HF_REQUIRED, allowed, strict)
    tree: dict = {"pad_vocab_size_multiple": 1}  # the stored vocab_size is already the embedding's size
    for hf, path, default in _HF_FIELDS:
        _put(tree, path, data.get(hf, default))
    for alias, hf in _HF_ALIASES.items():
        if alias in data and data[alias] != data.get(hf):
            raise CheckpointError(
                f"{where}: field {alias!r} = {data[alias]!r} disagrees with {hf!r} = {data.get(hf)!r}"
            )
    config = _to_model_config(tree, where)
    if "intermediate_size" in data and data["intermediate_size"] != config.d_inner:
        raise CheckpointError(
            f"{where}: field 'intermediate_size' = {data['intermediate_size']!r} but expand·hidden_size ="
            f" {config.d_inner}; mambalab supports only intermediate_size = expand·hidden_size"
        )
    return config


def _from_official_config(data: dict, where: str, strict: bool = True) -> ModelConfig:
    allowed = {name for name, _, _ in _OFFICIAL_FIELDS} | _OFFICIAL_IRRELEVANT | {"ssm_cfg"}
    _check_fields(data, where, _OFFICIAL_REQUIRED, allowed, strict)
    ssm_cfg = data.get("ssm_cfg", {})
    if not isinstance(ssm_cfg, dict):
        raise CheckpointError(f"{where}: field 'ssm_cfg' must be an object, got {ssm_cfg!r}")
    _check_fields(
        ssm_cfg,
        f"{where} (ssm_cfg)",
        _OFFICIAL_SSM_REQUIRED,
        set(_OFFICIAL_SSM_FIELDS) | _OFFICIAL_SSM_IRRELEVANT,
        strict,
    )
    tree: dict = {
        "norm_eps": _OFFICIAL_NORM_EPS,
        "ssm": {k: ssm_cfg[k] for k in _OFFICIAL_SSM_FIELDS if k in ssm_cfg},
    }
    for name, path, default in _OFFICIAL_FIELDS:
        _put(tree, path, data.get(name, default))
    return _to_model_config(tree, where)


def _from_mambalab_config(data: dict, where: str, strict: bool = True) -> ModelConfig:
    block = data["mambalab"]
    if not isinstance(block, dict):
        raise CheckpointError(f"{where}: field 'mambalab' must be an object, got {type(block).__name__}")
    _check_fields(
        block,
        f"{where} (mambalab)",
        {"format_version": FORMAT_VERSION},
        {"transformers_loadable", "note", "model"},
        strict,
    )
    if "model" not in block:
        raise CheckpointError(f"{where}: field 'mambalab.model' (the ModelConfig) is missing")
    config = _to_model_config(block["model"], f"{where}: mambalab.model")
    # The HF fields beside the block (written by save_pretrained) must describe the same model.
    hf = to_hf_config(config) if transformers_incompatibility(config) is None else {}
    rest = {k: v for k, v in data.items() if k != "mambalab"}
    _check_fields(rest, where, {}, set(hf) | _HF_IRRELEVANT | _HF_GENERIC, strict)
    for key in sorted(set(rest) & set(hf) - _HF_IRRELEVANT - _HF_GENERIC):
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
    if "model_type" in data or "hidden_size" in data:
        return _from_hf_config(data, where, strict), "hf"
    if "d_model" in data:
        return _from_official_config(data, where, strict), "official"
    raise CheckpointError(
        f"{where}: not a Mamba config: expected a 'mambalab' block, transformers' model_type 'mamba', or the"
        " official d_model/n_layer/ssm_cfg fields"
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
    """The config.json `save_pretrained` writes: transformers' `MambaConfig` fields (vocab_size = the padded
    vocabulary, so shapes match) when transformers can compute the model, plus the "mambalab" block holding
    the full `ModelConfig`. A model transformers cannot represent (attention/MoE/S4D layers, SSM ablations)
    gets only the block, with `transformers_loadable: false` and the reason. The special-token ids are the
    `tokenizer`'s (e.g. the byte tokenizer's BOS 256, EOS 257, PAD 258), null when it is not given."""
    reason = transformers_incompatibility(config)
    fields: dict[str, Any] = {} if reason else {**to_hf_config(config), "dtype": dtype_name}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id") if reason is None else ():
        fields[name] = None if tokenizer is None else getattr(tokenizer, name)
    if reason is None:
        note = "also loadable by transformers.MambaForCausalLM.from_pretrained"
    else:
        note = f"mambalab-only checkpoint: transformers cannot load it because {reason}"
    fields["mambalab"] = {
        "format_version": FORMAT_VERSION,
        "transformers_loadable": reason is None,
        "note": note,
        "model": config.to_dict(),
    }
    return fields
