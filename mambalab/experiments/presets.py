"""Presets of `mambalab compare`: model sizes, per-task training budgets and evaluation lengths, studies.

Every model family trains on a task with the same budget (steps × batch × length tokens). Sizes:

    smoke     CI: seconds, every code path, numbers meaningless
    quick     a 2-core CPU in ≤10 minutes, 3 seeds per task cell, small vocabularies and short sequences
              (budgets chosen by sweeps on such a machine: benchmarks/notes/compare.md; see reports/)
    standard  one GPU, ~2 hours (192 items: 3 seeds, Zoology's lr sweep; resumable): the paper-style
              settings at reduced step counts
    paper     the papers' settings (selective copying at length 4096, induction heads trained at 256 and
              tested to 2^14 and beyond, MQAR at vocab 8192): hours of GPU time

All fields are plain data; `Preset.to_dict()` goes into results.json and into every run's cache key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from mambalab.errors import ConfigError
from mambalab.experiments.families import FAMILY_INFO, ModelSize

FAMILIES = tuple(FAMILY_INFO)
ZOOLOGY_LRS = (1e-4, 4.6e-4, 2.2e-3, 1e-2)  # Zoology's sweep, np.logspace(-4, -2, 4); the best lr is reported


@dataclass(frozen=True)
class TaskPlan:
    """How one task is trained and evaluated."""

    options: dict  # the task's dataclass fields (vocab size ...)
    train_length: int
    eval_lengths: tuple[int, ...]
    steps: int
    batch_size: int
    lr: float = 1e-3
    weight_decay: float = 0.1  # AdamW's, on every parameter not flagged _no_weight_decay
    eval_examples: int = 256  # per evaluation length
    n_layer: int | None = None  # the reference model's depth on this task (None: the preset's size)
    # every family at the reference's depth, parameters matched by its width knob alone (Zoology's recall
    # protocol: 2 layers each; by parameters alone a 2-block Mamba's match is a 1-layer Transformer++, which
    # cannot learn associative recall)
    same_depth: bool = False

    def __post_init__(self) -> None:
        lengths = self.eval_lengths
        if not isinstance(lengths, tuple) or not all(isinstance(n, int) and n > 0 for n in lengths):
            raise ConfigError(f"TaskPlan.eval_lengths must be a tuple of positive ints, got {lengths!r}")
        if self.steps < 1 or self.batch_size < 1 or self.train_length < 1 or self.lr <= 0:
            raise ConfigError(
                "TaskPlan: steps, batch_size, train_length and lr must be positive, got "
                f"{self.steps}, {self.batch_size}, {self.train_length}, {self.lr}"
            )
        if self.n_layer is not None and self.n_layer < 1:
            raise ConfigError(f"TaskPlan.n_layer must be None or >= 1, got {self.n_layer}")


@dataclass(frozen=True)
class PrecisionStudy:
    lengths: tuple[int, ...]
    dtypes: tuple[str, ...] = ("float64", "float32", "bfloat16", "float16")
    batch_size: int = 2


@dataclass(frozen=True)
class InitStudy:
    """(b) HiPPO vs random init: S4D on a long-range task, Mamba's A_init on language modelling."""

    s4d_inits: tuple[str, ...] = ("legs", "s4d_lin", "random")
    mamba_inits: tuple[str, ...] = ("s4d_real", "random")
    long_range: TaskPlan | None = None  # trained for every S4D init
    lm: TaskPlan | None = None  # trained for every Mamba A_init


@dataclass(frozen=True)
class ScalingStudy:
    """(c) loss vs training FLOPs for Mamba and Transformer++ at ≥3 sizes and 2 sequence lengths."""

    sizes: tuple[ModelSize, ...]
    lengths: tuple[int, ...]
    # the LM budget; its train_length is replaced by each of `lengths`, the batch scaled to keep the tokens
    plan: TaskPlan
    families: tuple[str, ...] = ("mamba", "transformer")


@dataclass(frozen=True)
class StateStudy:
    """(d) accuracy vs state size: Mamba's d_state (and every family's d_model) on recall and copying."""

    d_states: tuple[int, ...]
    d_models: tuple[int, ...]
    tasks: tuple[str, ...] = ("mqar", "copying")
    families: tuple[str, ...] = ("mamba", "transformer")
    # Zoology's protocol: each (family, d_model) trained at every lr, the best one reported; () = the task's lr
    lrs: tuple[float, ...] = ()


@dataclass(frozen=True)
class EfficiencyStudy:
    """(e) sample efficiency: accuracy vs training tokens, each family trained on `task` for each budget in
    `steps` (its own run and schedule; the largest may be the main grid's). arXiv 2402.01032: Transformers
    learn to copy with ~100× fewer samples than GSSMs."""

    steps: tuple[int, ...]
    task: str = "copying"


