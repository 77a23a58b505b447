"""Seeds: every task cell of the main grid trains once per seed; tables show the mean and the min-max, and a
finding holds only where it holds in every seed.

A *cell* is everything about a run but its seed (group, task, family, size, plan, overrides). `by_cell` groups
the runs of a results dict into cells; `Spread` is the mean / min / max of one number over a cell's seeds;
`verdict` turns per-seed yes/no answers into the words a finding uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


def seed_of(run: dict) -> int:
    return int(run["spec"].get("seed", 0))


def cell_key(run: dict) -> str:
    """Everything that identifies the run but its seed, as a string."""
    return json.dumps({k: v for k, v in run["spec"].items() if k != "seed"}, sort_keys=True, default=str)


def by_cell(runs: list[dict]) -> list[list[dict]]:
    """The runs grouped by cell, in order of first appearance; each cell's runs sorted by seed."""
    cells: dict[str, list[dict]] = {}
    for run in runs:
        cells.setdefault(cell_key(run), []).append(run)
    return [sorted(cell, key=seed_of) for cell in cells.values()]


@dataclass(frozen=True)
class Spread:
    """One number over seeds: its mean, min and max, and how many seeds gave it."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread | None:
        """None when no value is known (every run failed, or the metric is missing)."""
        values = [v for v in values if v is not None]
        if not values:
            return None
        return cls(sum(values) / len(values), min(values), max(values), len(values))

    def format(self, scale=lambda x: f"{x:.3g}") -> str:
        """'61.3 (36.0-93.0)' over several seeds, '61.3' for one."""
        if self.n == 1:
            return scale(self.mean)
        return f"{scale(self.mean)} ({scale(self.low)}-{scale(self.high)})"


def verdict(holds: dict[int, bool]) -> str:
    """'in every seed (3 of 3)', 'in 2 of 3 seeds (not seed 1)', 'in none of 3 seeds', and for one seed
    'in its one seed (seed 0)'."""
    n, yes = len(holds), [s for s, h in holds.items() if h]
    if n == 1:
        return f"in its one seed (seed {next(iter(holds))})"
    if len(yes) == n:
        return f"in every seed ({n} of {n})"
    if not yes:
        return f"in none of {n} seeds"
    no = ", ".join(str(s) for s, h in sorted(holds.items()) if not h)
    return f"in {len(yes)} of {n} seeds (not seed {no})"
