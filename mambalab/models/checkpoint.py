"""Checkpoints: save in HF transformers' Mamba layout, load ours, transformers' and the official ones.

`save_pretrained(model, directory)` writes two files, each through a temp file and `os.replace`:

    config.json        transformers' `MambaConfig` fields (model_type "mamba", hidden_size, state_size, ...,
                       vocab_size = our padded vocabulary so shapes match) plus a "mambalab" block holding the
                       full `ModelConfig`, so our own directories round-trip exactly. A model transformers
                       cannot represent (attention/MoE/S4D layers, SSM ablations) gets only the "mambalab"
                       block, with `transformers_loadable: false` and the reason, and no HF fields.
    model.safetensors  the state dict under transformers' names; a tied lm_head is stored once, as
                       `backbone.embeddings.weight` (safetensors refuses shared tensors; transformers
                       re-ties it).

`load(directory, device=None, dtype=None)` reads config.json and tells three formats apart:

    mambalab   config.json has a "mambalab" block;
    HF         model_type "mamba" (transformers' `MambaForCausalLM`);
    official   d_model / n_layer / ssm_cfg (state-spaces/mamba's `MambaLMHeadModel`).

Weights come from model.safetensors, a sharded model.safetensors.index.json, or pytorch_model.bin (sharded
or not), the latter read only with `torch.load(weights_only=True)`. Config fields that would change the
math in a way mambalab does not implement (e.g. hidden_act other than silu, LayerNorm instead of RMSNorm)
are refused; fields known to be irrelevant (use_cache, use_mambapy, fused_add_norm, ...) are ignored; any
other field is an error. The whole state dict is read and checked (keys, shapes, dtypes, tied weights)
before the model is touched, and every problem raises one `CheckpointError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mambalab.atomic import write_atomic
from mambalab.config import ModelConfig
from mambalab.models.lm import LanguageModel

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
# Weight files in the order `load` looks for them.
WEIGHT_NAMES = (
    SAFETENSORS_NAME,
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
FORMAT_VERSION = 1
EMBEDDING_KEY = "backbone.embeddings.weight"
LM_HEAD_KEY = "lm_head.weight"
# Official state-spaces checkpoints (and old transformers ones) name the embedding in the singular.
_KEY_RENAMES = {"backbone.embedding.weight": EMBEDDING_KEY}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded as it is; the message names the file and the key."""


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
    {"layer_pattern", "pad_vocab_size_multiple", "attention", "mlp", "moe", "s4d", "mamba2"}
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


def _check_fields(data: dict, where: str, required: dict, allowed: set[str] | frozenset[str]) -> None:
    """Refuse fields outside `allowed` ∪ `required`, and a `required` field holding another value."""
    unknown = sorted(set(data) - set(allowed) - set(required))
    if unknown:
        raise CheckpointError(f"{where}: unknown config field(s) {unknown}")
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


