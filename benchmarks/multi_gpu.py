"""Multi-GPU training on one host (issue #8): DDP and FSDP2 against one GPU, through mambalab's own trainer.

    PYTHONPATH=. python3 benchmarks/multi_gpu.py --out $OUT/multi_gpu.json  # ≥2 GPUs; ~7-8 min on 2 H200s
    PYTHONPATH=. python3 benchmarks/multi_gpu.py --tiny --device cpu         # same path on CPU (gloo), ~1 min

Writes the JSON (--out, default $OUT/multi_gpu.json) and the runs' logs beside it (multi_gpu_logs/), and
prints a table. --strategies fsdp (or ddp) runs one strategy only; --nproc 2,4 lists the GPU counts.

Every training run is `run_training` (what `mambalab train` calls) in a subprocess: `python3 THIS worker ...`
for one process, `python3 -m torch.distributed.run --standalone --nproc_per_node=N THIS worker ...` (torchrun)
for N; the worker adds only each rank's peak GPU memory to what the run writes. All runs share the data (the
embedded corpus, byte tokens, prepared once), the seed (so the same initial weights and the same window order:
N ranks at batch b/N see exactly one process's windows at batch b), the global batch and a constant learning
rate after a linear warmup (min_lr = lr, so a run's schedule does not depend on its length). Phases:

1. one GPU: `base_steps` steps (default 50), a checkpoint `resume_steps` before the end;
2. N = the first of --nproc (2): DDP, then FSDP2, `steps` steps (default 200), a checkpoint `resume_steps`
   before the end. Per step: loss and time; tokens/s over the steps after `throughput_warmup` up to the
   checkpoint; peak memory of every rank. Loss match: max over the first min(50, base_steps) steps of
   |loss_N - loss_1| / loss_1 (target 1e-3 in bf16; reported, not asserted). Scaling efficiency =
   tokens/s(N) / (N × tokens/s(1)) at the same global batch (goals 0.90 at N=2, 0.85 at N=4);
3. portability: the N-GPU DDP and FSDP2 checkpoints resume on one GPU (both at once, one GPU each), and the
   one-GPU checkpoint resumes on N GPUs under FSDP2 (and DDP when time allows); the resumed losses are
   compared with the uninterrupted run's at the same steps (`ok` when within `resume_tol`: 1e-2 in bf16,
   1e-4 in fp32, and the steps continue from the checkpoint);
4. the other N of --nproc that are visible (4 on a 4-GPU host) as in 2., as the budget allows.

The JSON (written after every phase, so a run cut short still leaves its results) starts with the exact
command; "complete" says the command reached its end, "skipped" what it left out. --budget-s (default
540, under the device's 600 s per call): an optional phase (N=4, the 1-GPU → N DDP resume) is skipped when
the time it is expected to take (measured on its N=2 counterpart) would pass the budget; a run still going at
the budget is stopped (SIGTERM, then SIGKILL 40 s later), later phases are skipped. NCCL's NVLink multicast
stays off in every process (NCCL_NVLS_ENABLE=0, ...; the device's KINDS.md).

Full settings: the mamba-370m shape (48 × 1024, the preset's 50277-token vocabulary so the lm_head costs what
it does in the real model; byte ids are a subset), L = 2048, global batch 8 sequences (4 per GPU on 2),
bf16 autocast with fp32 parameters (FSDP2: bf16 parameters, fp32 reduction), the Triton scan, AdamW at
lr 6e-4. The corpus holds ~540 windows of 2048 tokens, so 200 steps make ~3 epochs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
LOSS_MATCH_STEPS = 50
LOSS_MATCH_TARGET = 1e-3
SCALING_GOALS = {2: 0.90, 4: 0.85}
STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class Plan:
    """What every run shares; `model_overrides` are extra `--set` items for the model."""

    preset: str
    seq_len: int
    global_batch: int
    steps: int
    base_steps: int
    resume_steps: int
    warmup_steps: int
    throughput_warmup: int
    lr: float
    model_overrides: tuple[str, ...] = ()


FULL = Plan(preset="mamba-370m", seq_len=2048, global_batch=8, steps=200, base_steps=50, resume_steps=5,
            warmup_steps=10, throughput_warmup=5, lr=6e-4, model_overrides=("model.vocab_size=50277",))
TINY = Plan(preset="tiny-mamba", seq_len=64, global_batch=4, steps=8, base_steps=6, resume_steps=2,
            warmup_steps=2, throughput_warmup=1, lr=2e-3)


# Worker -----------------------------------------------------------------------------------------------------
def worker(argv: list[str]) -> None:
    """One rank of one training run: `run_training` as `mambalab train` runs it, then this rank's peak GPU
    memory (over the whole run) to OUT/peak_memory_rank{R}.json."""
    import logging

    import torch

    from mambalab.atomic import write_json_atomic
    from mambalab.train.run import load_run_config, run_training

    os.environ.update(NO_MULTICAST)
    parser = argparse.ArgumentParser(prog="multi_gpu.py worker")
    parser.add_argument("--preset", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_config = load_run_config(None, args.preset, args.overrides)
    run_training(run_config, args.out, resume=args.resume)
    rank = int(os.environ.get("RANK", "0"))
    cuda = run_config.train.device != "cpu" and torch.cuda.is_available()
    memory = {"rank": rank, "device": torch.cuda.get_device_name() if cuda else "cpu",
              "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
    write_json_atomic(Path(args.out) / f"peak_memory_rank{rank}.json", memory)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# Launching runs ---------------------------------------------------------------------------------------------
@dataclass
class Launch:
    """A running training subprocess (a process group: torchrun and its ranks)."""

    name: str
    run_dir: Path
    command: list[str]
    process: subprocess.Popen
    log_path: Path
    started: float


def run_overrides(plan: Plan, device: str, data_dir: Path, seed: int, world: int, strategy: str,
                  max_steps: int, ckpt_every: int) -> list[str]:
    """The `--set` items of one run: the shared plan, then this run's world size, strategy and length."""
    if plan.global_batch % world:
        raise ValueError(f"--global-batch {plan.global_batch} is not divisible by {world} processes")
    cuda = device == "cuda"
    items = [
        f"data.path={data_dir}", f"seed={seed}", f"lr={plan.lr}", f"min_lr={plan.lr}",
        f"warmup_steps={plan.warmup_steps}", f"batch_size={plan.global_batch // world}",
        f"seq_len={plan.seq_len}",
        f"max_steps={max_steps}", f"ckpt_every={ckpt_every}", "log_every=1", "eval_every=0", "progress=false",
        f"device={device}", f"precision={'bf16' if cuda else 'fp32'}", f"distributed={strategy}",
        *plan.model_overrides,
    ]
    if cuda:
        items.append("model.ssm.scan_backend=triton")
    return items


