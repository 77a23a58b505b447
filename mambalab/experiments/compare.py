"""`mambalab compare`: matched models side by side on every task, the studies, and one report.

Work items (each cached in the output folder, see runner.py): the main grid and studies (b)-(d) as training
runs, one cost profile per family, and the precision study (a). Then `report.write_report` turns the
collected records into report.md, PNG plots and results.json. Progress (progress.py): one overall bar
naming the items in progress and the trainer's own per-run bar on a terminal; a flushed line per item's
start and finish otherwise.

With `jobs > 1` the work items run in that many worker processes at once (on one device: the small models of
the synthetic tasks leave most of a GPU idle, so several runs share it well). With `--device cuda` and several
visible GPUs, the workers are spread over all of them, the preset's default jobs per GPU. Each worker gets an equal share
of the CPU cores (at most this process's thread count); per-run progress bars are off. workers.py says how
Ctrl-C and SIGTERM stop them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from mambalab.atomic import file_sha256
from mambalab.device import gpus_to_spread_over, resolve_device
from mambalab.errors import ConfigError
from mambalab.experiments.presets import FAMILIES, Preset, get_compare_preset, with_corpus
from mambalab.experiments.runner import RunSpec, RunStore, execute, run_cached
from mambalab.experiments.studies import main_specs, study_specs

log = logging.getLogger(__name__)

STUDIES = ("precision", "cost", "init", "scaling", "state", "efficiency")
COST_TOKENIZER = "byte"  # cost profiles use the LM task's byte-level vocabulary


@dataclass
class WorkItem:
    label: str
    key: str
    describe: dict
    fn: Callable[[Path], dict]  # called with a scratch folder; picklable (a partial of a module function)
    weight: float = float("inf")  # expected cost (training tokens); parallel runs start the heaviest first
    timed: bool = False  # measures speed: runs after every other item, alone on the machine


def _choose(
    given: list[str] | None, allowed: tuple[str, ...], what: str, allow_empty: bool = False
) -> tuple[str, ...]:
    if given is None:
        return allowed
    unknown = [g for g in given if g not in allowed]
    if unknown or not (given or allow_empty):
        raise ConfigError(
            f"{what}: unknown or empty selection {unknown or given}; expected some of {list(allowed)}"
        )
    return tuple(g for g in allowed if g in given)


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _filter_studies(
    preset: Preset,
    specs: list[RunSpec],
    families: tuple[str, ...],
    tasks: tuple[str, ...],
    studies: tuple[str, ...],
) -> list[RunSpec]:
    """Study runs of the selected studies and families (state- and efficiency-study tasks also follow
    --tasks)."""
    return [
        s
        for s in specs
        if s.group in studies
        and s.family in families
        and (s.group not in ("state", "efficiency") or s.task in tasks)
    ]


def plan_work(
    preset: Preset,
    families: tuple[str, ...],
    tasks: tuple[str, ...],
    studies: tuple[str, ...],
    device: torch.device,
    progress: bool = True,
) -> tuple[list[RunSpec], list[WorkItem]]:
    """Every run spec (with its group, duplicates kept) and the unique work items to execute."""
    specs = main_specs(preset, families, tasks) + _filter_studies(
        preset, study_specs(preset, families), families, tasks, studies
    )
    items = run_items(specs, device, progress)
    if "cost" in studies:
        for family in families:
            key = _hash("cost", family, preset.cost, preset.size, preset.seed, device.type)
            items.append(
                WorkItem(
                    f"cost/{family}",
                    key,
                    {"kind": "cost", "family": family},
                    partial(_cost, preset, family, device),
                    timed=True,
                )
            )
    if "precision" in studies:
        key = _hash("precision", preset.precision, preset.size, preset.seed)
        items.append(WorkItem("precision", key, {"kind": "precision"}, partial(_precision, preset)))
    return specs, items


def run_items(specs: list[RunSpec], device: torch.device, progress: bool = True) -> list[WorkItem]:
    """One work item per distinct run (specs of several groups may share a run); labels are unique."""
    items, labels = {}, set()
    for spec in specs:
        if spec.key in items:
            continue
        label = spec.label if spec.label not in labels else f"{spec.label} #{spec.key[:6]}"
        labels.add(label)
        items[spec.key] = WorkItem(
            label,
            spec.key,
            {"kind": "run", "spec": spec.to_dict()},
            partial(execute, spec, device, progress=progress),
            spec.plan.steps * spec.plan.batch_size * spec.plan.train_length,
        )
    return list(items.values())


def _cost(preset: Preset, family: str, device: torch.device, work_dir: Path) -> dict:
    """The family's cost profile (`work_dir` unused: a profile has nothing to checkpoint)."""
    from mambalab.experiments.cost import cost_profile
    from mambalab.experiments.families import family_config
    from mambalab.models.lm import LanguageModel
    from mambalab.models.zoo import count_params
    from mambalab.tokenizer import load_tokenizer

    config = family_config(family, preset.size, load_tokenizer(COST_TOKENIZER).vocab_size)
    torch.manual_seed(preset.seed)
    model = LanguageModel(config).to(device)
    return {"params": count_params(config), **cost_profile(model, preset.cost, device, preset.seed)}