def _as_int(value: Any, key: str, where: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise CheckpointError(f"{where}: field {key!r} must be an integer, got {value!r}")
    return value


# --- ModelConfig <-> transformers MambaConfig ---------------------------------------------------------------
def transformers_incompatibility(config: ModelConfig) -> str | None:
    """Why transformers' `MambaForCausalLM` cannot compute this model, or None when it can."""
    from mambalab.models import mamba2_hf

    if mamba2_hf.uses_mamba2(config):  # Mamba-2 layers: transformers' Mamba2ForCausalLM
        return mamba2_hf.transformers_incompatibility(config)
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
    from mambalab.models import mamba2_hf

    if mamba2_hf.uses_mamba2(config):  # transformers' Mamba2Config
        return mamba2_hf.to_hf_config(config)
    reason = transformers_incompatibility(config)
    if reason is not None:
        raise ValueError(f"config cannot be expressed as a transformers MambaConfig: {reason}")
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
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return fields


def _from_hf_config(data: dict, where: str) -> ModelConfig:
    allowed = (
        {hf for hf, _, _ in _HF_FIELDS}
        | _HF_IRRELEVANT
        | _HF_GENERIC
        | set(_HF_ALIASES)
        | {"intermediate_size"}
    )
    _check_fields(data, where, _HF_REQUIRED, allowed)
    tree: dict = {"pad_vocab_size_multiple": 1}  # the stored vocab_size is already the embedding's size
    for hf, path, default in _HF_FIELDS:
        _put(tree, path, data.get(hf, default))
    tree["ssm"]["expand"] = _as_int(tree["ssm"]["expand"], "expand", where)
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


def _from_official_config(data: dict, where: str) -> ModelConfig:
    allowed = {name for name, _, _ in _OFFICIAL_FIELDS} | _OFFICIAL_IRRELEVANT | {"ssm_cfg"}
    _check_fields(data, where, _OFFICIAL_REQUIRED, allowed)
    ssm_cfg = data.get("ssm_cfg", {})
    if not isinstance(ssm_cfg, dict):
        raise CheckpointError(f"{where}: field 'ssm_cfg' must be an object, got {ssm_cfg!r}")
    _check_fields(
        ssm_cfg,
        f"{where} (ssm_cfg)",
        _OFFICIAL_SSM_REQUIRED,
        set(_OFFICIAL_SSM_FIELDS) | _OFFICIAL_SSM_IRRELEVANT,
    )
    tree: dict = {
        "norm_eps": _OFFICIAL_NORM_EPS,
        "ssm": {k: ssm_cfg[k] for k in _OFFICIAL_SSM_FIELDS if k in ssm_cfg},
    }
    for name, path, default in _OFFICIAL_FIELDS:
        _put(tree, path, data.get(name, default))
    return _to_model_config(tree, where)


def _from_mambalab_config(data: dict, where: str) -> ModelConfig:
    block = data["mambalab"]
    if not isinstance(block, dict):
        raise CheckpointError(f"{where}: field 'mambalab' must be an object, got {type(block).__name__}")
    _check_fields(
        block,
        f"{where} (mambalab)",
        {"format_version": FORMAT_VERSION},
        {"transformers_loadable", "note", "model"},
    )
    if "model" not in block:
        raise CheckpointError(f"{where}: field 'mambalab.model' (the ModelConfig) is missing")
    config = _to_model_config(block["model"], f"{where}: mambalab.model")
    # The HF fields beside the block (written by save_pretrained) must describe the same model.
    hf = to_hf_config(config) if transformers_incompatibility(config) is None else {}
    rest = {k: v for k, v in data.items() if k != "mambalab"}
    _check_fields(rest, where, {}, set(hf) | _HF_IRRELEVANT | _HF_GENERIC)
    for key in sorted(set(rest) & set(hf) - _HF_IRRELEVANT - _HF_GENERIC):
        if rest[key] != hf[key]:
            raise CheckpointError(
                f"{where}: field {key!r} = {rest[key]!r} disagrees with the 'mambalab' block,"
                f" which gives {hf[key]!r}"
            )
    return config


def load_config(directory: str | Path) -> tuple[ModelConfig, str]:
    """(ModelConfig, format) of a checkpoint directory; format is "mambalab", "hf" or "official"."""
    path = _checkpoint_dir(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: config file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    where = str(path)
    from mambalab.models import mamba2_hf

    if "mambalab" in data:
        return _from_mambalab_config(data, where), "mambalab"
    if data.get("model_type") == "mamba2":
        return mamba2_hf.from_hf_config(data, where), "hf"
    if "model_type" in data or "hidden_size" in data:
        return _from_hf_config(data, where), "hf"
    if "d_model" in data and mamba2_hf.is_official_mamba2(data):
        return mamba2_hf.from_official_config(data, where), "official"
    if "d_model" in data:
        return _from_official_config(data, where), "official"
    raise CheckpointError(
        f"{where}: not a Mamba config: expected a 'mambalab' block, transformers' model_type 'mamba', or the"
        " official d_model/n_layer/ssm_cfg fields"
    )


# --- Reading weight files ---------------------------------------------------------------------------------
def _checkpoint_dir(directory: str | Path) -> Path:
    directory = Path(directory)
    if directory.is_file():
        raise CheckpointError(f"{directory}: is a file; pass the directory that holds {CONFIG_NAME}")
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    return directory


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file, truncated or corrupt ({e})") from e


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model.bin state dict, unpickled only with weights_only=True (no arbitrary code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused: the pickle holds objects other than tensors, and mambalab only loads"
            " pickles with"
            f" torch.load(weights_only=True) ({str(e).splitlines()[-1]})"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable PyTorch file, truncated or corrupt ({e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict (key -> tensor), got {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: key {key!r} holds a {type(value).__name__}, expected a tensor")
    return state


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    return _read_safetensors(path) if path.suffix == ".safetensors" else _read_pickle(path)


def _read_sharded(index_path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """Read every shard named by a transformers index file; each key must be in the shard the index names."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path}: not a shard index with a 'weight_map' object ({e!r})") from e
    if not isinstance(weight_map, dict) or not all(
        isinstance(name, str) and Path(name).name == name for name in weight_map.values()
    ):
        raise CheckpointError(f"{index_path}: 'weight_map' must map keys to shard file names in this folder")
    state: dict[str, torch.Tensor] = {}
    sources: dict[str, Path] = {}
    for shard_name in sorted(set(weight_map.values())):
        shard = index_path.parent / shard_name
        if not shard.is_file():
            raise CheckpointError(f"{shard}: shard listed in {index_path.name} not found")
        for key, tensor in _read_file(shard).items():
            if weight_map.get(key) != shard_name:
                raise CheckpointError(
                    f"{shard}: key {key!r} is not assigned to this shard by {index_path.name}"
                )
            state[key], sources[key] = tensor, shard
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(
            f"{index_path.parent / weight_map[missing[0]]}: key {missing[0]!r} listed in {index_path.name}"
            f" is not in the shard ({len(missing)} missing)"
        )
    return state, sources


def _read_weights(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Path], Path]:
    """(state dict with our key names, file of each key, the weights file or index that was read)."""
    for name in WEIGHT_NAMES:
        path = directory / name
        if path.is_file():
            break
    else:
        raise CheckpointError(f"{directory}: no weights file found; expected one of {list(WEIGHT_NAMES)}")
    if name.endswith(".index.json"):
        state, sources = _read_sharded(path)
    else:
        state = _read_file(path)
        sources = dict.fromkeys(state, path)
    for old, new in _KEY_RENAMES.items():
        if old in state:
            if new in state:
                raise CheckpointError(f"{sources[old]}: both {old!r} and {new!r} are present; expected one")
            state[new], sources[new] = state.pop(old), sources.pop(old)
    return state, sources, path


def _check_state(
    state: dict[str, torch.Tensor], sources: dict[str, Path], weights: Path, model: LanguageModel
) -> None:
    """Refuse missing / unexpected keys, wrong shapes, non-float tensors and an untied lm_head that should be
    tied; afterwards `state` is exactly what `model.load_state_dict(strict=True)` needs."""
    tied = model.config.tie_embeddings
    if (
        tied
        and LM_HEAD_KEY in state
        and EMBEDDING_KEY in state
        and not torch.equal(state[LM_HEAD_KEY], state[EMBEDDING_KEY])
    ):
        raise CheckpointError(
            f"{sources[LM_HEAD_KEY]}: key {LM_HEAD_KEY!r} differs from {EMBEDDING_KEY!r}, but the config ties"
            " the embeddings (tie_embeddings / tie_word_embeddings is true)"
        )
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if tied:
        state.pop(LM_HEAD_KEY, None)
        del expected[LM_HEAD_KEY]
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(
            f"{weights}: missing key {missing[0]!r} ({len(missing)} missing: {missing[:5]})"
        )
    if unexpected:
        raise CheckpointError(
            f"{sources[unexpected[0]]}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected:"
            f" {unexpected[:5]}); the config does not have this parameter"
        )
    for key, shape in expected.items():
        tensor = state[key]
        if tensor.shape != shape:
            raise CheckpointError(
                f"{sources[key]}: key {key!r} has shape {tuple(tensor.shape)}"
                f" but the config expects {tuple(shape)}"
            )
        if not tensor.is_floating_point():
            raise CheckpointError(
                f"{sources[key]}: key {key!r} has dtype {tensor.dtype}, expected a float dtype"
            )
    if tied:
        state[LM_HEAD_KEY] = state[EMBEDDING_KEY]


# --- Public API --------------------------------------------------------------------------------------------
def load(
    directory: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> LanguageModel:
    """Load a mambalab, transformers or official state-spaces Mamba checkpoint directory.

    The model comes back in eval mode (as transformers' `from_pretrained` does); call `.train()` to train.
    device: where the model lives (default CPU). dtype: the model's dtype (default: that of the stored
    embedding); A_log, D and the Δ bias stay float32 whatever it is. Raises `CheckpointError` (a
    ValueError) naming the file and the key on any problem; the model is built only once everything checks.
    Loading does not disturb the global random number generator.
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    directory = _checkpoint_dir(directory)
    config, fmt = load_config(directory)
    state, sources, weights = _read_weights(directory)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the caller's RNG as it was
        model = LanguageModel(config)
    _check_state(state, sources, weights, model)
    model.to(device=device or "cpu", dtype=dtype or state[EMBEDDING_KEY].dtype)
    model.load_state_dict(state, strict=True)
    logger.info("loaded %s checkpoint %s (%s)", fmt, directory, weights.name)
    return model.eval()


def save_pretrained(model: LanguageModel, directory: str | Path) -> Path:
    """Write config.json and model.safetensors into `directory` (created if needed); returns the directory.

    A pure-Mamba model is loadable by `transformers.MambaForCausalLM.from_pretrained(directory)`.
    """
    if not isinstance(model, LanguageModel):
        raise TypeError(f"model must be a mambalab LanguageModel, got {type(model).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    tensors = {key: t.detach().cpu().contiguous() for key, t in model.state_dict().items()}
    if config.tie_embeddings:
        del tensors[LM_HEAD_KEY]  # stored once, as the embedding; transformers and `load` re-tie it
    reason = transformers_incompatibility(config)
    fields: dict[str, Any] = (
        {} if reason else {**to_hf_config(config), "dtype": str(model.dtype).removeprefix("torch.")}
    )
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
    shadowing = [name for name in WEIGHT_NAMES[1:] if (directory / name).exists()]
    if shadowing:
        logger.warning(
            "%s also holds %s; model.safetensors takes precedence when loading", directory, shadowing
        )
    write_atomic(
        directory / SAFETENSORS_NAME, lambda p: save_file(tensors, str(p), metadata={"format": "pt"})
    )
    write_atomic(directory / CONFIG_NAME, lambda p: p.write_text(json.dumps(fields, indent=2) + "\n"))
    logger.info("saved checkpoint to %s", directory)
    return directory
