"""Sweep training budgets of `mambalab compare` runs (lr × steps × batch, per family and task), in parallel.

Used to choose the `standard` preset's per-task budgets on the GPU: each combination is one cached compare
run (same model sizes, task generators, seeds and evaluation as the preset), so the chosen budget's result
is what the preset then reproduces. Writes `<out>/sweep.json`: per run its plan, final training loss, loss
curve, evaluation per length and wall time.

    PYTHONPATH=. python3 benchmarks/sweeps/compare_sweep.py --preset standard --jobs 12 --out $OUT/sweep \\
        --run "mamba:selective_copying:lr=2e-3,5e-3,1e-2:steps=4000" --run "transformer:mqar:lr=5e-3"

A --run is `families:task:field=v1,v2:...` with families separated by `+`; unlisted plan fields keep the
preset's values; `options.<name>=...` changes a task option (e.g. options.vocab_size=512), `size.<name>=...`
the model size (size.d_state=64, size.n_layer=2), `config.<path>=...` a field of the matched model's config
(config.attention.n_heads=4), `seed=1,2,3` the seed (how robust a result is); a tuple field is written with
slashes (eval_lengths=128/512).
"""

from __future__ import annotations

import dataclasses
import itertools
import time

from benchmarks.common import base_parser, write_result
from mambalab.experiments.compare import resolve_device, run_all, run_items
from mambalab.experiments.presets import get_compare_preset
from mambalab.experiments.runner import RunSpec, RunStore
from mambalab.models.config_fields import put_path


def _value(text: str):
    """'5e-3' → float, '128' → int, '128/512' → (128, 512) (a tuple field such as eval_lengths)."""
    if "/" in text:
        return tuple(_value(part) for part in text.split("/"))
    return float(text) if any(c in text for c in ".e") else int(text)


def parse_run(text: str, preset) -> list[RunSpec]:
    """`families:task:field=v1,v2:...` → one RunSpec per family and combination of values."""
    families, task, *fields = text.split(":")
    if task not in preset.tasks:
        raise ValueError(f"--run {text!r}: unknown task {task!r}; the preset has {sorted(preset.tasks)}")
    grid = {}
    for field in fields:
        name, _, values = field.partition("=")
        grid[name] = [_value(v) for v in values.split(",")]
    specs = []
    for combo in itertools.product(*grid.values()):
        plan, sizes, seed, overrides = preset.tasks[task], {}, preset.seed, {}
        for name, value in zip(grid, combo, strict=True):
            if name == "seed":
                seed = value
            elif name.startswith("config."):
                put_path(overrides, name.removeprefix("config."), value)
            elif name.startswith("size."):
                sizes[name.removeprefix("size.")] = value
            elif name.startswith("options."):
                plan = dataclasses.replace(
                    plan, options={**plan.options, name.removeprefix("options."): value}
                )
            elif name == "eval_lengths":
                plan = dataclasses.replace(plan, eval_lengths=value if isinstance(value, tuple) else (value,))
            elif name in {f.name for f in dataclasses.fields(plan)}:
                plan = dataclasses.replace(plan, **{name: value})
            else:
                raise ValueError(
                    f"--run {text!r}: {name!r} is not a TaskPlan field, seed, options.<name>, size.<name> or "
                    "config.<path>"
                )
        size = dataclasses.replace(preset.size_for(plan), **sizes)  # the task's depth, as the preset runs it
        specs += [
            RunSpec("sweep", family, task, plan, size, preset.name, seed, overrides)
            for family in families.split("+")
        ]
    return specs


def main() -> None:
    parser = base_parser(__doc__, raw_description=True, device="auto",
                         out_help="folder of the run records and sweep.json (default sweep-out)")
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--run", action="append", required=True)
    parser.add_argument("--jobs", type=int, default=8)
    parser.set_defaults(out="sweep-out")
    args = parser.parse_args()
    preset = get_compare_preset(args.preset)
    specs = [spec for text in args.run for spec in parse_run(text, preset)]
    device = resolve_device(args.device)
    start = time.perf_counter()
    records = run_all(
        run_items(specs, device, progress=False), RunStore(args.out), progress=True, jobs=args.jobs
    )
    rows = []
    for spec in specs:
        record = records[spec.key]
        rows.append(
            {
                "family": spec.family,
                "task": spec.task,
                "seed": spec.seed,
                "size": dataclasses.asdict(spec.size),
                "plan": dataclasses.asdict(spec.plan),
                "status": record["status"],
                "error": record.get("error"),
                "final_loss": record.get("train", {}).get("final_loss"),
                "curve": record.get("train", {}).get("curve"),
                "tokens_per_s": record.get("train", {}).get("tokens_per_s"),
                "eval": {k: v.get(record.get("headline"), v) for k, v in record.get("eval", {}).items()},
                "wall_s": record.get("wall_s"),
                "cpu_s": record.get("cpu_s"),
            }
        )
        print(
            f"{spec.family:12s} {spec.task:18s} seed={spec.seed} lr={spec.plan.lr:g} steps={spec.plan.steps} b={spec.plan.batch_size}"
            f" {spec.plan.options} {spec.size} -> {rows[-1]['status']} loss={rows[-1]['final_loss']} eval={rows[-1]['eval']}"
            f" ({record.get('wall_s', 0):.0f} s)"
        )
    write_result("sweep", {"wall_s": time.perf_counter() - start, "runs": rows}, args.out)


if __name__ == "__main__":
    main()
