"""Load test of `mambalab serve`: N concurrent `openai` clients against a server this script starts on
127.0.0.1, beside the same requests served one at a time and offline `generate` at the same batch size.

    PYTHONPATH=. python benchmarks/serve_load.py --device cpu     # tiny model, 16 clients x 32 tokens (~1 min)
    PYTHONPATH=. python benchmarks/serve_load.py --device cuda \\
        --cached-system-prompt-tokens 8192                        # mamba-130m shape, 64 clients x 128 tokens

The model has random weights (seeded) and the byte tokenizer: on CPU the tiny-mamba preset (float32), on
CUDA the mamba-130m shape (bfloat16); it is saved to a temporary directory and served by a `mambalab serve`
subprocess. Every request is a 16-token prompt (token ids), greedy, streamed, `ignore_eos` so it makes
exactly max_tokens tokens. Clients run as threads spread over `--client-procs` processes.

Measured (each after a warm-up wave), every client mode `--repeats` times (the fastest run is reported, with
the tokens/s of every run: the machine may be shared). The client processes are started once per mode; each
client thread connects with a one-token warm-up request, and every run starts only when all clients are ready
and released together from one barrier (the JSON's `client_start_spread_s`: how far apart their first requests
started; `clients_ready_s`: the clients' own start-up, outside every run):
- offline: `generate` on all the prompts as one batch, in this process, before the server starts (the ceiling);
- batched: every client at once, `--rounds` requests each, one after another: aggregate tokens/s (all tokens
  / wall time), p50 / p99 request latency and time to first token (TTFT: the first chunk after the request);
  then the same read by a minimal SSE reader (httpx, `_raw_request`: the server's share of the streamed time
  apart from the openai client's parsing); then the same without streaming (one JSON answer per request);
  streamed modes report their SSE events per request;
- sequential: the same requests from one client, one at a time;
- with `--cached-system-prompt-tokens K`: a second server with a K-token system prompt (prefilled and cached
  at start-up); every client sends a chat request at once (a short user turn resumed from the cached state):
  p50 / p99 TTFT.
`--modes` runs a subset of these server runs (e.g. `--modes batched,batched_raw_reader` for a quick A/B).
Targets (issue 16): CPU batched >= 3x sequential; CUDA batched >= 70% of offline at 64 clients x 128 tokens,
p99 TTFT with the cached 8K system prompt <= 2x its p50. The JSON (with the environment: device, torch, git
commit) goes to $OUT/serve_load_<device>.json when $OUT is set, else benchmarks/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchmarks.common import write_result

ROOT = Path(__file__).resolve().parents[1]
PROMPT_TOKENS = 16
BARRIER_TIMEOUT_S = 1800  # a client that never arrives (a crashed process) fails the run instead of hanging it
MODES = ("batched", "batched_raw_reader", "batched_not_streamed", "sequential")
DEFAULTS = {
    "cpu": {"preset": "tiny-mamba", "dtype": "float32", "clients": 16, "max_tokens": 32, "rounds": 2,
            "client_procs": 1},
    "cuda": {"preset": "mamba-130m", "dtype": "bfloat16", "clients": 64, "max_tokens": 128, "rounds": 2,
             "client_procs": 8},
}


def log(message: str) -> None:
    print(f"[serve_load] {message}", flush=True)


# Clients (run in worker processes) -------------------------------------------------------------------------
def _one_request(client, spec: dict) -> dict:
    """Send one request (streamed unless spec["stream"] is False); its start, first-token (streamed only) and
    end times (time.time()) and its completion tokens."""
    start = time.time()
    first, tokens = None, 0
    if not spec.get("stream", True):
        out = client.completions.create(model=spec["model"], prompt=spec["prompt"], max_tokens=spec["max_tokens"],
                                        temperature=0, extra_body={"ignore_eos": True})
        return {"start": start, "first": None, "end": time.time(), "tokens": out.usage.completion_tokens}
    if spec["kind"] == "chat":
        stream = client.chat.completions.create(
            model=spec["model"], messages=spec["messages"], max_tokens=spec["max_tokens"], temperature=0,
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    else:
        stream = client.completions.create(
            model=spec["model"], prompt=spec["prompt"], max_tokens=spec["max_tokens"], temperature=0,
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    events = 0
    for chunk in stream:
        events += 1
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if first is None and chunk.choices and (
                spec["kind"] != "chat" or chunk.choices[0].delta.content is not None):
            first = time.time()
    return {"start": start, "first": first, "end": time.time(), "tokens": tokens, "events": events}


def _raw_request(http, url: str, spec: dict) -> dict:
    """The same streamed completion read by a minimal SSE reader (httpx, line by line): it parses only the
    last chunk (the usage) and the first, so its per-event cost is the least a Python client can pay; beside
    the openai client it tells the server's share of the streamed time from the client's."""
    body = {"model": spec["model"], "prompt": spec["prompt"], "max_tokens": spec["max_tokens"], "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    start = time.time()
    first, events, last = None, 0, None
    with http.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            events += 1
            if first is None:
                first = time.time()
            last = line
    tokens = json.loads(last[len("data: "):])["usage"]["completion_tokens"]
    return {"start": start, "first": first, "end": time.time(), "tokens": tokens, "events": events}


def _warmup_spec(spec: dict) -> dict:
    """A one-token completion on the client's connection: opens it before the clock starts (not measured)."""
    return {"kind": "completion", "model": spec["model"], "prompt": [65] * 4, "max_tokens": 1, "stream": False}


