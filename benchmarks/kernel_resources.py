"""What each compiled Triton kernel of a module costs the GPU: warps, pipeline stages, shared memory, registers
per thread and bytes spilled to local memory, as ptxas reported them, per compiled variant (one per set of
constexpr arguments and specializations) launched so far in this process.

Spills and register counts say why a tile choice is slow before any timing does: a kernel at 255 registers
with spills is latency-bound however its products are arranged (benchmarks/notes/ssd.md). Under Triton's
interpreter nothing is compiled and the list is empty.
"""

from __future__ import annotations

from types import ModuleType


def _constexprs(compiled) -> dict:
    """{argument name: value} of the arguments the variant was compiled for (constexprs, specializations)."""
    src = getattr(compiled, "src", None)
    constants = getattr(src, "constants", None) or {}
    names = list(getattr(getattr(src, "fn", None), "arg_names", []) or [])
    out = {}
    for key, value in constants.items():
        index = key[0] if isinstance(key, tuple) and len(key) == 1 else key
        name = names[index] if isinstance(index, int) and 0 <= index < len(names) else str(key)
        out[name] = value if isinstance(value, (bool, int, float, str)) or value is None else str(value)
    return out


def _loaded(compiled) -> bool:
    """Registers and spills are known once the binary is loaded (on its first launch)."""
    if getattr(compiled, "n_regs", None) is None and hasattr(compiled, "_init_handles"):
        try:
            compiled._init_handles()
        except Exception:  # noqa: BLE001 (a variant that cannot load here is reported without its counts)
            return False
    return getattr(compiled, "n_regs", None) is not None


def compiled_resources(module: ModuleType) -> list[dict]:
    """One row per compiled variant of every @triton.jit kernel defined in `module` (a kernel is an attribute
    with Triton's per-device compile caches), in the order the module defines them."""
    rows = []
    for name, fn in vars(module).items():
        caches = getattr(fn, "device_caches", None)
        if not isinstance(caches, dict):
            continue
        for entry in list(caches.values()):
            kernel_cache = entry[0] if isinstance(entry, tuple) else entry
            for compiled in list(kernel_cache.values()):
                meta = getattr(compiled, "metadata", None)
                loaded = _loaded(compiled)
                rows.append({
                    "kernel": name,
                    "num_warps": getattr(meta, "num_warps", None),
                    "num_stages": getattr(meta, "num_stages", None),
                    "shared_bytes": getattr(meta, "shared", None),
                    "registers": compiled.n_regs if loaded else None,
                    "spilled_bytes": compiled.n_spills if loaded else None,
                    "constexprs": _constexprs(compiled),
                })
    return rows


def summary(rows: list[dict]) -> list[str]:
    """One line per variant: kernel, warps, registers, spills, shared memory."""
    return [f"{r['kernel']}: {r['num_warps']} warps, {r['registers']} registers, {r['spilled_bytes']} B spilled, "
            f"{r['shared_bytes']} B shared" for r in rows]
