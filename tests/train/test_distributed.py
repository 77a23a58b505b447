"""2-process DDP and FSDP2 on CPU (gloo) match one process at the same global batch, and their checkpoints
load in one process."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mambalab import LanguageModel, ModelConfig
from mambalab.train.data import RandomBatches, TokenDataset
from mambalab.train.resume_checkpoints import load_checkpoint
from mambalab.train.trainer import TrainConfig, Trainer, seed_everything

STEPS = 3
GLOBAL_BATCH = 4


def _config(strategy: str, batch_size: int, max_steps: int = STEPS) -> TrainConfig:
    return TrainConfig(lr=2e-3, warmup_steps=1, max_steps=max_steps, log_every=1, eval_every=0, ckpt_every=0,
                       batch_size=batch_size, seq_len=32, distributed=strategy, progress=False, device="cpu")


def _model(seed: int) -> LanguageModel:
    seed_everything(seed)
    return LanguageModel(ModelConfig(d_model=32, n_layer=2, vocab_size=259))


def _worker(rank: int, world: int, port: int, data: str, out: str, seed: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        for strategy in ("ddp", "fsdp"):
            cfg = _config(strategy, GLOBAL_BATCH // world)
            batches = RandomBatches(TokenDataset(data, "train"), cfg.batch_size, cfg.seq_len, seed=seed, rank=rank,
                                    world_size=world)
            # ranks start from different weights on purpose: DDP and FSDP2 must broadcast rank 0's
            records = Trainer(_model(seed + rank), cfg, batches, out_dir=f"{out}/{strategy}").fit()
            if rank == 0:
                with open(f"{out}/{strategy}.json", "w") as f:
                    json.dump(records, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_and_fsdp2_match_one_process(embedded_ds, tmp_path, rel_err):
    seed = int(torch.randint(1000, ()))
    mp.spawn(_worker, args=(2, _free_port(), str(embedded_ds), str(tmp_path), seed), nprocs=2, join=True)
    cfg = _config("none", GLOBAL_BATCH)
    single = Trainer(_model(seed), cfg, RandomBatches(TokenDataset(embedded_ds, "train"), GLOBAL_BATCH, 32, seed=seed))
    reference = single.fit()
    expected = torch.tensor([r["loss"] for r in reference], dtype=torch.float64)
    final_weights = {k: v.detach().clone() for k, v in single.model.state_dict().items()}
    for strategy in ("ddp", "fsdp"):
        records = json.loads((tmp_path / f"{strategy}.json").read_text())
        losses = torch.tensor([r["loss"] for r in records], dtype=torch.float64)
        assert rel_err(losses, expected) <= 1e-5, (strategy, losses, expected)
        assert all(abs(a / b - 1) <= 1e-5 for a, b in zip(losses.tolist(), expected.tolist()))
        # the gathered checkpoint holds full tensors under plain names, equal to the one-process result
        ckpt = load_checkpoint(tmp_path / strategy / "checkpoints" / f"step_{STEPS:08d}")
        assert set(ckpt.model) == set(final_weights)
        for name, weight in final_weights.items():
            assert rel_err(ckpt.model[name], weight) <= 1e-4, (strategy, name)
    # an FSDP2 checkpoint resumes in one process (and continues the same schedule)
    resumed = Trainer(_model(0), _config("none", GLOBAL_BATCH, STEPS + 1),
                      RandomBatches(TokenDataset(embedded_ds, "train"), GLOBAL_BATCH, 32, seed=seed),
                      out_dir=tmp_path / "fsdp").fit(resume=True)
    assert resumed[-1]["step"] == STEPS + 1 and len(resumed) == STEPS + 1
