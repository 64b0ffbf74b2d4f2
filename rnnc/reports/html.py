"""report.html: the blocks of `content` as one self-contained page (plots embedded as base64)."""
from __future__ import annotations

import base64
import re
from html import escape
from pathlib import Path

from rnnc.reports.content import Block

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.warn { background: #fff3cd; border: 1px solid #e0c36c; padding: 8px 12px; }
tr.FAIL td, tr.BROKEN td { background: #fde0e0; }
tr.faster td { background: #e3f6e3; }
img { max-width: 100%; }
"""


def render(blocks: list[Block], base_dir: Path) -> str:
    """`base_dir` is where image paths in the blocks are relative to."""
    title = next((b.text for b in blocks if b.kind == "h1"), "rnnc report")
    body = []
    for b in blocks:
        if b.kind == "h1":
            body.append(f"<h1>{escape(b.text)}</h1>")
        elif b.kind == "h2":
            body.append(f"<h2>{escape(b.text)}</h2>")
        elif b.kind == "h3":
            body.append(f"<h3>{escape(b.text)}</h3>")
        elif b.kind == "p":
            body.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "warn":
            body.append(f'<p class="warn"><b>Warning:</b> {_inline(b.text)}</p>')
        elif b.kind == "table":
            body.append(_table(b))
        elif b.kind == "image":
            data = base64.b64encode((base_dir / b.image).read_bytes()).decode("ascii")
            body.append(f'<p><img alt="{escape(b.text)}" src="data:image/png;base64,{data}"></p>')
        else:
            raise ValueError(f"unknown block kind {b.kind!r}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{_STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    """Escaped text with Markdown's `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))


def _table(b: Block) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in b.header)
    verdict = b.header.index("verdict") if "verdict" in b.header else None
    rows = []
    for r in b.rows:
        cls = f' class="{escape(r[verdict])}"' if verdict is not None else ""
        cells = "".join(f'<td class="num">{escape(c)}</td>' if i in b.right else f"<td>{escape(c)}</td>"
                        for i, c in enumerate(r))
        rows.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
