"""Pages of the workflow report (``snakemake --report``) that are not figures: a benchmark
table's Markdown (:func:`cellmamba.metrics.tables.render_markdown`) as a standalone HTML page."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError
from .io import atomic_path

__all__ = ["table_html"]


def _inline(text: str) -> str:
    import html
    import re

    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))


def table_html(md_path: str | os.PathLike, out: str | os.PathLike) -> str:
    """Render a benchmark table's Markdown (:func:`cellmamba.metrics.tables.render_markdown`) as a
    standalone HTML page for the workflow report; returns the HTML.

    Only the Markdown that ``render_markdown`` writes is handled (headings, pipe tables, bullet
    lists, paragraphs, bold); a Markdown library would do more, but none is a dependency.
    """
    lines = Path(md_path).read_text().splitlines()
    if not lines or not lines[0].startswith("#"):
        raise InputError(f"{md_path}: expected a benchmark table in Markdown starting with '# <title>'")
    body, in_table, in_list = [], False, False
    for line in lines:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if all(set(c) <= set("-: ") for c in cells):
                continue
            if not in_table:
                body.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells) + "</tr>")
                in_table = True
            else:
                body.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("- "):
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{_inline(line[2:])}</li>")
            continue
        if in_list:
            body.append("</ul>")
            in_list = False
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 4)
            body.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    body.append("</table>" if in_table else "</ul>" if in_list else "")
    css = ("body{font-family:sans-serif;font-size:14px}table{border-collapse:collapse;margin:8px 0}"
           "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th:first-child,td:first-child"
           "{text-align:left}th{background:#f0f0f0}")
    text = f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><style>{css}</style></head><body>\n" + \
        "\n".join(body) + "\n</body></html>\n"
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return text