def launch(name: str, run_dir: Path, preset: str, overrides: list[str], world: int, gpus: list[int] | None,
           resume: bool = False) -> Launch:
    """Start one run: the worker directly for one process, under torchrun for several. `gpus`: the GPUs it
    may see (None on CPU). Output goes to run_dir/../logs/NAME.log."""
    command = [sys.executable]
    if world > 1:
        command += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
    command += [str(SCRIPT), "worker", "--preset", preset, "--out", str(run_dir)]
    command += [item for o in overrides for item in ("--set", o)] + (["--resume"] if resume else [])
    env = {**os.environ, **NO_MULTICAST, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    if gpus is None:
        env["OMP_NUM_THREADS"] = "1"
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    log_path = run_dir.parent / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return Launch(name, run_dir, command, process, log_path, time.perf_counter())


def wait(job: Launch, deadline: float) -> dict:
    """Wait for `job` until `deadline` (perf_counter time), stopping its process group past it; its status."""
    try:
        returncode = job.process.wait(timeout=max(deadline - time.perf_counter(), 1.0))
        timed_out = False
    except subprocess.TimeoutExpired:
        # torchrun passes SIGTERM on to its ranks (each in its own session) and kills them after 30 s itself
        for sig, grace in ((signal.SIGTERM, 40.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(job.process.pid, sig)
                job.process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        returncode, timed_out = job.process.returncode, True
    status = {"command": shlex.join(job.command), "returncode": returncode,
              "wall_s": round(time.perf_counter() - job.started, 1)}
    if returncode != 0 or timed_out:
        status["error"] = "stopped at the time budget" if timed_out else f"exit status {returncode}"
        status["log_tail"] = log_tail(job.log_path)
    return status


def log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:]


@dataclass(frozen=True)
class Resume:
    """Resume run `name`: `source`'s checkpoint continued on `world` processes under `strategy`."""

    name: str
    source: str
    world: int
    strategy: str
    gpus: list[int] | None  # None on CPU


def disjoint_groups(specs: list[Resume]) -> list[list[Resume]]:
    """Specs in order, grouped greedily so that no two in a group share a GPU (CPU runs share nothing)."""
    groups: list[list[Resume]] = []
    for spec in specs:
        mine = set(spec.gpus or ())
        group = next((g for g in groups if not any(mine & set(o.gpus or ()) for o in g)), None)
        if group is None:
            groups.append([spec])
        else:
            group.append(spec)
    return groups


def keep_only_resume_checkpoint(run_dir: Path, step: int) -> None:
    """Free the disk a finished run no longer needs (~6 GB at 370M parameters): its exported model and every
    checkpoint but the one of `step`, which the resume phases continue from."""
    from mambalab.train.checkpointing import checkpoint_dir, list_checkpoints

    keep = checkpoint_dir(run_dir / "checkpoints", step)
    for path in [run_dir / "model", *(c for c in list_checkpoints(run_dir / "checkpoints") if c != keep)]:
        shutil.rmtree(path, ignore_errors=True)


# Reading results --------------------------------------------------------------------------------------------
def read_records(run_dir: Path) -> list[dict]:
    from mambalab.train.metrics import MetricsLog

    return MetricsLog(run_dir / "metrics.jsonl").read()


def throughput(records: list[dict], first: int, last: int) -> dict:
    """tokens/s over steps (first, last] (all ranks' tokens / training-step time), and the median of the
    per-step rates in that window."""
    by_step = {r["step"]: r for r in records}
    a, b = by_step[first], by_step[last]
    rates = [by_step[s]["tokens_per_s"] for s in range(first + 1, last + 1)]
    return {"tokens_per_s": (b["tokens"] - a["tokens"]) / (b["elapsed_s"] - a["elapsed_s"]),
            "tokens_per_s_median": statistics.median(rates), "window": [first + 1, last]}


def peak_memory(run_dir: Path) -> list[dict]:
    files = sorted(run_dir.glob("peak_memory_rank*.json"), key=lambda p: int(p.stem.rsplit("rank", 1)[1]))
    return [json.loads(p.read_text()) for p in files]


def step_problem(records: list[dict], first: int, last: int) -> str | None:
    """Why `records` are not exactly one per step first..last, or None when they are."""
    steps = [r["step"] for r in records]
    if steps == list(range(first, last + 1)):
        return None
    return f"metrics.jsonl holds steps {steps[:3]}...{steps[-3:]} ({len(steps)}), expected {first}..{last}"


def max_rel_diff(values: list[float], reference: list[float]) -> float:
    """max_i |values_i - reference_i| / |reference_i| (inf when any value is not finite)."""
    if not all(math.isfinite(v) for v in values):
        return math.inf
    return max(abs(v - r) / abs(r) for v, r in zip(values, reference, strict=True))


# The benchmark ----------------------------------------------------------------------------------------------
class Benchmark:
    """Runs the phases in order, keeping the JSON up to date after each."""

    def __init__(self, plan: Plan, args: argparse.Namespace, command: str):
        self.plan, self.args = plan, args
        self.device = args.device
        self.seed = args.seed
        self.start = time.perf_counter()
        self.deadline = self.start + args.budget_s
        self.work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="multi_gpu-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.out = Path(args.out)
        self.resume_tol = 1e-2 if self.device == "cuda" else 1e-4
        self.result = {
            "command": command, "complete": False, "device": {"type": self.device}, "env": NO_MULTICAST,
            "settings": {**dataclasses.asdict(plan), "seed": self.seed, "device": self.device,
                         "precision": "bf16 autocast, fp32 params" if self.device == "cuda" else "fp32",
                         "tokens_per_step": plan.global_batch * plan.seq_len, "budget_s": args.budget_s,
                         "loss_match_steps": min(LOSS_MATCH_STEPS, plan.base_steps, plan.steps),
                         "loss_match_target": LOSS_MATCH_TARGET, "resume_tol": self.resume_tol},
            "data": None, "runs": {}, "loss_match": {}, "scaling": {}, "resume": {}, "skipped": [],
        }

    # helpers
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():6.0f}s] {message}", flush=True)

    def save(self) -> None:
        from mambalab.atomic import write_json_atomic

        self.result["wall_s"] = round(self.elapsed(), 1)
        write_json_atomic(self.out, self.result)

    def skip(self, phase: str, reason: str) -> None:
        self.log(f"skip {phase}: {reason}")
        self.result["skipped"].append({"phase": phase, "reason": reason})
        self.save()

    def fits(self, phase: str, estimate_s: float | None = None) -> bool:
        """Whether a phase expected to take `estimate_s` (None: unknown) fits in the budget left; a phase
        that does not is recorded as skipped."""
        left = self.deadline - time.perf_counter()
        if left < max(estimate_s or 0.0, 1.0):
            self.skip(phase, "the budget is spent" if left < 1.0 else
                      f"expected ~{estimate_s:.0f} s, {left:.0f} s of the budget left")
            return False
        return True

    def gpus(self, world: int, first: int = 0) -> list[int] | None:
        return list(range(first, first + world)) if self.device == "cuda" else None

    def overrides(self, world: int, strategy: str, max_steps: int) -> list[str]:
        return run_overrides(self.plan, self.device, self.work / "data", self.seed, world, strategy,
                             max_steps, ckpt_every=max_steps - self.plan.resume_steps)

    # phases
    def prepare_data(self) -> None:
        from mambalab.train.data import prepare_dataset
        from mambalab.tokenizer import ByteTokenizer

        manifest = prepare_dataset(["embedded"], self.work / "data", ByteTokenizer(), overwrite=True)
        self.result["data"] = {"source": "embedded corpus", "tokenizer": "byte",
                               "train_tokens": manifest["splits"]["train"]["tokens"]}

    def train_run(self, name: str, world: int, strategy: str, max_steps: int) -> dict | None:
        """A from-scratch run on `world` GPUs (processes); its record, or None when it failed."""
        if not self.fits(name):
            return None
        self.log(f"{name}: {world} × {strategy}, {max_steps} steps")
        run_dir = self.work / name
        job = launch(name, run_dir, self.plan.preset, self.overrides(world, strategy, max_steps), world,
                     self.gpus(world))
        status = wait(job, self.deadline)
        records = read_records(run_dir) if "error" not in status else []
        problem = step_problem(records, 1, max_steps) if "error" not in status else None
        if problem:
            status.update(error=problem, log_tail=log_tail(job.log_path))
        record = {"nproc": world, "strategy": strategy, **status}
        self.result["runs"][name] = record
        if "error" in status:
            self.log(f"{name}: FAILED ({status['error']})\n{status['log_tail']}")
            self.save()
            return None
        memory = peak_memory(run_dir)
        elapsed = [r["elapsed_s"] for r in records]  # training-step time only, cumulative
        record.update(
            steps=len(records), losses=[r["loss"] for r in records],
            step_s=[round(b - a, 4) for a, b in zip([0.0, *elapsed[:-1]], elapsed, strict=True)],
            **throughput(records, self.plan.throughput_warmup, max_steps - self.plan.resume_steps),
            peak_memory_gib=[m["peak_gib"] for m in memory], devices=[m["device"] for m in memory],
        )
        self.log(f"{name}: {record['tokens_per_s']:,.0f} tokens/s, {status['wall_s']:.0f} s")
        keep_only_resume_checkpoint(run_dir, max_steps - self.plan.resume_steps)
        self.save()
        return record

    def compare_to_base(self, name: str, world: int) -> None:
        base, run = self.result["runs"]["single"], self.result["runs"][name]
        n = self.result["settings"]["loss_match_steps"]
        diff = max_rel_diff(run["losses"][:n], base["losses"][:n])
        self.result["loss_match"][name] = {"steps": n, "max_rel_diff": diff, "target": LOSS_MATCH_TARGET,
                                           "meets_target": diff <= LOSS_MATCH_TARGET}
        efficiency = run["tokens_per_s"] / (world * base["tokens_per_s"])
        goal = SCALING_GOALS.get(world)
        self.result["scaling"][name] = {
            "nproc": world, "tokens_per_s": run["tokens_per_s"], "single_tokens_per_s": base["tokens_per_s"],
            "efficiency": efficiency, "goal": goal,
            "meets_goal": None if goal is None else efficiency >= goal}
        self.save()

    def resume_runs(self, specs: list[Resume]) -> None:
        """Resume each spec's source checkpoint, taken `resume_steps` before the source's end, in a fresh run
        directory (the checkpoint hard-linked in) that trains to the source's last step; compare the resumed
        losses with the source's uninterrupted ones. Specs on disjoint GPUs run at once (all of them on CPU:
        nothing of theirs is timed)."""
        for group in disjoint_groups([spec for spec in specs if self.fits(spec.name)]):
            jobs = [self.launch_resume(spec) for spec in group]
            for spec, (step, last, job) in zip(group, jobs, strict=True):
                self.finish_resume(spec, step, last, job)

    def launch_resume(self, spec: Resume) -> tuple[int, int, Launch]:
        from mambalab.train.checkpointing import checkpoint_dir

        last = len(self.result["runs"][spec.source]["losses"])
        step = last - self.plan.resume_steps
        run_dir = self.work / spec.name
        shutil.copytree(checkpoint_dir(self.work / spec.source / "checkpoints", step),
                        checkpoint_dir(run_dir / "checkpoints", step), copy_function=os.link)
        self.log(f"{spec.name}: {spec.source}'s step {step} on {spec.world} × {spec.strategy} to {last}")
        overrides = self.overrides(spec.world, spec.strategy, last)
        return step, last, launch(spec.name, run_dir, self.plan.preset, overrides, spec.world, spec.gpus,
                                  resume=True)

    def finish_resume(self, spec: Resume, step: int, last: int, job: Launch) -> None:
        status = wait(job, self.deadline)
        entry = {"from": spec.source, "nproc": spec.world, "strategy": spec.strategy, "checkpoint_step": step,
                 **status}
        if "error" not in status:
            records = read_records(job.run_dir)
            problem = step_problem(records, step + 1, last)
            resumed = [r["loss"] for r in records]
            reference = self.result["runs"][spec.source]["losses"][step:last]
            diff = math.inf if problem else max_rel_diff(resumed, reference)
            entry.update(steps=[r["step"] for r in records], resumed_losses=resumed,
                         reference_losses=reference, max_rel_diff=diff, tolerance=self.resume_tol,
                         ok=diff <= self.resume_tol)
            if problem:
                entry["problem"] = problem
            self.log(f"{spec.name}: max rel diff {diff:.2e} vs {spec.source}, ok={entry['ok']}")
        else:
            entry["ok"] = False
            self.log(f"{spec.name}: FAILED ({status['error']})\n{status['log_tail']}")
        self.result["resume"][spec.name] = entry
        shutil.rmtree(job.run_dir, ignore_errors=True)
        self.save()

    def run(self, nprocs: list[int], strategies: list[str]) -> None:
        """1 GPU; N = nprocs[0] for each strategy; resumes N -> 1 and 1 -> N (the first strategy, FSDP2 when
        listed); then, as the budget allows, the larger N and the other 1 -> N resumes."""
        self.save()
        self.prepare_data()
        if self.train_run("single", 1, "none", self.plan.base_steps) is None:
            return
        n = nprocs[0]
        trained = [s for s in strategies if self.train_run(f"{s}_{n}", n, s, self.plan.steps) is not None]
        for s in trained:
            self.compare_to_base(f"{s}_{n}", n)
        to_one = [Resume(f"{s}_{n}_to_1", f"{s}_{n}", 1, "none", self.gpus(1, i % n))
                  for i, s in enumerate(trained)]
        to_n = [Resume(f"single_to_{s}_{n}", "single", n, s, self.gpus(n))
                for s in sorted(strategies, key=lambda s: s != "fsdp")]
        self.resume_runs(to_one + to_n[:1])
        for world in nprocs[1:]:
            for s in strategies:
                name = f"{s}_{world}"
                if self.fits(name, self.result["runs"].get(f"{s}_{n}", {}).get("wall_s")) and \
                        self.train_run(name, world, s, self.plan.steps) is not None:
                    self.compare_to_base(name, world)
                    shutil.rmtree(self.work / name, ignore_errors=True)
        for spec in to_n[1:]:
            if self.fits(spec.name, self.result["resume"].get(to_n[0].name, {}).get("wall_s")):
                self.resume_runs([spec])
        self.result["complete"] = True
        self.save()


