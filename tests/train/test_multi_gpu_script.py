"""benchmarks/multi_gpu.py (issue #8's one-command GPU run) on CPU: one process against 2 gloo processes under
torchrun, checkpoints resumed across world sizes, and the JSON it writes; plus its GPU scheduling helpers."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "multi_gpu.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("multi_gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_resumes_share_no_gpu_and_overrides_split_the_global_batch(tmp_path):
    bench = _load_script()
    to_one = [bench.Resume(f"{s}_2_to_1", f"{s}_2", 1, "none", [i]) for i, s in enumerate(("ddp", "fsdp"))]
    to_two = bench.Resume("single_to_fsdp_2", "single", 2, "fsdp", [0, 1])
    assert bench.disjoint_groups([*to_one, to_two]) == [to_one, [to_two]]
    on_cpu = [bench.Resume(r.name, r.source, r.world, r.strategy, None) for r in (*to_one, to_two)]
    assert bench.disjoint_groups(on_cpu) == [on_cpu]
    items = bench.run_overrides(bench.FULL, "cuda", tmp_path, 3, 2, "fsdp", 200, 195)
    assert {"batch_size=4", "seq_len=2048", "precision=bf16", "distributed=fsdp", "max_steps=200", "seed=3",
            "model.ssm.scan_backend=triton", f"min_lr={bench.FULL.lr}", "ckpt_every=195"} <= set(items)
    with pytest.raises(ValueError, match="global-batch 8 is not divisible by 3"):
        bench.run_overrides(bench.FULL, "cuda", tmp_path, 0, 3, "ddp", 200, 195)


@pytest.mark.slow
def test_tiny_cpu_run_end_to_end(tmp_path):
    seed = int(torch.randint(1000, ()))
    out = tmp_path / "multi_gpu.json"
    command = [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--strategies", "fsdp",
               "--seed", str(seed), "--out", str(out), "--work-dir", str(tmp_path / "work")]
    paths = (str(REPO), os.environ.get("PYTHONPATH"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    proc = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "max rel diff" in proc.stdout and "loss match" in proc.stdout  # the printed tables
    result = json.loads(out.read_text())
    assert result["complete"] and not result["skipped"], result["skipped"]
    assert result["command"].startswith("python3 benchmarks/multi_gpu.py --tiny --device cpu")
    assert result["env"] == {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                             "NVSHMEM_DISABLE_NVLS": "1"}
    settings = result["settings"]
    runs = result["runs"]
    assert set(runs) == {"single", "fsdp_2"}
    assert runs["single"]["steps"] == settings["base_steps"] and runs["fsdp_2"]["steps"] == settings["steps"]
    assert runs["fsdp_2"]["nproc"] == 2 and runs["fsdp_2"]["returncode"] == 0
    for run in runs.values():
        assert all(math.isfinite(x) and x > 0 for x in run["losses"] + run["step_s"])
        assert math.isfinite(run["tokens_per_s"]) and run["tokens_per_s"] > 0
        assert len(run["devices"]) == run["nproc"]
    # the same seed and global batch give the same loss curve on 1 and 2 processes (fp32 on CPU)
    match = result["loss_match"]["fsdp_2"]
    assert match["steps"] == settings["base_steps"] and match["max_rel_diff"] <= 1e-5, match
    assert runs["single"]["losses"][-1] < runs["single"]["losses"][0]
    scaling = result["scaling"]["fsdp_2"]
    assert math.isfinite(scaling["efficiency"]) and scaling["efficiency"] > 0 and scaling["goal"] == 0.9
    # checkpoints move between world sizes and continue the uninterrupted curve
    assert set(result["resume"]) == {"fsdp_2_to_1", "single_to_fsdp_2"}
    for name, entry in result["resume"].items():
        last = runs[entry["from"]]["steps"]
        assert entry["ok"] and entry["max_rel_diff"] <= 1e-5, (name, entry)
        assert entry["checkpoint_step"] == last - settings["resume_steps"]
        assert entry["steps"] == list(range(entry["checkpoint_step"] + 1, last + 1))
    # disk: resume runs are removed once read, finished runs keep only the checkpoint resumed from
    work = tmp_path / "work"
    assert not (work / "fsdp_2_to_1").exists() and not (work / "fsdp_2" / "model").exists()
    kept = [p.name for p in (work / "fsdp_2" / "checkpoints").iterdir()]
    assert kept == [f"step_{settings['steps'] - settings['resume_steps']:08d}"]
