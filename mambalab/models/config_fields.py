"""What the config.json translations share (models/hf_config.py for Mamba, models/mamba2_hf.py for
Mamba-2): the fields every transformers config may carry, the top-level fields of official state-spaces
`MambaConfig` (the same for Mamba-1 and Mamba-2 layers), and the helpers that walk the field tables and refuse
unknown or unsupported fields with `CheckpointError` naming the file and the field. Imports no model.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from mambalab.config import ModelConfig
from mambalab.errors import CheckpointError

# Fields every transformers config may carry (v4 and v5), none of which touch the model's math.
# fmt: off
HF_GENERIC_FIELDS = frozenset({
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

# Official state-spaces `MambaConfig`: (field, ModelConfig attribute path, official default).
OFFICIAL_FIELDS = (
    ("d_model", "d_model", 2560),
    ("n_layer", "n_layer", 64),
    ("vocab_size", "vocab_size", 50277),
    ("pad_vocab_size_multiple", "pad_vocab_size_multiple", 8),
    ("tie_embeddings", "tie_embeddings", True),
    ("residual_in_fp32", "residual_in_fp32", True),
)
OFFICIAL_REQUIRED = {"rms_norm": True, "d_intermediate": 0, "attn_layer_idx": []}
OFFICIAL_IRRELEVANT = frozenset({"fused_add_norm", "attn_cfg"})
OFFICIAL_NORM_EPS = 1e-5  # MixerModel's norm_epsilon, not stored in the official config.json

# ModelConfig fields transformers cannot express but which do not change the function a model of one mixer
# kind computes: the layer pattern (checked by each translation), the vocabulary's padding (the stored
# vocab_size is the padded one), the sub-configs of other mixers (the translation checks its own mixer's).
HF_FREE_MODEL_FIELDS = frozenset(
    {"layer_pattern", "pad_vocab_size_multiple", "attention", "mlp", "moe", "s4d", "mamba2"}
)

logger = logging.getLogger(__name__)


# --- Field-table helpers -----------------------------------------------------------------------------------
def get_path(obj: Any, path: str) -> Any:
    """obj.a.b for path "a.b"."""
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def put_path(tree: dict, path: str, value: Any) -> None:
    """tree["a"]["b"] = value for path "a.b", creating the inner dicts."""
    *parents, leaf = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def non_default_fields(obj: Any, exempt: frozenset[str]) -> list[str]:
    """Names of `obj`'s dataclass fields, outside `exempt`, whose value differs from the field's default."""
    names = []
    for f in dataclasses.fields(obj):
        if f.name in exempt:
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if getattr(obj, f.name) != default:
            names.append(f.name)
    return names


def check_fields(data: dict, where: str, required: dict, allowed: set[str] | frozenset[str],
                 strict: bool = True) -> None:
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


def to_model_config(tree: dict, where: str) -> ModelConfig:
    """`ModelConfig.from_dict(tree)`, its errors as CheckpointError naming `where`."""
    try:
        return ModelConfig.from_dict(tree, where=where)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: invalid config ({e})") from e



def as_int(value: Any, key: str, where: str) -> int:
    """value as an int (2.0 is 2), else CheckpointError naming the field."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise CheckpointError(f"{where}: field {key!r} must be an integer, got {value!r}")
    return value
