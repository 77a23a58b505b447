"""`python -m mambalab.lm_eval ARGS` (also `mambalab-lm-eval ARGS`): lm-evaluation-harness's own command line
with the model "mambalab" registered first, every argument passed through unchanged:

    python -m mambalab.lm_eval --model mambalab --model_args pretrained=DIR[,tokenizer=...,dtype=bf16] \\
        --tasks hellaswag --batch_size auto --device cuda

lm_eval looks models up in a registry filled when its modules are imported, and has no plugin entry point,
so a plain `lm_eval --model mambalab` cannot find this package; this wrapper imports lm_eval, registers
`MambalabLM` (models/lm_eval_adapter.py) and hands over to lm_eval's CLI.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Register model "mambalab" with lm_eval, then run lm_eval's CLI on `argv` (default: sys.argv[1:])."""
    from mambalab.models.lm_eval_adapter import lm_eval_model_class

    try:
        lm_eval_model_class()
    except ImportError as exc:
        raise SystemExit(f"error: {exc}") from None
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