@dataclass(frozen=True)
class CostStudy:
    decode_prefixes: tuple[int, ...]
    decode_tokens: int = 16
    train_length: int = 256
    train_batch: int = 8
    train_steps: int = 5
    repeats: int = 5  # timed decode loops per prefix: the table shows their median and min-max


@dataclass(frozen=True)
class Preset:
    name: str
    size: ModelSize
    models: tuple[str, ...]
    tasks: dict[str, TaskPlan]
    precision: PrecisionStudy
    cost: CostStudy
    init: InitStudy | None = None
    scaling: ScalingStudy | None = None
    state: StateStudy | None = None
    efficiency: EfficiencyStudy | None = None
    seed: int = 0  # the studies', the cost profiles' and the precision study's seed
    seeds: tuple[int, ...] = (0, 1, 2)  # every main-grid task cell trains once per seed
    jobs: int = 1  # runs at once by default (`compare --jobs`), capped at the machine's CPU count
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"Preset.seeds must be distinct seeds, at least one, got {self.seeds!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def size_for(self, plan: TaskPlan) -> ModelSize:
        """The reference model size on a task: the preset's, at the plan's depth where it sets one."""
        return self.size if plan.n_layer is None else dataclasses.replace(self.size, n_layer=plan.n_layer)


def _smoke() -> Preset:
    """CI: every family, three tasks and every study at toy sizes, one or two steps per run."""
    sc = TaskPlan({"vocab_size": 8, "n_copy": 2}, 12, (12, 16), steps=2, batch_size=4, eval_examples=8)
    tiny = TaskPlan({"max_bytes": 20000}, 16, (16,), steps=2, batch_size=2, eval_examples=4)
    return Preset(
        name="smoke",
        size=ModelSize(d_model=32, n_layer=4, d_state=4),
        models=FAMILIES,
        tasks={
            "selective_copying": sc,
            "mqar": TaskPlan({"vocab_size": 32}, 16, (16, 32), steps=2, batch_size=4, eval_examples=8),
            "lm": tiny,
        },
        precision=PrecisionStudy(lengths=(8, 16)),
        cost=CostStudy(
            decode_prefixes=(4, 16), decode_tokens=2, train_length=16, train_batch=2, train_steps=2
        ),
        init=InitStudy(s4d_inits=("legs", "random"), long_range=sc, lm=tiny),
        scaling=ScalingStudy(
            sizes=(ModelSize(16, 2, 4), ModelSize(32, 2, 4)),
            lengths=(8, 16),
            plan=dataclasses.replace(tiny, steps=1),
        ),
        state=StateStudy(d_states=(1, 4), d_models=(), tasks=("mqar",), families=("mamba",)),
        efficiency=EfficiencyStudy(steps=(1, 2), task="mqar"),
        seeds=(0,),
    )


def _quick() -> Preset:
    """2-core CPU, ≤10 minutes with 3 seeds per task cell: 4 Mamba blocks of width 32 (2 for selective
    copying; the others matched), vocabularies of 8-64 tokens, sequences of 22-64 tokens (evaluated up to
    1024), a few hundred to 2,500 steps; Mamba, Transformer++ and S4D by default."""
    size = ModelSize(d_model=32, n_layer=4, d_state=8)
    lm = TaskPlan({"max_bytes": 200_000}, 64, (64, 256), steps=150, batch_size=16, lr=3e-3, eval_examples=64)
    synthetic = {"batch_size": 32, "lr": 5e-3, "weight_decay": 0.0}
    # 2 Mamba blocks learn selective copying where 4 stay on the loss plateau; at length 32 and 2,500 steps
    # they leave it in every seed (100%, and 99% at 4x the noise), at 1,500 steps in 2 of 3 (notes/compare.md)
    sc = TaskPlan({"vocab_size": 16, "n_copy": 4}, 32, (32, 128), steps=2500, n_layer=2, **{**synthetic, "lr": 1e-2})
    return Preset(
        name="quick",
        size=size,
        models=("mamba", "transformer", "s4d"),
        tasks={
            "selective_copying": sc,
            "induction_heads": TaskPlan(
                {"vocab_size": 16}, 32, (32, 64, 128, 256, 512, 1024), steps=500, **synthetic
            ),
            "mqar": TaskPlan({"vocab_size": 64}, 64, (64, 128, 256), steps=500, **synthetic),
            "copying": TaskPlan({"alphabet_size": 8}, 22, (22, 24, 26, 32, 42), steps=500, **synthetic),
            "lm": lm,
        },
        precision=PrecisionStudy(lengths=(16, 64, 256)),
        cost=CostStudy(
            decode_prefixes=(16, 256, 2048), decode_tokens=16, train_length=64, train_batch=16, train_steps=6
        ),
        init=InitStudy(
            s4d_inits=("legs", "random"),
            long_range=dataclasses.replace(
                sc, train_length=64, eval_lengths=(64,), steps=300, lr=5e-3, n_layer=None
            ),
            lm=lm,
        ),
        scaling=ScalingStudy(
            sizes=(ModelSize(16, 2, 8), ModelSize(32, 2, 8), ModelSize(48, 2, 8)),
            lengths=(32, 128),
            plan=dataclasses.replace(lm, steps=100, eval_lengths=()),
        ),
        state=StateStudy(d_states=(2, 8), d_models=(), tasks=("mqar",), families=("mamba",)),
        efficiency=EfficiencyStudy(steps=(125, 250, 500)),
        jobs=2,
        notes=(
            "hybrid, moe and mamba2 run on request (--models)",
            "3 seeds per task cell; studies (b)-(d) with seed 0",
        ),
    )


