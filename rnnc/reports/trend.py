"""`rnnc history`: each row's median over the runs of a history, and the steps in it.

Runs are numbered by their id in the history ("run #15" is the 15th run appended to a fresh
history); the numbers do not change with `--model`, so a run named in one listing is the same
run in another. A step "run #15 +20.3% (abc123..def456)" happened between the run before #15 in
which the row ran (revision abc123) and run #15 (revision def456): the commit range to look in.

`trends`, `table` and `summary` are pure; `plot` writes the PNG (matplotlib, Agg).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnc.history import HistoryRow, HistoryRun, Step, find_steps, keys, series
from rnnc.records.report import RowKey, key_label
from rnnc.reports.tables import text_table

FEW_RUNS = 12  # up to this many runs, the plot's x axis names each run's revision

_COLORS = {"torch": "#1f77b4", "torchscript": "#ff7f0e", "onnxruntime": "#2ca02c", "tvm": "#d62728"}


@dataclass(frozen=True)
class Trend:
    """One row key over the runs in which it ran, and the steps in its medians."""

    key: RowKey
    points: tuple[tuple[HistoryRun, HistoryRow], ...]
    steps: tuple[Step, ...]

    @property
    def precision(self) -> str:
        return self.points[-1][1].precision

    @property
    def medians(self) -> list[float]:
        return [row.median_ms for _, row in self.points]  # type: ignore[misc] - series keeps timed rows

    def around(self, step: Step) -> tuple[HistoryRun, HistoryRun]:
        """The last run before the step and the first after it."""
        return self.points[step.index - 1][0], self.points[step.index][0]


def trends(runs: list[HistoryRun]) -> list[Trend]:
    """A trend for every row key that ran at least once, in the order the keys first appear."""
    found = []
    for key in keys(runs):
        points = tuple(series(runs, key))
        if points:
            found.append(Trend(key, points, tuple(find_steps([row.median_ms for _, row in points]))))
    return found


def describe_step(trend: Trend, step: Step) -> str:
    """`run #15 +20.3% (abc123..def456)`, with "model changed" when the fingerprints differ."""
    before, after = trend.around(step)
    model = trend.key[0]
    changed = before.fingerprints.get(model) != after.fingerprints.get(model)
    return (f"run #{after.run_id} {step.change:+.1%} ({_rev(before.revision)}..{_rev(after.revision)}"
            f"{', model changed' if changed else ''})")


def table(found: list[Trend]) -> str:
    """One line per row key: first and last median, the change between them, and its steps."""
    header = ("model", "backend", "batch", "seq", "precision", "runs", "first ms", "last ms", "change", "steps")
    lines = []
    for t in found:
        first, last = t.medians[0], t.medians[-1]
        lines.append((t.key[0], key_label(t.key), str(t.key[2]), str(t.key[3]), t.precision, str(len(t.points)),
                      f"{first:.4g}", f"{last:.4g}", f"{last / first - 1:+.1%}",
                      "; ".join(describe_step(t, s) for s in t.steps) or "-"))
    return text_table(header, lines, right=range(2, 9))


def summary(runs: list[HistoryRun], found: list[Trend]) -> str:
    """`30 runs from 2024-03-01 to 2024-03-30, 8 rows, 1 step`."""
    steps = sum(len(t.steps) for t in found)
    return (f"{_n(len(runs), 'run')} from {runs[0].recorded_at[:10]} to {runs[-1].recorded_at[:10]}, "
            f"{_n(len(found), 'row')}, {_n(steps, 'step')}")


def plot(runs: list[HistoryRun], found: list[Trend], path: Path) -> Path:
    """Write the figure: a panel per (model, batch, seq), x the run number, y the median ms, a
    line per backend with its interquartile range shaded, a dashed line at each step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[Any, ...], list[Trend]] = {}  # (model, batch, seq), and the mode of stream rows
    for t in found:
        panels.setdefault(t.key[:1] + t.key[2:], []).append(t)
    cols = len(panels) if len(panels) <= 3 else min(3, math.ceil(math.sqrt(len(panels))))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows + 0.6), squeeze=False)
    backends = list(dict.fromkeys(t.key[1] for t in found))
    few = len(runs) <= FEW_RUNS
    for ax, ((model, batch, seq, *mode), group) in zip(axes.flat, panels.items()):
        labels_at: dict[float, int] = {}  # steps of several backends at one run: labels stacked
        for t in group:
            color = _COLORS.get(t.key[1], f"C{4 + backends.index(t.key[1]) % 6}")
            x = [run.run_id for run, _ in t.points]
            q1 = [row.q1_ms if row.q1_ms is not None else row.median_ms for _, row in t.points]
            q3 = [row.q3_ms if row.q3_ms is not None else row.median_ms for _, row in t.points]
            ax.fill_between(x, q1, q3, color=color, alpha=0.2, linewidth=0)
            ax.plot(x, t.medians, color=color, marker="o", ms=3, linewidth=1.2, label=key_label(t.key))
            for step in t.steps:
                before, after = t.around(step)
                at = (before.run_id + after.run_id) / 2
                ax.axvline(at, color=color, linestyle="--", linewidth=1)
                stacked = labels_at.get(at, 0)
                labels_at[at] = stacked + 1
                ax.annotate(f"{key_label(t.key)} {step.change:+.1%}", (at, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(3, -3 - 11 * stacked), textcoords="offset points", ha="left", va="top",
                            color=color, fontsize=8, fontweight="bold")
        ax.set_title(f"{model}, batch {batch}, {'chunk' if mode else 'seq'} {seq}"
                     + (f" ({mode[0]})" if mode else ""), fontsize=10)
        ax.set_ylabel("median ms")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        if few:
            ax.set_xticks([run.run_id for run in runs])
            ax.set_xticklabels([f"#{run.run_id}\n{_rev(run.revision)}" for run in runs], fontsize=7)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("run")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{summary(runs, found)}\nmedian per run, interquartile range shaded, steps dashed",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "model"


def _rev(revision: str | None) -> str:
    if not revision:
        return "?"
    return revision[:10] if re.fullmatch(r"[0-9a-f]{13,40}", revision) else revision


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
