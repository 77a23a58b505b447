"""Mamba-2's gated RMSNorm in training: the torch composition vs the fused Triton forward + backward.

    PYTHONPATH=. python3 benchmarks/investigations/gated_norm_train.py --out $OUT          # GPU: counts + times
    PYTHONPATH=. python3 benchmarks/investigations/gated_norm_train.py --count-only        # anywhere: counts

At the mixer's training shapes (mamba2-130m: b8 × L2048, d_inner 1536, one group; bf16 autocast, so y and z
are bf16, the weight float32, the output float32 and its gradient float32 from out_proj's input cast):
- counts, on meta tensors (no data, any machine): every aten op the composition runs forward and backward,
  its bytes read and written (each tensor operand once; broadcast operands by their storage), and the bytes
  autograd saves between them; beside them the fused kernels' bytes (y, z, the output's gradient read, out,
  dy, dz written, the float32 r and dweight partial sums);
- times, on CUDA: median GPU ms of forward and forward + backward of each (triton.testing.do_bench), and the
  largest relative difference of their outputs and gradients.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchmarks.common import base_parser, write_result
from mambalab.layers.mamba2 import GatedRMSNorm, gated_rms_norm_composition

BANDWIDTH = 3.0e12  # bytes/s, what elementwise kernels reach on an H100 (notes/train.md uses 2.5-3 TB/s)
SHAPES = {"b": 8, "l": 2048, "d": 1536, "group_size": 1536}
ROW_PROGRAMS = 512  # mambalab.ops.triton.gated_norm.ROW_PROGRAMS, not imported: counting needs no triton


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel touches for t: its elements, or its storage where t broadcasts (stride-0 views)."""
    return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())


class OpLog(TorchDispatchMode):
    """Every aten op that computes (views and metadata changes excluded): name, bytes read, bytes written."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not (torch.Tag.view_copy in func.tags or func._schema.is_mutable or _is_view(func)):
            inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            self.ops.append({"op": str(func.overloadpacket.__name__),
                             "read": sum(map(tensor_bytes, inputs)), "written": sum(map(tensor_bytes, outputs))})
        return out


def _is_view(func) -> bool:
    return any(a.alias_info is not None and not a.alias_info.is_write for a in func._schema.returns)


def composition_counts(b: int, l: int, d: int, group_size: int) -> dict:
    """The composition's ops, bytes and saved bytes forward and backward, on meta tensors."""
    norm = GatedRMSNorm(d, group_size).to("meta")
    y = torch.empty(b, l, d, device="meta", dtype=torch.bfloat16, requires_grad=True)
    z = torch.empty(b, l, d, device="meta", dtype=torch.bfloat16, requires_grad=True)
    saved = {}

    def pack(t):
        saved.setdefault((id(t.untyped_storage()), t.dtype, tuple(t.shape)), tensor_bytes(t))
        return t

    with OpLog() as forward, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = norm(y, z)
    dout = torch.empty(out.shape, device="meta", dtype=torch.float32)
    with OpLog() as backward:
        out.backward(dout)
    return {"forward": _summary(forward.ops), "backward": _summary(backward.ops),
            "saved_bytes": sum(saved.values()), "saved_tensors": len(saved)}


def _summary(ops: list[dict]) -> dict:
    return {"kernels": len(ops), "bytes": sum(o["read"] + o["written"] for o in ops), "ops": ops}


def fused_counts(b: int, l: int, d: int, group_size: int) -> dict:
    """The fused kernels' traffic: forward reads y, z (bf16), writes out (float32) and r; backward reads y, z,
    r, dout (float32), writes dy, dz (bf16) and the dweight partial sums, which one torch sum reads again.
    Saved: y and r (z is a view of in_proj's output, which the conv's saved input keeps alive anyway)."""
    rows, groups = b * l, d // group_size
    n, r_bytes = rows * d, rows * groups * 4
    partial = min(rows, ROW_PROGRAMS) * d * 4
    return {"forward": {"kernels": 1, "bytes": n * (2 + 2 + 4) + r_bytes},
            "backward": {"kernels": 2, "bytes": n * (2 + 2 + 4 + 2 + 2) + r_bytes + 2 * partial},
            "saved_bytes": n * 2 + r_bytes}


def gpu_times(b: int, l: int, d: int, group_size: int) -> dict:
    """Median ms of forward and forward + backward, composition and kernels, and the relative differences of
    the kernels' output and gradients from the composition's."""
    from triton.testing import do_bench

    from mambalab.ops.triton.gated_norm import gated_rms_norm

    torch.manual_seed(0)
    norm = GatedRMSNorm(d, group_size).cuda()
    y = torch.randn(b, l, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    z = torch.randn(b, l, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dout = torch.randn(b, l, d, device="cuda")
    leaves = (y, z, norm.weight)

    def composition():
        return gated_rms_norm_composition(y, z, norm.weight, group_size, norm.eps)

    def fused():
        return gated_rms_norm(y, z, norm.weight, group_size, norm.eps)

    result = {}
    for name, fn in (("composition", composition), ("fused", fused)):
        outputs = (fn().detach(), *torch.autograd.grad(fn(), leaves, dout))
        result[name] = {"forward_ms": do_bench(lambda fn=fn: fn().detach()),  # recording the graph, as in training
                        "forward_backward_ms": do_bench(lambda fn=fn: torch.autograd.grad(fn(), leaves, dout)),
                        "outputs": outputs}
    ref, got = result["composition"].pop("outputs"), result["fused"].pop("outputs")
    result["rel_diff"] = {k: ((g.double() - r.double()).norm() / r.double().norm()).item()
                          for k, g, r in zip(("out", "dy", "dz", "dweight"), got, ref)}
    return result


def main() -> None:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--count-only", action="store_true", help="the byte counts only (no GPU needed)")
    opts = parser.parse_args()
    comp, fused = composition_counts(**SHAPES), fused_counts(**SHAPES)
    payload = {"shapes": SHAPES, "bandwidth_bytes_per_s": BANDWIDTH, "composition": comp, "fused": fused}
    for name, counts in (("composition", comp), ("fused", fused)):
        total = counts["forward"]["bytes"] + counts["backward"]["bytes"]
        counts["ms_at_bandwidth"] = total / BANDWIDTH * 1e3
        print(f"{name}: {counts['forward']['kernels']} + {counts['backward']['kernels']} kernels, "
              f"{counts['forward']['bytes'] / 1e6:.0f} + {counts['backward']['bytes'] / 1e6:.0f} MB, "
              f"saved {counts['saved_bytes'] / 1e6:.0f} MB, {counts['ms_at_bandwidth']:.3f} ms at "
              f"{BANDWIDTH / 1e12:.0f} TB/s per layer", flush=True)
    if not opts.count_only:
        times = payload["gpu"] = gpu_times(**SHAPES)
        for name, counts in (("composition", comp), ("fused", fused)):
            total = counts["forward"]["bytes"] + counts["backward"]["bytes"]
            times[name]["tb_per_s"] = total / (times[name]["forward_backward_ms"] * 1e-3) / 1e12
            print(f"{name}: forward {times[name]['forward_ms']:.3f} ms, forward + backward "
                  f"{times[name]['forward_backward_ms']:.3f} ms ({times[name]['tb_per_s']:.2f} TB/s)", flush=True)
        print(f"fused vs composition, relative: {times['rel_diff']}", flush=True)
    write_result("gated_norm_train", payload, opts.out)


if __name__ == "__main__":
    main()
