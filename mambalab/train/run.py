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
is looked up in TrainConfig, then in DataConfig (`mambalab train --list-keys` lists them all). Values are
parsed as YAML (so `1e-3` is a float), and `INT**INT` is a power (`10**6`). The loaded config is checked
before any data is prepared or tensor allocated: every value's type, the model's size limits, and a lower
bound of the training memory against the device's (`mambalab.models.memory`).
The model's vocab_size follows the tokenizer unless set explicitly. A run the trainer would refuse (OUT holds
checkpoints but no resume was asked for, or they recorded another model config) is refused before anything
under OUT is written. Output directory:

    OUT/run_config.yaml   the effective config      OUT/metrics.jsonl, OUT/loss_curve.png
    OUT/checkpoints/      training checkpoints      OUT/model/   the exported model (save_pretrained),
    OUT/data/             prepared shards (when the data needed preparing)   plus the tokenizer's files
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mambalab.atomic import write_text_atomic
from mambalab.config import ModelConfig, deep_merge, field_table, strict_from_dict
from mambalab.device import resolve_device
from mambalab.errors import ConfigError
from mambalab.models.lm import LanguageModel
from mambalab.models.memory import check_training_fits
from mambalab.tokenizer import Tokenizer, load_tokenizer
from mambalab.train import distributed as dist_utils
from mambalab.train.data import (
    MANIFEST,
    RandomBatches,
    SequentialBatches,
    TokenDataset,
    expand_inputs,
    n_windows,
    prepare_dataset,
    read_manifest,
)
from mambalab.train.resume_checkpoints import check_model_config, latest_valid_checkpoint, list_checkpoints
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
class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1, where `3e-4` without a dot is a string) that reads YAML 1.2 floats
    such as `3e-4` and `1E5` as floats, in a config file as in `--set`."""


_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                                  list("-+0123456789."))


def _parse_value(text: str):
    power = re.fullmatch(r"\s*(\d+)\s*\*\*\s*(\d{1,3})\s*", text)
    if power:
        return int(power[1]) ** int(power[2])
    value = yaml.load(text, Loader=_YamlLoader)
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
        raise ConfigError(f"override: {'.'.join(keys)} goes through the non-mapping value {child!r}")
    tree[keys[-1]] = value


def load_run_config(config_file: str | Path | None = None, preset: str | None = None,
                    overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """RunConfig from a YAML file and/or a preset name, then `key=value` overrides."""
    raw: dict = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_YamlLoader) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"config {path}: cannot read YAML ({exc})") from exc
        if not isinstance(raw, dict) or set(raw) - {"model", "data", "train"}:
            raise ConfigError(f"config {path}: expected a mapping with sections model, data, train; got {raw!r:.200}")
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
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=1e-3")
        keys = key.split(".")
        if keys[0] not in tree:
            if len(keys) == 1 and key in train_fields:
                keys = ["train", key]
            elif len(keys) == 1 and key in data_fields:
                keys = ["data", key]
            else:
                raise ConfigError(f"override {item!r}: unknown key {key!r}; use train.X, data.X or model.X")
        _set_path(tree, keys, _parse_value(text))
    data = strict_from_dict(DataConfig, tree["data"], where="data")
    run = RunConfig(model=tree["model"], data=data, train=TrainConfig.from_dict(tree["train"]))
    check_run_fits(run)
    return run


def check_run_fits(run: RunConfig) -> None:
    """Validate the model section and refuse a run whose training memory (a lower bound, the vocabulary not
    yet known counted as 1) exceeds the device's, before any data is prepared or tensor allocated."""
    config = build_model_config(run.model, vocab_size=1)
    cfg = run.train
    check_training_fits(config, cfg.batch_size, cfg.seq_len, resolve_device(cfg.device), where="train")


def override_keys() -> list[tuple[str, str, object]]:
    """(key, type, default) of every key a run config or `--set key=value` can address: model.preset, the
    ModelConfig fields (defaults: ModelConfig's own, before a preset), data.* and train.*."""
    return [("model.preset", "str", None), *field_table(ModelConfig, "model."), *field_table(DataConfig, "data."),
            *field_table(TrainConfig, "train.")]


