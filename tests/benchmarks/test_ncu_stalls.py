"""benchmarks/investigations/ncu_stalls.py: stalls summed per loop and long-scoreboard waits traced back to the
load they wait on, on a small export written here (the columns Nsight Compute's source page has)."""

from __future__ import annotations

import csv
import gzip

from benchmarks.investigations import ncu_stalls

STALLS = ("stall_long_sb", "stall_wait", "stall_barrier")


def _export(path, lines):
    """An export of (address, SASS, {stall: samples}) rows; gzipped when the name ends in .gz."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", newline="") as f:
        out = csv.writer(f)
        out.writerow(["Kernel Name", "k"])
        out.writerow(["Address", "Source", *STALLS, "stall_long_sb (Not Issued)"])
        for address, sass, samples in lines:
            out.writerow([hex(address), sass, *(samples.get(s, 0) for s in STALLS), 0])


LINES = [
    (0x00, "LDL R5, [R1+0x10]", {}),
    (0x10, "MOV R9, RZ", {}),  # a fixed-latency write: not what the wait below is on
    (0x20, "LDG.E R7, desc[UR4][R2.64]", {}),  # the loop starts here
    (0x30, "IADD3 R8, R9, R5, RZ", {"stall_long_sb": 60}),
    (0x40, "FADD R10, R7, R7", {"stall_long_sb": 20, "stall_wait": 10}),
    (0x50, "STL [R1+0x20], R10", {"stall_barrier": 10}),
    (0x60, "BRA 0x20", {}),
    (0x70, "EXIT", {}),
]


def test_waits_are_traced_to_the_loads_and_summed_per_loop(tmp_path):
    path = tmp_path / "export.csv.gz"
    _export(path, LINES)
    rows = ncu_stalls.read_rows(str(path))
    assert ncu_stalls.loops(rows) == [(2, 6)]
    parsed = [ncu_stalls.operands(r["Source"]) for r in rows]
    assert ncu_stalls.producer(parsed, 3) == 0  # R5's reload, not R9's move
    assert ncu_stalls.producer(parsed, 4) == 2
    text = ncu_stalls.summarise(str(path))
    assert "all: long_sb 80.0%, wait 10.0%, barrier 10.0%" in text
    assert "loop rows 2-6 (5 instructions, 100.0% of the samples; LDL 0, STL 1, LDG 1, BAR 0)" in text
    assert "load awaited (share of all samples): LDL 60.0%, LDG 20.0%" in text
    assert "reload at row 0 (outside the loops) LDL R5, [R1+0x10]: 60.0%" in text
