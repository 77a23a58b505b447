"""Where a kernel's warps stall, from Nsight Compute's per-SASS-line export
(`ncu -i REPORT --page source --csv --print-source sass > FILE.csv`, as benchmarks/device/ssd_ncu_variant.sh writes):
the stall reasons over the kernel and over each loop (a backward branch's body), the long-scoreboard waits by the
kind of load that produced the awaited register (a spill reload LDL, a global load LDG, ...), and the spill
reloads that cost most.

    PYTHONPATH=. python3 benchmarks/investigations/ncu_stalls.py ncu_committed.csv [ncu_variant.csv.gz ...]   (gzipped or not)
"""

from __future__ import annotations

import argparse
import collections
import csv
import gzip
import re

from benchmarks.investigations.kernel_sass import loop_spans

REGISTER = re.compile(r"\bR(\d+)\b")
STACK_SLOT = re.compile(r"\[(R1[^\]]*)\]")
LOADS = ("LDL", "LDG", "LDGSTS", "LDS", "LDSM", "LD", "ATOM")


def _number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def read_rows(path: str) -> list[dict]:
    """The export's instruction rows (its first line names the kernel, its second the columns)."""
    with (gzip.open(path, "rt", newline="") if path.endswith(".gz") else open(path, newline="")) as f:
        rows = list(csv.reader(f))
    header = rows[1]
    return [dict(zip(header, r)) for r in rows[2:] if len(r) == len(header)]


def operands(sass: str) -> tuple[str, int | None, set[int]]:
    """(opcode, destination register or None, source registers) of one SASS line."""
    text = re.sub(r"^@!?U?P\w+\s+", "", sass.strip())
    opcode, _, args = text.partition(" ")
    registers = [int(r) for r in REGISTER.findall(args)]
    if not registers or opcode.startswith(("ST", "RED", "BAR", "BRA", "WARPGROUP", "HGMMA")):
        return opcode, None, set(registers)
    return opcode, registers[0], set(registers[1:])


def loops(rows: list[dict]) -> list[tuple[int, int]]:
    """(first, last) row of each loop: the rows from a backward branch's target to the branch, in the order of the
    branches (an inner loop before the loop around it)."""
    index = {int(r["Address"], 16): i for i, r in enumerate(rows) if r["Address"].startswith("0x")}
    instrs = [(address, *re.sub(r"^@!?U?P\w+\s+", "", rows[i]["Source"].strip()).partition(" ")[::2])
              for address, i in index.items()]  # (address, opcode, operands)
    spans = [(index[start], index[end]) for start, end in loop_spans(instrs) if start in index]
    return sorted(spans, key=lambda span: span[1])


def producer(parsed: list[tuple], i: int, window: int = 1500) -> int | None:
    """The row of the load whose result row i waits on: the latest writer of one of its source registers that is a
    load (a source last written by a fixed-latency instruction is not what a long-scoreboard stall waits on)."""
    wanted = set(parsed[i][2])
    for j in range(i - 1, max(i - window, -1), -1):
        opcode, destination, _ = parsed[j]
        if destination in wanted:
            if opcode.split(".")[0] in LOADS:
                return j
            wanted.discard(destination)
            if not wanted:
                return None
    return None


def summarise(path: str) -> str:
    rows = read_rows(path)
    stalls = [c for c in rows[0] if c.startswith("stall_") and "Not Issued" not in c]
    samples = [{s: _number(r[s]) for s in stalls} for r in rows]
    total = sum(sum(s.values()) for s in samples)
    lines = [f"{path}: {len(rows)} instructions, {total:.0f} stall samples"]

    def shares(counter, scale):
        return ", ".join(f"{k.removeprefix('stall_')} {v / scale:.1%}" for k, v in counter.most_common(6))

    overall = collections.Counter()
    for s in samples:
        overall.update(s)
    lines.append(f"  all: {shares(overall, total)}")
    spans = [(a, b) for a, b in loops(rows) if sum(sum(samples[i].values()) for i in range(a, b + 1)) > 0.02 * total]
    for a, b in spans:
        counter = collections.Counter()
        for i in range(a, b + 1):
            counter.update(samples[i])
        ops = collections.Counter(operands(rows[i]["Source"])[0].split(".")[0] for i in range(a, b + 1))
        lines.append(f"  loop rows {a}-{b} ({b - a + 1} instructions, {sum(counter.values()) / total:.1%} of the "
                     f"samples; LDL {ops['LDL']}, STL {ops['STL']}, LDG {ops['LDG']}, BAR {ops['BAR']}): "
                     f"{shares(counter, sum(counter.values()))}")
    parsed = [operands(r["Source"]) for r in rows]
    by_kind, by_reload = collections.Counter(), collections.Counter()
    for i, s in enumerate(samples):
        if s.get("stall_long_sb"):
            j = producer(parsed, i)
            kind = parsed[j][0].split(".")[0] if j is not None else "not found"
            by_kind[kind] += s["stall_long_sb"]
            if kind == "LDL":
                by_reload[j] += s["stall_long_sb"]
    lines.append("  long-scoreboard waits by the load awaited (share of all samples): "
                 + ", ".join(f"{k} {v / total:.1%}" for k, v in by_kind.most_common()))
    def slot(i):
        m = STACK_SLOT.search(rows[i]["Source"])
        return m.group(1) if m else "?"

    for j, v in by_reload.most_common(8):
        span = next(((a, b) for a, b in spans if a <= j <= b), None)
        where, note = "outside the loops", ""
        if span:
            where = f"loop rows {span[0]}-{span[1]}"
            stored = any(parsed[i][0].startswith("STL") and slot(i) == slot(j) for i in range(span[0], span[1] + 1))
            note = "" if stored else " (not stored in the loop: a loop invariant)"
        lines.append(f"    reload at row {j} ({where}) {rows[j]['Source'].strip()[:40]}: {v / total:.1%}{note}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", nargs="+")
    for path in parser.parse_args().csv:
        print(summarise(path))


if __name__ == "__main__":
    main()
