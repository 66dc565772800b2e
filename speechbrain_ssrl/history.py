"""Per-epoch history (``history.csv``) and its plots (``plots/*.png``).

One row per epoch; columns are the union of every key ever logged (empty cells where a value does not
apply). Logging an epoch that is already in the file replaces its row, so a run resumed after a kill
between logging and checkpointing does not duplicate epochs.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from typing import Dict, List, Optional, Sequence


class History:
    """``history.csv`` keyed by ``epoch``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def rows(self) -> List[Dict[str, str]]:
        if not os.path.exists(self.path):
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def log(self, row: Dict[str, object], key: str = "epoch") -> None:
        rows = [r for r in self.rows() if str(r.get(key)) != str(row.get(key))]
        rows.append({k: _fmt(v) for k, v in row.items()})
        rows.sort(key=lambda r: float(r.get(key) or 0))
        cols: List[str] = []
        for r in rows:
            for k in r:
                if k not in cols:
                    cols.append(k)
        tmp = self.path + ".tmp"
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({c: r.get(c, "") for c in cols})
        os.replace(tmp, self.path)

    def truncate(self, last_epoch: int, key: str = "epoch") -> None:
        """Drops rows after ``last_epoch`` (used when resuming from an earlier checkpoint)."""
        rows = [r for r in self.rows() if float(r.get(key) or 0) <= last_epoch]
        if not rows:
            if os.path.exists(self.path):
                os.remove(self.path)
            return
        cols = list(rows[0].keys())
        tmp = self.path + ".tmp"  # atomic: a kill while truncating keeps the old file
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)


def _fmt(v: object) -> object:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    if hasattr(v, "item"):
        return _fmt(v.item())
    return v


def plot_history(csv_path: str, out_dir: str, groups: Optional[Dict[str, Sequence[str]]] = None, x: str = "epoch") -> List[str]:
    """One PNG per group of columns (default: one per numeric column) against ``x``. Returns the files."""
    # SpeechBrain's log.txt takes DEBUG records: without this, matplotlib's import and font search fill it (200+
    # lines a run); set before the first import, which logs too
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = History(csv_path).rows()
    if not rows:
        return []
    cols = [c for c in rows[0].keys() if c != x]

    def values(c):
        out = []
        for r in rows:
            try:
                out.append((float(r[x]), float(r[c])))
            except (TypeError, ValueError, KeyError):
                continue
        return out

    numeric = [c for c in cols if values(c)]
    if groups is None:
        groups = {c: [c] for c in numeric}
    os.makedirs(out_dir, exist_ok=True)
    files = []
    for name, members in groups.items():
        members = [m for m in members if m in numeric]
        if not members:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for m in members:
            v = values(m)
            ax.plot([a for a, _ in v], [b for _, b in v], marker="o", ms=3, label=m)
        ax.set_xlabel(x)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if len(members) > 1:
            ax.legend(fontsize=7)
        fig.tight_layout()
        f = os.path.join(out_dir, f"{name}.png")
        fig.savefig(f, dpi=90)
        plt.close(fig)
        files.append(f)
    return files
