"""PNG plots with matplotlib (Agg, no display): one figure per model.

Top row: throughput (tokens/s) against sequence length, a line per backend, a panel per batch
size, the interquartile range as error bars; the baseline, when given, dashed in the same colour.
Bottom row: speed-up over the torch reference (torch median / backend median) at each point.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

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
    fig.tight_layout(rect=(0, 0, 1 - legend_in / fig.get_figwidth(), 0.95))
    fig.legend(handles, labels, loc="center right", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
