"""`mambalab compare` end to end at the smoke size: report sections, finite numbers, resume, failures."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch

from mambalab.errors import ConfigError
from mambalab.experiments import runner
from mambalab.experiments.compare import compare, plan_work
from mambalab.experiments.presets import ModelSize, TaskPlan, get_compare_preset
from mambalab.experiments.report import SECTIONS
from mambalab.experiments.runner import RunSpec, RunStore, TaskBatches, eval_batches
from mambalab.experiments.studies import main_specs
from mambalab.tasks import build_task


def numbers(obj):
    """Every int/float inside a JSON-like object."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    return out, compare("smoke", out_dir=out, device="cpu", progress=False)


@pytest.mark.slow
def test_smoke_report_has_every_section_and_finite_numbers(smoke):
    out, results = smoke
    report = (out / "report.md").read_text()
    for section in SECTIONS:
        assert f"## {section}" in report
    assert [r for r in results["runs"] if r["status"] != "ok"] == []
    assert results["cost"] and all(c["status"] == "ok" for c in results["cost"].values())
    assert results["precision"]["status"] == "ok"
    stored = json.loads((out / "results.json").read_text())
    assert all(math.isfinite(x) for x in numbers(stored))
    for name in stored["plots"].values():
        assert (out / name).stat().st_size > 0 and f"]({name})" in report
    assert {r["group"] for r in stored["runs"]} == {"main", "init", "scaling", "state", "efficiency"}
    # the header counts what the progress bar counted: distinct work items, not run specs of every group
    work = stored["work"]
    assert work["items"] == work["training_runs"] + work["cost_profiles"] + work["precision_studies"]
    assert work["training_runs"] == len({r["key"] for r in stored["runs"]}) < len(stored["runs"])
    assert f"{work['items']} work items ({work['training_runs']} training runs" in report
    assert stored["findings"] and all(f["text"] in report for f in stored["findings"])


@pytest.mark.slow
def test_second_invocation_reuses_every_cached_run(smoke, monkeypatch):
    out, first = smoke

    def must_not_train(*args, **kwargs):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(runner, "train_model", must_not_train)
    again = compare("smoke", out_dir=out, device="cpu", progress=False, studies=["init", "scaling", "state"])
    assert again["runs"] and all(r["cached"] and r["status"] == "ok" for r in again["runs"])
    by_key = {r["key"]: r["eval"] for r in first["runs"]}
    assert all(r["eval"] == by_key[r["key"]] for r in again["runs"])


def test_interrupted_compare_resumes_and_failures_are_reported(tmp_path, monkeypatch):
    selection = {"models": ["mamba", "transformer"], "tasks": ["selective_copying"], "studies": []}
    original = runner.train_model

    def fail_for_transformer(model, *args, **kwargs):
        if any(layer.startswith("attention") for layer in model.config.layer_pattern):
            raise RuntimeError("boom")
        return original(model, *args, **kwargs)

    monkeypatch.setattr(runner, "train_model", fail_for_transformer)
    first = compare("smoke", out_dir=tmp_path, device="cpu", progress=False, **selection)
    status = {r["spec"]["family"]: r["status"] for r in first["runs"]}
    assert status == {"mamba": "ok", "transformer": "failed"}
    report = (tmp_path / "report.md").read_text()
    assert "RuntimeError: boom" in report and "## Failures" in report
    monkeypatch.setattr(runner, "train_model", original)
    second = compare("smoke", out_dir=tmp_path, device="cpu", progress=False, **selection)
    cached = {r["spec"]["family"]: (r["cached"], r["status"]) for r in second["runs"]}
    assert cached == {"mamba": (True, "ok"), "transformer": (False, "ok")}  # failed runs are retried


