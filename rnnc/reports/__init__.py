"""Reports: rendering (Markdown, self-contained HTML, PNG plots) and the CI regression gate.

`render` and `gate` read files and write files; what they say is computed by pure functions in
`content`, `tables` and `rnnc.stats`.
"""
from __future__ import annotations

import re
from pathlib import Path

from rnnc.reports import classes, content, schema
from rnnc.reports.gate import compare_reports, default_mode, gate

__all__ = ["gate", "render"]


def render(report_path: Path, baseline_path: Path | None = None, out_dir: Path | None = None) -> list[Path]:
    """Write report.md, report.html and one PNG per model (beside the report unless `out_dir`),
    and one more each for its streamed rows and its generative rows, where it has them; with a
    baseline, both side by side and every row's change. Returns the paths written."""
    from rnnc.reports import html, markdown, plots

    report = schema.load(Path(report_path))
    baseline = schema.load(Path(baseline_path)) if baseline_path is not None else None
    out_dir = Path(out_dir) if out_dir is not None else Path(report_path).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    changes = None
    if baseline is not None:
        changes = {c.key: c for c in compare_reports(baseline, report, 0.10, default_mode(report, baseline))}
    images: dict[str, list[tuple[str, str]]] = {}
    written = []
    views = [(f" @{m}", f"-{_slug(m)}", classes.of_class(report, m)) for m in classes.machines(report)]
    for model in report["models"]:
        slug = _slug(model)
        for key, suffix, view in views or [("", "", report)]:  # a fleet report: each class's own plots
            for caption, png in (
                    ("throughput and speed-up over torch",
                     plots.plot_model(view, model, out_dir / f"plot-{slug}{suffix}.png", baseline)),
                    ("latency per chunk, streamed",
                     plots.plot_stream(view, model, out_dir / f"plot-{slug}{suffix}-stream.png")),
                    ("ms per generated step",
                     plots.plot_generation(view, model, out_dir / f"plot-{slug}{suffix}-steps.png"))):
                if png is not None:
                    images.setdefault(model + key, []).append((caption, png.name))
                    written.append(png)
        png = plots.plot_classes(report, model, out_dir / f"plot-{slug}-classes.png")
        if png is not None:
            images.setdefault(model, []).append(("throughput per machine class", png.name))
            written.append(png)
    blocks = content.document(report, baseline, images, changes)
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(markdown.render(blocks))
    page.write_text(html.render(blocks, out_dir))
    return [md, page] + written


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "model"
