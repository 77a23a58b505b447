"""The training loop: `TrainConfig` and `Trainer(model, config, train_batches, eval_batches, out_dir).fit()`.

Contract (used by the compare runner too): batches are dicts `{"input_ids": (b, l) long, "labels": (b, l)
long}` with -100 = ignored; position t is scored against labels[:, t] (callers shift) by the model itself
(`model(ids, labels=labels, return_aux_loss=True)` -> ((loss sum, count), aux): the fused chunked head, no
stored logits), and the model's MoE aux loss (already weighted by the model) is added.
`fit()` returns the metric records, one per logged step (train keys, plus val_* keys on evaluation steps).

One optimizer step = `grad_accum` micro-batches per rank; the loss of each micro-batch is the mean over its
non-ignored tokens, so with equal token counts per rank, N ranks at batch b match one process at batch N·b.
Step skeleton: lr from warmup+cosine -> forward/backward per micro-batch (bf16 autocast on GPU, fp32 on CPU,
gradient sync only on the last micro-batch) -> clip -> if loss and grad norm are finite, AdamW step, else
skip it (NaN guard; no checkpoint is written during a run of skips, and `nan_patience` skips in a row
raise `TrainingDiverged`) ->
log / evaluate / checkpoint. SIGINT and SIGTERM finish the current step, checkpoint, and return.

Exact resume: a checkpoint holds the full model and optimizer state, the step (the schedule is a function of
it), the data position (`state_dict()` of a stateful loader such as `RandomBatches`, else the number of
batches consumed, which are skipped on resume), and the python / numpy / torch / CUDA RNG states of every
rank. On CPU a resumed run reproduces the uninterrupted loss curve bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import math
import numbers
import random
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mambalab.config import strict_from_dict
from mambalab.errors import ConfigError, CorruptCheckpoint, InputError, TrainingDiverged
from mambalab.train import distributed as dist_utils
from mambalab.train.metrics import MetricsLog, plot_loss_curve
from mambalab.train.optim import build_optimizer, lr_at, no_weight_decay_names
from mambalab.train.resume_checkpoints import (
    check_fits_model,
    latest_valid_checkpoint,
    list_checkpoints,
    save_checkpoint,
    set_aside_newer,
)

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping options. `batch_size` and `seq_len` size the loaders that
    `mambalab.train.run` builds (sequences per micro-batch per rank, tokens per sequence); the global batch
    is batch_size × grad_accum × world_size sequences. Intervals of 0 disable the action."""

    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 = measure only
    grad_accum: int = 1
    batch_size: int = 8
    seq_len: int = 256
    max_steps: int = 1000
    eval_every: int = 100
    eval_batches: int = 20
    log_every: int = 10
    ckpt_every: int = 500  # a checkpoint is also written at exit
    keep_last: int = 3
    seed: int = 0
    precision: str = "auto"  # "auto" = bf16 autocast on GPU, fp32 on CPU
    compile: bool = False
    activation_checkpointing: bool = False
    nan_patience: int = 5
    device: str = "auto"
    distributed: str = "auto"  # "auto" (DDP under torchrun) | "none" | "ddp" | "fsdp"
    progress: bool = True

    def __post_init__(self) -> None:
        self._check_numbers()
        self.betas = tuple(float(b) for b in self.betas)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.distributed not in dist_utils.STRATEGIES:
            raise ConfigError(
                f"TrainConfig.distributed must be one of {dist_utils.STRATEGIES}, got {self.distributed!r}"
            )
        for name in ("grad_accum", "batch_size", "seq_len", "max_steps", "log_every", "nan_patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "eval_batches", "ckpt_every", "keep_last"):
            if getattr(self, name) < 0:
                raise ConfigError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"TrainConfig: need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if not 0 <= self.seed < 2**64:  # torch.manual_seed's range
            raise ConfigError(f"TrainConfig.seed must be in [0, 2**64), got {self.seed}")

    def _check_numbers(self) -> None:
        """The optimizer's numbers: finite, lr and eps > 0, weight_decay and grad_clip >= 0, 2 betas in [0, 1)
        (AdamW would refuse the rest only after the data is prepared, and a NaN grad_clip disables clipping)."""
        for name in ("lr", "eps", "weight_decay", "grad_clip"):
            value, positive = getattr(self, name), name in ("lr", "eps")
            if not math.isfinite(value) or value < 0 or (positive and value == 0):
                raise ConfigError(f"TrainConfig.{name} must be a finite number {'> 0' if positive else '>= 0'},"
                                  f" got {value}")
        betas = list(self.betas)
        if len(betas) != 2 or not all(
                isinstance(b, numbers.Real) and not isinstance(b, bool) and 0 <= b < 1 for b in betas):
            raise ConfigError(f"TrainConfig.betas must be 2 numbers in [0, 1), got {self.betas}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return strict_from_dict(cls, data, where="train")


# RNG state -------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The python, numpy, torch (and CUDA) RNG states as JSON-able lists."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# Model preparation -------------------------------------------------------------------------------------------
def _checkpointed_forward(forward, x, state=None, seqlen=None):
    """A block's forward that recomputes its activations in backward (training mode only)."""
    if state is not None or not torch.is_grad_enabled():
        return forward(x, state=state, seqlen=seqlen)
    return torch.utils.checkpoint.checkpoint(forward, x, use_reentrant=False)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block of `model.backbone.layers` in backward instead of storing its activations.
    Parameter names are unchanged (the blocks are not wrapped), so checkpoints stay interchangeable."""
    for block in model.backbone.layers:
        block.forward = functools.partial(_checkpointed_forward, block.forward)


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """{name: first name} for parameters shared under several names (e.g. a tied lm_head)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


@torch.no_grad()
def evaluate_loss(forward, batches: Iterable[dict], device: torch.device, autocast_dtype: torch.dtype | None = None,
                  max_batches: int | None = None, bytes_per_token: float | None = None) -> dict:
    """Mean loss over the labelled tokens of `batches` (summed over ranks): {"loss", "ppl", "tokens"} and
    "bpb" (bits per byte = loss / ln 2 / bytes_per_token) when bytes_per_token is known."""
    total = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    for batch in itertools.islice(batches, max_batches):
        with autocast:
            batch_total, batch_count = forward(batch["input_ids"].to(device), labels=batch["labels"].to(device))
        total += batch_total.double()
        count += batch_count
    total, count = dist_utils.all_reduce(total, "sum"), dist_utils.all_reduce(count, "sum")
    if count.item() == 0:
        raise ConfigError("evaluate: the batches hold no labelled tokens")
    loss = (total / count).item()
    out = {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": int(count.item())}
    if bytes_per_token:
        out["bpb"] = loss / math.log(2) / bytes_per_token
    return out


class Trainer:
    """Trains `model` (a `LanguageModel` or anything with its `forward(ids, return_aux_loss=True)`).

    `train_batches`: an iterable of batches, consumed endlessly (a re-iterable such as a DataLoader starts
    over at each epoch's end; an iterator must not run out); when it has `state_dict()` / `load_state_dict()`
    its position is checkpointed, otherwise resume skips the batches already used, across epochs.
    `eval_batches`: a re-iterable (each `iter()` starts over), of which `config.eval_batches` are used.
    `out_dir`: where metrics.jsonl, loss_curve.png and checkpoints/ go (None: nothing is written).
    `bytes_per_token`: enables bits per byte (taken from `eval_batches.dataset` when it has it).
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train_batches: Iterable[dict],
        eval_batches: Iterable[dict] | None = None,
        out_dir: str | Path | None = None,
        bytes_per_token: float | None = None,
    ):
        self.config = config
        self.ctx = dist_utils.init_distributed(config.device)
        self.device = self.ctx.device
        self.model = model.to(self.device)
        self.train_batches, self.eval_batches = train_batches, eval_batches
        self.out_dir = Path(out_dir) if out_dir is not None else None
        dataset = getattr(eval_batches, "dataset", None)
        self.bytes_per_token = bytes_per_token or getattr(dataset, "bytes_per_token", None)
        bf16 = config.precision == "bf16" or (config.precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        self.aliases = tied_aliases(self.model)
        no_decay = no_weight_decay_names(self.model)
        if config.activation_checkpointing:
            enable_activation_checkpointing(self.model)
        self.strategy = config.distributed if config.distributed != "auto" else (
            "ddp" if self.ctx.enabled else "none"
        )
        self.wrapped = dist_utils.wrap_model(self.model, self.strategy, self.ctx, bf16_params=bf16 and
                                             self.device.type == "cuda")
        self.optimizer = build_optimizer(self.model, config.lr, config.weight_decay, config.betas, config.eps,
                                         no_decay=no_decay)
        self.forward_model = torch.compile(self.wrapped) if config.compile else self.wrapped
        self.step = 0
        self.batches_consumed = 0
        self.tokens_seen = 0
        self.elapsed_s = 0.0
        self.nan_streak = 0
        self.records: list[dict] = []
        self.stop_signal: int | None = None
        self._window = self._empty_window()
        self._metrics = MetricsLog(self.out_dir / "metrics.jsonl") if self.out_dir and self.ctx.is_main else None

    @property
    def checkpoint_root(self) -> Path | None:
        return self.out_dir / "checkpoints" if self.out_dir is not None else None

    # Forward / backward ----------------------------------------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _grad_sync(self, enabled: bool):
        """Gradient all-reduce only on the last micro-batch of a step (DDP no_sync / FSDP2 flag)."""
        if self.strategy == "ddp" and not enabled:
            return self.wrapped.no_sync()
        if self.strategy == "fsdp":
            self.wrapped.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    def _train_step(self, batches: Iterator[dict]) -> dict:
        cfg = self.config
        lr = lr_at(self.step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        aux_sum = torch.zeros((), device=self.device)
        tokens = 0
        for micro in range(cfg.grad_accum):
            batch = next(batches)
            self.batches_consumed += 1
            ids = batch["input_ids"].to(self.device, non_blocking=True)  # (b, l)
            labels = batch["labels"].to(self.device, non_blocking=True)  # (b, l)
            tokens += ids.numel()
            with self._grad_sync(micro == cfg.grad_accum - 1):
                with self._autocast():
                    (total, count), aux = self.forward_model(ids, labels=labels, return_aux_loss=True)  # (), (), ()
                    loss = total / count.clamp(min=1)
                ((loss + aux.float()) / cfg.grad_accum).backward()
            loss_sum += loss.detach()
            aux_sum += aux.detach().float()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
            grad_norm = grad_norm.full_tensor()
        loss_mean = dist_utils.all_reduce(loss_sum / cfg.grad_accum)
        aux_mean = dist_utils.all_reduce(aux_sum / cfg.grad_accum)
        # the step's one wait for the device: its three numbers at once, before the optimizer step is queued (so
        # that step runs on the GPU while the host prepares the next one)
        loss_v, aux_v, norm_v = torch.stack([loss_mean.float(), aux_mean.float(), grad_norm.float()]).tolist()
        finite = math.isfinite(loss_v) and math.isfinite(norm_v)
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss_v, "aux_loss": aux_v, "grad_norm": norm_v, "lr": lr, "finite": finite,
                "tokens": tokens * self.ctx.world_size}

    def evaluate(self) -> dict:
        """Validation loss (mean nats per token), perplexity and bits per byte over `config.eval_batches`."""
        self.wrapped.eval()
        try:
            result = evaluate_loss(self.forward_model, self.eval_batches, self.device, self.autocast_dtype,
                                   self.config.eval_batches or None, self.bytes_per_token)
        finally:
            self.wrapped.train()
        return {f"val_{k}": v for k, v in result.items() if k != "tokens"}

    # Checkpoints -----------------------------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Write a checkpoint of the current step (collective: call on every rank)."""
        if self.checkpoint_root is None:
            return None
        model_state = dist_utils.full_model_state(self.model)
        optimizer_state = dist_utils.full_optimizer_state(self.model, self.optimizer)
        rngs = dist_utils.all_gather_objects(rng_state())
        path = None
        if self.ctx.is_main:
            data_state = self.train_batches.state_dict() if hasattr(self.train_batches, "state_dict") else None
            state = {
                "trainer": {"batches_consumed": self.batches_consumed, "tokens_seen": self.tokens_seen,
                            "elapsed_s": self.elapsed_s, "nan_streak": self.nan_streak, "window": self._window},
                "scheduler": {"step": self.step, "lr": self.optimizer.param_groups[0]["lr"]},
                "data": data_state,
                "rng": rngs,
                "train_config": self.config.to_dict(),
                "model_config": self.model.config.to_dict() if hasattr(self.model, "config") else None,
            }
            path = save_checkpoint(self.checkpoint_root, self.step, model_state, optimizer_state, state,
                                   aliases=self.aliases, keep_last=self.config.keep_last or None)
        dist_utils.barrier()
        return path

    def _resume(self) -> None:
        root = self.checkpoint_root
        if root is None:
            raise ConfigError("resume needs an out_dir holding checkpoints/")
        ckpt = latest_valid_checkpoint(root)
        if ckpt is None:
            if list_checkpoints(root):
                raise ConfigError(f"resume: every checkpoint under {root} is corrupt (see the warnings above)")
            logger.warning("resume: no checkpoint under %s yet; starting from step 0", root)
            if self._metrics is not None:  # records of the killed run past step 0 would be logged twice
                self.records = self._metrics.truncate_after(0)
            return
        missing = sorted({"trainer", "scheduler", "data", "rng"} - set(ckpt.state))
        if missing:
            raise CorruptCheckpoint(f"{ckpt.path}: state.json lacks the trainer's field(s) {missing}")
        check_fits_model(ckpt, self.model)
        dist_utils.barrier()  # every rank has read its checkpoint before rank 0 renames the newer ones
        if self.ctx.is_main:
            set_aside_newer(root, ckpt.step)
        dist_utils.load_full_state(self.model, self.optimizer, ckpt.model, ckpt.optimizer)
        trainer = ckpt.state["trainer"]
        self.step = ckpt.step
        self.batches_consumed, self.tokens_seen = trainer["batches_consumed"], trainer["tokens_seen"]
        self.elapsed_s, self.nan_streak, self._window = trainer["elapsed_s"], trainer["nan_streak"], trainer["window"]
        if ckpt.state["data"] is not None:
            self.train_batches.load_state_dict(ckpt.state["data"])
        rngs = ckpt.state["rng"]
        set_rng_state(rngs[self.ctx.rank] if self.ctx.rank < len(rngs) else rngs[0])
        if self._metrics is not None:
            self.records = self._metrics.truncate_after(self.step)
        logger.info("resumed from %s (step %d)", ckpt.path, self.step)

    # Main loop -------------------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is not None:
            raise KeyboardInterrupt
        self.stop_signal = signum
        logger.warning("received %s: finishing this step, then checkpointing and stopping",
                       signal.Signals(signum).name)

    @contextlib.contextmanager
    def _signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _progress(self):
        if not (self.config.progress and self.ctx.is_main):
            return contextlib.nullcontext(None)
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        return Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())

    @staticmethod
    def _empty_window() -> dict:
        return {"loss": 0.0, "aux": 0.0, "steps": 0, "skipped": 0, "tokens": 0, "seconds": 0.0}

    def _record(self, result: dict) -> dict | None:
        """Accumulate this step into the logging window; a record when the window closes. tokens/s counts
        the time of the training steps only (not evaluation or checkpointing)."""
        cfg, w = self.config, self._window
        if result["finite"]:
            w["loss"] += result["loss"]
            w["aux"] += result["aux_loss"]
            w["steps"] += 1
        else:
            w["skipped"] += 1
        w["tokens"] += result["tokens"]
        w["seconds"] += result["seconds"]
        if self.step % cfg.log_every and self.step != cfg.max_steps and result["finite"]:
            return None
        record = {"step": self.step, "loss": w["loss"] / w["steps"] if w["steps"] else math.nan,
                  "lr": result["lr"], "grad_norm": result["grad_norm"], "tokens": self.tokens_seen,
                  "tokens_per_s": w["tokens"] / max(w["seconds"], 1e-9), "elapsed_s": self.elapsed_s}
        if w["aux"]:
            record["aux_loss"] = w["aux"] / max(w["steps"], 1)
        if w["skipped"]:
            record["skipped_steps"] = w["skipped"]
        if self.device.type == "cuda":  # this process's peak so far (a resumed run's earlier peaks are in its records)
            record["peak_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
        self._window = self._empty_window()
        return record

    def _emit(self, record: dict) -> None:
        self.records.append(record)
        if self._metrics is not None:
            self._metrics.append(record)
        logger.info("step %d: %s", record["step"],
                    ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "step" and isinstance(v, float)))

    def _plot(self) -> None:
        if self._metrics is not None:
            plot_loss_curve(self.records, self.out_dir / "loss_curve.png")

    def fit(self, resume: bool = False) -> list[dict]:
        """Train to `config.max_steps` (from the newest valid checkpoint with `resume`); returns the records."""
        cfg = self.config
        seed_everything(cfg.seed)
        if resume:
            self._resume()
        elif self.checkpoint_root is not None and list_checkpoints(self.checkpoint_root):
            raise ConfigError(f"{self.out_dir} already holds checkpoints: resume, or choose another out_dir")
        elif self._metrics is not None and self._metrics.path.exists():
            self._metrics.truncate_after(-1)
        batches = self._endless_batches()
        if not hasattr(self.train_batches, "state_dict"):
            for _ in range(self.batches_consumed):
                next(batches)
        self.wrapped.train()
        with self._signal_handlers(), self._progress() as progress:
            task = progress.add_task("train", total=cfg.max_steps, completed=self.step, loss="-", tps="-") \
                if progress is not None else None
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                result = self._train_step(batches)
                result["seconds"] = time.perf_counter() - t0
                self.step += 1
                self.tokens_seen += result["tokens"]
                self.elapsed_s += result["seconds"]
                self._guard(result)
                record = self._record(result)
                if cfg.eval_every and self.eval_batches is not None and (
                        self.step % cfg.eval_every == 0 or self.step == cfg.max_steps):
                    record = {**(record or {"step": self.step}), **self.evaluate()}
                if record is not None:
                    self._emit(record)
                    if task is not None and "tokens_per_s" in record:
                        progress.update(task, loss=f"{record['loss']:.4f}", tps=f"{record['tokens_per_s']:,.0f}")
                if task is not None:
                    progress.update(task, completed=self.step)
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.nan_streak == 0:
                    self.save()
                    self._plot()
                if self._stop_requested():
                    break
        self.save()
        self._plot()
        return self.records

    def _guard(self, result: dict) -> None:
        """NaN guard: count skipped steps; too many in a row stop the run without touching checkpoints."""
        if result["finite"]:
            self.nan_streak = 0
            return
        self.nan_streak += 1
        logger.warning("step %d skipped: non-finite loss %s or grad norm %s (%d in a row)", self.step,
                       result["loss"], result["grad_norm"], self.nan_streak)
        if self.nan_streak >= self.config.nan_patience:
            if self._metrics is not None:
                self._emit(self._record(result))
                self._plot()
            last = list_checkpoints(self.checkpoint_root) if self.checkpoint_root is not None else []
            raise TrainingDiverged(
                f"training diverged: {self.nan_streak} steps in a row with a non-finite loss or gradient norm"
                f" (step {self.step}: loss {result['loss']}, grad norm {result['grad_norm']}); stopped without"
                f" saving. Last good checkpoint: {last[-1] if last else 'none'}. Try a lower lr, a longer"
                " warmup or a smaller grad_clip."
            )

    def _endless_batches(self) -> Iterator[dict]:
        """`train_batches` without end: a re-iterable (a DataLoader, a list) is iterated again each time an
        epoch ends; InputError when an epoch yields no batch (an empty iterable, an exhausted iterator)."""
        yielded = 0
        while True:
            epoch_start = yielded
            for batch in self.train_batches:
                yielded += 1
                yield batch
            if yielded > epoch_start:
                continue
            if isinstance(self.train_batches, Iterator):
                raise InputError(
                    f"train_batches: the iterator ran out after {yielded} batches, short of max_steps ×"
                    f" grad_accum = {self.config.max_steps * self.config.grad_accum}; pass a re-iterable (a"
                    " DataLoader, a list), which starts over at each epoch, or an endless iterator"
                )
            raise InputError(f"train_batches: {type(self.train_batches).__name__} yielded no batch; expected at"
                             " least one per epoch")

    def _stop_requested(self) -> bool:
        """Whether any rank received SIGINT/SIGTERM (all ranks agree, so they checkpoint together; one process
        asks no device, whose tensor round trip would wait for the queued step)."""
        if self.ctx.world_size == 1:
            return self.stop_signal is not None
        flag = torch.tensor(float(self.stop_signal is not None), device=self.device)
        return bool(dist_utils.all_reduce(flag, "max").item())