def _client_process(url: str, per_thread: list[list[dict]], repeats: int, barrier, results,
                    reader: str = "openai") -> None:
    """Threads of this process, each with its own openai client (or, with reader "raw", an httpx client for
    streamed completions: `_raw_request`): one warm-up request, then for every repeat
    wait at `barrier` (every client thread of every process and the coordinator), send its requests in order
    and wait again. Puts {"records": [...], "errors": [...]} on `results`."""
    import httpx
    import openai

    records: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()

    def run(client_id: int, specs: list[dict]) -> None:
        try:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
            _one_request(client, _warmup_spec(specs[0]))
            http = httpx.Client(timeout=600)
            warm = _warmup_spec(specs[0])
            http.post(f"{url}/v1/completions", json={k: warm[k] for k in ("model", "prompt", "max_tokens")}
                      ).raise_for_status()
            raw = reader == "raw"
            for repeat in range(repeats):
                barrier.wait()  # every client started and connected: released together
                for spec in specs:
                    streamed = spec["kind"] == "completion" and spec.get("stream", True)
                    record = _raw_request(http, url, spec) if raw and streamed else _one_request(client, spec)
                    with lock:
                        records.append({**record, "repeat": repeat, "client": client_id})
                barrier.wait()  # the run ends when every client is done
        except threading.BrokenBarrierError:  # another client failed; its error is reported
            return
        except Exception as error:  # noqa: BLE001 (any failure must free the barrier; the coordinator raises it)
            with lock:
                errors.append(f"{type(error).__name__}: {error}")
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i, specs)) for i, specs in enumerate(per_thread)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put({"records": records, "errors": errors})


def load(url: str, per_client: list[list[dict]], procs: int, repeats: int = 1, reader: str = "openai") -> dict:
    """Run every client's requests at once (clients spread over `procs` processes), `repeats` times; the
    summary of the run with the most tokens/s (the machine may be shared: the least disturbed run), with
    every run's tokens/s.

    The clock of a run starts only when every client thread of every process has started, connected (one
    warm-up request each) and been released from a shared barrier; "client_start_spread_s" is how far apart
    the clients' first requests of the run then started, "clients_ready_s" how long the clients took from
    launch to ready (not part of any run)."""
    procs = max(1, min(procs, len(per_client)))
    groups = [per_client[i::procs] for i in range(procs)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(per_client) + 1, timeout=BARRIER_TIMEOUT_S)  # the clients and this process
    results = context.Queue()
    launched = time.time()
    workers = [context.Process(target=_client_process, args=(url, group, repeats, barrier, results, reader), daemon=True)
               for group in groups]
    for worker in workers:
        worker.start()
    ready_s = None
    try:
        for _ in range(repeats):
            barrier.wait()
            ready_s = ready_s if ready_s is not None else time.time() - launched
            barrier.wait()
    except threading.BrokenBarrierError:
        pass  # the failing client's error is in its process's part
    parts = [results.get(timeout=BARRIER_TIMEOUT_S) for _ in workers]
    for worker in workers:
        worker.join()
    errors = [e for part in parts for e in part["errors"]]
    if errors or ready_s is None:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[:3] or 'the barrier was broken'}")
    records = [dict(r, client=(p, r["client"])) for p, part in enumerate(parts) for r in part["records"]]
    runs = [summarize([r for r in records if r["repeat"] == repeat]) for repeat in range(repeats)]
    best = max(runs, key=lambda run: run["tokens_per_s"])
    return {**best, "tokens_per_s_of_each_run": [run["tokens_per_s"] for run in runs],
            "client_start_spread_s_of_each_run": [run["client_start_spread_s"] for run in runs],
            "clients_ready_s": round(ready_s, 4)}


