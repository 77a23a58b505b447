"""The compiled CPU selective-scan kernels (backend "cpu") against the for-loop reference, forward and gradients.

Every buffer the kernels write is allocated through `cpu_scan.empty`, replaced here by a NaN-filled one, so an
element they fail to write fails the comparison (rel_error is +inf on NaN). The checkpoint interval is small in
some tests, so that sequences span many segments with a partial last one.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mambalab.ops import backends
from mambalab.ops.selective_scan import OP, cpu_scan, selective_scan
from tests.conftest import rel_error
from tests.ops.test_selective_scan import (
    OPTIONS,
    TENSOR_ARGS,
    grads_of,
    make_inputs,
    requiring_grad,
    run,
    saved_fraction,
)

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None,
                                reason="no C compiler ($CC or cc) to build the cpu backend")


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    """Every kernel output starts as NaN; `calls` counts the buffers allocated so."""
    calls = []

    def poisoned(*shape, dtype):
        calls.append(shape)
        return torch.full(shape, float("nan"), dtype=dtype)

    monkeypatch.setattr(cpu_scan, "empty", poisoned)
    return calls


def cast(kw, dtype):
    return {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in kw.items()}


def compare(kw, tol, grad_tol, dtype=torch.float64, **extra):
    """The cpu backend on `kw` cast to dtype vs the reference on kw (float64): y, final state, every gradient."""
    ref_kw, ours = requiring_grad(kw), requiring_grad(cast(kw, dtype))
    y_ref, h_ref = run("reference", ref_kw, return_final_state=True, **extra)
    y, h = run("cpu", ours, return_final_state=True, **extra)
    assert y.dtype == dtype and h.dtype == dtype
    errors = {"y": rel_error(y, y_ref), "final_state": rel_error(h, h_ref)}
    gy, gh = torch.randn_like(y_ref), torch.randn_like(h_ref)
    g_ref, g = grads_of(ref_kw, y_ref, h_ref, gy, gh), grads_of(ours, y, h, gy.to(dtype), gh.to(dtype))
    grad_errors = {f"d{k}": rel_error(g[k], g_ref[k]) for k in g_ref}
    assert max(errors.values()) <= tol, errors
    assert max(grad_errors.values()) <= grad_tol, grad_errors


CASES = [  # (length, n, groups, options): every length with N=3 and 16, G=1 and 2, each option set
    (length, n, groups, list(OPTIONS)[i % len(OPTIONS)])
    for i, (length, n, groups) in enumerate(
        (length, n, groups) for length in (1, 7, 257, 1000) for n in (3, 16) for groups in (1, 2)
    )
]


@pytest.mark.parametrize(("length", "n", "groups", "options"), CASES)
def test_matches_reference_float64(length, n, groups, options):
    """dim 20: partial vectors of channels (8 float64 lanes; 10 channels per group when G=2)."""
    compare(make_inputs(2, 20, n, length, groups, OPTIONS[options]), 1e-10, 1e-8)


@pytest.mark.parametrize("checkpoint_steps", [1, 5, 64])
@pytest.mark.parametrize("groups", [1, 2])
def test_several_vectors_and_blocks(monkeypatch, checkpoint_steps, groups):
    """dim 90: several vectors per work item and several work items per group, with any checkpoint interval."""
    monkeypatch.setattr(cpu_scan, "CHECKPOINT_STEPS", checkpoint_steps)
    compare(make_inputs(2, 90, 4, 37, groups, OPTIONS["all"]), 1e-10, 1e-8)


@pytest.mark.parametrize("groups", [1, 2])
def test_float32_matches_float64_reference(groups):
    kw = make_inputs(2, 40, 16, 300, groups, OPTIONS["all"])
    compare(kw, 1e-5, 1e-5, dtype=torch.float32)


@pytest.mark.parametrize("options", ["none", "D+softplus"])
def test_float32_without_gate_or_bias(options):
    compare(make_inputs(1, 34, 3, 129, 2, OPTIONS[options]), 1e-5, 1e-5, dtype=torch.float32)


@pytest.mark.parametrize("groups", [1, 2])
def test_gradcheck(groups):
    kw = requiring_grad(make_inputs(1, 4, 2, 6, groups, OPTIONS["all"]))
    names = [k for k in TENSOR_ARGS if k in kw]

    def f(*tensors):
        return run("cpu", dict(kw, **dict(zip(names, tensors))), return_final_state=True)

    assert torch.autograd.gradcheck(f, [kw[k] for k in names])


@pytest.mark.parametrize("checkpoint_steps", [4, 64])
def test_cu_seqlens_with_an_empty_sequence(monkeypatch, checkpoint_steps):
    """Packed sequences (one empty, boundaries inside segments) against the reference's varlen loop."""
    monkeypatch.setattr(cpu_scan, "CHECKPOINT_STEPS", checkpoint_steps)
    lengths = [5, 0, 300, 17, 1]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    kw = make_inputs(1, 20, 3, sum(lengths), 2, OPTIONS["all"], rows=len(lengths))
    compare(kw, 1e-10, 1e-8, cu_seqlens=cu_seqlens)
    compare(kw, 1e-5, 1e-5, dtype=torch.float32, cu_seqlens=cu_seqlens.int())


