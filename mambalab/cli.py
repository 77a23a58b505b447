"""The `mambalab` command line: one typer app, each subcommand a thin function over the library."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="mambalab: selective state space models.")


@app.command()
def demo(seed: int = typer.Option(0, help="Random seed.")) -> None:
    """A tour on CPU, no download: backends agree, prefill + recurrent decode, parallel vs loop timing."""
    from rich.console import Console
    from rich.table import Table

    from mambalab.demo import run_demo

    console = Console()
    result = run_demo(seed)
    table = Table(title="1. selective_scan backends vs the for-loop reference (float64 oracle)")
    for col in ("backend", "inputs", "y rel. error", "final state rel. error"):
        table.add_column(col)
    for row in result.agreement:
        if "error" in row:
            table.add_row(row["backend"], row["dtype"], "unavailable: " + row["error"], "")
        else:
            table.add_row(row["backend"], row["dtype"], f"{row['y_rel_err']:.1e}", f"{row['state_rel_err']:.1e}")
    console.print(table)
    d = result.decode
    console.print(
        f"2. prefill {d['prompt_len']} tokens in parallel mode, then decode {len(d['tokens'])} tokens in recurrent"
        f" mode from a {d['state_bytes']:,}-byte state: {d['tokens']}\n"
        f"   recurrent vs parallel logits, max rel. error: {d['max_rel_err_recurrent_vs_parallel']:.1e}"
    )
    table = Table(title="3. per-timestep loop vs parallel scan (b=1, d=256, N=16, float32, CPU)")
    for col in ("L", "loop ms", "parallel ms", "speedup"):
        table.add_column(col, justify="right")
    for row in result.timing:
        table.add_row(str(row["L"]), f"{row['reference_ms']:.1f}", f"{row['torch_ms']:.2f}", f"{row['speedup']:.0f}x")
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
