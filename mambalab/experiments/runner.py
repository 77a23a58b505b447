"""One training run of the comparison, cached: a model family trained on a task and evaluated at every length.

A `RunSpec` says everything that determines a run's result (group, family, task, plan, size, overrides,
preset, seed); its `key` is a hash of that, and the result is stored as `<out>/runs/<key>.json` (written
atomically). Running a spec whose result is stored returns it without training again, so an interrupted
`compare` continues where it stopped. A run that raises is stored as `status: "failed"` with the error and
is tried again on the next invocation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mambalab.atomic import write_json_atomic
from mambalab.config import flatten_dict
from mambalab.experiments.families import family_config
from mambalab.experiments.presets import ModelSize, TaskPlan
from mambalab.models.lm import LanguageModel
from mambalab.tasks import Task, build_task, seeded

log = logging.getLogger(__name__)

EVAL_TOKENS_PER_BATCH = 1 << 16  # evaluation batches hold at most this many tokens
EVAL_SEED_OFFSET = 1_000_003  # evaluation data never shares a seed with training data
CHECKPOINT_MIN_STEPS = 200  # shorter runs restart from scratch when interrupted (a checkpoint costs more)


def run_key(spec: dict) -> str:
    """Hash of everything in a `RunSpec.to_dict()` that determines the result: not the group (studies reuse
    main-grid runs), and not where the corpus file lies (its sha256 names its content), so a cache moved to
    another machine with the corpus elsewhere still resumes."""
    content = {k: v for k, v in spec.items() if k != "group"}
    plan = content["plan"] = dict(content["plan"])
    # a later field, and one that only changes the matched families (not the Mamba reference): where it
    # cannot change the result, the keys of runs cached before it stay as they were
    if not plan.get("same_depth") or spec["family"] == "mamba":
        plan.pop("same_depth", None)
    if "corpus_sha256" in plan["options"]:
        plan["options"] = {k: v for k, v in plan["options"].items() if k != "corpus"}
    blob = json.dumps(content, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunSpec:
    group: str  # "main" | "init" | "scaling" | "state"
    family: str
    task: str
    plan: TaskPlan
    size: ModelSize
    preset: str
    seed: int
    overrides: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def key(self) -> str:
        return run_key(self.to_dict())

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in flatten_dict(self.overrides).items())
        size = f"d{self.size.d_model}xL{self.size.n_layer}n{self.size.d_state}"
        where = f"{size}{',' + extra if extra else ''}"
        plan = f"{self.plan.train_length}, {self.plan.steps} steps, lr {self.plan.lr:g}"
        return f"{self.group}/{self.task}/{self.family}[{where}]@{plan}, seed {self.seed}"


class TaskBatches:
    """An endless, seeded stream of training batches of a task: batch i is generated from seed + i, so a
    stream restored with `load_state_dict` continues with exactly the batches it would have produced."""

    def __init__(self, task: Task, plan: TaskPlan, seed: int):
        self.task, self.plan, self.seed, self.index = task, plan, seed, 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = self.task.batch(
            self.plan.batch_size, self.plan.train_length, seeded(self.seed + self.index), train=True
        )
        self.index += 1
        return batch

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.index = int(state["index"])


def eval_batches(task: Task, plan: TaskPlan, length: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """`plan.eval_examples` held-out examples of `length` tokens, in batches of at most EVAL_TOKENS_PER_BATCH."""
    per_batch = max(1, min(plan.eval_examples, EVAL_TOKENS_PER_BATCH // length))
    gen = seeded(seed + EVAL_SEED_OFFSET + length)
    sizes = [per_batch] * (plan.eval_examples // per_batch) + (
        [plan.eval_examples % per_batch] if plan.eval_examples % per_batch else []
    )
    return [task.batch(n, length, gen, train=False) for n in sizes]


def check_lengths(task: Task, plan: TaskPlan) -> None:
    """One example at the training length and at every evaluation length, so that a length the task cannot
    generate (too short, or a phone-book with more entries than distinct names) fails before training, not
    after it. Raises ValueError naming the length."""
    gen = seeded(0)
    for length, train in [(plan.train_length, True), *((n, False) for n in plan.eval_lengths)]:
        try:
            task.batch(1, length, gen, train=train)
        except ValueError as e:
            what = "training" if train else "evaluation"
            raise ValueError(f"{task.name}: {what} length {length} cannot be generated: {e}") from e


@torch.no_grad()
def evaluate(
    model: LanguageModel, task: Task, plan: TaskPlan, seed: int, device: torch.device
) -> dict[str, dict]:
    """Metrics at every evaluation length: {str(length): task metrics}. A length that does not fit in GPU
    memory (attention at very long lengths) is recorded as {"error": ...} and the others still run."""
    model.eval()
    results = {}
    for length in plan.eval_lengths:
        parts = []
        try:
            for batch in eval_batches(task, plan, length, seed):
                with autocast_for(device):
                    logits = model(batch["input_ids"].to(device))  # (b, l, v)
                parts.append(task.score(logits.float().cpu(), batch))
        except torch.OutOfMemoryError as e:
            log.warning("evaluation at length %d ran out of memory: %s", length, e)
            results[str(length)] = {"error": "out of memory"}
            torch.cuda.empty_cache()
            continue
        results[str(length)] = task.merge(parts)
    model.train()
    return results


def autocast_for(device: torch.device):
    """bf16 autocast on GPU (as in training), nothing on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_model(
    model: LanguageModel,
    batches: TaskBatches,
    plan: TaskPlan,
    device: torch.device,
    seed: int,
    work_dir: Path | None = None,
    progress: bool = True,
) -> dict:
    """Train with the project's Trainer; returns loss curve, tokens/s, wall time and peak GPU memory.

    With `work_dir` and at least CHECKPOINT_MIN_STEPS steps, the Trainer checkpoints there and a run
    interrupted midway resumes from its last checkpoint. A run stopped early (SIGINT finishes the step and
    returns) raises KeyboardInterrupt, so a partly trained model is never evaluated and cached.
    """
    from mambalab.train.resume_checkpoints import list_checkpoints
    from mambalab.train.trainer import TrainConfig, Trainer

    work_dir = work_dir if plan.steps >= CHECKPOINT_MIN_STEPS else None
    config = TrainConfig(
        lr=plan.lr,
        min_lr=plan.lr / 10,
        weight_decay=plan.weight_decay,
        warmup_steps=max(1, plan.steps // 10),
        batch_size=plan.batch_size,
        seq_len=plan.train_length,
        max_steps=plan.steps,
        eval_every=0,
        log_every=max(1, plan.steps // 50),
        ckpt_every=plan.steps // 4 if work_dir is not None else 0,
        keep_last=1,
        seed=seed,
        device=str(device),
        progress=progress,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(model, config, batches, eval_batches=None, out_dir=work_dir)
    # resume an interrupted run; a fresh one has nothing to resume (and the trainer would warn about it)
    metrics = trainer.fit(resume=work_dir is not None and bool(list_checkpoints(trainer.checkpoint_root)))
    if trainer.step < plan.steps:
        raise KeyboardInterrupt(f"training stopped at step {trainer.step} of {plan.steps}")
    tokens = plan.steps * plan.batch_size * plan.train_length
    curve = [[int(m["step"]), float(m["loss"])] for m in metrics if "loss" in m]  # as stored in JSON
    # throughput from the trainer's timing windows after the first (which holds warm-up and compilation)
    rates = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m]
    return {
        "wall_s": trainer.elapsed_s,
        "tokens": tokens,
        "tokens_per_s": sum(rates[1:]) / len(rates[1:]) if len(rates) > 1 else tokens / trainer.elapsed_s,
        "final_loss": curve[-1][1] if curve else None,
        "curve": curve,
        "peak_memory_gb": peak_memory_gb(metrics, device),
    }


def peak_memory_gb(records: list[dict], device: torch.device) -> float | None:
    """The run's peak GPU memory: the largest of its logged peaks (a run resumed in a new process logged its
    earlier segments' peaks before the restart) and this process's; None off CUDA."""
    if device.type != "cuda":
        return None
    logged = [r["peak_gb"] for r in records if "peak_gb" in r]
    return max([torch.cuda.max_memory_allocated(device) / 1e9, *logged])


def execute(spec: RunSpec, device: torch.device, work_dir: Path | None = None, progress: bool = True) -> dict:
    """Build the matched model, train it on the task, evaluate at every length. Raises on failure."""
    from mambalab.models.zoo import count_params, flops_per_token

    task = build_task(spec.task, **spec.plan.options)
    check_lengths(task, spec.plan)
    config = family_config(spec.family, spec.size, task.vocab_size, spec.overrides, spec.plan.same_depth)
    torch.manual_seed(spec.seed)
    model = LanguageModel(config).to(device)
    train = train_model(
        model, TaskBatches(task, spec.plan, spec.seed), spec.plan, device, spec.seed, work_dir, progress
    )
    return {
        "params": count_params(config),
        "flops_per_token": flops_per_token(config, spec.plan.train_length),
        "config": config.to_dict(),
        "train": train,
        "dataset_tokens": task.dataset_tokens(),
        "eval": evaluate(model, task, spec.plan, spec.seed, device),
        "headline": task.headline,
        "higher_is_better": task.higher_is_better,
    }


class RunStore:
    """Per-run results as JSON files under `<out>/runs/`, written atomically."""

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir) / "runs"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def work_dir(self, key: str) -> Path:
        """Scratch space of a run in progress (trainer checkpoints); removed once the run succeeds."""
        return self.dir / f"{key}.work"

    def get(self, key: str) -> dict | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            log.warning("ignoring unreadable cached result %s", path)
            return None

    def succeeded(self, key: str) -> dict | None:
        """The stored record of `key` marked `cached`, if that run succeeded; else None (run it)."""
        record = self.get(key)
        return {**record, "cached": True} if record is not None and record.get("status") == "ok" else None

    def put(self, key: str, record: dict) -> None:
        write_json_atomic(self.path(key), record)

    @property
    def invocations_path(self) -> Path:
        return self.dir.parent / "invocations.jsonl"

    def log_invocation(self, record: dict) -> None:
        """Append one `compare` call (wall time, jobs, whether it trained or only reported, finished or not)."""
        with self.invocations_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def invocations(self) -> list[dict]:
        """Every logged call, oldest first (a line cut short by a crash is skipped)."""
        if not self.invocations_path.is_file():
            return []
        calls = []
        for line in self.invocations_path.read_text().splitlines():
            try:
                calls.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("skipping an unreadable line of %s", self.invocations_path)
        return calls


def run_cached(
    store: RunStore, key: str, describe: dict, fn: Callable[[Path], dict], run: bool = True
) -> dict:
    """The stored record of `key` if it succeeded before, else run `fn(work_dir)` and store its record. An exception
    in `fn` becomes a failed record (status, error, traceback) instead of propagating; its scratch folder is
    removed so that the retry starts afresh. With run=False nothing runs: a missing result is reported as such."""
    cached = store.succeeded(key)
    if cached is not None:
        return cached
    if not run:
        return {
            "status": "missing",
            "error": "not run yet (report only): run compare again without --report-only",
            "key": key,
            **describe,
            "cached": False,
        }
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        record = {"status": "ok", **fn(store.work_dir(key))}
    except Exception as e:  # noqa: BLE001 — a failing run is reported in the report, not fatal
        log.error("run %s failed: %s", key, e)
        record = {
            "status": "failed",
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(limit=8),
        }
    # CPU time of this process: close to the wall time an unshared machine would need, when others share it
    record.update(
        key=key, **describe, wall_s=time.perf_counter() - start, cpu_s=time.process_time() - cpu_start
    )
    store.put(key, record)
    shutil.rmtree(store.work_dir(key), ignore_errors=True)
    return {**record, "cached": False}