@pytest.mark.parametrize("split", [0, 1, 130, 299])
def test_continuation(split):
    """Scanning [0, k) then [k, L) from the first part's final state equals scanning [0, L)."""
    length = 300
    kw = make_inputs(2, 20, 3, length, 2, OPTIONS["all"])
    y_full, h_full = run("cpu", kw, return_final_state=True)

    def part(sl, state):
        p = {k: (v[..., sl] if k in ("u", "delta", "z", "B", "C") else v) for k, v in kw.items()}
        return run("cpu", dict(p, initial_state=state), return_final_state=True)

    y1, h1 = part(slice(0, split), kw["initial_state"])
    y2, h2 = part(slice(split, length), h1)
    assert rel_error(torch.cat([y1, y2], dim=-1), y_full) <= 1e-12
    assert rel_error(h2, h_full) <= 1e-12


def test_bfloat16_inputs_compute_in_float32():
    """bf16 u, Δ, B, C, z: y comes back in bf16, the final state in float32, both close to the float64 oracle."""
    kw = make_inputs(2, 20, 4, 65, 1, OPTIONS["all"], dtype=torch.float32)
    low = {k: v.bfloat16() if k in ("u", "delta", "B", "C", "z") else v for k, v in kw.items()}
    y, h = run("cpu", requiring_grad(low), return_final_state=True)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    y_ref, h_ref = run("reference", cast(low, torch.float64), return_final_state=True)
    assert rel_error(y, y_ref) <= 1e-2 and rel_error(h, h_ref) <= 1e-5
    y.float().sum().backward()


def test_compute_dtype_follows_the_reference():
    """float64 A with float32 u: computed in float64 (as the reference), y in u's dtype, the state in float64."""
    kw = make_inputs(1, 20, 3, 50, 1, OPTIONS["all"])
    mixed = dict(cast(kw, torch.float32), A=kw["A"])
    y, h = run("cpu", mixed, return_final_state=True)
    y_ref, h_ref = run("reference", mixed, return_final_state=True)
    assert (y.dtype, h.dtype) == (torch.float32, torch.float64)
    assert rel_error(y, y_ref) <= 1e-6 and rel_error(h, h_ref) <= 1e-12


def test_non_contiguous_inputs():
    """The mixer's layouts: Δ and z channel-last views, B/C transposed out of one (b, l, 2n) tensor."""
    kw = make_inputs(2, 20, 4, 33, 1, OPTIONS["all"])
    kw["delta"] = kw["delta"].transpose(1, 2).contiguous().transpose(1, 2)
    kw["z"] = kw["z"].transpose(1, 2).contiguous().transpose(1, 2)
    bc = torch.cat([kw["B"], kw["C"]], dim=1).transpose(1, 2).contiguous()  # (b, l, 2n)
    kw["B"], kw["C"] = bc[..., :4].transpose(1, 2), bc[..., 4:].transpose(1, 2)
    assert not kw["B"].is_contiguous() and not kw["delta"].is_contiguous()
    compare(kw, 1e-10, 1e-8)


@pytest.mark.parametrize("loss_of", ["y", "final_state"])
def test_gradient_of_one_output_only(loss_of):
    """Autograd hands the op no gradient for the output the loss does not use; the rest still matches."""
    kw = make_inputs(2, 20, 3, 40, 2, OPTIONS["all"])
    grads = []
    for backend, args in (("cpu", requiring_grad(kw)), ("reference", requiring_grad(kw))):
        y, h = run(backend, args, return_final_state=True)
        out = y if loss_of == "y" else h
        names = [k for k in TENSOR_ARGS if k in args]
        grads.append(torch.autograd.grad(out.sum(), [args[k] for k in names], materialize_grads=True))
    for name, g, g_ref in zip(names, *grads):
        assert rel_error(g, g_ref) <= 1e-10, name  # C, D, z: 0 for the final state's loss


