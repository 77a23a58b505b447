"""PNG plots of the comparison (matplotlib, Agg backend: no display needed).

Each function takes the results dict and an output path, draws what is there, and returns the file name,
or None when the results hold nothing to draw (a study not run, every run failed).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from mambalab.experiments.findings import metric_at, runs

FAMILY_STYLE = {"mamba": "C0", "transformer": "C1", "s4d": "C2", "hybrid": "C3", "moe": "C4"}


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def accuracy_vs_length(results: dict, path: Path) -> str | None:
    tasks = [t for t in results["selection"]["tasks"] if runs(results, "main", t)]
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        task_runs = runs(results, "main", task)
        for run in task_runs:
            lengths = sorted(int(k) for k in run["eval"] if metric_at(run, int(k)) is not None)
            family = run["spec"]["family"]
            ax.plot(lengths, [metric_at(run, n) for n in lengths], "o-", color=FAMILY_STYLE.get(family), label=family)
        ax.axvline(task_runs[0]["spec"]["plan"]["train_length"], color="grey", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_title(task)
        ax.set_xlabel("length (tokens); dotted: training length")
        ax.set_ylabel(task_runs[0]["headline"].replace("_", " "))
    axes[0][0].legend(fontsize=8)
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
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (flops_per_token × tokens)")
    ax.set_ylabel("eval loss (nats/token)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def decode_latency(results: dict, path: Path) -> str | None:
    cost = {f: c for f, c in results.get("cost", {}).items() if c.get("status") == "ok"}
    if not cost:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for family, c in sorted(cost.items()):
        d = sorted(c["decode"], key=lambda x: x["prefix"])
        ax.plot([x["prefix"] for x in d], [x["ms_per_token"] for x in d], "o-", color=FAMILY_STYLE.get(family),
                label=family)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prefix length (tokens)")
    ax.set_ylabel("decode ms / token (batch 1)")
    ax.legend(fontsize=8)
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
                pts = sorted((r["length"], max(r["max_rel_error"], 1e-18)) for r in sel
                             if r["dtype"] == dtype and r["mode"] == mode)
                if pts:
                    ax.plot(*zip(*pts), marker="o", ls=["-", "--", ":"][j % 3], color=f"C{i}", label=f"{dtype} {mode}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{model} {level}")
        ax.set_xlabel("length")
        ax.set_ylabel("max relative error vs float64")
        ax.legend(fontsize=6)
    return _save(fig, path)


def state_size(results: dict, path: Path) -> str | None:
    state = runs(results, "state")
    if not state:
        return None
    tasks = sorted({r["spec"]["task"] for r in state})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    base_d = results["preset"]["size"]["d_model"]
    for ax, task in zip(axes[0], tasks):
        sel = [r for r in state if r["spec"]["task"] == task]
        pts = sorted((r["spec"]["size"]["d_state"], metric_at(r, r["spec"]["plan"]["train_length"])) for r in sel
                     if r["spec"]["family"] == "mamba" and r["spec"]["size"]["d_model"] == base_d)
        if pts:
            ax.plot(*zip(*pts), "o-", color=FAMILY_STYLE["mamba"], label=f"mamba d_model={base_d}, vs d_state")
        for family in sorted({r["spec"]["family"] for r in sel}):
            by_d = sorted((r["spec"]["size"]["d_model"], metric_at(r, r["spec"]["plan"]["train_length"])) for r in sel
                          if r["spec"]["family"] == family and r["spec"]["size"]["d_state"] == results["preset"]["size"]["d_state"])
            if len(by_d) > 1:
                ax.plot(*zip(*by_d), "s--", color=FAMILY_STYLE.get(family), label=f"{family} vs d_model")
        ax.set_xscale("log", base=2)
        ax.set_title(task)
        ax.set_xlabel("d_state (solid) / d_model (dashed)")
        ax.set_ylabel("accuracy at the training length")
        ax.legend(fontsize=7)
    return _save(fig, path)


def training_curves(results: dict, path: Path) -> str | None:
    main = runs(results, "main")
    tasks = [t for t in results["selection"]["tasks"] if runs(results, "main", t)]
    if not main or not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in runs(results, "main", task):
            if r["train"]["curve"]:
                ax.plot(*zip(*r["train"]["curve"]), color=FAMILY_STYLE.get(r["spec"]["family"]), label=r["spec"]["family"])
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


PLOTS = {
    "accuracy_vs_length.png": accuracy_vs_length,
    "training_loss.png": training_curves,
    "loss_vs_flops.png": loss_vs_flops,
    "decode_latency.png": decode_latency,
    "precision_error.png": precision_error,
    "state_size.png": state_size,
}


def write_plots(results: dict, out_dir: Path) -> dict[str, str | None]:
    """Every plot that has data; {file name: file name or None when nothing to draw}."""
    return {name: fn(results, out_dir / name) for name, fn in PLOTS.items()}
