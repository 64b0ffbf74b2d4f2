"""report.md: the blocks of `content` as GitHub-flavoured Markdown, plots linked beside it."""
from __future__ import annotations

from rnnc.reports.content import Block
from rnnc.reports.tables import markdown_table


def render(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        if b.kind == "h1":
            parts.append(f"# {b.text}")
        elif b.kind == "h2":
            parts.append(f"## {b.text}")
        elif b.kind == "h3":
            parts.append(f"### {b.text}")
        elif b.kind == "p":
            parts.append(b.text)
        elif b.kind == "warn":
            parts.append(f"> **Warning:** {b.text}")
        elif b.kind == "table":
            parts.append(markdown_table(b.header, b.rows, b.right))
        elif b.kind == "image":
            parts.append(f"![{b.text}]({b.image})")
        else:
            raise ValueError(f"unknown block kind {b.kind!r}")
    return "\n\n".join(parts) + "\n"
