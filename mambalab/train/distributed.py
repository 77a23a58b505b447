"""Process-group setup and model wrapping over PyTorch's own engines (DDP, FSDP2); nothing home-made.

`torchrun --nproc_per_node=N -m mambalab train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; `init_distributed`
joins the group (NCCL on GPU, gloo on CPU). `wrap_model` applies DDP, or FSDP2 (`fully_shard` on every
block, then on the root; on GPU a MixedPrecisionPolicy with bf16 parameters and fp32 gradient reduction).
Gradient synchronisation is left entirely to those wrappers. Checkpoints always hold the full (gathered)
state dict under the plain parameter names, via `torch.distributed.checkpoint.state_dict`, so a checkpoint
written under DDP, FSDP2 or one process loads under any of them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from mambalab.device import resolve_device
from mambalab.errors import InputError

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "none", "ddp", "fsdp")
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group when WORLD_SIZE > 1 (once); a single-process context otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and world_size > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        logger.info("joined process group: rank %d of %d on %s", rank, world_size, dev)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def wrap_model(model: nn.Module, strategy: str, ctx: DistContext, bf16_params: bool) -> nn.Module:
    """The module to call for training. "none" returns `model`; "ddp" a DistributedDataParallel around it;
    "fsdp" shards `model` in place (each of `model.backbone.layers`, then the root) and returns it."""
    if strategy not in STRATEGIES:
        raise InputError(f"distributed strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "auto":
        strategy = "ddp" if ctx.enabled else "none"
    if strategy == "none":
        if ctx.enabled:
            raise InputError(f"distributed='none' but WORLD_SIZE={ctx.world_size}; use 'ddp' or 'fsdp'")
        return model
    if not dist.is_initialized():
        raise InputError(f"distributed={strategy!r} needs a process group: launch with torchrun")
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # a routed expert may get no token in a batch: DDP must then not wait for its gradient
        pattern = getattr(getattr(model, "config", None), "layer_pattern", None) or []
        find_unused = any(kind.endswith("+moe") for kind in pattern)
        return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                                       find_unused_parameters=find_unused)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    for tensor in model.state_dict().values():  # FSDP2 shards each rank's own copy: make them identical
        dist.broadcast(tensor, src=0)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_params else None
    kwargs = {"mp_policy": policy} if policy is not None else {}
    for block in model.backbone.layers:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full state dict on CPU under plain names (collective under FSDP2: call on every rank)."""
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Full optimizer state keyed by parameter name (collective under FSDP2: call on every rank)."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_state: dict,
                    optimizer_state: dict | None) -> None:
    """Load full state dicts (as saved) into a plain, DDP-wrapped or FSDP2-sharded model and its optimizer."""
    options = StateDictOptions(full_state_dict=True, strict=True)
    set_model_state_dict(model, model_state, options=options)
    if optimizer is not None and optimizer_state is not None:
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


def all_reduce(value: torch.Tensor, op: str = "mean") -> torch.Tensor:
    """Reduce a metric (not a gradient) over ranks: "mean", "sum" or "max"; identity in one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return out / dist.get_world_size() if op == "mean" else out


def all_gather_objects(obj) -> list:
    """Every rank's `obj` (e.g. RNG states), in rank order."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
