"""The dtype of the SSM recurrent state ("ssm" of Mamba, Mamba-2 and S4D layers) during inference.

The default keeps the state in float32 (float64 for a float64 model): a decode step then stores exactly what
it computed. A 16-bit state ("model" = the model's parameter dtype, or "bfloat16" / "float16") halves the
state's bytes, which at large decode batches is most of what the step reads and writes; every step still
computes in float32 (load, upcast, update, round on store), so only the stored state is rounded
(docs/inference.md, "SSM state dtype").
"""

from __future__ import annotations

import torch

from mambalab.errors import InputError

STATE_DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                     "float64": torch.float64}
STATE_DTYPE_CHOICES = (*STATE_DTYPE_NAMES, "model")


def default_state_dtype(model_dtype: torch.dtype | None) -> torch.dtype:
    """float32, or float64 for a float64 model (what the state holds when no state dtype is chosen)."""
    return torch.float64 if model_dtype == torch.float64 else torch.float32


def check_state_dtype_name(name: str | None) -> str | None:
    """`name` when it is None or one of STATE_DTYPE_CHOICES (a command-line value), else InputError naming them."""
    if name is None or name in STATE_DTYPE_CHOICES:
        return name
    raise InputError(f"--state-dtype must be one of {', '.join(STATE_DTYPE_CHOICES)}, got {name!r}")


def resolve_state_dtype(state_dtype, model_dtype: torch.dtype | None) -> torch.dtype:
    """The SSM state dtype `state_dtype` names for a model of `model_dtype`: None = the default
    (`default_state_dtype`), a torch dtype or one of STATE_DTYPE_CHOICES ("model" = model_dtype)."""
    if state_dtype is None:
        return default_state_dtype(model_dtype)
    if isinstance(state_dtype, torch.dtype) and state_dtype in STATE_DTYPE_NAMES.values():
        return state_dtype
    if isinstance(state_dtype, str) and state_dtype.removeprefix("torch.") in STATE_DTYPE_NAMES:
        return STATE_DTYPE_NAMES[state_dtype.removeprefix("torch.")]
    if state_dtype == "model" and model_dtype in STATE_DTYPE_NAMES.values():
        return model_dtype
    raise InputError(f"state_dtype must be None or one of {', '.join(STATE_DTYPE_CHOICES)} (or that torch dtype),"
                     f" got {state_dtype!r}" + (f" for a {model_dtype} model" if state_dtype == "model" else ""))


def check_state_holds(state, state_dtype, model_dtype: torch.dtype | None) -> None:
    """InputError when `state_dtype` is given and `state` (an InferenceState) holds SSM states of another
    dtype: a given state is continued in its own dtype, never converted silently."""
    if state_dtype is None or state.ssm_dtype is None:
        return
    wanted = resolve_state_dtype(state_dtype, model_dtype)
    if state.ssm_dtype != wanted:
        raise InputError(f"state_dtype={state_dtype!r} asks for {wanted} SSM states, but the given state holds"
                         f" {state.ssm_dtype} ones (convert it first with state.to(state_dtype=...))")