def test_parallel_jobs_give_the_sequential_results(tmp_path):
    selection = {
        "models": ["mamba", "transformer"],
        "tasks": ["selective_copying", "mqar"],
        "studies": ["cost"],
    }
    sequential = compare("smoke", out_dir=tmp_path / "seq", device="cpu", progress=False, **selection)
    parallel = compare("smoke", out_dir=tmp_path / "par", device="cpu", progress=False, jobs=2, **selection)
    assert [r["key"] for r in parallel["runs"]] == [r["key"] for r in sequential["runs"]]
    for seq, par in zip(sequential["runs"], parallel["runs"], strict=True):
        assert par["status"] == "ok" and not par["cached"]
        assert par["eval"] == seq["eval"] and par["train"]["curve"] == seq["train"]["curve"]
    assert set(parallel["cost"]) == {"mamba", "transformer"}
    assert (tmp_path / "par" / "report.md").is_file()
    again = compare("smoke", out_dir=tmp_path / "par", device="cpu", progress=False, jobs=2, **selection)
    assert all(r["cached"] for r in again["runs"]) and again["wall_s"] < parallel["wall_s"]


def test_bad_selection_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="models"):
        compare("smoke", models=["rnn"], out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="preset"):
        compare("huge", out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="jobs"):
        compare("smoke", out_dir=tmp_path, progress=False, jobs=0)


def test_task_plan_rejects_bad_fields_before_any_training():
    with pytest.raises(ValueError, match="eval_lengths"):
        TaskPlan({}, 32, 32, steps=1, batch_size=2)  # an int, not a tuple: would fail only after training
    with pytest.raises(ValueError, match="positive"):
        TaskPlan({}, 32, (32,), steps=0, batch_size=2)


def test_run_key_ignores_group_and_tracks_content():
    plan = TaskPlan({"vocab_size": 16}, 32, (32,), steps=1, batch_size=2)
    a = RunSpec("main", "mamba", "mqar", plan, ModelSize(32, 2, 4), "smoke", 0)
    b = RunSpec("state", "mamba", "mqar", plan, ModelSize(32, 2, 4), "smoke", 0)
    c = RunSpec("main", "mamba", "mqar", plan, ModelSize(32, 2, 8), "smoke", 0)
    assert a.key == b.key != c.key


def test_run_key_of_same_depth():
    """same_depth changes the key of a matched family only: the Mamba reference's runs (and every run of a
    plan without it, cached before the field existed) keep their keys."""
    plan = TaskPlan({"vocab_size": 16}, 32, (32,), steps=1, batch_size=2)
    deep = dataclasses.replace(plan, same_depth=True)
    spec = lambda family, p: RunSpec("main", family, "mqar", p, ModelSize(32, 2, 4), "smoke", 0)
    assert spec("mamba", plan).key == spec("mamba", deep).key
    assert spec("transformer", plan).key != spec("transformer", deep).key
    blob = {k: v for k, v in dataclasses.asdict(spec("transformer", plan)).items() if k != "group"}
    del blob["plan"]["same_depth"]  # the key as computed before the field
    assert spec("transformer", plan).key == hashlib.sha256(
        json.dumps(blob, sort_keys=True, default=list).encode()).hexdigest()[:16]


def test_a_length_the_task_cannot_generate_fails_before_training(monkeypatch):
    """A phone-book whose longest evaluation book needs more names than exist fails at once, naming the length,
    instead of after the training it would have wasted."""
    from mambalab.experiments import runner

    monkeypatch.setattr(runner, "train_model", lambda *a, **k: pytest.fail("trained before checking the lengths"))
    plan = TaskPlan({"n_letters": 4, "name_len": 1}, 24, (24, 64), steps=2, batch_size=2)
    spec = RunSpec("main", "transformer", "phonebook", plan, ModelSize(16, 2, 4), "smoke", 0)
    with pytest.raises(ValueError, match="evaluation length 64 cannot be generated.*more distinct names"):
        runner.execute(spec, torch.device("cpu"), progress=False)


def test_task_batches_resume_exactly_and_eval_data_is_held_out():
    task = build_task("induction_heads", vocab_size=8)
    plan = TaskPlan({}, 16, (16, 64), steps=4, batch_size=3, eval_examples=5)
    stream = TaskBatches(task, plan, seed=7)
    seen = [next(stream)["input_ids"] for _ in range(3)]
    restored = TaskBatches(task, plan, seed=7)
    restored.load_state_dict({"index": 2})
    assert torch.equal(next(restored)["input_ids"], seen[2])
    held_out = eval_batches(task, plan, 16, seed=7)
    assert sum(b["input_ids"].shape[0] for b in held_out) == 5
    assert not any(
        torch.equal(b["input_ids"][:3], s) for b in held_out for s in seen if b["input_ids"].shape[0] >= 3
    )