EMBEDDED_CORPUS_NOTE = (
    "language modelling and scaling want a real corpus: `mambalab corpus build --out corpus`, then "
    "`--corpus corpus/corpus.txt` (< 1 epoch); on the embedded 1.2 MB corpus they see ~15 epochs"
)


def _standard() -> Preset:
    """One GPU, ~2 hours (192 items: 3 seeds per cell, Zoology's lr sweep in the state study, Mamba-2 beside
    Mamba, Transformer++ and S4D; 14 runs share the GPU; a call cut short resumes). The first 25 items
    (induction heads, selective copying, the init study's S4D runs) took 12 minutes of one H100 with
    `--jobs 12` (2026-12-06); the rest is extrapolated from them (benchmarks/notes/compare.md):
    the synthetic tasks at the papers' vocabularies and shapes at reduced lengths and steps,
    2-layer-Transformer-sized models (4 Mamba blocks of width 64); Mamba, Transformer++, S4D and Mamba-2
    (hybrid and MoE on request).

    Learning rates, steps and depths were chosen by sweeps on the H200 (benchmarks/compare_sweep.py; results
    in benchmarks/results/compare_sweep_h200*.json, notes in benchmarks/notes/compare.md): Mamba learns
    induction heads at lr ≤ 1e-3 (lower extrapolates further: 100% at 64× the training length at 5e-4 after
    8000 steps, 95-98% after 5000-6000), MQAR at vocabulary 8192 is solved by attention at lr 5e-3 within 4000 steps, and selective copying
    (length 128, 8 tokens) is learnt by 2 Mamba blocks (100% in 4000 steps) while 4 blocks stay on the loss
    plateau (28-59%): that task runs at depth 2, as in the paper's Table 1 (2-layer models), at length 256
    (at 128 a 1-layer S4D still reached 86%).
    Without weight decay on the synthetic tasks (it delays the plateau escape)."""
    size = ModelSize(d_model=64, n_layer=4, d_state=16)
    lm = TaskPlan({}, 512, (512, 2048), steps=1000, batch_size=32, lr=2e-3, eval_examples=64)
    synthetic = {"batch_size": 64, "lr": 5e-3, "weight_decay": 0.0}
    sc = TaskPlan({"vocab_size": 16, "n_copy": 8}, 256, (256, 1024), steps=5000, n_layer=2, **synthetic)
    return Preset(
        name="standard",
        size=size,
        models=("mamba", "transformer", "s4d", "mamba2"),
        tasks={
            "selective_copying": sc,
            "induction_heads": TaskPlan(
                {"vocab_size": 16}, 256, (256, 1024, 4096, 16384), steps=8000, **{**synthetic, "lr": 5e-4}
            ),
            # Zoology's MQAR: vocabulary 8192, 2 layers of every family, n_kv = length / 16 (64 -> 4 ... 256 -> 16)
            "mqar": TaskPlan(
                {"vocab_size": 8192}, 256, (256, 512, 1024), steps=4000, n_layer=2, same_depth=True, **synthetic
            ),
            "copying": TaskPlan(
                {"alphabet_size": 26}, 102, (52, 102, 112, 127, 152, 202), steps=3000, **synthetic
            ),
            # MQAR's shape with a book (entries `a dddd ,`: one of 64 one-token names, no colon), 8 entries at the
            # training length 53, 4 lookups per training sequence, 8,000 steps at lr 1e-3: the first setting in
            # which Transformer++ learns the name -> number lookup (CPU, seed 0: first digit 70 %, whole numbers
            # 47 %); books of 16-31 entries and the preset's earlier 2-letter format were not learnt in 20,000
            # steps on the H100 (benchmarks/notes/compare.md). Evaluated on books of 8, 16, 31 and 63 entries.
            "phonebook": TaskPlan({"n_letters": 64, "name_len": 1, "colon": False, "train_queries": 4}, 53,
                                  (53, 101, 191, 383), steps=8000, **{**synthetic, "lr": 1e-3}),
            "lm": lm,
        },
        precision=PrecisionStudy(lengths=(64, 256, 1024, 4096)),
        cost=CostStudy(
            decode_prefixes=(128, 1024, 8192, 16384),
            decode_tokens=64,
            train_length=2048,
            train_batch=8,
            train_steps=20,
        ),
        init=InitStudy(
            long_range=dataclasses.replace(
                sc,
                options={"vocab_size": 16, "n_copy": 16},
                train_length=1024,
                eval_lengths=(1024,),
                steps=1500,
                n_layer=None,
            ),
            lm=lm,
        ),
        scaling=ScalingStudy(
            sizes=(ModelSize(64, 4, 16), ModelSize(128, 4, 16), ModelSize(256, 4, 16)),
            lengths=(256, 1024),
            plan=dataclasses.replace(lm, steps=800, eval_lengths=()),
            families=("mamba", "transformer", "mamba2"),
        ),
        state=StateStudy(
            d_states=(2, 16, 64),
            d_models=(64, 128, 256),
            tasks=("mqar",),
            families=("mamba", "transformer", "s4d", "mamba2"),
            lrs=ZOOLOGY_LRS,
        ),
        efficiency=EfficiencyStudy(steps=(375, 750, 1500, 3000)),
        jobs=14,
        notes=(
            "hybrid and moe run on request (--models); mamba2 matches Mamba's parameter count by its depth and"
            + " its state size N (a power of two, 64 where it fits)",
            "selective copying at length 256 with 8 tokens (paper: 4096 and 16) and MQAR up to length 1024: "
            + "reduced to fit the budget",
            EMBEDDED_CORPUS_NOTE,
        ),
    )