def _precision(preset: Preset, work_dir: Path) -> dict:
    """Study (a) (`work_dir` unused: nothing to checkpoint)."""
    from mambalab.experiments.precision import precision_study

    return {"rows": precision_study(preset.precision, preset.size, preset.seed)}


def environment(device: torch.device) -> dict:
    import mambalab

    env = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "mambalab": mambalab.__version__,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
    return env


def _training_environment(invocations: list[dict], here: dict) -> dict:
    """The machine of the latest call that trained (a report written elsewhere with --report-only describes
    where the numbers were measured), else this one."""
    trained = [c["environment"] for c in invocations if not c.get("report_only") and "environment" in c]
    return trained[-1] if trained else here


def _measured_device(device: str, invocations: list[dict]) -> torch.device:
    """The device whose cost profiles a report-only call reports (nothing runs, so it need not be present
    here): the one asked for, else the one of the latest call that trained, else this machine's."""
    if device == "auto":
        device = _training_environment(invocations, {}).get("device", "auto")
    return resolve_device(device, present=False)


def compare(
    preset: str = "quick",
    models: list[str] | None = None,
    tasks: list[str] | None = None,
    out_dir: str | Path = "compare-out",
    device: str = "auto",
    studies: list[str] | None = None,
    progress: bool = True,
    report_only: bool = False,
    jobs: int | None = None,
    corpus: str | Path | None = None,
) -> dict:
    """Run (or resume) the comparison and write the report; returns the results dict. With `report_only`,
    nothing is trained: the report is written from the results cached so far (missing ones are listed).
    `jobs` work items run at once, each in its own process (default: the preset's, at most the CPU count).
    `corpus`: a text file for the language-modelling runs instead of the embedded corpus."""
    from mambalab.experiments.report import write_report

    chosen = get_compare_preset(preset)
    if corpus is not None:
        path = Path(corpus).resolve()
        if not path.is_file():
            raise ConfigError(f"corpus must be a text file, got {str(corpus)!r} (not found)")
        chosen = with_corpus(chosen, str(path), file_sha256(path))
    families = _choose(models, FAMILIES, "models") if models is not None else chosen.models
    task_names = _choose(tasks, tuple(chosen.tasks), "tasks", allow_empty=True)
    study_names = _choose(studies, STUDIES, "studies", allow_empty=True)
    out = Path(out_dir)
    store = RunStore(out)
    local = resolve_device("auto" if report_only else device)  # the machine this call runs on
    dev = _measured_device(device, store.invocations()) if report_only else local  # the one the items are keyed on
    gpus = gpus_to_spread_over(local)
    jobs = min(chosen.jobs * max(1, len(gpus)), os.cpu_count() or 1) if jobs is None else jobs
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    trainer_bars = progress and jobs == 1 and sys.stdout.isatty()  # a run's own bar: on a terminal only
    specs, items = plan_work(chosen, families, task_names, study_names, dev, trainer_bars)
    if report_only and not (store.invocations_path.exists() or any(store.get(it.key) for it in items)):
        raise ConfigError(f"--report-only: no compare call has written to {out} (no runs, no invocations.jsonl): "
                          "train first, or point --out at the directory of an earlier call")
    start, started, finished = time.perf_counter(), time.gmtime(), False
    here = {**environment(local), "seed": chosen.seed, **({"gpus": len(gpus)} if gpus and jobs > 1 else {})}
    try:
        records = run_all(items, store, progress, run=not report_only, jobs=jobs, gpus=gpus)
        finished = True
    finally:
        store.log_invocation(
            {
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", started),
                "wall_s": time.perf_counter() - start,
                "jobs": jobs,
                "report_only": report_only,
                "finished": finished,
                "environment": here,
            }
        )
    results = {
        "preset": chosen.to_dict(),
        "selection": {"models": list(families), "tasks": list(task_names), "studies": list(study_names)},
        "environment": _training_environment(store.invocations(), here),
        "wall_s": time.perf_counter() - start,
        "invocations": store.invocations(),
        "compute_s": sum(r.get("wall_s", 0.0) for r in records.values()),
        "cpu_s": sum(r.get("cpu_s", 0.0) for r in records.values()),
        "work": _work_counts(items, records),
        "runs": [{**records[s.key], "group": s.group, "spec": s.to_dict()} for s in specs],
        "cost": {r["family"]: r for r in records.values() if r.get("kind") == "cost"},
        "precision": next((r for r in records.values() if r.get("kind") == "precision"), None),
    }
    write_report(results, out)
    return results


