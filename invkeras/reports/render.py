"""Rendering built sections as one self-contained HTML page, or as Markdown.

`render_html` embeds every image as a base64 data URI and the stylesheet inline, so the page
has no external assets and can be mailed or archived as one file; given `image_base` (the
page's directory), it links the PNG files by relative path instead, which keeps a page of
many figures light. `render_markdown` writes the same content with images linked by paths
relative to the Markdown file. In both, each artefact's provenance (command, seed, versions,
time, config) is a collapsible block.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import os
from pathlib import Path

from invkeras.reports.collect import Artifact
from invkeras.reports.sections import Image, Section, fmt

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #eee; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .88em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: left; white-space: nowrap; }
th { background: #f4f4f4; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; image-rendering: pixelated; }
.figures { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.figures figure { flex: 1 1 0; min-width: 200px; margin: 0 0 1em; }
figcaption, .note { color: #555; font-size: .9em; }
details { margin: .2em 0; font-size: .88em; }
summary { cursor: pointer; }
pre, code { font-family: Menlo, Consolas, monospace; font-size: .92em; background: #f6f8fa; }
pre { padding: .6em; overflow-x: auto; }
"""


def provenance_text(artifact: Artifact) -> tuple[str, str, str]:
    """(command, seed/created/versions summary, config JSON) of an artefact, for a details block."""
    meta = artifact.meta
    kind = artifact.kind + (f" (recorded as {meta['recorded_kind']})" if meta.get("recorded_kind") else "")
    facts = [f"kind {kind}", f"seed {fmt(meta.get('seed'))}", f"created {fmt(meta.get('created'))}"]
    versions = meta.get("versions") or {}
    if isinstance(versions, dict) and versions:
        facts.append(", ".join(f"{k} {v}" for k, v in versions.items()))
    config = json.dumps(meta.get("config"), indent=2, sort_keys=True, default=str)
    return str(meta.get("command") or ""), "; ".join(facts), config


def _image_groups(images: list[Image]) -> list[list[Image]]:
    """Images in display order, consecutive ones of the same non-empty `row` together."""
    groups: list[list[Image]] = []
    for row, members in itertools.groupby(images, key=lambda image: image.row):
        groups += [list(members)] if row else [[image] for image in members]
    return groups


# --- HTML ---------------------------------------------------------------------------


def data_uri(path: Path) -> str:
    """A PNG file as a data: URI, to embed it in the page."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _details_html(artifact: Artifact) -> str:
    command, facts, config = provenance_text(artifact)
    e = html.escape
    return (f"<details><summary>how <code>{e(artifact.rel)}</code> was made</summary>"
            f"<p><b>command</b></p><pre>{e(command)}</pre><p class=\"note\">{e(facts)}</p>"
            f"<p><b>config</b></p><pre>{e(config)}</pre></details>\n")


def _relative(path: Path, base: Path | None) -> str:
    """`path` relative to `base` (the page's directory), as a URL path; absolute without a base."""
    if base is None:
        return Path(path).resolve().as_uri()
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()


def image_source(path: Path, image_base: Path | None = None) -> str:
    """The img src of a PNG: a data URI, or its path relative to `image_base` (the page's directory)."""
    if image_base is None:
        return data_uri(path)
    return _relative(path, image_base)


def _figure_html(image: Image, image_base: Path | None = None) -> str:
    e = html.escape
    source = e(image_source(image.path, image_base))
    return (f"<figure><h3>{e(image.title)}</h3><img src=\"{source}\" alt=\"{e(image.title)}\">"
            f"<figcaption>{e(image.caption)}</figcaption>\n"
            + (_details_html(image.details) if image.details is not None else "") + "</figure>\n")


def render_html(title: str, subtitle: str, sections: list[Section], image_base: Path | None = None) -> str:
    """The whole report as one HTML page: a contents list, then each section's tables, figures, provenance.

    Images are embedded, or linked relative to `image_base` when it is given."""
    e = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{e(title)}</title>\n"
             f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{e(title)}</h1>\n<p class=\"note\">{e(subtitle)}</p>\n"]
    parts.append("<ul>" + "".join(f"<li><a href=\"#s{i}\">{e(s.title)}</a></li>" for i, s in enumerate(sections))
                 + "</ul>\n")
    for i, section in enumerate(sections):
        parts.append(f"<h2 id=\"s{i}\">{e(section.title)}</h2>\n")
        if section.intro:
            parts.append(f"<p>{e(section.intro)}</p>\n")
        if section.links:
            parts.append("<p class=\"note\">files: " + ", ".join(
                f"<a href=\"{e(_relative(path, image_base))}\">{e(label)}</a>" for label, path in section.links)
                + "</p>\n")
        for table in section.tables:
            if len(section.tables) > 1 or table.title != section.title:
                parts.append(f"<h3>{e(table.title)}</h3>\n")
            parts.append("<table>\n<tr>" + "".join(f"<th>{e(c)}</th>" for c in table.columns) + "</tr>\n")
            for row in table.rows:
                parts.append("<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>\n")
            parts.append("</table>\n")
            if table.note:
                parts.append(f"<p class=\"note\">{e(table.note)}</p>\n")
        for group in _image_groups(section.images):
            figures = "".join(_figure_html(image, image_base) for image in group)
            parts.append(figures if len(group) == 1 else f"<div class=\"figures\">\n{figures}</div>\n")
        if section.provenance:
            parts.append("<h3>Provenance</h3>\n" + "".join(_details_html(a) for a in section.provenance))
    parts.append("</body>\n</html>\n")
    return "".join(parts)


# --- Markdown -----------------------------------------------------------------------


def _md_cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def _image_md(group: list[Image], md_dir: Path) -> list[str]:
    links = [f"![{image.title}]({Path(os.path.relpath(image.path, md_dir)).as_posix()})" for image in group]
    if len(group) == 1:
        return [f"### {group[0].title}", "", links[0], "", group[0].caption, ""]
    # Side by side: one table row of images, titles as the header and captions under them.
    return ["| " + " | ".join(_md_cell(image.title) for image in group) + " |", "|" + "---|" * len(group),
            "| " + " | ".join(_md_cell(link) for link in links) + " |",
            "| " + " | ".join(_md_cell(image.caption) for image in group) + " |", ""]


def render_markdown(title: str, subtitle: str, sections: list[Section], md_dir: Path) -> str:
    """The report as Markdown; images are linked relative to `md_dir`, where the file will be written."""
    lines = [f"# {title}", "", f"_{subtitle}_", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.intro:
            lines += [section.intro, ""]
        if section.links:
            lines += ["files: " + ", ".join(f"[{label}]({_relative(path, md_dir)})" for label, path in section.links),
                      ""]
        for table in section.tables:
            if len(section.tables) > 1 or table.title != section.title:
                lines += [f"### {table.title}", ""]
            lines.append("| " + " | ".join(_md_cell(c) for c in table.columns) + " |")
            lines.append("|" + "---|" * len(table.columns))
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in table.rows]
            lines.append("")
            if table.note:
                lines += [f"_{table.note}_", ""]
        for group in _image_groups(section.images):
            lines += _image_md(group, md_dir)
        if section.provenance:
            lines += ["<details><summary>Provenance</summary>", ""]
            for artifact in section.provenance:
                command, facts, config = provenance_text(artifact)
                lines += [f"- `{artifact.rel}`: `{command}` ({facts})", "", "  ```json"]
                lines += [f"  {line}" for line in config.splitlines()]
                lines += ["  ```", ""]
            lines += ["</details>", ""]
    return "\n".join(lines) + "\n"