def test_report_only_trains_nothing_and_lists_missing_runs(tmp_path, monkeypatch):
    def must_not_train(*args, **kwargs):
        raise AssertionError("report_only trained a model")

    monkeypatch.setattr(runner, "train_model", must_not_train)
    with pytest.raises(ConfigError, match="no compare call has written"):  # a directory compare never wrote to
        compare("smoke", models=["mamba"], tasks=["selective_copying"], out_dir=tmp_path, report_only=True)
    (tmp_path / "invocations.jsonl").write_text(json.dumps({"wall_s": 1.0, "finished": False}) + "\n")
    results = compare(
        "smoke",
        models=["mamba"],
        tasks=["selective_copying"],
        studies=["init"],
        out_dir=tmp_path,
        progress=False,
        report_only=True,
    )
    assert results["runs"] and {r["status"] for r in results["runs"]} == {"missing"}
    assert "not run yet" in (tmp_path / "report.md").read_text()


def test_report_only_describes_the_machine_that_trained(tmp_path):
    """A report rewritten elsewhere (--report-only on a laptop) keeps the training machine's environment."""
    gpu = {"device": "cuda", "device_name": "NVIDIA H200", "torch": "2.11.0", "seed": 0}
    (tmp_path / "invocations.jsonl").write_text(
        json.dumps({"wall_s": 1.0, "jobs": 14, "report_only": False, "finished": True, "environment": gpu}) + "\n"
    )
    kwargs = {"models": ["mamba"], "tasks": ["mqar"], "studies": [], "out_dir": tmp_path, "progress": False}
    assert compare("smoke", report_only=True, **kwargs)["environment"] == gpu
    assert "NVIDIA H200" in (tmp_path / "report.md").read_text()
    trained_here = compare("smoke", device="cpu", **kwargs)  # a call that trains describes its own machine
    assert trained_here["environment"]["device"] == "cpu"


def test_report_only_finds_the_cost_profiles_of_a_gpu_it_does_not_have(tmp_path, monkeypatch):
    """Cost profiles are keyed by the device they ran on: a report rewritten on a machine without that GPU
    reports them as measured, with or without --device naming it, instead of listing them missing."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    kwargs = {"models": ["mamba"], "tasks": [], "studies": ["cost"], "out_dir": tmp_path, "progress": False}
    measured = compare("smoke", device="cpu", **kwargs)["cost"]["mamba"]
    # the same profile as if a GPU had measured it: keyed for cuda, by a call that trained on cuda
    _, (item,) = plan_work(get_compare_preset("smoke"), ["mamba"], [], ["cost"], torch.device("cuda"))
    store = RunStore(tmp_path)
    store.put(item.key, measured)
    gpu = {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "seed": 0}
    trained = {"wall_s": 60.0, "jobs": 12, "report_only": False, "finished": True, "environment": gpu}
    store.invocations_path.write_text(json.dumps(trained) + "\n")
    for device in ("auto", "cuda"):
        reported = compare("smoke", device=device, report_only=True, **kwargs)
        assert reported["cost"]["mamba"]["decode"] == measured["decode"]
        assert reported["work"]["not_ok"] == 0
    assert "missing" not in (tmp_path / "report.md").read_text()


ENDLESS_COMPARE = """
import dataclasses, sys
from mambalab.experiments import presets
from mambalab.experiments.compare import compare, plan_work
smoke = presets.get_compare_preset("smoke")
endless = dataclasses.replace(smoke, tasks={**smoke.tasks, "lm": dataclasses.replace(smoke.tasks["lm"], steps=10**4)})
presets.PRESETS["endless"] = lambda: endless
compare("endless", models=["mamba", "transformer"], tasks=["lm"], studies=[], out_dir=sys.argv[1], device="cpu",
        progress=False, jobs=2)