def summarize(records: list[dict]) -> dict:
    wall = max(r["end"] for r in records) - min(r["start"] for r in records)
    tokens = sum(r["tokens"] for r in records)
    latency = [r["end"] - r["start"] for r in records]
    ttft = [r["first"] - r["start"] for r in records if r["first"] is not None]
    first_starts = [min(r["start"] for r in records if r["client"] == c) for c in {r["client"] for r in records}]
    summary = {"requests": len(records), "tokens": tokens, "wall_s": round(wall, 4),
               "tokens_per_s": round(tokens / wall, 1),
               "latency_p50_s": round(percentile(latency, 50), 4), "latency_p99_s": round(percentile(latency, 99), 4),
               "client_start_spread_s": round(max(first_starts) - min(first_starts), 4)}
    events = [r["events"] for r in records if "events" in r]
    if events:  # streamed: SSE data events per request ([DONE] not counted)
        summary["events_per_request"] = round(sum(events) / len(events), 1)
    if ttft:
        summary.update(ttft_p50_s=round(percentile(ttft, 50), 4), ttft_p99_s=round(percentile(ttft, 99), 4))
    return summary


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# The server ------------------------------------------------------------------------------------------------
class Server:
    """`mambalab serve MODEL_DIR` in a subprocess on 127.0.0.1 (a free port), its log in a file."""

    def __init__(self, model_dir: Path, device: str, max_num_seqs: int, threads: int, extra: list[str], log_path):
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "OMP_NUM_THREADS": str(threads)}
        self.log_path = Path(log_path)
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mambalab", "serve", str(model_dir), "--host", "127.0.0.1", "--port", "0",
             "--device", device, "--served-model-name", "bench", "--max-num-seqs", str(max_num_seqs), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = self._wait_for_url()

    def _wait_for_url(self, timeout: float = 600) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log_path.read_text()[-3000:]}")
            for line in self.log_path.read_text().splitlines():
                if line.startswith("serving on "):
                    url = line.split()[2].removesuffix("/v1")
                    self._wait_healthy(url, deadline)
                    return url
            time.sleep(0.2)
        raise TimeoutError("the server did not start")

    @staticmethod
    def _wait_healthy(url: str, deadline: float) -> None:
        import urllib.request

        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("the server never became healthy")

    def stop(self) -> None:
        self.proc.send_signal(2)  # SIGINT: the clean shutdown under test elsewhere
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# The benchmark ---------------------------------------------------------------------------------------------
def build_model(preset: str, dtype: str, device: str, directory: Path):
    from mambalab import LanguageModel
    from mambalab.models.pretrained import save_pretrained
    from mambalab.models.zoo import get_preset
    from mambalab.tokenizer import load_tokenizer

    config = get_preset(preset)
    if preset.startswith("tiny"):  # its vocabulary is the byte tokenizer's
        config = dataclasses.replace(config, vocab_size=load_tokenizer("byte").vocab_size)
    torch.manual_seed(0)
    model = LanguageModel(config).to(device=device, dtype=getattr(torch, dtype)).eval()
    save_pretrained(model, directory)
    return model


def completion_specs(n: int, rounds: int, max_tokens: int, rng: random.Random) -> list[list[dict]]:
    return [[{"kind": "completion", "model": "bench", "max_tokens": max_tokens,
              "prompt": [rng.randrange(32, 127) for _ in range(PROMPT_TOKENS)]} for _ in range(rounds)]
            for _ in range(n)]


def offline(model, per_client: list[list[dict]], max_tokens: int, device: str) -> dict:
    """`generate` on the first round's prompts as one batch (no EOS: every row makes max_tokens)."""
    from mambalab.inference.generate import generate

    prompts = [specs[0]["prompt"] for specs in per_client]
    generate(model, prompts, max_tokens)  # warm-up: CUDA graph capture
    times = []
    for _ in range(3):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = generate(model, prompts, max_tokens)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    tokens = sum(len(s) for s in result.sequences)
    best = min(times)
    return {"batch": len(prompts), "tokens": tokens, "wall_s": round(best, 4), "tokens_per_s": round(tokens / best, 1)}


def server_args(args) -> list[str]:
    """The `mambalab serve` flags this run passes on."""
    return [] if args.stream_interval_ms is None else ["--stream-interval-ms", str(args.stream_interval_ms)]


