"""Typed model configuration.

`ModelConfig` describes a whole language model: the embedding/width/depth, and a per-layer pattern of
blocks. Each entry of `layer_pattern` names a mixer, optionally followed by `+` and a feed-forward kind:

    "mamba"            Mamba-1 mixer only (the Mamba paper's homogeneous block)
    "attention+mlp"    Transformer++ block (attention, then SwiGLU MLP)
    "mamba+moe"        MoE-Mamba interleaving
    "mamba2"           Mamba-2 (SSD) mixer (layers/mamba2.py)
    "s4d"              diagonal LTI SSM

Sub-configs (`ssm`, `mamba2`, `attention`, `mlp`, `moe`, `s4d`) hold the options of each kind. Every config
round-trips through JSON (`to_dict` / `from_dict`); unknown fields are an error, never silently dropped.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mambalab.errors import ConfigError

MIXER_KINDS = ("mamba", "attention", "s4d", "mamba2")
FFN_KINDS = ("mlp", "moe")
MAMBA_A_INITS = ("s4d_real", "s4d_lin", "random")  # real diagonal A of the Mamba mixer (ops/hippo.py)
S4D_INITS = ("s4d_lin", "s4d_inv", "s4d_real", "legs", "random")  # complex diagonal A of S4D
DISCRETIZATIONS = ("zoh", "bilinear", "euler", "mamba")  # "mamba" = ZOH for A, Euler for B


@dataclass
class SSMConfig:
    """Options of the Mamba-1 mixer (names follow mamba-ssm's `Mamba` module)."""

    d_state: int = 16  # N
    d_conv: int = 4
    expand: int | float = 2  # d_inner = int(expand·d_model), as the official Mamba (configs may hold 2.0)
    dt_rank: int | str = "auto"  # "auto" = ceil(d_model / 16), see `dt_rank_for`
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"  # "random" | "constant"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    # Ablation switches (the Mamba paper's §4.6 ablations): how A is initialised, how it is discretized,
    # whether Δ, B, C (and A) depend on the input.
    A_init: str = "s4d_real"  # "s4d_real" | "s4d_lin" | "random"
    discretization: str = "mamba"  # "mamba" (ZOH for A, Euler for B) | "zoh" | "bilinear" | "euler"
    selective: bool = True
    selective_A: bool = False
    scan_backend: str = "auto"

    def dt_rank_for(self, d_model: int) -> int:
        """Rank R of the Δ projection (x -> R -> d_inner) for a model of width d_model: "auto" is mamba-ssm's
        ceil(d_model / 16)."""
        return math.ceil(d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    def __post_init__(self) -> None:
        if self.dt_init not in ("random", "constant"):
            raise ConfigError(f"SSMConfig.dt_init must be 'random' or 'constant', got {self.dt_init!r}")
        if self.dt_rank != "auto" and not (isinstance(self.dt_rank, int) and self.dt_rank > 0):
            raise ConfigError(f"SSMConfig.dt_rank must be 'auto' or a positive int, got {self.dt_rank!r}")
        for name, allowed in (("A_init", MAMBA_A_INITS), ("discretization", DISCRETIZATIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"SSMConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("d_state", "d_conv", "expand"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SSMConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Mamba2Config:
    """Options of the Mamba-2 (SSD) mixer, official `Mamba2`'s defaults; heads = expand·d_model / head_dim."""

    d_state: int = 128  # N
    d_conv: int = 4
    expand: int = 2
    head_dim: int = 64  # P
    n_groups: int = 1  # G: heads share B and C in groups (G divides the number of heads)
    chunk_size: int = 256
    A_init_range: tuple[float, float] = (1.0, 16.0)  # A = −U(A_init_range) per head
    D_has_hdim: bool = False  # D per channel (h, p) instead of per head (h,)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    rmsnorm_eps: float = 1e-5  # the gated RMSNorm before out_proj
    ssd_backend: str = "auto"

    def __post_init__(self) -> None:
        self.A_init_range = tuple(self.A_init_range)
        for name in ("d_state", "d_conv", "expand", "head_dim", "n_groups", "chunk_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"Mamba2Config.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if len(self.A_init_range) != 2 or not 0 < self.A_init_range[0] <= self.A_init_range[1]:
            raise ConfigError(
                f"Mamba2Config.A_init_range must be (low, high) with 0 < low <= high, got {self.A_init_range}"
            )

    def n_heads(self, d_model: int) -> int:
        """The mixer's heads at this width; ConfigError unless head_dim divides d_inner, n_groups the heads."""
        d_inner = self.expand * d_model
        if d_inner % self.head_dim or (d_inner // self.head_dim) % self.n_groups:
            raise ConfigError(
                f"Mamba2Config: d_inner = expand·d_model = {d_inner} must be a multiple of"
                f" head_dim={self.head_dim}, and the {d_inner / self.head_dim:g} heads a multiple of"
                f" n_groups={self.n_groups}"
            )
        return d_inner // self.head_dim


@dataclass
class AttentionConfig:
    """Transformer++ attention: RoPE, no biases, grouped-query optional."""

    n_heads: int = 12
    n_kv_heads: int | None = None  # None = n_heads (multi-head attention)
    head_dim: int | None = None  # None = d_model // n_heads
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        kv = self.n_heads if self.n_kv_heads is None else self.n_kv_heads
        if self.n_heads < 1 or kv < 1 or self.n_heads % kv:
            raise ConfigError(
                f"AttentionConfig: n_heads={self.n_heads} must be >= 1 and a multiple of n_kv_heads={kv}"
            )


@dataclass
class MLPConfig:
    """SwiGLU feed-forward. d_intermediate=None uses the LLaMA rule: 8/3·d_model rounded up to `multiple_of`."""

    d_intermediate: int | None = None
    multiple_of: int = 64


@dataclass
class MoEConfig:
    """Mixture of SwiGLU experts with top-k routing."""

    n_experts: int = 8
    top_k: int = 2
    capacity_factor: float = 1.25
    aux_loss_weight: float = 0.01
    d_intermediate: int | None = None  # None = MLPConfig's rule (8/3·d_model rounded up)

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= self.n_experts:
            raise ConfigError(f"MoEConfig.top_k must be in [1, n_experts={self.n_experts}], got {self.top_k}")
        if self.capacity_factor <= 0:
            raise ConfigError(f"MoEConfig.capacity_factor must be > 0, got {self.capacity_factor}")


@dataclass
class S4DConfig:
    """Diagonal LTI SSM (S4D) options."""

    d_state: int = 64
    init: str = "s4d_lin"  # "s4d_lin" | "s4d_inv" | "s4d_real" | "legs" | "random"
    discretization: str = "zoh"  # "zoh" | "bilinear" | "euler"
    dt_min: float = 0.001
    dt_max: float = 0.1
    mode: str = "cnn"  # parallel forward: "cnn" (FFT convolution) or "rnn" (scan)
    expand: int = 1  # H = expand·d_model channels
    gate: str = "glu"  # "glu" (S4D paper: GELU, then Linear(H, 2·d_model) + GLU) | "silu" (y·SiLU(z), Mamba-like)

    def __post_init__(self) -> None:
        choices = {
            "init": S4D_INITS,
            "discretization": DISCRETIZATIONS,
            "mode": ("cnn", "rnn"),
            "gate": ("glu", "silu"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"S4DConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.d_state < 2 or self.d_state % 2 or self.expand < 1:
            raise ConfigError(
                f"S4DConfig: d_state must be even and >= 2 (N/2 complex modes), expand >= 1;"
                f" got d_state={self.d_state}, expand={self.expand}"
            )


@dataclass
class ModelConfig:
    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50277
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    layer_pattern: list[str] | None = None  # None = ["mamba"] * n_layer
    ssm: SSMConfig = field(default_factory=SSMConfig)
    mamba2: Mamba2Config = field(default_factory=Mamba2Config)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    s4d: S4DConfig = field(default_factory=S4DConfig)
    initializer_range: float = 0.02
    rescale_prenorm_residual: bool = True

    def __post_init__(self) -> None:
        check_limits(self)
        if self.layer_pattern is None:
            self.layer_pattern = ["mamba"] * self.n_layer
        if len(self.layer_pattern) != self.n_layer:
            raise ConfigError(
                f"ModelConfig.layer_pattern has {len(self.layer_pattern)} entries but n_layer={self.n_layer}"
            )
        for i, entry in enumerate(self.layer_pattern):
            parse_layer_kind(entry, where=f"ModelConfig.layer_pattern[{i}]")
        if "mamba2" in self.mixer_kinds:
            self.mamba2.n_heads(self.d_model)
        if self.d_model < 1 or self.n_layer < 1 or self.vocab_size < 1:
            raise ConfigError("ModelConfig.d_model, n_layer and vocab_size must be >= 1")

    # Derived sizes -------------------------------------------------------------------------------------
    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return self.vocab_size if m <= 1 else math.ceil(self.vocab_size / m) * m

    @property
    def mixer_kinds(self) -> set[str]:
        """The mixers of the layer pattern, e.g. {"mamba2", "attention"}."""
        return {parse_layer_kind(entry)[0] for entry in self.layer_pattern}

    @property
    def d_inner(self) -> int:
        return int(self.ssm.expand * self.d_model)

    @property
    def dt_rank(self) -> int:
        return self.ssm.dt_rank_for(self.d_model)

    # JSON round trip ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> ModelConfig:
        return strict_from_dict(cls, data, where, nested=_SUBCONFIGS)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(data, where=str(path))


# Sane limits, checked before anything is allocated: far above every published model, far below a value that
# would only fail in the allocator (docs/checkpoints.md lists them). Field path -> largest accepted value.
LIMITS = {
    "d_model": 65536,
    "n_layer": 1024,
    "vocab_size": 1 << 24,
    "ssm.d_state": 1024,
    "ssm.d_conv": 64,
    "ssm.expand": 64,
    "attention.n_heads": 1024,
    "mlp.d_intermediate": 1 << 20,
    "moe.n_experts": 1024,
    "moe.d_intermediate": 1 << 20,
    "s4d.d_state": 4096,
    "s4d.expand": 64,
}
_FLOAT_OK = frozenset({"ssm.expand"})  # official configs may write expand as 2.0 (d_inner = int(expand·d_model))


def check_limits(config: ModelConfig) -> None:
    """Refuse a size field that is not a number of the right kind or lies past `LIMITS`, naming the field, so
    a huge or garbled config fails here instead of in the allocator."""
    for path, limit in LIMITS.items():
        value = config
        for part in path.split("."):
            value = getattr(value, part)
        if value is None:
            continue
        number = (int, float) if path in _FLOAT_OK else int
        if isinstance(value, bool) or not isinstance(value, number):
            kind = "a number" if path in _FLOAT_OK else "an integer"
            raise ConfigError(f"ModelConfig.{path} must be {kind}, got {value!r}")
        if value > limit:
            raise ConfigError(
                f"ModelConfig.{path} = {value:,} is past the limit {limit:,} (see docs/checkpoints.md, limits)"
            )


def parse_layer_kind(entry: str, where: str = "layer_pattern") -> tuple[str, str | None]:
    """'mamba+mlp' -> ('mamba', 'mlp'); 'mamba' -> ('mamba', None). Raises ValueError on unknown kinds."""
    parts = entry.split("+")
    if len(parts) > 2 or parts[0] not in MIXER_KINDS or (len(parts) == 2 and parts[1] not in FFN_KINDS):
        raise ConfigError(
            f"{where}: unknown layer kind {entry!r}; expected a mixer in {MIXER_KINDS}"
            f" optionally followed by '+' and one of {FFN_KINDS}"
        )
    return parts[0], (parts[1] if len(parts) == 2 else None)


_SUBCONFIGS = {
    "ssm": SSMConfig, "mamba2": Mamba2Config, "attention": AttentionConfig, "mlp": MLPConfig, "moe": MoEConfig,
    "s4d": S4DConfig,
}


def strict_from_dict(cls, data: dict[str, Any], where: str, nested: dict[str, type] | None = None):
    """`cls(**data)` for a dataclass `cls`, refusing a non-dict and any field `cls` lacks (named with `where`,
    e.g. "config.ssm"), so a typo in a config file is an error rather than a silently ignored key. `nested`
    maps field names to dataclasses whose dicts are converted the same way (e.g. ModelConfig's "ssm")."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown} for {cls.__name__}; known fields: {sorted(known)}")
    nested = nested or {}
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key not in nested and not _matches(value, hints[key]):
            raise ConfigError(f"{where}.{key} must be {describe_type(hints[key])}, got {value!r}")
    kwargs = {
        key: strict_from_dict(nested[key], value, f"{where}.{key}") if key in nested else value
        for key, value in data.items()
    }
    return cls(**kwargs)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON/YAML value fits a dataclass field's annotation (an int fits float; a bool fits neither
    int nor float; a list fits a tuple; only the outer type of a container is checked)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list):
        return isinstance(value, (tuple, list))
    return isinstance(value, origin or hint)


def describe_type(hint: Any) -> str:
    """'int', 'int | str', 'list' ...: an annotation as a user reads it."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(describe_type(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(typing.get_origin(hint) or hint, "__name__", str(hint))


def field_table(cls, prefix: str) -> list[tuple[str, str, Any]]:
    """(dotted key, type, default) of every field of dataclass `cls`, nested dataclass fields expanded
    (e.g. ("model.ssm.d_state", "int", 16)): the keys a config file or a `--set` override can address."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            rows += field_table(type(default), f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", describe_type(hints[f.name]), default))
    return rows


# Nested dict helpers (config trees from YAML, JSON or `--set` overrides) ----------------------------------
def deep_merge(base: dict, extra: dict, where: str | None = None) -> dict:
    """A copy of `base` with `extra` written over it, nested dicts merged key by key rather than replaced.
    With `where`, a key of `extra` that `base` lacks is a `ConfigError` naming `where` (strict overrides)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if where is not None and key not in base:
            raise ConfigError(f"{where}: unknown config field {key!r}; known: {sorted(base)}")
        merge = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = deep_merge(out[key], value, where) if merge else value
    return out


def flatten_dict(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}, "c": 2} -> {"a.b": 1, "c": 2}: nested keys joined with dots."""
    out = {}
    for key, value in tree.items():
        out.update(flatten_dict(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def config_differences(theirs: dict, ours: dict, labels: tuple[str, str] = ("saved", "model")) -> list[str]:
    """'key: a (saved) vs b (model)' for every dotted key where two config trees differ."""
    theirs, ours = flatten_dict(theirs), flatten_dict(ours)
    return [f"{k}: {theirs.get(k)!r} ({labels[0]}) vs {ours.get(k)!r} ({labels[1]})"
            for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
