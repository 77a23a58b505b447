"""A whole training run from a config: data preparation, model, loaders, `Trainer`, export.

Run config (YAML), every section optional:

    model: tiny-mamba             # a model-zoo preset name, or ModelConfig fields, optionally with
                                  #   `preset: NAME` whose fields they override (nested dicts merge)
    data:
      path: embedded              # a prepared dataset (has manifest.json), or text files / folders / JSONL /
                                  #   "embedded" to prepare into OUT/data first
      tokenizer: byte             # "byte", a tokenizer.json, or a directory holding one
      val_fraction: 0.05
      text_field: text
    train: {lr: 1.0e-3, max_steps: 2000, ...}   # TrainConfig fields

Overrides `key=value` address `train.lr`, `data.path`, `model.d_model`, `model.ssm.d_state`, ...; a bare key
is looked up in TrainConfig, then in DataConfig. Values are parsed as YAML (so `1e-3` is a float).
The model's vocab_size follows the tokenizer unless set explicitly. Output directory:

    OUT/run_config.yaml   the effective config      OUT/metrics.jsonl, OUT/loss_curve.png
    OUT/checkpoints/      training checkpoints      OUT/model/   the exported model (save_pretrained),
    OUT/data/             prepared shards (when the data needed preparing)   plus tokenizer.json if any
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mambalab.config import ModelConfig
from mambalab.models.lm import LanguageModel
from mambalab.tokenizer import HFTokenizer, load_tokenizer
from mambalab.train import distributed as dist_utils
from mambalab.train.data import (
    MANIFEST,
    RandomBatches,
    SequentialBatches,
    TokenDataset,
    expand_inputs,
    prepare_dataset,
    read_manifest,
)
from mambalab.train.trainer import TrainConfig, Trainer, seed_everything

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    path: str = "embedded"
    tokenizer: str = "byte"
    val_fraction: float = 0.05
    text_field: str = "text"


@dataclass
class RunConfig:
    model: dict = field(default_factory=dict)  # ModelConfig fields, optionally with "preset"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {"model": self.model, "data": dataclasses.asdict(self.data), "train": self.train.to_dict()}


@dataclass
class RunResult:
    records: list[dict]
    out_dir: Path
    model_dir: Path | None  # the exported model (rank 0)
    stopped_by_signal: bool


# Config --------------------------------------------------------------------------------------------------------
def _parse_value(text: str):
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _set_path(tree: dict, keys: list[str], value) -> None:
    for key in keys[:-1]:
        child = tree.setdefault(key, {})
        if isinstance(child, dict):
            tree = child
            continue
        raise ValueError(f"override: {'.'.join(keys)} goes through the non-mapping value {child!r}")
    tree[keys[-1]] = value


def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def load_run_config(config_file: str | Path | None = None, preset: str | None = None,
                    overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """RunConfig from a YAML file and/or a preset name, then `key=value` overrides."""
    raw: dict = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"config {path}: cannot read YAML ({exc})") from exc
        if not isinstance(raw, dict) or set(raw) - {"model", "data", "train"}:
            raise ValueError(f"config {path}: expected a mapping with sections model, data, train; got {raw!r:.200}")
    model = raw.get("model") or {}
    model = {"preset": model} if isinstance(model, str) else dict(model)
    if preset is not None:
        model["preset"] = preset
    tree = {"model": model, "data": dict(raw.get("data") or {}), "train": dict(raw.get("train") or {})}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    data_fields = {f.name for f in dataclasses.fields(DataConfig)}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected key=value, e.g. train.lr=1e-3")
        keys = key.split(".")
        if keys[0] not in tree:
            if len(keys) == 1 and key in train_fields:
                keys = ["train", key]
            elif len(keys) == 1 and key in data_fields:
                keys = ["data", key]
            else:
                raise ValueError(f"override {item!r}: unknown key {key!r}; use train.X, data.X or model.X")
        _set_path(tree, keys, _parse_value(text))
    unknown = set(tree["data"]) - data_fields
    if unknown:
        raise ValueError(f"data: unknown fields {sorted(unknown)}; known: {sorted(data_fields)}")
    return RunConfig(model=tree["model"], data=DataConfig(**tree["data"]), train=TrainConfig.from_dict(tree["train"]))


def build_model_config(model: dict, vocab_size: int) -> ModelConfig:
    """ModelConfig from a preset plus overrides; vocab_size follows the tokenizer unless given."""
    spec = dict(model)
    name = spec.pop("preset", None)
    base = {}
    if name is not None:
        from mambalab.models.zoo import get_preset

        base = get_preset(name).to_dict()
    merged = _deep_merge(base, spec)
    pattern = base.get("layer_pattern")
    if "n_layer" in spec and "layer_pattern" not in spec and pattern and len(pattern) != spec["n_layer"]:
        if len(set(pattern)) != 1:
            raise ValueError(f"model.n_layer={spec['n_layer']} changes the depth of the mixed preset {name!r};"
                             f" also give model.layer_pattern (the preset's is {pattern})")
        merged["layer_pattern"] = pattern[:1] * spec["n_layer"]
    if "vocab_size" not in spec:
        merged["vocab_size"] = vocab_size
    elif merged["vocab_size"] < vocab_size:
        raise ValueError(f"model.vocab_size={merged['vocab_size']} is smaller than the tokenizer's {vocab_size}")
    return ModelConfig.from_dict(merged, where="model")


# Data ----------------------------------------------------------------------------------------------------------
def resolve_dataset(data: DataConfig, out_dir: Path, ctx: dist_utils.DistContext) -> Path:
    """A prepared dataset directory for `data`: `data.path` itself when prepared, else OUT/data (prepared by
    rank 0, reused when its manifest matches the sources and the tokenizer)."""
    path = Path(data.path)
    if (path / MANIFEST).is_file():
        return path
    tokenizer = load_tokenizer(data.tokenizer)
    target = out_dir / "data"
    if ctx.is_main:
        sources = [str(p) for p in expand_inputs([data.path])]
        manifest = read_manifest(target) if (target / MANIFEST).is_file() else None
        reusable = manifest is not None and manifest["sources"] == sources and manifest["val_fraction"] == \
            data.val_fraction and manifest["tokenizer"]["fingerprint"] == tokenizer.fingerprint()
        if not reusable:
            prepare_dataset([data.path], target, tokenizer, val_fraction=data.val_fraction,
                            text_field=data.text_field, overwrite=True)
    dist_utils.barrier()
    return target


# Run -----------------------------------------------------------------------------------------------------------
def export_model(trainer: Trainer, config: ModelConfig, directory: Path, tokenizer) -> Path | None:
    """Gather the full weights (collective) and `save_pretrained` them on rank 0, with tokenizer.json."""
    from mambalab.models.checkpoint import save_pretrained

    state = dist_utils.full_model_state(trainer.model)
    if not trainer.ctx.is_main:
        return None
    model = LanguageModel(config)
    model.load_state_dict(state)
    save_pretrained(model, directory)
    if isinstance(tokenizer, HFTokenizer):
        shutil.copyfile(tokenizer.path, directory / "tokenizer.json")
    return directory


def run_training(run: RunConfig, out_dir: str | Path, resume: bool = False) -> RunResult:
    """Prepare data, build the model (seeded identically on every rank), train, export to OUT/model."""
    out_dir = Path(out_dir)
    cfg = run.train
    ctx = dist_utils.init_distributed(cfg.device)
    dataset_dir = resolve_dataset(run.data, out_dir, ctx)
    manifest = read_manifest(dataset_dir)
    tokenizer = load_tokenizer(run.data.tokenizer)
    model_config = build_model_config(run.model, manifest["tokenizer"]["vocab_size"])
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        effective = {**run.to_dict(), "model": model_config.to_dict(), "data": {**run.to_dict()["data"],
                                                                               "prepared": str(dataset_dir)}}
        (out_dir / "run_config.yaml").write_text(yaml.safe_dump(effective, sort_keys=False), encoding="utf-8")
    seed_everything(cfg.seed)
    model = LanguageModel(model_config)
    logger.info("model: %s parameters", f"{sum(p.numel() for p in model.parameters()):,}")
    train_batches = RandomBatches(TokenDataset(dataset_dir, "train", tokenizer), cfg.batch_size, cfg.seq_len,
                                  seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size)
    eval_batches = None
    if cfg.eval_every and manifest["splits"]["val"]["tokens"] > cfg.seq_len:
        eval_batches = SequentialBatches(TokenDataset(dataset_dir, "val", tokenizer), cfg.batch_size, cfg.seq_len,
                                         max_batches=cfg.eval_batches or None, rank=ctx.rank,
                                         world_size=ctx.world_size)
    trainer = Trainer(model, cfg, train_batches, eval_batches, out_dir=out_dir)
    records = trainer.fit(resume=resume)
    model_dir = export_model(trainer, model_config, out_dir / "model", tokenizer)
    return RunResult(records=records, out_dir=out_dir, model_dir=model_dir,
                     stopped_by_signal=trainer.stop_signal is not None)