# Table ------------------------------------------------------------------------------------------------------
def print_table(result: dict) -> None:
    runs, match, scaling = result["runs"], result["loss_match"], result["scaling"]
    print(f"\n{'run':<14}{'procs':>6}{'steps':>7}{'tokens/s':>12}{'efficiency':>12}{'peak GiB/rank':>22}"
          f"{'loss match':>12}")
    for name, run in runs.items():
        if "error" in run:
            print(f"{name:<14}{run['nproc']:>6}  {run['error']}")
            continue
        peak = "/".join(f"{m:.1f}" for m in run["peak_memory_gib"] if m is not None) or "-"
        eff = f"{scaling[name]['efficiency']:.1%}" if name in scaling else "-"
        diff = f"{match[name]['max_rel_diff']:.1e}" if name in match else "-"
        print(f"{name:<14}{run['nproc']:>6}{run['steps']:>7}{run['tokens_per_s']:>12,.0f}{eff:>12}{peak:>22}"
              f"{diff:>12}")
    print(f"\n{'resume':<22}{'steps':>12}{'max rel diff':>14}{'ok':>6}")
    for name, entry in result["resume"].items():
        steps = f"{entry['checkpoint_step'] + 1}-{entry['steps'][-1]}" if entry.get("steps") else "-"
        diff = f"{entry['max_rel_diff']:.1e}" if "max_rel_diff" in entry else entry.get("error", "-")
        print(f"{name:<22}{steps:>12}{diff:>14}{'yes' if entry['ok'] else 'NO':>6}")
    for item in result["skipped"]:
        print(f"skipped {item['phase']}: {item['reason']}")


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        worker(sys.argv[2:])
        # Everything is written. Skip the interpreter's finalisation: with Gloo's threads about, it aborted a
        # finished rank in ~1 of 10 two-process CPU runs ("terminate called without an active exception",
        # exit -6, even after destroy_process_group), which failed the run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny model, short sequences, few steps")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--nproc", default="2,4", help="GPU counts to try (those above the visible count are"
                        " dropped); on CPU the first one only")
    parser.add_argument("--strategies", default="ddp,fsdp", help="of ddp, fsdp (comma-separated)")
    parser.add_argument("--steps", type=int, help="steps of the N-GPU runs (default 200; tiny 8)")
    parser.add_argument("--base-steps", type=int, help="steps of the 1-GPU run (default 50; tiny 6)")
    parser.add_argument("--global-batch", type=int, help="sequences per step, all GPUs (default 8; tiny 4)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default 2048; tiny 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget of the command")
    parser.add_argument("--out", default=None, help="JSON path (default $OUT/multi_gpu.json)")
    parser.add_argument("--work-dir", default=None, help="checkpoints, logs (default: temp, removed)")
    parser.add_argument("--keep-work", action="store_true", help="keep the temp work dir")
    args = parser.parse_args()
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    visible = torch.cuda.device_count() if args.device == "cuda" else 2
    nprocs = [n for n in map(int, args.nproc.split(",")) if 2 <= n <= visible]
    if args.device == "cpu":
        nprocs = nprocs[:1]
    if not nprocs:
        parser.error(f"--nproc {args.nproc}: none of these fits the {visible} visible GPU(s) (need >= 2);"
                     " --device cpu runs the same path with 2 gloo processes")
    strategies = args.strategies.split(",")
    if not strategies or set(strategies) - set(STRATEGIES):
        parser.error(f"--strategies {args.strategies}: expected a comma-separated subset of {STRATEGIES}")
    base = TINY if args.tiny else FULL
    plan = dataclasses.replace(base, **{k: v for k, v in {
        "steps": args.steps, "base_steps": args.base_steps, "global_batch": args.global_batch,
        "seq_len": args.seq_len}.items() if v is not None})
    shortest = max(2 * plan.resume_steps, plan.throughput_warmup + plan.resume_steps) + 1
    if min(plan.steps, plan.base_steps) < shortest:
        parser.error(f"--steps and --base-steps must be >= {shortest} (checkpoint and throughput windows)")
    args.out = args.out or str(Path(os.environ.get("OUT", ".")) / "multi_gpu.json")
    script = SCRIPT.relative_to(REPO) if SCRIPT.is_relative_to(REPO) else SCRIPT
    command = shlex.join(["python3", str(script), *sys.argv[1:]])
    os.environ.update(NO_MULTICAST)
    bench = Benchmark(plan, args, command)
    bench.result["device"].update(visible=visible, nprocs=nprocs, torch=torch.__version__,
                                  work_dir_free_gib=round(shutil.disk_usage(bench.work).free / 2**30, 1))
    bench.log(f"{command}\nwork dir {bench.work}; GPU counts {nprocs}; budget {args.budget_s:.0f} s")
    logs = Path(args.out).with_name(Path(args.out).stem + "_logs")
    try:
        bench.run(nprocs, strategies)
    finally:
        bench.save()
        if (bench.work / "logs").is_dir():
            shutil.copytree(bench.work / "logs", logs, dirs_exist_ok=True)
        if not args.keep_work and not args.work_dir:
            shutil.rmtree(bench.work, ignore_errors=True)
    print_table(bench.result)
    print(f"wrote {args.out} and the runs' logs to {logs}/ ({bench.elapsed():.0f} s)")


if __name__ == "__main__":
    main()
