"""PNG plots with matplotlib (Agg, no display): one figure per model.

Top row: throughput (tokens/s) against sequence length, a line per backend, a panel per batch
size, the interquartile range as error bars; the baseline, when given, dashed in the same colour.
Bottom row: speed-up over the torch reference (torch median / backend median) at each point.
Beside it, for streamed rows, latency per chunk against chunk length (`plot_stream`), and for
generative models, milliseconds per generated step (`plot_generation`). A fleet report gets these
per machine class, and one more that compares the classes (`plot_classes`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

_COLORS = {"torch": "#1f77b4", "torchscript": "#ff7f0e", "onnxruntime": "#2ca02c", "tvm": "#d62728"}


def _series(rows: list[dict[str, Any]], backend: str, batch: int) -> list[dict[str, Any]]:
    return sorted((r for r in rows if r["backend"] == backend and r["batch_size"] == batch and r["status"] == "ok"),
                  key=lambda r: r["seq_len"])


def plot_model(report: dict[str, Any], model: str, path: Path, baseline: dict[str, Any] | None = None) -> Path | None:
    """Write the model's figure to `path`; None (nothing written) when no row of it ran."""
    rows = [r for r in report["rows"] if r["model"] == model]
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return None
    base_rows = [r for r in (baseline or {}).get("rows", []) if r["model"] == model]
    batches = sorted({r["batch_size"] for r in ok})
    backends = list(dict.fromkeys(r["backend"] for r in ok))  # the report's rows are in table order
    seqs = sorted({r["seq_len"] for r in ok})
    legend_in = 2.4 if base_rows else 1.6  # room for the legend, right of the panels
    fig, axes = plt.subplots(2, len(batches), figsize=(4.2 * len(batches) + legend_in, 6.6), squeeze=False,
                             sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for col, batch in enumerate(batches):
        top, bottom = axes[0][col], axes[1][col]
        torch_ms = {r["seq_len"]: r["median_ms"] for r in _series(rows, "torch", batch)}
        for i, backend in enumerate(backends):
            color = _COLORS.get(backend, f"C{4 + i}")
            series = _series(rows, backend, batch)
            if series:
                x = [r["seq_len"] for r in series]
                y = [r["tokens_per_s"] for r in series]
                tokens = [r["batch_size"] * r["seq_len"] * 1000 for r in series]
                lo = [yy - t / r.get("q3_ms", r["median_ms"]) for yy, t, r in zip(y, tokens, series)]
                hi = [t / r.get("q1_ms", r["median_ms"]) - yy for yy, t, r in zip(y, tokens, series)]
                top.errorbar(x, y, yerr=[lo, hi], color=color, marker="o", ms=4, capsize=3, label=backend)
                sx = [r["seq_len"] for r in series if r["seq_len"] in torch_ms]
                sy = [torch_ms[r["seq_len"]] / r["median_ms"] for r in series if r["seq_len"] in torch_ms]
                if sx:
                    bottom.plot(sx, sy, color=color, marker="o", ms=4, label=backend)
            base = _series(base_rows, backend, batch)
            if base:
                top.plot([r["seq_len"] for r in base], [r["tokens_per_s"] for r in base], color=color,
                         linestyle="--", alpha=0.6, marker="x", ms=4, label=f"{backend} (baseline)")
        top.set_title(f"batch {batch}")
        top.set_yscale("log")
        top.grid(True, which="both", alpha=0.3)
        bottom.axhline(1.0, color="0.4", linewidth=0.8)
        bottom.grid(True, alpha=0.3)
        bottom.set_xlabel("sequence length")
        if len(seqs) > 1:
            bottom.set_xscale("log", base=2)
        bottom.set_xticks(seqs)
        bottom.set_xticklabels([str(s) for s in seqs])
        if not torch_ms:
            bottom.text(0.5, 0.5, "no torch reference", ha="center", va="center", transform=bottom.transAxes)
        if col == 0:
            top.set_ylabel("throughput (tokens/s)")
            bottom.set_ylabel("speed-up over torch (x)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    skipped = sorted({r["backend"] for r in rows if r["status"] != "ok"} - set(backends))
    title = f"{model} on {report['target']}: higher is better"
    if skipped:
        title += f"  (not run: {', '.join(skipped)})"
    if report.get("test_extra_work"):
        extra = report["test_extra_work"].items()
        title += "\nTEST-ONLY extra work injected: " + ", ".join(f"{b} +{f:.0%}" for b, f in extra)
    fig.suptitle(title)
    order = sorted(range(len(labels)), key=lambda i: ("(baseline)" in labels[i], i))
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    return _save(fig, path, handles, labels, legend_in, 0.95)


def _panels(rows: list[dict[str, Any]], panel: str, x: str, y: str, path: Path, title: str, xlabel: str,
            ylabel: str, line: float | None = None, line_label: str = "", floor: str | None = None) -> Path:
    """A figure of `y` against `x`, a line per backend, a panel per value of `panel`; `line`, when
    given, a dotted horizontal reference (the real-time budget of a chunk); `floor`, a key drawn
    dashed in the backend's colour where rows have it (the bind floor under a chunk)."""
    values = sorted({r[panel] for r in rows})
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    legend_in = 2.2
    fig, axes = plt.subplots(1, len(values), figsize=(4.2 * len(values) + legend_in, 3.8), squeeze=False)
    for col, value in enumerate(values):
        ax = axes[0][col]
        for i, backend in enumerate(backends):
            series = sorted((r for r in rows if r["backend"] == backend and r[panel] == value), key=lambda r: r[x])
            color = _COLORS.get(backend, f"C{4 + i}")
            if series:
                ax.plot([r[x] for r in series], [r[y] for r in series], color=color, marker="o", ms=4, label=backend)
            low = [r for r in series if floor and r.get(floor) is not None]
            if low:
                ax.plot([r[x] for r in low], [r[floor] for r in low], color=color, linestyle="--", alpha=0.6,
                        marker="x", ms=4, label=f"{backend} bind()")
        if line is not None:
            ax.axhline(line, color="0.3", linestyle=":", linewidth=1, label=line_label)
        xs = sorted({r[x] for r in rows if r[panel] == value})
        if len(xs) > 1 and xs[0] > 0:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(v) for v in xs])
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(_two_and_five))
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{panel.replace('_', ' ')} {value}")
        ax.set_xlabel(xlabel)
        if col == 0:
            ax.set_ylabel(ylabel)
    handles, labels = _legend(axes[0])
    fig.suptitle(title)
    return _save(fig, path, handles, labels, legend_in, 0.93)


