"""The `mambalab` command line: one typer app, each subcommand a thin function over the library."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="mambalab: selective state space models.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