def test_expanded_output_gradients_and_empty_sequence():
    """Gradients of y.sum() + final.sum() arrive as stride-0 expanded tensors; L = 0 returns the initial state."""
    for length in (0, 5):
        kw = requiring_grad(make_inputs(2, 20, 3, length, 1, OPTIONS["all"]))
        ref_kw = requiring_grad(kw)
        outs = [run(b, a, return_final_state=True) for b, a in (("cpu", kw), ("reference", ref_kw))]
        grads = [torch.autograd.grad(y.sum() + h.sum(), a["initial_state"])[0] for (y, h), a in zip(outs, (kw, ref_kw))]
        assert rel_error(outs[0][1], outs[1][1]) <= 1e-12 and rel_error(grads[0], grads[1]) <= 1e-12


def test_two_threads_agree_with_one():
    """Work split over threads (dB/dC summed from per-thread buffers) gives the one-thread result."""
    kw = make_inputs(2, 90, 4, 70, 2, OPTIONS["all"])
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)  # restored by the autouse fixture
        args = requiring_grad(kw)
        y, h = run("cpu", args, return_final_state=True)
        results.append([y, h, *torch.autograd.grad(y.sum() + h.sum(), [args["B"], args["C"], args["A"]])])
    for a, b in zip(*results):
        assert rel_error(a, b) <= 1e-12


def test_outputs_are_allocated_poisoned(_poison_outputs):
    """The NaN fixture is live: forward and backward take their outputs from cpu_scan.empty."""
    kw = requiring_grad(make_inputs(1, 4, 2, 9, 1, OPTIONS["all"]))
    run("cpu", kw).sum().backward()
    assert len(_poison_outputs) >= 3 + 9  # y, final, checkpoints; du, dΔ, dz, dA, dB, dC, dD, dΔ-bias, dh0, workspace


def test_backward_keeps_no_full_state_tensor():
    """What the forward saves: the inputs and one state per CHECKPOINT_STEPS steps, far below (b, d, l, n)."""
    assert 0 < saved_fraction("cpu") < 1 / 4  # 0.13: u, Δ, z, B, C and checkpoints of n / 64 floats per (b, d, l)


def assert_exp2_within_two_ulp(lib):
    """lib's float32 2^x against float64: ≤ 2 ulp over the normal range, 0 below -150, inf above 128, NaN kept;
    an odd count, so that the vector loop's partial last vector is used too."""
    x = torch.cat([torch.linspace(-160, 140, 2_000_001), torch.tensor([float("nan"), -0.0, 1e-30, -float("inf"),
                                                                       float("inf")])])
    y = torch.full_like(x, float("nan"))
    lib.mambalab_exp2_f32(x.data_ptr(), y.data_ptr(), x.numel())
    ref = torch.exp2(x.double())
    normal = (ref >= 2.0**-126) & (ref < 2.0**128)
    ulp = (ref[normal].float().nextafter(torch.tensor(float("inf"))).double() - ref[normal].float().double())
    assert ((y[normal].double() - ref[normal]).abs() / ulp).max() <= 2
    assert (y[x < -150] == 0).all() and torch.isinf(y[x >= 128.0]).all() and torch.isnan(y[-5])


def test_exp2_polynomial_is_within_two_ulp():
    assert_exp2_within_two_ulp(cpu_scan.library())


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="-mno-avx512f is an x86 flag")
def test_portable_kernels_without_avx512(monkeypatch, tmp_path):
    """The kernels as built for a CPU without AVX-512 (most x86 laptops; ARM takes the same code paths): the
    portable 2^x (no vscalefps) and element-by-element lane transposes, forward and gradients, float32 and
    float64."""
    monkeypatch.setenv("MAMBALAB_CACHE_DIR", str(tmp_path))
    lib = cpu_scan._load(cpu_scan.build(("-mno-avx512f",)))
    monkeypatch.setattr(cpu_scan, "_library", lib)
    assert_exp2_within_two_ulp(lib)
    kw = make_inputs(2, 40, 16, 300, 2, OPTIONS["all"])
    compare(kw, 1e-5, 1e-5, dtype=torch.float32)
    compare(kw, 1e-10, 1e-8)


def test_torch_compile_of_a_mixer_has_no_graph_break():
    """torch.compile(fullgraph=True) over a Mamba mixer on the cpu backend: forward and input gradient match the
    for-loop reference mixer."""
    from mambalab.config import SSMConfig
    from mambalab.layers.mamba import Mamba

    mixer = Mamba(16, SSMConfig(d_state=4, scan_backend="cpu"))
    oracle = Mamba(16, SSMConfig(d_state=4, scan_backend="reference")).double()
    oracle.load_state_dict({k: v.double() for k, v in mixer.state_dict().items()})
    x = torch.randn(2, 9, 16, requires_grad=True)
    x64 = x.detach().double().requires_grad_(True)
    y = torch.compile(mixer, fullgraph=True, backend="aot_eager")(x)
    y64 = oracle(x64)
    (gx,) = torch.autograd.grad(y.sum(), x)
    (gx64,) = torch.autograd.grad(y64.sum(), x64)
    assert rel_error(y, y64) <= 1e-5 and rel_error(gx, gx64) <= 1e-5


