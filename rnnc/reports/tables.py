"""Tables as text: aligned columns for a terminal, pipes for Markdown. Pure functions."""
from __future__ import annotations

from typing import Iterable, Sequence


def text_table(header: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()) -> str:
    """Columns padded to their widest cell; `right` names the columns aligned right (numbers)."""
    rows = [tuple(header)] + [tuple(r) for r in rows]
    right = set(right)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return "  ".join(cells).rstrip()

    lines = [line(r) for r in rows]
    lines.insert(1, "-" * max(len(x) for x in lines))
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()) -> str:
    right = set(right)
    esc = lambda c: str(c).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def results_table(report: dict) -> str:
    """The terminal summary of a bench report: one line per row, speed-up over torch, warnings;
    chunks/s and RTF for streamed rows, steps and ms/step for generative ones, GFLOP/s, the share of
    the sgemm roof and of the time R's traffic takes (`rnnc.bench.roof`), where there are any."""
    torch_ms = {(r["model"], r["batch_size"], r["seq_len"], r.get("mode"), r.get("machine")): r["median_ms"]
                for r in report["rows"] if r["backend"] == "torch" and r["status"] == "ok"}
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    extra = [(h, k, f) for h, k, f in (("chunks/s", "chunks_per_s", "{:,.0f}"), ("rtf", "rtf", "{:.3g}"),
                                       ("steps", "steps", "{}"), ("ms/step", "ms_per_step", "{:.4g}"),
                                       ("GFLOP/s", "gflops", "{:.3g}"), ("% roof", "roof_fraction", "{:.1%}"),
                                       ("R bw", "bw_fraction", "{:.1%}"))
             if any(r.get(k) is not None for r in ok)]
    fleet = any(r.get("machine") for r in report["rows"])  # `rnnc bench --cluster`: each row's class and node
    header = ("model", *(("machine", "node") if fleet else ()), "backend", "batch", "seq", "median ms", "IQR ms",
              "p99 ms", "seq/s", "tokens/s", *(h for h, _, _ in extra), "vs torch", "cv", "n", "note")
    rows = []
    for r in report["rows"]:
        key = (r["model"], r["batch_size"], r["seq_len"], r.get("mode"), r.get("machine"))
        where = (r.get("machine") or "-", r.get("node") or "-") if fleet else ()
        backend = r["backend"] + (" (stream)" if r.get("mode") == "stream" else "")
        if r["status"] != "ok":
            rows.append((r["model"], *where, backend, str(r["batch_size"]), str(r["seq_len"]), r["status"].upper(),
                         *([""] * (7 + len(extra))), (r.get("reason") or "")[:100]))
            continue
        t = torch_ms.get(key)
        rows.append((r["model"], *where, backend, str(r["batch_size"]), str(r["seq_len"]), f"{r['median_ms']:.4g}",
                     f"{r['iqr_ms']:.2g}", f"{r['p99_ms']:.4g}", f"{r['sequences_per_s']:,.0f}",
                     f"{r['tokens_per_s']:,.0f}",
                     *("-" if r.get(k) is None else f.format(r[k]) for _, k, f in extra),
                     f"{t / r['median_ms']:.2f}x" if t else "-",
                     f"{r.get('cv', 0):.1%}", str(len(r["samples_ms"])), r.get("warning") or ""))
    return text_table(header, rows, right=range(4 if fleet else 2, len(header) - 1))