"""


@pytest.mark.slow
def test_sigterm_stops_parallel_workers_and_leaves_nothing_cached(tmp_path):
    """`timeout` sends SIGTERM to the main process only: no worker may outlive it (a worker holding the
    stdout pipe would hang `compare ... | tail`), and the interrupted runs are not cached as done."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", ENDLESS_COMPARE, str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    while len(list(out.glob("runs/*.work"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0].decode()
    time.sleep(1.0)  # both workers training
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)  # EOF only once every process holding the pipe has exited
    assert proc.returncode != 0, output.decode()
    assert not list(out.glob("runs/*.json"))


def test_every_call_is_logged_and_the_report_counts_the_training_calls(tmp_path):
    selection = {"models": ["mamba"], "tasks": ["selective_copying"], "studies": []}
    compare("smoke", out_dir=tmp_path, device="cpu", progress=False, **selection)
    results = compare("smoke", out_dir=tmp_path, device="cpu", progress=False, report_only=True, **selection)
    calls = results["invocations"]
    assert [(c["report_only"], c["finished"]) for c in calls] == [(False, True), (True, True)]
    assert all(c["wall_s"] >= 0 and c["jobs"] >= 1 for c in calls)
    header = (tmp_path / "report.md").read_text().splitlines()[2]
    assert f"calls that trained: 1, {calls[0]['wall_s']:.0f} s in total" in header


def test_user_corpus_feeds_every_lm_run_and_a_missing_one_is_refused(tmp_path):
    corpus = tmp_path / "my.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    results = compare(
        "smoke",
        models=["mamba"],
        tasks=["lm"],
        studies=["scaling"],
        out_dir=tmp_path / "out",
        device="cpu",
        progress=False,
        corpus=corpus,
    )
    lm_runs = [r for r in results["runs"] if r["spec"]["task"] == "lm"]
    assert len(lm_runs) > 1 and all(r["status"] == "ok" for r in lm_runs)
    assert all(r["spec"]["plan"]["options"]["corpus"] == str(corpus.resolve()) for r in lm_runs)
    notes = results["preset"]["notes"]
    assert f"on the corpus my.txt (sha256 {hashlib.sha256(corpus.read_bytes()).hexdigest()[:12]}…)" in notes[-1]
    assert not any("want a real corpus" in n for n in notes)
    with pytest.raises(ValueError, match="corpus"):
        compare(
            "smoke", tasks=["lm"], out_dir=tmp_path / "out", progress=False, corpus=tmp_path / "missing.txt"
        )
    moved = tmp_path / "elsewhere" / "same.txt"  # the same content at another path: the cache still holds it
    moved.parent.mkdir()
    moved.write_bytes(corpus.read_bytes())
    resumed = compare("smoke", models=["mamba"], tasks=["lm"], studies=["scaling"], out_dir=tmp_path / "out",
                      device="cpu", progress=False, corpus=moved, report_only=True)
    assert [r["status"] for r in resumed["runs"] if r["spec"]["task"] == "lm"] == ["ok"] * len(lm_runs)
    corpus.write_text("changed")  # the cached runs were keyed on the old content: they are not reused
    again = compare(
        "smoke",
        models=["mamba"],
        tasks=["lm"],
        studies=[],
        out_dir=tmp_path / "out",
        device="cpu",
        progress=False,
        corpus=corpus,
        report_only=True,
    )
    assert {r["status"] for r in again["runs"]} == {"missing"}


def _timestamps(seconds: float, work_dir) -> dict:
    """A work item that takes `seconds` and says when it ran (module level: picklable for worker processes)."""
    start = time.time()
    time.sleep(seconds)
    return {"started": start, "ended": time.time()}


def test_timed_items_run_alone_after_the_parallel_runs(tmp_path):
    from functools import partial

    from mambalab.experiments.compare import WorkItem, run_all
    from mambalab.experiments.runner import RunStore

    items = [WorkItem("timed", "t", {}, partial(_timestamps, 0.0), timed=True)] + [
        WorkItem(f"run{i}", f"r{i}", {}, partial(_timestamps, 0.5), weight=1.0) for i in range(3)
    ]
    records = run_all(items, RunStore(tmp_path), progress=False, jobs=2)
    assert all(r["status"] == "ok" for r in records.values())
    assert records["t"]["started"] >= max(records[f"r{i}"]["ended"] for i in range(3))


