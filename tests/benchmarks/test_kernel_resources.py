"""benchmarks/kernel_resources.py: the rows it reads from Triton's compile caches (faked here: nothing is
compiled on CPU) and that it reads nothing from modules without compiled kernels."""

from __future__ import annotations

import types

from benchmarks import kernel_resources


class FakeCompiled:
    """What Triton's CompiledKernel exposes: metadata, the source it was compiled from, ptxas' counts once its
    binary is loaded (lazily, on first launch)."""

    def __init__(self, regs, spills, warps, constants):
        self.metadata = types.SimpleNamespace(num_warps=warps, num_stages=2, shared=16384)
        self.src = types.SimpleNamespace(constants=constants, fn=types.SimpleNamespace(arg_names=["x", "BLOCK", "ACC"]))
        self._counts = (regs, spills)
        self.n_regs = self.n_spills = None

    def _init_handles(self):
        self.n_regs, self.n_spills = self._counts


def fake_kernel(*variants):
    return types.SimpleNamespace(device_caches={0: ({f"key{i}": v for i, v in enumerate(variants)}, "target")})


def test_rows_per_compiled_variant_with_loaded_counts_and_constexprs():
    module = types.ModuleType("fake_kernels")
    module.first_kernel = fake_kernel(FakeCompiled(255, 120, 4, {(1,): 64, (2,): "fp32"}),
                                      FakeCompiled(168, 0, 8, {(1,): 32, (2,): "fp32"}))
    module.helper = lambda: None
    module.second_kernel = fake_kernel(FakeCompiled(96, 0, 4, {(1,): 16}))
    rows = kernel_resources.compiled_resources(module)
    assert [(r["kernel"], r["num_warps"], r["registers"], r["spilled_bytes"]) for r in rows] == [
        ("first_kernel", 4, 255, 120), ("first_kernel", 8, 168, 0), ("second_kernel", 4, 96, 0)]
    assert rows[0]["constexprs"] == {"BLOCK": 64, "ACC": "fp32"} and rows[0]["shared_bytes"] == 16384
    assert kernel_resources.summary(rows)[0] == "first_kernel: 4 warps, 255 registers, 120 B spilled, 16384 B shared"


def test_nothing_compiled_gives_no_rows():
    from mambalab.ops.ssd import triton_kernels  # interpreted or not yet launched on CPU: empty caches

    assert kernel_resources.compiled_resources(types.ModuleType("empty")) == []
    assert kernel_resources.compiled_resources(triton_kernels) == []
