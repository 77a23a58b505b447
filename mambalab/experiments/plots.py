"""PNG plots of the comparison (matplotlib, Agg backend: no display needed).

Each function takes the results dict and an output path, draws what is there, and returns the file name,
or None when the results hold nothing to draw (a study not run, every run failed). Every figure is titled
with the preset and the device; every panel has its own legend; accuracies are in %; over several seeds a
line is the mean and the band the min-max; values ≤ 0 are left out of log axes (not drawn at a floor).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import matplotlib
from matplotlib import ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from mambalab.experiments.families import FAMILY_INFO
from mambalab.experiments.findings import efficiency_curves, metric_at, runs, tokens_text, train_metric
from mambalab.experiments.seeds import Spread, by_cell

FAMILY_STYLE = {name: family.color for name, family in FAMILY_INFO.items()}


def _style(
    ax,
    title: str | None,
    xlabel: str,
    ylabel: str,
    xlog2: bool = True,
    ylog: bool = False,
    legend: int | None = 8,
) -> None:
    if xlog2:
        ax.set_xscale("log", base=2)
    if ylog:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend:
        ax.legend(fontsize=legend)


def _title(fig, results: dict, what: str) -> None:
    env = results.get("environment", {})
    where = env.get("device_name") or env.get("device", "?")
    text = f"{what} — preset {results['preset']['name']}, {where} ({env.get('device', '?')})"
    fig.suptitle(textwrap.fill(text, width=int(12 * fig.get_figwidth())), fontsize=10)  # ~12 characters an inch


def _log_x(ax, label: Callable[[float], str]) -> None:
    """A log x axis labelled at 1, 2 and 5 of each decade by `label` (the default minor labels overlap when
    the data spans less than two decades)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: label(x)))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def _percent(headline: str):
    """(scale, unit) of a headline metric: accuracies ×100 in %, bits per byte as is."""
    return (1.0, "") if headline == "bits_per_byte" else (100.0, "(%)")


def _positive(points: list[tuple]) -> list[tuple]:
    """Points whose y is > 0: a log axis cannot show 0, and a floor value would draw a false number."""
    return [p for p in points if p[1] is not None and p[1] > 0]


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def accuracy_vs_length(results: dict, path: Path) -> str | None:
    tasks = [t for t in results["selection"]["tasks"] if runs(results, "main", t)]
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        task_runs = runs(results, "main", task)
        factor, unit = _percent(task_runs[0]["headline"])
        for cell in by_cell(task_runs):
            lengths = sorted({int(k) for r in cell for k in r["eval"] if metric_at(r, int(k)) is not None})
            spreads = [Spread.of([metric_at(r, n) for r in cell]) for n in lengths]
            family = cell[0]["spec"]["family"]
            seeds = f" ({len(cell)} seeds)" if len(cell) > 1 else ""
            ax.plot(
                lengths,
                [factor * sp.mean for sp in spreads],
                "o-",
                color=FAMILY_STYLE.get(family),
                label=family + seeds,
            )
            if len(cell) > 1:
                ax.fill_between(
                    lengths,
                    [factor * sp.low for sp in spreads],
                    [factor * sp.high for sp in spreads],
                    color=FAMILY_STYLE.get(family),
                    alpha=0.2,
                    lw=0,
                )
        ax.axvline(task_runs[0]["spec"]["plan"]["train_length"], color="grey", ls=":", lw=1)
        headline = task_runs[0]["headline"].replace("_", " ")
        _style(ax, task, "length (tokens); dotted: training length", f"{headline} {unit}")
    _title(fig, results, "Main grid: mean over seeds, band min-max")
    return _save(fig, path)


def loss_vs_flops(results: dict, path: Path) -> str | None:
    scaling = runs(results, "scaling")
    if not scaling:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    series = {}
    for r in scaling:
        length = r["spec"]["plan"]["train_length"]
        flops = r["flops_per_token"] * r["train"]["tokens"]
        series.setdefault((r["spec"]["family"], length), []).append((flops, r["eval"][str(length)]["loss"]))
    for (family, length), points in sorted(series.items()):
        points.sort()
        ls = "-" if length == min(k[1] for k in series) else "--"
        ax.plot(*zip(*points), "o" + ls, color=FAMILY_STYLE.get(family), label=f"{family} L={length}")
    _log_x(ax, lambda x: f"{x:.0e}".replace("e+", "e"))
    _style(ax, None, "training FLOPs (flops_per_token × tokens)", "eval loss (nats/token)", xlog2=False)
    _title(fig, results, "Scaling")
    return _save(fig, path)


def decode_latency(results: dict, path: Path) -> str | None:
    cost = {f: c for f, c in results.get("cost", {}).items() if c.get("status") == "ok"}
    if not cost:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for family, c in sorted(cost.items()):
        d = sorted(c["decode"], key=lambda x: x["prefix"])
        medians = [x["ms_per_token"] for x in d]
        spread = [
            [m - x.get("ms_min", m) for m, x in zip(medians, d)],
            [x.get("ms_max", m) - m for m, x in zip(medians, d)],
        ]
        ax.errorbar(
            [x["prefix"] for x in d],
            medians,
            yerr=spread,
            fmt="o-",
            capsize=3,
            color=FAMILY_STYLE.get(family),
            label=family,
        )
    _style(ax, None, "prefix length (tokens)", "decode ms / token (batch 1), median, min-max")
    _title(fig, results, "Decode latency")
    return _save(fig, path)


