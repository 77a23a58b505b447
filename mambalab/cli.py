"""The `mambalab` command line: one typer app, each subcommand a thin function over the library.

Errors: every `MambalabError` a subcommand raises (bad config, bad checkpoint, bad input...) is caught in one
place, `_Commands.invoke`, and reported as one line `error: <message>` on stderr with exit code 2. Anything
else (a bug, an OSError, CUDA running out of memory) keeps its traceback: it is not the user's bad value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from mambalab.errors import InputError, MambalabError

ERROR_EXIT_CODE = 2  # as click's own usage errors


class _Commands(TyperGroup):
    """The app's command group: reports a `MambalabError` from any subcommand in one line, exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MambalabError as exc:
            message = " ".join(str(exc).split())  # one line, whatever the message's layout
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(ERROR_EXIT_CODE) from exc


app = typer.Typer(
    cls=_Commands, add_completion=False, no_args_is_help=True, help="mambalab: selective state space models.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from mambalab import __version__

        typer.echo(f"mambalab {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """mambalab: selective state space models."""


def _read_text(path: Path, option: str) -> str:
    """The UTF-8 text of the file an option names; a missing, unreadable or non-text file is an InputError."""
    if not path.is_file():
        raise InputError(f"{option} {path}: {'is a directory' if path.is_dir() else 'no such file'}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{option} {path}: cannot be read as UTF-8 text ({exc})") from exc


def _directory(path: Path | None, option: str) -> Path | None:
    """`path` when it is a directory or does not exist yet (it will be created); an existing file is an
    InputError rather than a FileExistsError deep inside the command."""
    if path is not None and path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: is a file; expected a directory (existing, or one to create)")
    return path


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
    table = Table(title="3. per-timestep loop vs the parallel torch scan and the compiled cpu kernels "
                        "(b=1, d=256, N=16, float32, forward)")
    names = [k.removesuffix("_ms") for k in result.timing[0] if k.endswith("_ms") and k != "reference_ms"]
    for col in ("L", "loop ms", *(f"{n} ms (speedup)" for n in names)):
        table.add_column(col, justify="right")
    for row in result.timing:
        ref = row["reference_ms"]
        table.add_row(str(row["L"]), f"{ref:.1f}", *(f"{row[f'{n}_ms']:.2f} ({ref / row[f'{n}_ms']:.0f}x)" for n in names))
    console.print(table)


@app.command()
def compare(
    preset: str = typer.Option("quick", help="smoke | quick (2-core CPU, ≤10 min, 3 seeds) | standard (1 GPU, ~2 h, resumable) | paper."),
    models: str = typer.Option(None, help="Comma-separated families (default: the preset's; quick runs mamba,"
                               "transformer,s4d; standard and paper add mamba2): mamba,transformer,s4d,hybrid,"
                               "moe,mamba2."),
    tasks: str = typer.Option(None, help="Comma-separated tasks (default: the preset's; 'none' for studies only)."),
    studies: str = typer.Option(None, help="Comma-separated studies (default all; 'none' for none): "
                                "precision,cost,init,scaling,state,efficiency."),
    out: str = typer.Option("compare-out", help="Output folder: report.md, PNGs, results.json, cached runs."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    report_only: bool = typer.Option(False, help="Train nothing: write the report from the runs cached in --out."),
    corpus: str = typer.Option(None, help="A UTF-8 text file for the language-modelling runs (default: the "
                               "embedded corpus)."),
    jobs: int = typer.Option(None, help="Runs at once, each in its own process (default: the preset's: quick 2, "
                             "standard 14 — small task models leave a GPU mostly idle — per visible GPU with "
                             "--device cuda, the workers spread over them, capped at the CPU count)."),
) -> None:
    """Matched Mamba, Transformer++, S4D, hybrid, MoE and Mamba-2 models on recall, copying, induction and LM,
    with cost, precision, init, scaling and state-size studies, in one report. Resumes from cached runs in --out."""
    import logging

    from mambalab.experiments.compare import compare as run_compare

    def split(value: str | None) -> list[str] | None:
        return None if value is None else [v.strip() for v in value.split(",") if v.strip() not in ("", "none")]

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        results = run_compare(preset, split(models), split(tasks), out, device, split(studies), progress=not quiet,
                              report_only=report_only, jobs=jobs, corpus=corpus)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: finished runs are cached in {out}; the same command resumes", err=True)
        _exit_now(130)
    work = results["work"]
    typer.echo(f"report: {out}/report.md ({work['items']} work items: {work['training_runs']} training runs, "
               f"{work['cost_profiles']} cost profiles, {work['precision_studies']} precision study; "
               f"{work['not_ok']} not ok; {results['wall_s']:.0f} s)")
    for finding in results["findings"]:
        typer.echo(f"- {finding['text']}")


_DTYPE_HELP = "auto (the checkpoint's) | float32/fp32/float | bfloat16/bf16 | float16/fp16/half | float64/fp64/double."
_STATE_DTYPE_HELP = ("Dtype of the SSM recurrent state: float32 (default) | model (the model's dtype: half the state"
                     " bytes of a 16-bit model) | bfloat16 | float16 | float64; every step computes in float32.")
def _exit_now(code: int) -> None:
    """Exit without the interpreter's teardown (seconds with torch loaded on a busy machine): Ctrl-C promises
    an exit within 5 s, and everything `compare` keeps is already on disk (atomic writes, the call logged)."""
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _device_and_dtype(device: str, dtype: str | None):
    """(device name, torch dtype): 'auto' -> cuda when available; a dtype name or alias -> torch.dtype (None
    or 'auto' keeps the checkpoint's)."""
    from mambalab.device import resolve_device, resolve_dtype

    return str(resolve_device(device)), resolve_dtype(dtype)


@app.command()
def generate(
    model: Annotated[Path, typer.Option(help="Model directory (mambalab, transformers or official Mamba checkpoint).")],
    prompt: str = typer.Option(None, help="Prompt text."),
    prompt_file: Annotated[Path | None, typer.Option(help="Read the prompt text from this file.")] = None,
    prefix_file: Annotated[Path | None, typer.Option(
        help="Text before the prompt (e.g. a long context) whose state is cached.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Keep prefix states here, reused by later runs.")] = None,
    max_new_tokens: int = typer.Option(64, help="Tokens to generate at most."),
    sample: bool = typer.Option(False, "--sample/--greedy", help="Sample (with the options below) or take the argmax."),
    temperature: float = typer.Option(1.0, help="Sampling temperature."),
    top_k: int = typer.Option(0, help="Keep the k most likely tokens (0 = all)."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass in (0, 1]."),
    min_p: float = typer.Option(0.0, help="Drop tokens below min_p x the top probability."),
    repetition_penalty: float = typer.Option(1.0, help="> 1 discourages tokens already in the text."),
    seed: int = typer.Option(None, help="Seed of the sampler, for reproducible samples."),
    stream: bool = typer.Option(False, help="Print tokens as they come."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    dtype: str = typer.Option(None, help=_DTYPE_HELP),
    state_dtype: str = typer.Option(None, help=_STATE_DTYPE_HELP),
) -> None:
    """Continue a prompt with a model directory, in recurrent mode; a --prefix-file's state is computed once
    and reused (from --cache-dir across runs)."""
    from mambalab.inference.state_dtype import check_state_dtype_name
    from mambalab.serve.engine import Engine

    check_state_dtype_name(state_dtype)
    if (prompt is None) == (prompt_file is None):
        raise typer.BadParameter("give exactly one of --prompt and --prompt-file")
    text = prompt if prompt is not None else _read_text(prompt_file, "--prompt-file")
    prefix_text = None if prefix_file is None else _read_text(prefix_file, "--prefix-file")
    device, torch_dtype = _device_and_dtype(device, dtype)
    engine = Engine.from_dir(model, device=device, dtype=torch_dtype, cache_dir=_directory(cache_dir, "--cache-dir"),
                             state_dtype=state_dtype)
    tokens = engine.encode(text)
    if prefix_text is not None:
        prefix = engine.encode(prefix_text)
        engine.cache_prefix(prefix)
        tokens = prefix + tokens
    sampling = {"do_sample": sample, "temperature": temperature, "top_k": top_k, "top_p": top_p,
                "min_p": min_p, "repetition_penalty": repetition_penalty}
    on_text = (lambda _, delta: typer.echo(delta, nl=False)) if stream else None
    (completion,) = engine.complete([tokens], max_new_tokens, on_text=on_text, seed=seed, **sampling)
    typer.echo("" if stream else completion.text)


@app.command()
def serve(
    model_dir: str = typer.Argument(None, help="Model directory to serve (mambalab, transformers or official)."),
    model: str = typer.Option(None, help="The model directory (the same as MODEL_DIR, kept as an alias)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: str = typer.Option("8000", help="Port (0 = any free port)."),
    served_model_name: str = typer.Option(None, help="The model id clients ask for (default: the directory name)."),
    max_model_len: int = typer.Option(32768, help="Most tokens of a request: prompt + max_tokens."),
    max_num_seqs: int = typer.Option(64, help="Most requests prefilling or decoding at once (the rest wait)."),
    max_prefill_tokens: int = typer.Option(2048, help="Most prompt tokens run per scheduler step (chunked prefill)."),
    max_waiting: int = typer.Option(1024, help="Most requests waiting; past it new ones get 429."),
    request_timeout: float = typer.Option(600.0, help="Seconds a request may take before it is ended (408)."),
    shutdown_timeout: float = typer.Option(10.0, help="On SIGINT/SIGTERM, seconds in-flight requests may finish."),
    stream_interval_ms: float = typer.Option(
        10.0, help="A stream's events after its first token are at least this far apart, each carrying the tokens"
                   " made meanwhile (0: one per decode step); fewer events, more tokens/s with many streams."),
    api_key: str = typer.Option(None, envvar="MAMBALAB_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1."),
    system_prompt_file: str = typer.Option(None, help="Default system prompt of chat requests, prefilled once."),
    prefix_cache_dir: str = typer.Option(None, "--prefix-cache-dir", "--cache-dir",
                                         help="Keep prefix states here, reused across restarts."),
    prefix_cache_mb: int = typer.Option(1024, help="MiB of prefix states kept in memory (system prompts: the"
                                                   " server's always, clients' least recently used first out)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    dtype: str = typer.Option(None, help="float32 | bfloat16 | float16 | float64 (default: the checkpoint's)."),
    state_dtype: str = typer.Option(None, help=_STATE_DTYPE_HELP),
) -> None:
    """An OpenAI-compatible HTTP server (continuous batching) for a model directory; see docs/serve.md."""
    import logging

    from mambalab.inference.state_dtype import check_state_dtype_name
    from mambalab.serve import require_serve_dependencies
    from mambalab.serve.scheduler import Limits

    def fail(message: str) -> None:
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2)

    if (model_dir is None) == (model is None):
        fail("give the model directory once: mambalab serve MODEL_DIR (or --model MODEL_DIR)")
    model_dir = model_dir or model
    if not Path(model_dir).is_dir():
        fail(f"model directory {model_dir!r} does not exist or is not a directory")
    if not (port.isdigit() and 0 <= int(port) <= 65535):
        fail(f"--port must be an integer in [0, 65535], got {port!r}")
    if not stream_interval_ms >= 0:
        fail(f"--stream-interval-ms must be >= 0, got {stream_interval_ms!r}")
    if system_prompt_file is not None and not Path(system_prompt_file).is_file():
        fail(f"--system-prompt-file {system_prompt_file!r} is not a readable file")
    if prefix_cache_mb < 0:
        fail(f"--prefix-cache-mb must be >= 0, got {prefix_cache_mb}")
    try:
        require_serve_dependencies()
        limits = Limits(max_model_len, max_num_seqs, max_prefill_tokens, max_waiting, request_timeout)
        system_prompt = None if system_prompt_file is None else Path(system_prompt_file).read_text(encoding="utf-8")
        device, torch_dtype = _device_and_dtype(device, dtype)
        check_state_dtype_name(state_dtype)
    except (ValueError, OSError, typer.BadParameter) as e:
        fail(str(e))
    from mambalab.serve.server import serve as run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    typer.echo(f"loading {model_dir} on {device}")
    try:
        run_server(model_dir, host, int(port), system_prompt, device=device, dtype=torch_dtype,
                   cache_dir=prefix_cache_dir, cache_bytes=prefix_cache_mb << 20, state_dtype=state_dtype,
                   served_model_name=served_model_name, api_key=api_key, limits=limits,
                   drain_timeout=shutdown_timeout, stream_interval=stream_interval_ms / 1000,
                   on_listening=lambda url: typer.echo(f"serving on {url}/v1 (Ctrl-C stops)"))
    except (ValueError, OSError) as e:
        fail(str(e))
    typer.echo("stopped")


@app.command()
def prepare(
    inputs: Annotated[list[str], typer.Argument(help="Text files, folders, JSONL files ('text' field), or 'embedded'.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the token shards and manifest.json.")],
    tokenizer: str = typer.Option("byte", help="'byte', a tokenizer.json, or a directory holding one."),
    val_fraction: float = typer.Option(0.05, help="Fraction of the token stream kept for validation."),
    text_field: str = typer.Option("text", help="Field of each JSONL record holding the text."),
    overwrite: bool = typer.Option(False, help="Replace an existing prepared dataset at --out."),
) -> None:
    """Tokenize text into uint16/uint32 token shards with a manifest and a validation split."""
    from mambalab.tokenizer import load_tokenizer
    from mambalab.train.data import prepare_dataset

    m = prepare_dataset(inputs, _directory(out, "--out"), load_tokenizer(tokenizer), val_fraction=val_fraction,
                        text_field=text_field, overwrite=overwrite)
    typer.echo(f"{out}: {m['documents']} documents, {m['splits']['train']['tokens']:,} train +"
               f" {m['splits']['val']['tokens']:,} val tokens ({m['dtype']}, tokenizer {m['tokenizer']['name']})")


@app.command()
def train(
    config: Annotated[Path | None, typer.Option("--config", help="Run config YAML (sections model, data, train).")] = None,
    preset: str = typer.Option(None, "--preset", help="Model-zoo preset, e.g. tiny-mamba."),
    overrides: Annotated[list[str] | None, typer.Option("--set", help="key=value, e.g. --set train.lr=1e-3 "
                                                        "(--list-keys lists every key).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Output directory (checkpoints, metrics, model/).")] = Path("runs/train"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest valid checkpoint in --out."),
    list_keys: bool = typer.Option(False, "--list-keys", help="List every --set key with its type and default."),
) -> None:
    """Train a model (on the embedded corpus by default); works under `torchrun --nproc_per_node=N`."""
    import logging
    import os

    from rich.logging import RichHandler

    from mambalab.train.run import load_run_config, override_keys, run_training

    if list_keys:
        rows = [(key, kind, "-" if default is None else repr(default)) for key, kind, default in override_keys()]
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        typer.echo("\n".join(f"{k:<{widths[0]}}  {t:<{widths[1]}}  {d}" for k, t, d in rows))
        return
    if config is not None and not config.is_file():
        raise InputError(f"--config {config}: no such file")
    _directory(out, "--out")
    if config is None and preset is None:
        raise typer.BadParameter("give --config FILE.yaml or --preset NAME")
    rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 logs progress
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(show_path=False)])
    result = run_training(load_run_config(config, preset, overrides or []), out, resume=resume)
    if result.model_dir is not None:
        last = next((r for r in reversed(result.records) if "val_loss" in r), None)
        stop = "stopped by signal; resume with --resume. " if result.stopped_by_signal else ""
        summary = f" val loss {last['val_loss']:.4f}, val bpb {last.get('val_bpb', float('nan')):.4f}." if last else ""
        typer.echo(f"{stop}Model: {result.model_dir}.{summary} Metrics: {result.out_dir / 'metrics.jsonl'}")


@app.command(name="eval")
def eval_(
    model: Annotated[Path, typer.Option("--model", help="Exported model dir, training run dir, or checkpoint dir.")],
    data: str = typer.Option(..., "--data", help="Prepared dataset dir, or text/JSONL files/folders, or 'embedded'."),
    split: str = typer.Option("val", help="Split of a prepared dataset (raw text is scored whole)."),
    batch_size: int = typer.Option(8, help="Sequences per batch."),
    seq_len: int = typer.Option(512, help="Tokens per scored window."),
    max_batches: int = typer.Option(None, help="Stop after this many batches (default: all)."),
    tokenizer: str = typer.Option(None, help="The model's tokenizer: it encodes raw text, and a prepared dataset"
                                  " must have been made with it (default: the model directory's tokenizer.json;"
                                  " bytes for a 259-token vocabulary)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
) -> None:
    """Perplexity and bits per byte of a model on a dataset."""
    import json

    from mambalab.train.evaluate import evaluate_model

    result = evaluate_model(model, data, split=split, batch_size=batch_size, seq_len=seq_len,
                            max_batches=max_batches, tokenizer=tokenizer, device=device)
    typer.echo(json.dumps(result, indent=2))


@app.command()
def zoo(
    seq_len: int = typer.Option(2048, help="Context length for the FLOP count."),
    match: str | None = typer.Option(None, help="Also match every preset to this family (mamba, transformer, "
                                     "s4d, hybrid, moe, mamba2) within 3% of its parameters."),
) -> None:
    """The model presets: shape, parameters, training FLOPs per token (and matched configs)."""
    from rich.console import Console
    from rich.table import Table

    from mambalab.models.zoo import PRESETS, count_params, flops_per_token, match_config

    table = Table(title=f"model presets (training FLOPs per token at context {seq_len})")
    for col in ("preset", "layers × d_model", "parameters", "GFLOP/token") + ((f"{match} match",) if match else ()):
        table.add_column(col, justify="right")
    for name, config in PRESETS.items():
        row = [name, f"{config.n_layer} × {config.d_model}", f"{count_params(config):,}",
               f"{flops_per_token(config, seq_len) / 1e9:.3g}"]
        if match:
            matched = match_config(config, match)
            row.append(f"{matched.n_layer} layers, {count_params(matched):,}")
        table.add_row(*row)
    Console().print(table)


corpus_app = typer.Typer(no_args_is_help=True, help="A real English corpus for language modelling.")
app.add_typer(corpus_app, name="corpus")


@corpus_app.command("build")
def corpus_build(
    out: str = typer.Option(..., help="Output folder: corpus.txt, manifest.json, documents.jsonl."),
    packages: str = typer.Option(None, help="A folder of the source .deb files (default: OUT/packages, "
                                 "filled with `apt-get download`)."),
    min_mb: float = typer.Option(100.0, help="Fail if the prose adds up to fewer megabytes."),
) -> None:
    """Assemble English prose from Debian documentation packages (mambalab/corpus/sources.py), deterministic,
    with a manifest of sources, versions, licenses, sizes, hashes and the train/val split."""
    from mambalab.corpus import CorpusError, build_corpus, download_packages

    try:
        if packages is None:
            packages = str(Path(out) / "packages")
            download_packages(Path(packages))
        manifest = build_corpus(out, packages, min_bytes=int(min_mb * 1e6))
    except CorpusError as e:
        raise typer.BadParameter(str(e)) from e
    split = manifest["split"]
    typer.echo(f"{out}/corpus.txt: {manifest['corpus']['bytes'] / 1e6:.1f} MB from {len(manifest['sources'])} "
               f"packages ({split['train_documents']} train / {split['val_documents']} val documents); "
               f"sha256 {manifest['corpus']['sha256'][:16]}…")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