def _legend(axes: Any) -> tuple[list[Any], list[str]]:
    """Every line's handle and label across the panels, each label once, in the order drawn."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    return handles, labels


def _two_and_five(value: float, _: Any) -> str:
    """Minor log ticks labelled at 2 and 5 of each decade only, so that a narrow range has labels."""
    if value <= 0:
        return ""
    lead = round(value / 10 ** math.floor(math.log10(value)), 6)
    return f"{value:g}" if lead in (2, 5) else ""


def plot_stream(report: dict[str, Any], model: str, path: Path) -> Path | None:
    """Latency per chunk against chunk length, a line per backend, a panel per batch size, and
    the real time of a chunk (--chunk-ms) as the line to stay under; None when no stream row ran."""
    rows = [r for r in report["rows"] if r["model"] == model and r["status"] == "ok" and r.get("mode") == "stream"]
    if not rows:
        return None
    budget = next((r["chunk_ms"] for r in rows if r.get("chunk_ms") is not None), None)
    return _panels(rows, "batch_size", "seq_len", "median_ms", path,
                   f"{model} streamed on {report['target']}: latency per chunk, lower is better",
                   "chunk length (steps)", "median ms per chunk (dashed: bind() alone)", budget,
                   f"real time of a chunk ({budget:g} ms)" if budget is not None else "", floor="bind_ms")


def plot_generation(report: dict[str, Any], model: str, path: Path) -> Path | None:
    """Milliseconds per generated step against the steps generated, a panel per batch size; with
    one steps value (a model's spec fixes it) against batch size, a panel per sequence length.
    None when no row of it generates."""
    rows = [r for r in report["rows"] if r["model"] == model and r["status"] == "ok" and r.get("steps")]
    if not rows:
        return None
    if len({r["steps"] for r in rows}) > 1:
        panel, x, xlabel = "batch_size", "steps", "steps generated per call"
    else:
        panel, x, xlabel = "seq_len", "batch_size", f"batch size ({rows[0]['steps']} steps per call)"
    return _panels(rows, panel, x, "ms_per_step", path,
                   f"{model} generating on {report['target']}: ms per step, lower is better", xlabel, "ms per step")


def plot_classes(report: dict[str, Any], model: str, path: Path) -> Path | None:
    """Throughput per machine class: a panel per backend, tokens/s against sequence length, a
    colour per class and a line style per batch size; None unless two classes have rows of it."""
    rows = [r for r in report["rows"] if r["model"] == model and r["status"] == "ok" and r.get("machine")]
    machines = list(dict.fromkeys(r["machine"] for r in rows))
    if len(machines) < 2:
        return None
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    batches = sorted({r["batch_size"] for r in rows})
    styles = ["-", "--", ":", "-."]
    legend_in = 0.6 + 0.07 * max(len(f"{m}, batch {b}") for m in machines for b in batches)  # room for the labels
    fig, axes = plt.subplots(1, len(backends), figsize=(4.2 * len(backends) + legend_in, 3.8), squeeze=False)
    for ax, backend in zip(axes[0], backends):
        for i, machine in enumerate(machines):
            for j, batch in enumerate(batches):
                series = sorted((r for r in rows if (r["backend"], r["machine"], r["batch_size"]) ==
                                 (backend, machine, batch)), key=lambda r: r["seq_len"])
                if series:
                    ax.plot([r["seq_len"] for r in series], [r["tokens_per_s"] for r in series], color=f"C{i}",
                            linestyle=styles[j % len(styles)], marker="o", ms=4, label=f"{machine}, batch {batch}")
        seqs = sorted({r["seq_len"] for r in rows if r["backend"] == backend})
        if len(seqs) > 1:
            ax.set_xscale("log", base=2)
        ax.set_xticks(seqs)
        ax.set_xticklabels([str(v) for v in seqs])
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(backend)
        ax.set_xlabel("sequence length")
    axes[0][0].set_ylabel("throughput (tokens/s)")
    handles, labels = _legend(axes[0])
    fig.suptitle(f"{model} on {report['target']}, per machine class: higher is better")
    return _save(fig, path, handles, labels, legend_in, 0.90)


def _save(fig: Any, path: Path, handles: list[Any], labels: list[str], legend_in: float, top: float) -> Path:
    """Lay out `fig` with its legend in a right margin `legend_in` inches wide, write it, close it."""
    fig.tight_layout(rect=(0, 0, 1 - legend_in / fig.get_figwidth(), top))
    fig.legend(handles, labels, loc="center right", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