def _paper() -> Preset:
    """The papers' settings, hours of GPU time: selective copying at length 4096 (Table 1), induction heads
    trained at 256 and tested to 2^18 (Table 3), MQAR at vocab 8192 up to length 512, copying of strings up
    to 50 letters tested to 200."""
    base = _standard()
    steps = 10_000
    return dataclasses.replace(
        base,
        name="paper",
        tasks={
            "selective_copying": TaskPlan(
                {"vocab_size": 16, "n_copy": 16}, 4096, (4096,), steps=steps, batch_size=32, n_layer=2
            ),
            "induction_heads": TaskPlan(
                {"vocab_size": 16},
                256,
                tuple(256 * 4**k for k in range(7)),
                steps=steps,
                batch_size=64,
                eval_examples=128,
            ),
            "mqar": TaskPlan({"vocab_size": 8192}, 512, (128, 256, 512, 1024), steps=steps, batch_size=64),
            "copying": TaskPlan(
                {"alphabet_size": 26}, 102, (52, 102, 152, 202, 402), steps=steps, batch_size=64
            ),
            "phonebook": TaskPlan({"n_letters": 26}, 512, (256, 512, 1024, 2048), steps=steps, batch_size=64),
            "lm": dataclasses.replace(
                base.tasks["lm"], train_length=2048, eval_lengths=(2048, 8192), steps=steps
            ),
        },
    )


def with_corpus(preset: Preset, corpus: str, sha256: str) -> Preset:
    """The preset with every language-modelling plan (main grid, init and scaling studies) on `corpus`, its
    note on the embedded corpus replaced by one naming the corpus."""

    def on_corpus(plan: TaskPlan | None) -> TaskPlan | None:
        if plan is None:
            return None
        return dataclasses.replace(plan, options={**plan.options, "corpus": corpus, "corpus_sha256": sha256})

    tasks = {name: on_corpus(plan) if name == "lm" else plan for name, plan in preset.tasks.items()}
    init = preset.init and dataclasses.replace(preset.init, lm=on_corpus(preset.init.lm))
    scaling = preset.scaling and dataclasses.replace(preset.scaling, plan=on_corpus(preset.scaling.plan))
    notes = tuple(n for n in preset.notes if n != EMBEDDED_CORPUS_NOTE) + (
        f"language modelling and scaling on the corpus {Path(corpus).name} (sha256 {sha256[:12]}…)",
    )
    return dataclasses.replace(preset, tasks=tasks, init=init, scaling=scaling, notes=notes)


PRESETS = {"smoke": _smoke, "quick": _quick, "standard": _standard, "paper": _paper}


def get_compare_preset(name: str) -> Preset:
    """A fresh `Preset` of the comparison (`mambalab compare --preset`): smoke, quick, standard or paper."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]()