def _work_counts(items: list[WorkItem], records: dict[str, dict]) -> dict:
    """What the progress bar counted: work items, of which training runs, cost profiles, precision studies,
    and how many of them did not succeed (failed, or missing in a report-only call)."""
    kinds = [it.describe.get("kind") for it in items]
    return {
        "items": len(items),
        "not_ok": sum(records[it.key]["status"] != "ok" for it in items),
        "training_runs": kinds.count("run"),
        "cost_profiles": kinds.count("cost"),
        "precision_studies": kinds.count("precision"),
    }


def run_all(
    items: list[WorkItem],
    store: RunStore,
    progress: bool,
    run: bool = True,
    jobs: int = 1,
    console=None,
    gpus: list[str] | tuple[str, ...] = (),
) -> dict[str, dict]:
    """Every item's record, in the order of `items`; with `jobs > 1`, that many items at once in worker
    processes (workers.py: how Ctrl-C and SIGTERM stop them). Timed items (speed measurements) run last, one
    at a time in this process, once the workers are gone: sharing the machine with training runs would skew
    them. `console`: where progress goes (default stdout; a bar on a terminal, lines otherwise); `gpus`: the CUDA
    device ids the workers are spread over (none: every worker sees what this process sees)."""
    from mambalab.experiments.progress import CompareProgress
    from mambalab.experiments.workers import run_in_workers, stop_signals

    records = {}
    with CompareProgress(len(items), progress, console) as shown, stop_signals():

        def finished(item: WorkItem, record: dict) -> None:
            status = record["status"] + (" (cached)" if record["cached"] else "")
            log.info("%s: %s in %.1fs", item.label, status, record.get("wall_s", 0.0))
            shown.finished(item.label, record)

        in_process = items
        if jobs > 1 and run:
            for item in items:  # cached results need no worker process
                if (cached := store.succeeded(item.key)) is not None:
                    records[item.key] = cached
                    finished(item, cached)
            pending = [it for it in items if it.key not in records and not it.timed]
            heaviest_first = sorted(pending, key=lambda it: -it.weight)  # so that no long run starts last
            threads = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // jobs))
            records |= run_in_workers(heaviest_first, store, jobs, threads, shown.started, finished, gpus=gpus)
            in_process = [it for it in items if it.key not in records]
        for item in in_process:
            shown.started(item.label)
            records[item.key] = run_cached(store, item.key, item.describe, item.fn, run)
            finished(item, records[item.key])
    return {it.key: records[it.key] for it in items}