def _fresh_process(code: str, **env) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                   **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=300,
                          check=False)


def test_compiled_on_first_use_inside_torch_compile(tmp_path):
    """In a fresh process with an empty cache, the first call is inside a torch.compile(fullgraph=True) trace of
    backend='auto': the kernels compile there (eagerly, no graph break) and 'auto' is 'cpu'."""
    code = (
        "import torch\n"
        "from mambalab.ops.selective_scan import resolve_backend, selective_scan\n"
        "u, delta, z = torch.randn(3, 1, 4, 6).unbind(0)\n"
        "A, B, C = -torch.rand(4, 2), torch.randn(1, 2, 6), torch.randn(1, 2, 6)\n"
        "f = lambda *t: selective_scan(*t, z=z, delta_softplus=True)\n"
        "y = torch.compile(f, fullgraph=True, backend='aot_eager')(u, delta, A, B, C)\n"
        "ref = selective_scan(u, delta, A, B, C, z=z, delta_softplus=True, backend='reference')\n"
        "assert (y - ref).abs().max() < 1e-5\n"
        "print('auto:', resolve_backend('auto', torch.device('cpu')))\n"
    )
    out = _fresh_process(code, MAMBALAB_CACHE_DIR=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "auto: cpu" in out.stdout
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".so"] != []


def test_concurrent_first_compiles_share_one_library(tmp_path):
    """Two processes compiling into one empty cache at once: both load the kernels, one library remains, and
    no temporary file is left behind (each compiles under its own name and moves it into place)."""
    code = "from mambalab.ops.selective_scan import cpu_scan\nprint(cpu_scan.compiled())\n"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, MAMBALAB_CACHE_DIR=str(tmp_path), PYTHONPATH=str(ROOT)))
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [o[0].strip() for o in outs] == ["True", "True"], [o[1] for o in outs]
    assert len(list(tmp_path.iterdir())) == 1 and next(tmp_path.iterdir()).suffix == ".so"


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """The kernels not loaded yet in this process, an empty cache folder; restored afterwards."""
    monkeypatch.setattr(cpu_scan, "_library", None)
    monkeypatch.setattr(cpu_scan, "_failure", None)
    monkeypatch.setenv("MAMBALAB_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_missing_compiler_is_a_clear_error(fresh_library, monkeypatch, caplog):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with caplog.at_level(logging.WARNING, logger=cpu_scan.__name__):
        assert not cpu_scan.compiled()
        assert not cpu_scan.compiled()  # tried once
    with pytest.raises(backends.BackendUnavailable) as e:
        cpu_scan.load_cpu_scan()
    message = str(e.value)
    assert "needs a C compiler" in message and "/nonexistent/cc" in message and "point $CC" in message
    assert len(caplog.records) == 1 and "backend='auto' uses 'torch'" in caplog.records[0].getMessage()
    assert list(fresh_library.iterdir()) == []


def test_failed_compile_shows_the_compiler_output(fresh_library, monkeypatch, tmp_path_factory):
    """A compiler that runs but cannot build the file: the error quotes the command and its stderr."""
    fake = tmp_path_factory.mktemp("bin") / "fakecc"
    fake.write_text('#!/bin/sh\ncase "$*" in *-dM*|*--version*) echo fake 1.0; exit 0;; esac\n'
                    'echo "cpu_scan.c:1: error: omp.h: No such file" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.raises(backends.BackendUnavailable) as e:
        cpu_scan.build()
    message = str(e.value)
    assert "compiling the kernels failed" in message and "exited with 1" in message
    assert "omp.h: No such file" in message and "OpenMP" in message
    assert list(fresh_library.iterdir()) == []  # the temporary output is removed


def test_registered_beside_the_others():
    assert {"reference", "torch", "triton", "cpu"} <= set(backends.names(OP))
    kw = make_inputs(1, 4, 2, 5, 1, OPTIONS["all"])
    assert rel_error(run("cpu", kw), run("reference", kw)) <= 1e-12


def test_tensors_elsewhere_are_refused():
    kw = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in make_inputs(1, 4, 2, 5, 1, set()).items()}
    with pytest.raises(backends.BackendUnavailable, match="runs on CPU tensors; u is on meta"):
        selective_scan(**kw, backend="cpu")