def device_tag(device: str) -> str:
    if device != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name().lower()
    return next((tag for tag in ("h200", "h100", "a100", "l40s", "a10g") if tag in name), "cuda")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clients", type=int)
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--rounds", type=int, help="Requests per client in the batched run.")
    parser.add_argument("--client-procs", type=int)
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each mode; the fastest is reported.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server and of offline.")
    parser.add_argument("--cached-system-prompt-tokens", type=int, default=0)
    parser.add_argument("--stream-interval-ms", type=float,
                        help="The servers' --stream-interval-ms (default: theirs; 0: an SSE event per decode step).")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"Comma-separated server runs, in order (default: all of {', '.join(MODES)}).")
    parser.add_argument("--out", help="Output JSON (default: $OUT or benchmarks/results/serve_load_<device>.json).")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        parser.error(f"--modes: unknown mode(s) {unknown or 'none given'}; choose from {', '.join(MODES)}")
    cfg = {**DEFAULTS[args.device], **{k: v for k, v in vars(args).items() if v is not None}}
    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    results: dict = {"load_average_1min_at_start": round(os.getloadavg()[0], 2), "config": cfg}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_model(cfg["preset"], cfg["dtype"], args.device, tmp / "model")
        per_client = completion_specs(cfg["clients"], cfg["rounds"], cfg["max_tokens"], rng)
        results["offline_generate"] = offline(model, per_client, cfg["max_tokens"], args.device)
        log(f"offline generate: {results['offline_generate']}")
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()

        server = Server(tmp / "model", args.device, cfg["clients"], args.threads, server_args(args), tmp / "server.log")
        try:
            warm = completion_specs(cfg["clients"], 1, min(8, cfg["max_tokens"]), rng)
            load(server.url, warm, cfg["client_procs"])  # captures every bucket's graph
            whole = [[{**spec, "stream": False} for spec in specs] for specs in per_client]
            one_at_a_time = [[spec for specs in per_client for spec in specs]]
            runs = {
                "batched": lambda: load(server.url, per_client, cfg["client_procs"], cfg["repeats"]),
                "batched_raw_reader": lambda: load(server.url, per_client, cfg["client_procs"], cfg["repeats"],
                                                   reader="raw"),
                "batched_not_streamed": lambda: load(server.url, whole, cfg["client_procs"], cfg["repeats"]),
                "sequential": lambda: load(server.url, one_at_a_time, 1, cfg["repeats"]),
            }
            for mode in modes:
                results[mode] = runs[mode]()
                log(f"{mode}: {results[mode]}")
        finally:
            server.stop()

        if cfg["cached_system_prompt_tokens"]:
            results["cached_system_prompt"] = cached_system_prompt(cfg, args, tmp, rng)
            log(f"cached system prompt: {results['cached_system_prompt']}")

    ceiling = results["offline_generate"]["tokens_per_s"]
    results["ratios"] = {f"{mode}_vs_offline": round(results[mode]["tokens_per_s"] / ceiling, 3)
                         for mode in modes if mode != "sequential"}
    if "batched" in results and "sequential" in results:
        results["ratios"]["batched_vs_sequential"] = round(
            results["batched"]["tokens_per_s"] / results["sequential"]["tokens_per_s"], 2)
    if "cached_system_prompt" in results:
        c = results["cached_system_prompt"]
        results["ratios"]["cached_ttft_p99_vs_p50"] = round(c["ttft_p99_s"] / c["ttft_p50_s"], 2)
    log(f"ratios: {results['ratios']}")
    out = write_result(f"serve_load_{device_tag(args.device)}", results, args.out)
    log(f"wrote {out}")


def cached_system_prompt(cfg: dict, args, tmp: Path, rng: random.Random) -> dict:
    """TTFT of chat requests that resume from a cached K-token system prompt, all clients at once."""
    system = "".join(chr(rng.randrange(97, 123)) for _ in range(cfg["cached_system_prompt_tokens"]))
    (tmp / "system.txt").write_text(system)
    server = Server(tmp / "model", args.device, cfg["clients"], args.threads,
                    ["--system-prompt-file", str(tmp / "system.txt"), *server_args(args)], tmp / "server_system.log")
    try:
        def chat_specs(max_tokens: int) -> list[list[dict]]:
            return [[{"kind": "chat", "model": "bench", "max_tokens": max_tokens, "messages": [
                {"role": "user", "content": "".join(chr(rng.randrange(97, 123)) for _ in range(PROMPT_TOKENS))}]}]
                for _ in range(cfg["clients"])]

        load(server.url, chat_specs(4), cfg["client_procs"])  # warm-up
        return load(server.url, chat_specs(cfg["max_tokens"]), cfg["client_procs"], cfg["repeats"])
    finally:
        server.stop()


if __name__ == "__main__":
    main()