def build_model_config(model: dict, vocab_size: int) -> ModelConfig:
    """ModelConfig from a preset plus overrides; vocab_size follows the tokenizer unless given."""
    spec = dict(model)
    name = spec.pop("preset", None)
    base = {}
    if name is not None:
        from mambalab.models.zoo import get_preset

        base = get_preset(name).to_dict()
    merged = deep_merge(base, spec)
    pattern = base.get("layer_pattern")
    if "n_layer" in spec and "layer_pattern" not in spec and pattern and len(pattern) != spec["n_layer"]:
        if len(set(pattern)) != 1:
            raise ConfigError(f"model.n_layer={spec['n_layer']} changes the depth of the mixed preset {name!r};"
                             f" also give model.layer_pattern (the preset's is {pattern})")
        merged["layer_pattern"] = pattern[:1] * spec["n_layer"]
    if "vocab_size" not in spec:
        merged["vocab_size"] = vocab_size
    elif merged["vocab_size"] < vocab_size:
        raise ConfigError(f"model.vocab_size={merged['vocab_size']} is smaller than the tokenizer's {vocab_size}")
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
    """Gather the full weights (collective) and `save_pretrained` them on rank 0 with the tokenizer's files
    (for bytes too: transformers' AutoTokenizer loads them) and its special-token ids in config.json."""
    from mambalab.models.pretrained import save_pretrained

    state = dist_utils.full_model_state(trainer.model)
    if not trainer.ctx.is_main:
        return None
    model = LanguageModel(config)
    model.load_state_dict(state)
    save_pretrained(model, directory, tokenizer=tokenizer)
    return directory


def data_vocab_size(data: DataConfig, tokenizer: Tokenizer) -> int:
    """The vocabulary the data is (or will be) tokenized with, read before anything is prepared: a prepared
    dataset's manifest, else the tokenizer's."""
    path = Path(data.path)
    return read_manifest(path)["tokenizer"]["vocab_size"] if (path / MANIFEST).is_file() else tokenizer.vocab_size


def check_out_dir(out_dir: Path, resume: bool, model_config: ModelConfig) -> None:
    """Refuse, before anything under `out_dir` is written, a run the trainer would refuse: checkpoints there
    without `resume`, or a resume whose newest valid checkpoint recorded another model config."""
    root = out_dir / "checkpoints"
    if not resume:
        if list_checkpoints(root):
            raise ConfigError(f"{out_dir} already holds checkpoints: resume, or choose another out_dir")
        return
    ckpt = latest_valid_checkpoint(root)
    if ckpt is not None:
        check_model_config(ckpt.path, ckpt.state.get("model_config"), model_config)


def write_run_config(run: RunConfig, model_config: ModelConfig, dataset_dir: Path, out_dir: Path) -> None:
    """OUT/run_config.yaml: the effective config (model fields resolved, the prepared data's path), atomically."""
    effective = run.to_dict()
    effective.update(model=model_config.to_dict(), data={**effective["data"], "prepared": str(dataset_dir)})
    write_text_atomic(out_dir / "run_config.yaml", yaml.safe_dump(effective, sort_keys=False))


def build_eval_batches(cfg: TrainConfig, dataset_dir: Path, tokenizer: Tokenizer,
                       ctx: dist_utils.DistContext) -> SequentialBatches | None:
    """SequentialBatches over the validation split, or None (with a warning when evaluation was asked for)
    when it holds less than one global batch of `seq_len + 1`-token windows."""
    if not cfg.eval_every:
        return None
    val = TokenDataset(dataset_dir, "val", tokenizer)
    global_batch = cfg.batch_size * ctx.world_size
    if n_windows(len(val), cfg.seq_len) < global_batch:
        logger.warning("evaluation skipped: the validation split of %s has %d tokens, fewer than one global batch"
                       " of %d windows of seq_len + 1 = %d tokens (raise data.val_fraction, or lower batch_size"
                       " or seq_len)", dataset_dir, len(val), global_batch, cfg.seq_len + 1)
        return None
    return SequentialBatches(val, cfg.batch_size, cfg.seq_len, max_batches=cfg.eval_batches or None,
                             rank=ctx.rank, world_size=ctx.world_size)


def run_training(run: RunConfig, out_dir: str | Path, resume: bool = False) -> RunResult:
    """Check the out dir, prepare data, build the model (seeded identically on every rank), train, export to
    OUT/model. Nothing under OUT is written before the trainer's refusals have been checked."""
    out_dir = Path(out_dir)
    cfg = run.train
    ctx = dist_utils.init_distributed(cfg.device)
    tokenizer = load_tokenizer(run.data.tokenizer)
    model_config = build_model_config(run.model, data_vocab_size(run.data, tokenizer))
    check_out_dir(out_dir, resume, model_config)
    dataset_dir = resolve_dataset(run.data, out_dir, ctx)
    seed_everything(cfg.seed)
    model = LanguageModel(model_config)
    logger.info("model: %s parameters", f"{sum(p.numel() for p in model.parameters()):,}")
    train_batches = RandomBatches(TokenDataset(dataset_dir, "train", tokenizer), cfg.batch_size, cfg.seq_len,
                                  seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size)
    eval_batches = build_eval_batches(cfg, dataset_dir, tokenizer, ctx)
    if ctx.is_main:
        write_run_config(run, model_config, dataset_dir, out_dir)
    trainer = Trainer(model, cfg, train_batches, eval_batches, out_dir=out_dir)
    records = trainer.fit(resume=resume)
    model_dir = export_model(trainer, model_config, out_dir / "model", tokenizer)
    return RunResult(records=records, out_dir=out_dir, model_dir=model_dir,
                     stopped_by_signal=trainer.stop_signal is not None)
