"""One self-contained HTML report (plus a Markdown twin) of everything in a run directory.

`write_report(run_dir)` walks a workspace (`runs/`) or one run (`runs/<dataset>/<arch>/`),
finds every artefact by its `*.meta.json`, and writes

    <out>.html   tables, plots and sample grids; images embedded as base64 data URIs, inline
                 CSS, no external assets, so the one file can be mailed or archived
    <out>.md     the same content, with images referenced by relative path
    <out>-*.png  the plots (NCE by layer, test accuracy, NCE over training when several
                 classifier checkpoints have inverters), each with its own metadata

The work is split by stage: `collect` finds the artefacts, the registered section builders
(`sections`, `builtin_sections`, and any a command registers itself) decide what to show,
and `render` writes HTML and Markdown. Artefact kinds no section claims are listed under
"Other artefacts", not rejected. The default output is `<run_dir>/report/report.html`.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from invkeras import artifacts
from invkeras.reports.collect import REPORT_KIND, collect
from invkeras.reports.render import render_html, render_markdown
from invkeras.reports.sections import build_sections


def write_report(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, Path]:
    """Write `<out>` (HTML, self-contained) and its Markdown twin; return both paths.

    `out` is the HTML path (default `<run_dir>/report/report.html`); the Markdown file and
    the plot PNGs are written beside it, sharing its stem. An `out` that is a folder (one that
    exists, or a path ending in '/') gets `report.html` inside it. Both files get metadata of
    kind "report", which later reports skip.
    """
    contents = collect(run_dir)
    html_path = Path(out) if out else contents.run_dir / "report" / "report.html"
    if out and (html_path.is_dir() or str(out).endswith(("/", os.sep))):
        html_path = html_path / "report.html"
    if html_path.suffix.lower() not in (".html", ".htm"):
        html_path = html_path.with_name(html_path.name + ".html")
    html_path = html_path.resolve()
    md_path = html_path.with_suffix(".md")
    out_stem = html_path.with_suffix("")

    sections = build_sections(contents, out_stem)
    kinds = Counter(a.kind for a in contents.artifacts)
    title = f"invkeras report: {Path(run_dir)}"
    subtitle = (f"{len(contents.artifacts)} artefacts in {contents.run_dir} ("
                + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + ")")
    artifacts.write_text_atomic(html_path, render_html(title, subtitle, sections))
    artifacts.write_text_atomic(md_path, render_markdown(title, subtitle, sections, md_path.parent))
    config = {"run_dir": str(Path(run_dir)), "out": str(html_path)}
    results = {"artifacts": len(contents.artifacts), "kinds": dict(kinds), "sections": [s.title for s in sections]}
    artifacts.write_metadata(html_path, kind=REPORT_KIND, config=config, results=results)
    artifacts.write_metadata(md_path, kind=REPORT_KIND, config=config, results=results)
    return html_path, md_path
