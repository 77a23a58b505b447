"""`InferenceState`: everything a model needs to continue a sequence in recurrent (RNN) mode.

One dict of tensors per layer, every tensor batch-first, plus `seqlen` (b,) = tokens already consumed
per row. A Mamba layer holds {"conv": (b, d_inner, d_conv) conv window, "ssm": (b, d_inner, N)}; a
Mamba-2 layer {"conv": (b, d_inner + 2·G·N, d_conv), "ssm": (b, heads, head_dim, N)}; an attention
layer holds its KV cache. Every "ssm" tensor of a state has one dtype, `ssm_dtype`: float32 by default
(float64 for a float64 model), or the one chosen when it was allocated (inference/state_dtype.py).
`prefill` returns a state, `step` advances it in place, and it can be cloned, moved, split and joined along
the batch (the basis of prefix caching and batched decoding).

`save(path, model, prefix_tokens)` writes a safetensors file whose metadata fingerprints what the state
belongs to: the model config, a hash of the weights, the dtype, the SSM state dtype and the tokens it has
consumed. `InferenceState.load(path, model, state_dtype=...)` refuses a state of another model, dtype, SSM state dtype
or prefix with `StateMismatchError` naming the mismatch (a state is never converted silently: load it with the
state dtype it was saved in, then `.to(state_dtype=...)`), and a corrupt or truncated file with
`CorruptStateError`.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mambalab.atomic import write_atomic
from mambalab.config import config_differences
from mambalab.errors import CorruptStateError, InputError, StateMismatchError
from mambalab.inference.state_dtype import default_state_dtype, resolve_state_dtype

# The SSM recurrent states: in the state dtype (inference/state_dtype.py), not the model's.
SSM_STATE_KEYS = frozenset({"ssm"})


@dataclass
class InferenceState:
    layers: list[dict[str, torch.Tensor]]
    seqlen: torch.Tensor  # (b,) int64

    @property
    def batch_size(self) -> int:
        return int(self.seqlen.shape[0])

    @property
    def device(self) -> torch.device:
        return self.seqlen.device

    def clone(self) -> InferenceState:
        return InferenceState([{k: v.clone() for k, v in layer.items()} for layer in self.layers], self.seqlen.clone())

    @property
    def ssm_dtype(self) -> torch.dtype | None:
        """The dtype of the SSM states (None when no layer has one, e.g. attention only)."""
        dtypes = {t.dtype for layer in self.layers for k, t in layer.items() if k in SSM_STATE_KEYS}
        if len(dtypes) > 1:
            raise InputError(f"the state's SSM tensors have several dtypes {sorted(map(str, dtypes))}; a state"
                             " holds one SSM state dtype")
        return next(iter(dtypes), None)

    def to(self, device=None, dtype=None, state_dtype=None) -> InferenceState:
        """Move to `device`; cast the floating tensors other than SSM states to `dtype`, and the SSM states to
        `state_dtype` (a dtype or name of inference/state_dtype.py; when None and `dtype` is given: the
        default state dtype of a `dtype` model, float32 or float64)."""
        ssm_target = None
        if state_dtype is not None or dtype is not None:
            ssm_target = resolve_state_dtype(state_dtype, dtype or self._model_dtype())

        def convert(key, t):
            target = ssm_target if key in SSM_STATE_KEYS else dtype
            if target is not None and t.is_floating_point():
                t = t.to(dtype=target)
            return t.to(device) if device is not None else t

        layers = [{k: convert(k, v) for k, v in layer.items()} for layer in self.layers]
        return InferenceState(layers, self.seqlen.to(device) if device is not None else self.seqlen)

    def _model_dtype(self) -> torch.dtype | None:
        """The dtype of the state's tensors in the model's dtype (conv windows, KV caches), None if it has none."""
        return next((t.dtype for layer in self.layers for k, t in layer.items()
                     if k not in SSM_STATE_KEYS and t.is_floating_point()), None)

    def select(self, rows) -> InferenceState:
        """The state of a subset of batch rows (`rows`: list, slice or index tensor)."""
        if isinstance(rows, list):
            rows = torch.tensor(rows, dtype=torch.long, device=self.device)
        return InferenceState([{k: v[rows] for k, v in layer.items()} for layer in self.layers], self.seqlen[rows])

    @classmethod
    def concat(cls, states: list[InferenceState]) -> InferenceState:
        """Join states along the batch. Tensors that differ in a non-batch size (e.g. KV caches of
        different capacity) are zero-padded at the end of that dimension to the largest."""
        if not states:
            raise InputError("InferenceState.concat needs at least one state")
        n_layers = {len(s.layers) for s in states}
        if len(n_layers) != 1:
            raise InputError(f"InferenceState.concat: states have different numbers of layers {sorted(n_layers)}")
        layers = []
        for i in range(len(states[0].layers)):
            keys = set(states[0].layers[i])
            if any(set(s.layers[i]) != keys for s in states):
                raise InputError(f"InferenceState.concat: layer {i} holds different tensors across states")
            for key in sorted(keys):
                dtypes = {s.layers[i][key].dtype for s in states}
                if len(dtypes) > 1:
                    raise InputError(f"InferenceState.concat: layer {i}'s {key!r} has dtypes "
                                     f"{sorted(map(str, dtypes))} across states; convert them to one first "
                                     "(.to(state_dtype=...))")
            layers.append({k: _cat_padded([s.layers[i][k] for s in states]) for k in states[0].layers[i]})
        return cls(layers, torch.cat([s.seqlen for s in states]))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.values())

    # Persistence ----------------------------------------------------------------------------------------
    def save(self, path: str | Path, model, prefix_tokens=None) -> None:
        """Write the state to `path` (safetensors, atomically) with the fingerprint of `model` and of the
        tokens it has consumed (`prefix_tokens`: one token list, or one per row; None = not recorded)."""
        tensors = {f"layers.{i}.{k}": v.detach().contiguous().cpu() for i, layer in enumerate(self.layers)
                   for k, v in layer.items()}
        tensors["seqlen"] = self.seqlen.detach().contiguous().cpu()
        rows = _token_rows(prefix_tokens, self.batch_size)
        metadata = {
            "format": STATE_FORMAT,
            **model_fingerprint(model),
            "state_dtype": str(self.ssm_dtype),
            "prefix_tokens": json.dumps(rows),
            "prefix_hash": tokens_hash(rows),
            "content_hash": _content_hash(tensors),
        }
        from safetensors.torch import save_file

        write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    @classmethod
    def load(cls, path: str | Path, model, prefix_tokens=None, state_dtype=None) -> InferenceState:
        """Read a state saved by `save` onto `model`'s device, after checking that it was saved from this
        model (config, weights, dtype), with SSM states in `state_dtype` (inference/state_dtype.py; None = the
        default, float32) and, when `prefix_tokens` is given, after exactly these tokens."""
        metadata, tensors = read_state_file(path)
        check_fingerprint(metadata, model, path)
        check_state_dtype(metadata, model, state_dtype, path)
        layers = _layers_for(model, tensors, path, state_dtype)
        if prefix_tokens is not None:
            rows = _token_rows(prefix_tokens, int(tensors["seqlen"].shape[0]))
            if tokens_hash(rows) != metadata.get("prefix_hash"):
                raise StateMismatchError(f"{path}: the state was saved after other prefix tokens than the given ones")
        layers = [{key: t.to(model.device) for key, t in layer.items()} for layer in layers]
        return cls(layers, tensors["seqlen"].to(model.device))


def _layers_for(model, tensors: dict[str, torch.Tensor], path, state_dtype=None) -> list[dict[str, torch.Tensor]]:
    """The per-layer dicts of a state file's tensors after checking every name, shape and dtype against the
    state `model` allocates (on the meta device: nothing allocated); CorruptStateError names the first bad
    tensor. A size the fresh state leaves empty (a KV cache's length) may hold any value."""
    seqlen = tensors["seqlen"]
    if seqlen.dim() != 1 or seqlen.dtype != torch.int64 or not seqlen.numel() or bool((seqlen < 0).any()):
        raise CorruptStateError(f"{path}: 'seqlen' must be a non-empty (batch,) int64 tensor of counts >= 0,"
                                f" got {seqlen.dtype} of shape {tuple(seqlen.shape)}")
    template = model.allocate_state(seqlen.shape[0], device="meta", state_dtype=state_dtype)
    expected = {f"layers.{i}.{key}": (i, key, t) for i, layer in enumerate(template.layers) for key, t in layer.items()}
    names = set(tensors) - {"seqlen"}
    for problem, keys in (("is missing", sorted(set(expected) - names)), ("is not a tensor of this model's state",
                                                                        sorted(names - set(expected)))):
        if keys:
            raise CorruptStateError(f"{path}: tensor {keys[0]!r} {problem} ({len(keys)} such)")
    layers: list[dict[str, torch.Tensor]] = [{} for _ in template.layers]
    for name, (i, key, want) in expected.items():
        got = tensors[name]
        fits = got.dim() == want.dim() and all(w in (0, g) for g, w in zip(got.shape, want.shape, strict=True))
        if got.dtype != want.dtype or not fits:
            raise CorruptStateError(
                f"{path}: tensor {name!r} is {got.dtype} of shape {tuple(got.shape)}; the model's state holds"
                f" {want.dtype} of shape {tuple(want.shape)} (0 = any size)"
            )
        layers[i][key] = got
    return layers


def _cat_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    padded = []
    for t in tensors:
        pad = []
        for d in reversed(range(1, t.dim())):
            pad += [0, shape[d - 1] - t.shape[d]]
        padded.append(F.pad(t, pad) if any(pad) else t)
    return torch.cat(padded)


# Fingerprints and the state file format ------------------------------------------------------------------
STATE_FORMAT = "mambalab.InferenceState/1"


# model -> (version key, fingerprint): hashing the weights once per version of the parameters.
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_fingerprint(model) -> dict[str, str]:
    """What a state depends on: {"config": JSON, "config_hash", "weights_hash", "dtype"}.

    The weights hash covers the name, dtype, shape and bytes of every parameter and buffer. It is cached per
    model and recomputed when a tensor is replaced, moved or updated in place (tracked via `_version`,
    which optimizer steps and `load_state_dict` bump; writes through `.data` bypass it)."""
    named = list(model.named_parameters()) + list(model.named_buffers())
    key = tuple((name, t.data_ptr(), t._version, t.dtype, t.device) for name, t in named)
    cached = _FINGERPRINTS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    weights = hashlib.blake2b(digest_size=16)
    for name, t in named:
        weights.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        weights.update(_tensor_bytes(t))
    config = model.config.to_dict()
    config_json = json.dumps(config, sort_keys=True)
    fingerprint = {
        "config": config_json,
        "config_hash": hashlib.sha256(config_json.encode()).hexdigest(),
        "weights_hash": weights.hexdigest(),
        "dtype": str(model.dtype),
    }
    _FINGERPRINTS[model] = (key, fingerprint)
    return fingerprint


def tokens_hash(rows: list[list[int]] | None) -> str:
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def read_state_file(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a state file, verified against its content hash; CorruptStateError if not."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except SafetensorError as e:
        raise CorruptStateError(f"{path}: not a readable state file (truncated or corrupt?): {e}") from e
    if metadata.get("format") != STATE_FORMAT:
        raise CorruptStateError(f"{path}: not a {STATE_FORMAT} file (format {metadata.get('format')!r})")
    if "seqlen" not in tensors or _content_hash(tensors) != metadata.get("content_hash"):
        raise CorruptStateError(f"{path}: the state tensors do not match their recorded hash (corrupt file)")
    return metadata, tensors


def read_state_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a state file, reading only its header; CorruptStateError if unreadable."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except SafetensorError as e:
        raise CorruptStateError(f"{path}: not a readable state file (truncated or corrupt?): {e}") from e


def check_fingerprint(metadata: dict[str, str], model, path: str | Path = "state") -> None:
    """Raise StateMismatchError naming the first difference between a file's fingerprint and `model`'s."""
    mine = model_fingerprint(model)
    if metadata.get("config_hash") != mine["config_hash"]:
        diffs = config_differences(_json_object(metadata, "config", path), json.loads(mine["config"]), ("state", "model"))
        raise StateMismatchError(f"{path}: the state was saved from a model with another config ({'; '.join(diffs)})")
    if metadata.get("dtype") != mine["dtype"]:
        raise StateMismatchError(
            f"{path}: the state was saved from a {metadata.get('dtype')} model, this model is {mine['dtype']}"
        )
    if metadata.get("weights_hash") != mine["weights_hash"]:
        raise StateMismatchError(
            f"{path}: the state was saved from a model with other weights (weights hash"
            f" {metadata.get('weights_hash')} vs {mine['weights_hash']})"
        )


def recorded_state_dtype(metadata: dict[str, str], model) -> str:
    """The SSM state dtype a state file records ("None" for a model without SSM states); files written before
    the field existed hold the default one."""
    return metadata.get("state_dtype", str(default_state_dtype(model.dtype)))


def check_state_dtype(metadata: dict[str, str], model, state_dtype, path: str | Path = "state") -> None:
    """Raise StateMismatchError when a file's SSM states are not in the dtype `state_dtype` asks for."""
    recorded, wanted = recorded_state_dtype(metadata, model), resolve_state_dtype(state_dtype, model.dtype)
    if recorded not in ("None", str(wanted)):
        saved = recorded.removeprefix("torch.")
        raise StateMismatchError(
            f"{path}: the state's SSM tensors were saved in {saved}, but {wanted} is asked for (state_dtype="
            f"{state_dtype!r}); load it with state_dtype={saved!r}, then convert with .to(state_dtype=...)"
            " if another dtype is wanted"
        )


def _json_object(metadata: dict[str, str], key: str, path) -> dict:
    try:
        return json.loads(metadata[key])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise CorruptStateError(f"{path}: metadata field {key!r} is missing or not JSON") from e


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().contiguous().cpu().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _content_hash(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        h.update(f"{name}|{tensors[name].dtype}|{tuple(tensors[name].shape)}|".encode())
        h.update(_tensor_bytes(tensors[name]))
    return h.hexdigest()


def _token_rows(tokens, batch_size: int) -> list[list[int]] | None:
    """None, one token list (for a batch-1 state) or one list per row -> a list of int lists per row."""
    if tokens is None:
        return None
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.tolist()
    tokens = list(tokens)
    rows = [tokens] if not tokens or not isinstance(tokens[0], (list, tuple, torch.Tensor)) else tokens
    rows = [[int(t) for t in row] for row in rows]
    if len(rows) != batch_size:
        raise InputError(f"prefix_tokens: got {len(rows)} token rows for a state of batch {batch_size}")
    return rows


