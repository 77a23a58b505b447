"""An elementwise kernel over the scan kernels' softplus and sigmoid, for tests/ops/test_triton_math.py. Import
it inside the `triton_kernels` fixture (so that on CPU it is decorated, like the kernels, for the interpreter)."""

from __future__ import annotations

import triton
import triton.language as tl

from mambalab.ops.triton import common


@triton.jit
def softplus_sigmoid_kernel(x_ptr, sp_ptr, sig_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    v = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(sp_ptr + offs, common.softplus(v), mask=mask)
    tl.store(sig_ptr + offs, common.sigmoid(v), mask=mask)
