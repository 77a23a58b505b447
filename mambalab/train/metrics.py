"""Training metrics: one JSON object per line in metrics.jsonl, and a loss-curve PNG drawn from them."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from mambalab.atomic import write_atomic, write_text_atomic
from mambalab.errors import CorruptCheckpoint

logger = logging.getLogger(__name__)


class MetricsLog:
    """Appends records to `path` (JSONL). `truncate_after(step)` drops records past a resumed checkpoint.

    A process killed while appending leaves a torn last line: `read` drops it with a warning naming the file.
    Any other line that is not a record (a JSON object with an integer "step") raises `CorruptCheckpoint`
    naming the file and the line, since the run's history can no longer be trusted."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        lines = [(n, line) for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1)
                 if line.strip()]
        records = []
        for n, line in lines:
            record = _parse_record(line)
            if record is not None:
                records.append(record)
            elif n == lines[-1][0]:
                logger.warning("%s: line %d is torn (an interrupted write); dropping it: %.80s", self.path, n, line)
            else:
                raise CorruptCheckpoint(f"{self.path}: line {n} is not a metrics record: {line[:80]!r}")
        return records

    def truncate_after(self, step: int) -> list[dict]:
        """Keep only the records with record["step"] <= step (rewritten atomically); returns them."""
        kept = [r for r in self.read() if r["step"] <= step]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _parse_record(line: str) -> dict | None:
    """The record a metrics line holds, or None when it is not a JSON object with an integer "step"."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return record if isinstance(step, int) and not isinstance(step, bool) else None


def plot_loss_curve(records: list[dict], path: str | Path, title: str = "training loss") -> Path | None:
    """Train loss (and validation loss when present) against step, as a PNG written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [(r["step"], r["loss"]) for r in records if "loss" in r and math.isfinite(r["loss"])]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r and math.isfinite(r["val_loss"])]
    if not train and not val:
        return None
    fig = Figure(figsize=(7, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for points, label, style in ((train, "train", "-"), (val, "validation", "o-")):
        if points:
            ax.plot(*zip(*points), style, label=label, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