@pytest.mark.parametrize("name", ["smoke", "quick", "standard", "paper"])
def test_every_preset_plans_its_work_and_a_task_depth_reaches_its_runs(name):
    from mambalab.experiments.compare import STUDIES, plan_work
    from mambalab.experiments.presets import get_compare_preset

    preset = get_compare_preset(name)
    specs, items = plan_work(preset, preset.models, tuple(preset.tasks), STUDIES, torch.device("cpu"), False)
    assert len({item.key for item in items}) == len(items) and specs
    assert len({item.label for item in items}) == len(items)  # the progress list never shows a label twice
    for spec in specs:
        plan_depth = spec.plan.n_layer or preset.size.n_layer
        if spec.group in ("main", "state"):
            assert spec.size.n_layer == plan_depth, spec.label
    depths = {s.size.n_layer for s in specs if s.group == "main" and s.task == "selective_copying"}
    expected = preset.tasks["selective_copying"].n_layer or preset.size.n_layer
    assert depths == {expected}


def test_studies_plan_the_zoology_lr_sweep_and_the_sample_efficiency_budgets():
    from mambalab.experiments.presets import get_compare_preset
    from mambalab.experiments.studies import efficiency_specs, state_specs

    standard = get_compare_preset("standard")
    state = state_specs(standard)
    assert {s.plan.lr for s in state} == set(standard.state.lrs)
    # lrs × (Mamba's N + widths × families), Mamba at the reference width and N once: no run listed twice
    assert len(state) == len({s.key for s in state}) == 4 * (3 + 3 * 4 - 1)
    efficiency = efficiency_specs(standard, ("mamba", "transformer"))
    assert sorted({s.plan.steps for s in efficiency}) == list(standard.efficiency.steps)
    assert {s.seed for s in efficiency} == set(standard.seeds) and {s.task for s in efficiency} == {"copying"}
    main_copying = [s for s in main_specs(standard, ("mamba",), ("copying",))]
    assert {s.key for s in main_copying} <= {s.key for s in efficiency}  # the largest budget is the main run


def test_peak_memory_of_a_resumed_run_counts_its_earlier_segments(monkeypatch):
    """A run resumed in a new process reports the largest peak of all its segments (logged in its records before
    the restart), not only the last segment's; None off CUDA."""
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 1e9)  # this segment: 1 GB
    cuda = torch.device("cuda")
    earlier = [{"step": 10, "loss": 1.0, "peak_gb": 2.5}, {"step": 20, "loss": 0.9, "peak_gb": 2.4}]
    assert runner.peak_memory_gb(earlier + [{"step": 30, "loss": 0.8, "peak_gb": 1.0}], cuda) == 2.5
    assert runner.peak_memory_gb([{"step": 30, "loss": 0.8}], cuda) == 1.0
    assert runner.peak_memory_gb(earlier, torch.device("cpu")) is None


def _visible_gpu(work_dir) -> dict:
    """A work item that says which GPUs its worker process was given (module level: picklable)."""
    import os

    time.sleep(0.3)
    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


def test_workers_are_spread_over_the_given_gpus(tmp_path):
    from functools import partial

    from mambalab.experiments.compare import WorkItem, run_all
    from mambalab.experiments.runner import RunStore

    items = [WorkItem(f"run{i}", f"r{i}", {}, partial(_visible_gpu), weight=1.0) for i in range(3)]
    records = run_all(items, RunStore(tmp_path), progress=False, jobs=2, gpus=["5", "7"])
    seen = [records[f"r{i}"]["visible"] for i in range(3)]
    assert sorted(seen[:2]) == ["5", "7"]  # two at once: one on each GPU
    assert seen[2] in ("5", "7")


def test_least_busy_gpu_and_which_gpus_a_device_spreads_over(monkeypatch):
    from mambalab.device import gpus_to_spread_over
    from mambalab.experiments.workers import least_busy

    assert least_busy([], []) is None
    assert least_busy(["0", "1", "2"], ["0", "1", "0"]) == "2"
    assert least_busy(["0", "1"], ["1"]) == "0"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6,7")
    assert gpus_to_spread_over(torch.device("cuda")) == ["4", "6", "7"]
    assert gpus_to_spread_over(torch.device("cuda:1")) == []  # pinned by the user
    assert gpus_to_spread_over(torch.device("cpu")) == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpus_to_spread_over(torch.device("cuda")) == ["0", "1", "2"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert gpus_to_spread_over(torch.device("cuda")) == []
