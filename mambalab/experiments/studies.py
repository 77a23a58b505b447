"""The training runs of a comparison, as `RunSpec`s: the main grid and studies (b), (c), (d).

main     every family × every task of the preset, same budget per task, once per seed of the preset
init     (b) S4D with each init on a long-range task (copying memory); Mamba with each A_init on LM
scaling  (c) Mamba and Transformer++ at ≥3 sizes × 2 sequence lengths on LM, same tokens per size
state    (d) Mamba at each d_state, and Mamba / Transformer++ at each d_model, on recall and copying
efficiency (e) the selected families on copying at several step budgets (accuracy vs training tokens)
The studies (b)-(d) train with the preset's `seed` only (their runs of the reference model are the main
grid's); (e) with every seed of the main grid.
"""

from __future__ import annotations

import dataclasses

from mambalab.experiments.presets import Preset
from mambalab.experiments.runner import RunSpec

LONG_RANGE_TASK = "selective_copying"  # with scattered=False: the copying-memory task


def main_specs(preset: Preset, families: tuple[str, ...], tasks: tuple[str, ...]) -> list[RunSpec]:
    """Every family on every task, once per seed of the preset."""
    return [
        RunSpec("main", family, task, preset.tasks[task], preset.size_for(preset.tasks[task]), preset.name, seed)
        for task in tasks
        for family in families
        for seed in preset.seeds
    ]


def init_specs(preset: Preset) -> list[RunSpec]:
    study = preset.init
    if study is None:
        return []
    specs = []
    if study.long_range is not None:
        plan = dataclasses.replace(study.long_range, options={**study.long_range.options, "scattered": False})
        specs += [
            RunSpec(
                "init",
                "s4d",
                LONG_RANGE_TASK,
                plan,
                preset.size_for(plan),
                preset.name,
                preset.seed,
                {"s4d": {"init": init}},
            )
            for init in study.s4d_inits
        ]
    if study.lm is not None:
        specs += [
            RunSpec(
                "init",
                "mamba",
                "lm",
                study.lm,
                preset.size_for(study.lm),
                preset.name,
                preset.seed,
                {"ssm": {"A_init": init}},
            )
            for init in study.mamba_inits
        ]
    return specs


def scaling_specs(preset: Preset) -> list[RunSpec]:
    study = preset.scaling
    if study is None:
        return []
    base = study.plan
    specs = []
    for length in study.lengths:
        # the same number of training tokens at every length: fewer sequences when they are longer
        batch = max(1, base.batch_size * base.train_length // length)
        plan = dataclasses.replace(base, train_length=length, eval_lengths=(length,), batch_size=batch)
        specs += [
            RunSpec("scaling", family, "lm", plan, size, preset.name, preset.seed)
            for size in study.sizes
            for family in study.families
        ]
    return specs


def state_specs(preset: Preset) -> list[RunSpec]:
    study = preset.state
    if study is None:
        return []

    def variants(size):  # (family, size): Mamba at each d_state, then every family at each d_model
        return [("mamba", dataclasses.replace(size, d_state=n)) for n in study.d_states] + [
            (family, dataclasses.replace(size, d_model=d)) for d in study.d_models for family in study.families
        ]

    def plans(task):  # the task's plan, or one per lr of the sweep
        plan = preset.tasks[task]
        return [dataclasses.replace(plan, lr=lr) for lr in study.lrs] if study.lrs else [plan]

    specs = [
        RunSpec("state", family, task, plan, size, preset.name, preset.seed)
        for task in study.tasks
        for plan in plans(task)
        for family, size in variants(preset.size_for(preset.tasks[task]))
    ]
    unique: dict[str, RunSpec] = {}  # Mamba at the reference (d_model, d_state) is in both series: listed once
    for spec in specs:
        unique.setdefault(spec.key, spec)
    return list(unique.values())


def efficiency_specs(preset: Preset, families: tuple[str, ...]) -> list[RunSpec]:
    """(e) every selected family on the study's task at each step budget, with the main grid's seeds."""
    study = preset.efficiency
    if study is None or study.task not in preset.tasks:
        return []
    base = preset.tasks[study.task]
    return [
        RunSpec("efficiency", family, study.task, plan, preset.size_for(plan), preset.name, seed)
        for plan in (dataclasses.replace(base, steps=steps) for steps in study.steps)
        for family in families
        for seed in preset.seeds
    ]


def study_specs(preset: Preset, families: tuple[str, ...]) -> list[RunSpec]:
    return init_specs(preset) + scaling_specs(preset) + state_specs(preset) + efficiency_specs(preset, families)
