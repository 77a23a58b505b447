"""The comparison report: report.md (tables, plots, findings, environment), PNG plots and results.json.

Every section is always present; a section whose study was not selected, or whose runs all failed, says
so. Failed runs are listed with their error. Numbers come only from the results dict, findings only from
the rules in findings.py.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from mambalab.atomic import write_json_atomic
from mambalab.experiments.findings import (
    efficiency_curves,
    evaluate_findings,
    metric_at,
    pct,
    tokens_text,
    train_metric,
)
from mambalab.experiments.plots import write_plots
from mambalab.experiments.seeds import Spread, by_cell

SECTIONS = (
    "Findings",
    "Tasks",
    "Training",
    "Cost",
    "Precision",
    "Init",
    "Scaling",
    "State size",
    "Sample efficiency",
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


def _pct(x) -> str:
    return pct(x, unit="")


def _is_accuracy(headline: str) -> bool:
    """Accuracies are shown in % everywhere; bits per byte (language modelling) as is."""
    return headline != "bits_per_byte"


def _headline_value(headline: str, x) -> str:
    """'93.0%' for an accuracy, '2.31 bits/byte' for language modelling."""
    if x is None:
        return "—"
    return f"{100 * x:.1f}%" if _is_accuracy(headline) else f"{_fmt(x)} bits/byte"


def _spread(values: list, scale) -> str:
    spread = Spread.of(values)
    return "—" if spread is None else spread.format(scale)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _img(plots: dict, name: str) -> list[str]:
    return [f"![{name}]({plots[name]})", ""] if plots.get(name) else []


def _seeds_ok(cell: list[dict]) -> str:
    ok = sum(r["status"] == "ok" for r in cell)
    return str(ok) if ok == len(cell) else f"{ok} of {len(cell)}"


def _shape(config: dict) -> str:
    """'4 × d32, N=16': a model's depth, width and, for Mamba or Mamba-2 layers, the state size N per channel
    or head (a matched Mamba-2 chooses its N and may change the width)."""
    mixers = {entry.split("+")[0] for entry in config["layer_pattern"]}
    shape = f"{config['n_layer']} × d{config['d_model']}"
    if "mamba2" in mixers:
        return f"{shape}, N={config['mamba2']['d_state']}"
    return f"{shape}, N={config['ssm']['d_state']}" if "mamba" in mixers else shape


def _task_section(results: dict, plots: dict) -> list[str]:
    out = []
    seeds = results["preset"].get("seeds", [results["preset"].get("seed", 0)])
    for task in results["selection"]["tasks"]:
        task_runs = [r for r in results["runs"] if r["group"] == "main" and r["spec"]["task"] == task]
        if not task_runs:
            continue
        plan = task_runs[0]["spec"]["plan"]
        lengths = list(plan["eval_lengths"])
        ok = [r for r in task_runs if r["status"] == "ok"]
        headline = ok[0]["headline"] if ok else "metric"
        scale = _pct if _is_accuracy(headline) else _fmt
        unit = " (%)" if _is_accuracy(headline) else ""
        out.append(f"### {task}: {headline.replace('_', ' ')}{unit} by length")
        out.append(
            f"Budget per model: {plan['steps']} steps × batch {plan['batch_size']} × length "
            f"{plan['train_length']} = {plan['steps'] * plan['batch_size'] * plan['train_length']:,} tokens, "
            f"lr {plan['lr']:g}; {plan['eval_examples']} held-out examples per length; options {plan['options']}. "
            + (f"Mean over seeds {', '.join(map(str, seeds))} (min-max)." if len(seeds) > 1 else "")
        )
        out.append("")
        header = ["model", "layers × width, N", "params", "seeds"] + [
            f"{n}{' (train)' if n == plan['train_length'] else ''}" for n in lengths
        ]
        rows = []
        for cell in by_cell(task_runs):
            good = [r for r in cell if r["status"] == "ok"]
            family = cell[0]["spec"]["family"]
            if not good:
                rows.append([family, "—", "—", _seeds_ok(cell)] + [cell[0]["status"]] * len(lengths))
                continue
            first = good[0]
            row = [family, _shape(first["config"]), f"{first['params']:,}", _seeds_ok(cell)]
            for n in lengths:
                errors = [r["eval"].get(str(n), {}).get("error") for r in good]
                row.append(next(e for e in errors if e) if any(errors) else _spread(
                    [metric_at(r, n) for r in good], scale))
            rows.append(row)
        out += _table(header, rows)
    if not out:
        return ["No task was run in this selection.", ""]
    return out + _img(plots, "accuracy_vs_length.png")


def _epochs(run: dict) -> str:
    data = run.get("dataset_tokens")
    return "—" if not data else f"{run['train']['tokens'] / data['train']:.3g}"


def _training_section(results: dict, plots: dict) -> list[str]:
    rows = []
    for cell in by_cell([r for r in results["runs"] if r["status"] == "ok"]):
        r = cell[0]
        length = str(r["spec"]["plan"]["train_length"])
        rows.append(
            [
                r["group"],
                r["spec"]["task"],
                r["spec"]["family"],
                _label_overrides(r),
                f"{r['params']:,}",
                str(len(cell)),
                _spread([c["train"]["final_loss"] for c in cell], _fmt),
                _spread([c["eval"].get(length, {}).get("loss") for c in cell], _fmt),
                f"{r['train']['tokens']:,}",
                _epochs(r),
                f"{Spread.of([c['train']['tokens_per_s'] for c in cell]).mean:,.0f}",
                _fmt(Spread.of([c["train"]["wall_s"] for c in cell]).mean, 2),
                _fmt(r["train"]["peak_memory_gb"]),
            ]
        )
    if not rows:
        return ["No training run succeeded.", ""]
    header = [
        "group",
        "task",
        "model",
        "variant (reference size)",
        "params",
        "seeds",
        "final train loss",
        "eval loss (train length)",
        "tokens seen",
        "epochs",
        "tokens/s (shared)",
        "wall s",
        "peak GB",
    ]
    jobs = sorted({c.get("jobs", 1) for c in results.get("invocations", []) if not c.get("report_only")})
    note = (
        "Losses in nats/token, mean over seeds (min-max); train loss is the mean of the last logging window, "
        "eval loss is on held-out data at the training length (for language modelling, a train loss far below "
        "the eval loss means the corpus was memorised). Epochs: tokens seen / tokens in the training split "
        "(— for the synthetic tasks, which never repeat an example). tokens/s (shared): the trainer's measure "
        "(tokens over the time of the training steps, mean of its logging windows after the first) while "
        f"{'/'.join(map(str, jobs)) or 'one'} run(s) shared the machine; the Cost section measures the same "
        "way with each model alone on language modelling at one shape, so the two columns differ by shape, "
        "task and sharing."
    )
    return [note, ""] + _table(header, rows) + _img(plots, "training_loss.png")


def _label_overrides(run: dict) -> str:
    s = run["spec"]
    parts = [f"{k}.{kk}={vv}" for k, v in s["overrides"].items() for kk, vv in v.items()]
    size = s["size"]
    parts.append(
        f"d{size['d_model']}×{size['n_layer']}, N={size['d_state']}, L={s['plan']['train_length']}, "
        f"lr {s['plan']['lr']:g}, {s['plan']['steps']} steps"
    )
    return "; ".join(parts)


def _decode_cell(d: dict) -> str:
    """'0.41 (0.39-0.47)': median ms/token over the repeats (min-max); older records hold one number."""
    if "ms_min" not in d:
        return _fmt(d["ms_per_token"])
    return f"{_fmt(d['ms_per_token'])} ({_fmt(d['ms_min'])}-{_fmt(d['ms_max'])})"


def _cost_section(results: dict, plots: dict) -> list[str]:
    cost = results.get("cost") or {}
    if not cost:
        return ["Cost profiling was not selected.", ""]
    study = results["preset"]["cost"]
    prefixes = sorted({d["prefix"] for c in cost.values() if c["status"] == "ok" for d in c["decode"]})
    header = (
        ["model", "params", "train tokens/s (alone)", "train peak GB"]
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
            + [_decode_cell(by_p[p]) if p in by_p else "—" for p in prefixes]
            + [_fmt(c["decode"][-1]["state_bytes"] / 1e6)]
        )
    return (
        [
            (
                "Each model alone on the machine, after every training run. Training: language modelling at "
                f"batch {study['train_batch']} × length {study['train_length']} for {study['train_steps']} steps, "
                "tokens/s measured as in the Training section. Decode: `prefill(prefix)`, then greedy `step` per "
                f"token at batch 1; ms/token is the median over {study.get('repeats', 1)} timed loops of "
                f"{study['decode_tokens']} tokens (min-max in brackets), after a warm-up loop; state = "
                "InferenceState bytes after the longest prefix (KV cache for attention)."
            ),
            "",
        ]
        + _table(header, rows)
        + _img(plots, "decode_latency.png")
    )


DTYPE_ORDER = ("float64", "float32", "bfloat16", "float16")


def _precision_section(results: dict, plots: dict) -> list[str]:
    rec = results.get("precision")
    if not rec:
        return ["The precision study was not selected.", ""]
    if rec["status"] != "ok":
        return [f"The precision study failed: {rec['error']}", ""]
    worst = worst_precision_errors(rec["rows"])
    dtypes = [d for d in DTYPE_ORDER if any(k[3] == d for k in worst)]
    rows = []
    for model, level, mode in dict.fromkeys(k[:3] for k in worst):
        cells = []
        for dtype in dtypes:
            row = worst.get((model, level, mode, dtype))
            if row is None:
                cells.append("—")
            elif row["max_rel_error"] is None:
                cells.append(row.get("error", "—"))
            else:
                cells.append(f"{_fmt(row['max_rel_error'])} (L={row['length']})")
        rows.append([model, level, mode, *cells])
    lengths = sorted({r["length"] for r in rec["rows"]})
    return (
        [
            (
                "Every mode against a float64 oracle (op level: the for-loop reference scan; logits: float64 "
                "token-by-token `step`); error per position ‖out−ref‖/‖ref‖. Each cell is the worst max error "
                f"over positions and lengths {', '.join(map(str, lengths))} (the length where it occurs); every "
                "row with its mean error is in results.json (`precision.rows`)."
            ),
            "",
        ]
        + _table(["model", "level", "mode", *dtypes], rows)
        + _img(plots, "precision_error.png")
    )


def worst_precision_errors(rows: list[dict]) -> dict[tuple, dict]:
    """{(model, level, mode, dtype): the row with the largest max error over lengths}; a row that failed
    (max error None) is kept only when no length of its group succeeded."""
    worst = {}
    for r in rows:
        key = (r["model"], r["level"], r["mode"], r["dtype"])
        best = worst.get(key)
        if best is None or (r["max_rel_error"] is not None and (
                best["max_rel_error"] is None or r["max_rel_error"] > best["max_rel_error"])):
            worst[key] = r
    return worst


def _study_table(results: dict, group: str, empty: str) -> list[str]:
    sel = [r for r in results["runs"] if r["group"] == group]
    if not sel:
        return [empty, ""]
    rows = []
    for r in sel:
        s = r["spec"]
        value = r["status"] if r["status"] != "ok" else _headline_value(r["headline"], train_metric(r))
        extra = _fmt(r["eval"][str(s["plan"]["train_length"])]["loss"]) if r["status"] == "ok" else "—"
        flops = _fmt(float(r["flops_per_token"] * r["train"]["tokens"])) if r["status"] == "ok" else "—"
        rows.append(
            [s["task"], s["family"], _label_overrides(r), f"{r.get('params', 0):,}", value, extra, flops]
        )
    return _table(
        ["task", "model", "variant", "params", "headline metric (train length)", "eval loss", "training FLOPs"],
        rows,
    )


def _efficiency_section(results: dict, plots: dict) -> list[str]:
    curves = efficiency_curves(results)
    if not curves:
        return ["The sample-efficiency study was not selected.", ""]
    budgets = sorted({t for c in curves.values() for t in c})
    rows = [
        [family] + [_spread(list(c[t].values()), _pct) if t in c else "—" for t in budgets]
        for family, c in sorted(curves.items())
    ]
    return (
        [
            (
                "Accuracy (%) at the training length after each training budget (each its own run and "
                "learning-rate schedule; mean over seeds, min-max): how fast each family learns the task."
            ),
            "",
        ]
        + _table(["model"] + [f"{tokens_text(t)} tokens" for t in budgets], rows)
        + _img(plots, "sample_efficiency.png")
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


def _work_line(results: dict) -> str:
    """The counts the progress bar showed: '36 work items (32 training runs, 3 cost profiles, 1 precision)'."""
    work = results.get("work")
    if not work:
        return f"{len(results['runs'])} runs"
    return (
        f"{work['items']} work items ({work['training_runs']} training runs, {work['cost_profiles']} cost "
        f"profiles, {work['precision_studies']} precision study; {work['not_ok']} not ok)"
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
            f"· {_work_line(results)} · models: {', '.join(results['selection']['models'])}"
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
    lines += ["## Sample efficiency", ""] + _efficiency_section(results, plots)
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