def precision_error(results: dict, path: Path) -> str | None:
    rec = results.get("precision")
    if not rec or rec.get("status") != "ok":
        return None
    rows = [r for r in rec["rows"] if r["max_rel_error"] is not None]
    panels = sorted({(r["model"], r["level"]) for r in rows})
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (model, level) in zip(axes[0], panels):
        sel = [r for r in rows if r["model"] == model and r["level"] == level]
        for i, dtype in enumerate(("float64", "float32", "bfloat16", "float16")):
            for j, mode in enumerate(sorted({r["mode"] for r in sel})):
                pts = _positive(
                    sorted(
                        (r["length"], r["max_rel_error"])
                        for r in sel
                        if r["dtype"] == dtype and r["mode"] == mode
                    )
                )
                if pts:
                    ax.plot(
                        *zip(*pts),
                        marker="o",
                        ls=["-", "--", ":"][j % 3],
                        color=f"C{i}",
                        label=f"{dtype} {mode}",
                    )
        _style(ax, f"{model} {level}", "length", "max relative error vs float64", ylog=True, legend=6)
    _title(fig, results, "Precision vs float64 (an exact 0 is not drawn)")
    return _save(fig, path)


def state_size(results: dict, path: Path) -> str | None:
    state = runs(results, "state")
    if not state:
        return None
    tasks = sorted({r["spec"]["task"] for r in state})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    base_d, base_n = results["preset"]["size"]["d_model"], results["preset"]["size"]["d_state"]
    for ax, task in zip(axes[0], tasks):
        sel = [r for r in state if r["spec"]["task"] == task]
        pts = sorted(
            (r["spec"]["size"]["d_state"], 100 * train_metric(r))
            for r in sel
            if r["spec"]["family"] == "mamba" and r["spec"]["size"]["d_model"] == base_d
        )
        if pts:
            ax.plot(
                *zip(*pts), "o-", color=FAMILY_STYLE["mamba"], label=f"mamba d_model={base_d}, vs d_state"
            )
        for family in sorted({r["spec"]["family"] for r in sel}):
            by_d = sorted(
                (r["spec"]["size"]["d_model"], 100 * train_metric(r))
                for r in sel
                if r["spec"]["family"] == family and r["spec"]["size"]["d_state"] == base_n
            )
            if len(by_d) > 1:
                ax.plot(*zip(*by_d), "s--", color=FAMILY_STYLE.get(family), label=f"{family} vs d_model")
        _style(
            ax, task, "d_state (solid) / d_model (dashed)", "accuracy at the training length (%)", legend=7
        )
    _title(fig, results, "State size")
    return _save(fig, path)


def training_curves(results: dict, path: Path) -> str | None:
    main = runs(results, "main")
    tasks = [t for t in results["selection"]["tasks"] if runs(results, "main", t)]
    if not main or not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        labelled = set()
        for r in runs(results, "main", task):
            family = r["spec"]["family"]
            curve = _positive([tuple(p) for p in r["train"]["curve"]])
            if curve:
                ax.plot(
                    *zip(*curve),
                    color=FAMILY_STYLE.get(family),
                    lw=1,
                    label=None if family in labelled else family,
                )
                labelled.add(family)
        _style(ax, task, "step", "training loss", xlog2=False, ylog=True)
    _title(fig, results, "Training loss (one line per seed)")
    return _save(fig, path)


def sample_efficiency(results: dict, path: Path) -> str | None:
    curves = efficiency_curves(results)
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for family, curve in sorted(curves.items()):
        tokens = sorted(curve)
        spreads = [Spread.of(list(curve[t].values())) for t in tokens]
        color = FAMILY_STYLE.get(family)
        ax.plot(tokens, [100 * sp.mean for sp in spreads], "o-", color=color, label=family)
        ax.fill_between(
            tokens, [100 * sp.low for sp in spreads], [100 * sp.high for sp in spreads], color=color, alpha=0.2, lw=0
        )
    _log_x(ax, lambda x: tokens_text(round(x)))
    task = runs(results, "efficiency")[0]["spec"]["task"]
    _style(ax, task, "training tokens", "accuracy at the training length (%)", xlog2=False)
    _title(fig, results, "Sample efficiency (mean over seeds, band min-max)")
    return _save(fig, path)


PLOTS = {
    "accuracy_vs_length.png": accuracy_vs_length,
    "training_loss.png": training_curves,
    "loss_vs_flops.png": loss_vs_flops,
    "decode_latency.png": decode_latency,
    "precision_error.png": precision_error,
    "state_size.png": state_size,
    "sample_efficiency.png": sample_efficiency,
}


def write_plots(results: dict, out_dir: Path) -> dict[str, str | None]:
    """Every plot that has data; {file name: file name or None when nothing to draw}."""
    return {name: fn(results, out_dir / name) for name, fn in PLOTS.items()}
