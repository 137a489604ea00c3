"""`invkeras report`: one self-contained HTML report (and a Markdown twin) of a run directory."""

from __future__ import annotations

from typing import Optional

import typer

from invkeras.commands.base import Command, register_command
from invkeras.commands.tables import console


def cli_report(
    run_dir: str = typer.Argument(..., help="A workspace (runs/) or one run (runs/<dataset>/<arch>)."),
    out: Optional[str] = typer.Option(None, help="HTML path (default <RUN_DIR>/report/report.html), or a folder to hold report.html; the .md twin and plots go beside it."),
) -> None:
    """One self-contained HTML report (and a Markdown twin) of every artefact in a run directory."""
    from invkeras.reports.report import write_report

    html_path, md_path = write_report(run_dir, out)
    console.print(f"written: {html_path} and {md_path}")


@register_command
class Report(Command):
    name = "report"
    examples = (
        "invkeras report runs                           # writes runs/report/report.html (+ .md)",
        "invkeras report runs/procedural/conv           # one run",
        "invkeras report runs --out reports/all.html    # + reports/all.md, reports/all-*.png",
    )
    cli = staticmethod(cli_report)
