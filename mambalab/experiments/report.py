"""The comparison report: report.md (tables, plots, findings, environment), PNG plots and results.json.

Every section is always present; a section whose study was not selected, or whose runs all failed, says
so. Failed runs are listed with their error. Numbers come only from the results dict, findings only from
the rules in findings.py.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from mambalab.atomic import write_json_atomic
from mambalab.experiments.findings import evaluate_findings, metric_at, pct, train_metric
from mambalab.experiments.plots import write_plots

SECTIONS = (
    "Findings",
    "Tasks",
    "Training",
    "Cost",
    "Precision",
    "Init",
    "Scaling",
    "State size",
    "Failures",
    "Environment",
)


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return (
            f"{x:.{digits}g}" if abs(x) < 1e-3 or abs(x) >= 1e4 else f"{x:.{digits}f}".rstrip("0").rstrip(".")
        )
    return str(x)


def _cell(run: dict, length: int, scale) -> str:
    metrics = run["eval"].get(str(length), {})
    return metrics["error"] if "error" in metrics else scale(metric_at(run, length))


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _img(plots: dict, name: str) -> list[str]:
    return [f"![{name}]({plots[name]})", ""] if plots.get(name) else []


def _task_section(results: dict, plots: dict) -> list[str]:
    out = []
    for task in results["selection"]["tasks"]:
        task_runs = [r for r in results["runs"] if r["group"] == "main" and r["spec"]["task"] == task]
        if not task_runs:
            continue
        plan = task_runs[0]["spec"]["plan"]
        lengths = list(plan["eval_lengths"])
        ok = [r for r in task_runs if r["status"] == "ok"]
        headline = ok[0]["headline"] if ok else "metric"
        scale = (lambda x: pct(x, unit="")) if headline != "bits_per_byte" else (lambda x: _fmt(x))
        unit = "%" if headline != "bits_per_byte" else ""
        out.append(f"### {task}: {headline.replace('_', ' ')}{' (%)' if unit else ''} by length")
        out.append(
            f"Budget per model: {plan['steps']} steps × batch {plan['batch_size']} × length "
            f"{plan['train_length']} = {plan['steps'] * plan['batch_size'] * plan['train_length']:,} tokens; "
            f"{plan['eval_examples']} held-out examples per length; options {plan['options']}."
        )
        out.append("")
        header = ["model", "layers", "params"] + [
            f"{n}{' (train)' if n == plan['train_length'] else ''}" for n in lengths
        ]
        rows = []
        for r in task_runs:
            if r["status"] != "ok":
                rows.append([r["spec"]["family"], "—", "—"] + [r["status"]] * len(lengths))
                continue
            depth, params = r["config"]["n_layer"], f"{r['params']:,}"
            rows.append([r["spec"]["family"], str(depth), params] + [_cell(r, n, scale) for n in lengths])
        out += _table(header, rows)
    if not out:
        return ["No task was run in this selection.", ""]
    return out + _img(plots, "accuracy_vs_length.png")


def _training_section(results: dict, plots: dict) -> list[str]:
    rows = [
        [
            r["group"],
            r["spec"]["task"],
            r["spec"]["family"],
            _label_overrides(r),
            f"{r['params']:,}",
            _fmt(r["train"]["final_loss"]),
            f"{r['train']['tokens_per_s']:,.0f}",
            _fmt(r["train"]["wall_s"], 2),
            _fmt(r["train"]["peak_memory_gb"]),
        ]
        for r in results["runs"]
        if r["status"] == "ok"
    ]
    if not rows:
        return ["No training run succeeded.", ""]
    header = [
        "group",
        "task",
        "model",
        "variant (reference size)",
        "params",
        "final loss",
        "train tokens/s",
        "wall s",
        "peak GB",
    ]
    return _table(header, rows) + _img(plots, "training_loss.png")


def _label_overrides(run: dict) -> str:
    s = run["spec"]
    parts = [f"{k}.{kk}={vv}" for k, v in s["overrides"].items() for kk, vv in v.items()]
    size = s["size"]
    parts.append(f"d{size['d_model']}×{size['n_layer']}, N={size['d_state']}, L={s['plan']['train_length']}")
    return "; ".join(parts)


def _cost_section(results: dict, plots: dict) -> list[str]:
    cost = results.get("cost") or {}
    if not cost:
        return ["Cost profiling was not selected.", ""]
    prefixes = sorted({d["prefix"] for c in cost.values() if c["status"] == "ok" for d in c["decode"]})
    header = (
        ["model", "params", "train tokens/s", "train peak GB"]
        + [f"ms/token @{p}" for p in prefixes]
        + ["state MB"]
    )
    rows = []
    for family, c in cost.items():
        if c["status"] != "ok":
            rows.append([family] + [c["status"]] * (len(header) - 1))
            continue
        by_p = {d["prefix"]: d for d in c["decode"]}
        rows.append(
            [family, f"{c['params']:,}", f"{c['train_tokens_per_s']:,.0f}", _fmt(c["train_peak_memory_gb"])]
            + [_fmt(by_p[p]["ms_per_token"]) if p in by_p else "—" for p in prefixes]
            + [_fmt(c["decode"][-1]["state_bytes"] / 1e6)]
        )
    return (
        [
            (
                "Decode: `prefill(prefix)`, then greedy `step` per token at batch 1; state = InferenceState bytes "
                "after the longest prefix (KV cache for attention)."
            ),
            "",
        ]
        + _table(header, rows)
        + _img(plots, "decode_latency.png")
    )


def _precision_section(results: dict, plots: dict) -> list[str]:
    rec = results.get("precision")
    if not rec:
        return ["The precision study was not selected.", ""]
    if rec["status"] != "ok":
        return [f"The precision study failed: {rec['error']}", ""]
    header = ["model", "level", "mode", "dtype", "length", "max rel. error", "mean rel. error"]
    rows = [
        [
            r["model"],
            r["level"],
            r["mode"],
            r["dtype"],
            r["length"],
            _fmt(r["max_rel_error"]),
            _fmt(r["mean_rel_error"]) if r["max_rel_error"] is not None else r.get("error", "—"),
        ]
        for r in rec["rows"]
    ]
    return (
        [
            (
                "Every mode against a float64 oracle (op level: the for-loop reference scan; logits: float64 "
                "token-by-token `step`); error per position ‖out−ref‖/‖ref‖, max and mean over positions."
            ),
            "",
        ]
        + _table(header, rows)
        + _img(plots, "precision_error.png")
    )


def _study_table(results: dict, group: str, empty: str) -> list[str]:
    sel = [r for r in results["runs"] if r["group"] == group]
    if not sel:
        return [empty, ""]
    rows = []
    for r in sel:
        s = r["spec"]
        value = r["status"] if r["status"] != "ok" else _fmt(train_metric(r))
        extra = _fmt(r["eval"][str(s["plan"]["train_length"])]["loss"]) if r["status"] == "ok" else "—"
        flops = _fmt(float(r["flops_per_token"] * r["train"]["tokens"])) if r["status"] == "ok" else "—"
        rows.append(
            [s["task"], s["family"], _label_overrides(r), f"{r.get('params', 0):,}", value, extra, flops]
        )
    return _table(
        ["task", "model", "variant", "params", "headline metric", "eval loss", "training FLOPs"], rows
    )


def _training_calls(calls: list[dict]) -> str:
    """' (the calls that trained: 2, 912 s)' — every `compare` call on this output folder but report-only ones."""
    trained = [c for c in calls if not c.get("report_only")]
    if not trained:
        return ""
    jobs = sorted({c.get("jobs", 1) for c in trained})
    return (
        f" (calls that trained: {len(trained)}, {sum(c['wall_s'] for c in trained):.0f} s in total, "
        f"{'/'.join(map(str, jobs))} run(s) at a time)"
    )


def render(results: dict, findings: list, plots: dict) -> str:
    env = results["environment"]
    preset = results["preset"]
    lines = [
        f"# mambalab compare — preset `{preset['name']}`",
        "",
        (
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC · device `{env['device']}` "
            f"({env['device_name']}) · wall time of this invocation {results['wall_s']:.0f} s"
            f"{_training_calls(results.get('invocations', []))}, compute time of all "
            f"items (cached ones included) {results['compute_s']:.0f} s, their CPU time {results['cpu_s']:.0f} s "
            f"· models: {', '.join(results['selection']['models'])}"
        ),
        "",
        "Reference model: Mamba d_model={d_model}, {n_layer} layers, d_state={d_state}; every other family matched "
        "to its parameter count (±3%) by the model zoo.".format(**preset["size"]),
        "",
        *[f"Note: {note}" for note in preset["notes"]],
        "",
        "## Findings",
        "",
        (
            "Each finding is a rule evaluated on the numbers below (mambalab/experiments/findings.py); a contrast that "
            "did not hold is reported as such."
        ),
        "",
    ]
    lines += [f"- {f.text}" for f in findings] or ["- No finding: too little was run."]
    lines += ["", "## Tasks", ""] + _task_section(results, plots)
    lines += ["## Training", ""] + _training_section(results, plots)
    lines += ["## Cost", ""] + _cost_section(results, plots)
    lines += ["## Precision", ""] + _precision_section(results, plots)
    lines += [
        "## Init",
        "",
        (
            "HiPPO vs random: S4D on copying memory (data at the start, then a long delay), "
            "Mamba's A_init on language modelling."
        ),
        "",
    ]
    lines += _study_table(results, "init", "The init study was not selected.")
    lines += ["## Scaling", ""] + _study_table(results, "scaling", "The scaling study was not selected.")
    lines += _img(plots, "loss_vs_flops.png")
    lines += ["## State size", ""] + _study_table(results, "state", "The state-size study was not selected.")
    lines += _img(plots, "state_size.png")
    lines += ["## Failures", ""] + _failures(results)
    lines += ["## Environment", ""] + _table(["key", "value"], [[k, v] for k, v in env.items()])
    return "\n".join(lines)


def _failures(results: dict) -> list[str]:
    failed = [
        (r["spec"]["task"] + "/" + r["spec"]["family"], r) for r in results["runs"] if r["status"] != "ok"
    ]
    failed += [(f"cost/{f}", c) for f, c in (results.get("cost") or {}).items() if c["status"] != "ok"]
    if results.get("precision") and results["precision"]["status"] != "ok":
        failed.append(("precision", results["precision"]))
    if not failed:
        return ["None.", ""]
    out = []
    for label, r in failed:
        out += [f"- **{label}** (`{r['key']}`, {r['status']}): {r['error']}", ""]
        out += ["```", r["traceback"].rstrip(), "```", ""] if "traceback" in r else []
    return out


def write_report(results: dict, out_dir: Path) -> Path:
    """Write the plots, results.json (with the findings) and report.md into `out_dir`; returns report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    findings = evaluate_findings(results)
    plots = write_plots(results, out_dir)
    results["findings"] = [f.to_dict() for f in findings]
    results["plots"] = {k: v for k, v in plots.items() if v}
    write_json_atomic(out_dir / "results.json", results)
    path = out_dir / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(render(results, findings, plots))
    tmp.replace(path)
    return path
