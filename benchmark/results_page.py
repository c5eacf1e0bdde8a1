"""One self-contained ``results.html`` per run: the report's tables, the ICR plot and every sample grid.

The page is what a person opens: offline, with no script and nothing fetched (images are inlined as
data URIs), so it can be mailed or archived next to ``results.json``. Its tables are the
``results.md`` tables (one source of truth, :func:`benchmark.report.results_markdown`), turned into
HTML by a converter for the small Markdown subset that report writes.
"""
from __future__ import annotations

import base64
import html
import json
import os
import re
from pathlib import Path
from typing import Any

from benchmark.report import cell, results_markdown
from implicit_concept.files import atomic_write_text

PAGE_NAME = "results.html"

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #ddd; }
figure { margin: 1em 0; }
figcaption { font-size: 0.85em; color: #555; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.8em; }
"""


def markdown_html(markdown: str) -> str:
    """HTML for the Markdown that :mod:`benchmark.report` writes: headings, paragraphs, pipe tables,
    bullet lists, ``code`` and **bold**. Anything else is shown as text, escaped."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table(block))
            continue
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


def _cells(row: str) -> list[str]:
    """A table row's cells, split at the ``|`` that are not backslash-escaped (as in GitHub's
    Markdown); escapes are kept for :func:`_inline`, which shows each escaped character as itself."""
    cells, current, i = [], "", 0
    row = row.strip()
    while i < len(row):
        ch = row[i]
        if ch == "\\" and i + 1 < len(row):
            current += row[i:i + 2]
            i += 2
            continue
        if ch == "|":
            cells.append(current)
            current = ""
        else:
            current += ch
        i += 1
    cells.append(current)
    parts = [c.strip() for c in cells]
    return parts[parts[0] == "":len(parts) - (parts[-1] == "")]


def _table(rows: list[str]) -> str:
    head, body = _cells(rows[0]), [r for r in rows[1:] if not re.fullmatch(r"\|?[\s|:-]*", r)]
    parts = ["<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"]
    parts += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _cells(r)) + "</tr>" for r in body]
    return "".join(parts) + "</tbody></table>"


#: Markdown's backslash escapes: a backslash before any ASCII punctuation.
_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")
_CODE = re.compile(r"`([^`]+)`")
_KEPT = re.compile("\x00(\\d+)\x00")


def _inline(text: str) -> str:
    """Inline Markdown as HTML: backslash escapes as the character itself (so an escaped backtick or
    star formats nothing), ``code``, ``**bold**``; everything else is escaped text."""
    kept: list[str] = []

    def keep(html_text: str) -> str:
        kept.append(html_text)
        return f"\x00{len(kept) - 1}\x00"

    text = text.replace("\x00", " ")
    text = _ESCAPED.sub(lambda m: keep(html.escape(m.group(1), quote=False)), text)
    text = _CODE.sub(lambda m: keep("<code>" + html.escape(m.group(1), quote=False) + "</code>"), text)
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    while _KEPT.search(text):  # a code span holds the escapes inside it
        text = _KEPT.sub(lambda m: kept[int(m.group(1))], text)
    return text


#: What every PNG file starts with; the page declares each inlined image a PNG.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _not_inlinable(path: Path, run_root: Path) -> str | None:
    """Why ``path`` is not put in the page (None: it is): only the run's own PNG files are. A run
    folder handed over may hold a link out of it (the page would carry that file's bytes to whoever
    it is mailed to), a FIFO (reading it would wait forever) or other bytes under a ``.png`` name."""
    if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(run_root)):  # realpath: a looping link is no error
        return "a link out of the run folder"
    if not path.is_file():
        return "not a regular file"
    with open(path, "rb") as f:
        if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
            return "not a PNG file"
    return None


def _images(paths: list[tuple[Path, str]], run_root: Path) -> list[str]:
    """Each image inlined, and one line naming those that are not and why."""
    parts, left_out = [], []
    for path, caption in paths:
        why = _not_inlinable(path, run_root)
        if why:
            left_out.append(f"{path.relative_to(run_root)} ({why})")
        else:
            parts.append(_image(path, caption))
    if left_out:
        parts.append(f"<p>Not shown: {html.escape('; '.join(left_out))}.</p>")
    return parts


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(caption)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'


def results_page(results: dict[str, Any], run_root: Path) -> str:
    """The whole page for ``results`` (a ``results.json``), with the images found in ``run_root``."""
    run_root = Path(run_root)
    title = f"Implicit concept removal: {results['name']} (track {results['track']})"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>", markdown_html(results_markdown(results))]
    provenance_table = method_provenance(results)
    if provenance_table:
        parts += ["<h2>Plug-ins and methods changed in memory</h2>", markdown_html(provenance_table)]
    plot = run_root / "icr.png"
    if plot.is_file() or plot.is_symlink():
        parts += ["<h2>ICR per method</h2>", *_images([(plot, "ICR % per method and concept, 95% interval; dashed: detector FP rate")], run_root)]
    grids = sorted((run_root / "grids").glob("*/*.png"))
    if grids:
        parts.append("<h2>Samples (first generated images, detector boxes drawn)</h2>")
        parts += _images([(g, f"{g.parent.name} / {g.stem}") for g in grids], run_root)
    provenance = {k: results.get(k) for k in ("config", "seeds", "detector", "environment")}
    parts += ["<h2>Configuration and environment</h2>", f"<pre>{html.escape(json.dumps(provenance, indent=2, sort_keys=True))}</pre>"]
    return "\n".join(parts) + "\n</body></html>\n"


def method_provenance(results: dict[str, Any]) -> str:
    """A Markdown table of the methods whose rows say more than a built-in's: a plug-in's ``--method``
    spec and code sha256, and the parts it sampled with that differ in memory from the folders its
    ``model`` names (so those folders alone do not draw its images); empty when there are none."""
    lines, seen = [], set()
    for row in results.get("rows", []):
        model = row.get("model") if isinstance(row.get("model"), dict) else {}
        edited = model.get("edited_in_memory") or []
        if row.get("method") in seen or not (row.get("method_spec") or edited):
            continue
        seen.add(row.get("method"))
        cells = [row.get("method"), row.get("method_spec") or "built-in", row.get("method_code_sha256") or "-",
                 model.get("scheduler") or "-", ", ".join(map(str, edited)) or "none"]
        lines.append("| " + " | ".join(cell(str(c)) for c in cells) + " |")
    if not lines:
        return ""
    head = ["| method | --method | code sha256 | scheduler | changed in memory |", "|---|---|---|---|---|"]
    return "\n".join(head + lines) + "\n"


def write_results_page(results: dict[str, Any], run_root: Path) -> Path:
    path = Path(run_root) / PAGE_NAME
    atomic_write_text(path, results_page(results, run_root))
    return path
