"""`invkeras datasets` and `invkeras kinds`: what invkeras can read, and what it can train."""

from __future__ import annotations

from typing import Optional

import typer

from invkeras.commands.base import DATA_DIR_HELP, Command, register_command
from invkeras.commands.tables import console, table


def cli_datasets(data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP)) -> None:
    """List the dataset sources invkeras can load, and where each loads from."""
    from invkeras.data import list_sources

    rows = list_sources(data_dir)
    columns = list(rows[0].keys()) if rows else []
    console.print(table("Dataset sources", columns, [[row.get(c, "") for c in columns] for row in rows]))


@register_command
class Datasets(Command):
    name = "datasets"
    examples = ("invkeras datasets", "invkeras datasets --data-dir ~/data   # where mnist, cifar10, ... resolve")
    cli = staticmethod(cli_datasets)


def cli_kinds() -> None:
    """List the inverter kinds, what each can do, and its own options for `train-inverter`
    (`invkeras train-inverter --kind K --help` shows them with their defaults)."""
    from invkeras.commands.inverter import own_options
    from invkeras.inverters import inverter_kinds

    rows = []
    for name, cls in sorted(inverter_kinds().items()):
        own = own_options(cls.config_class)
        rows.append([name, cls.description, ", ".join(sorted(cls.capabilities)),
                     " ".join(f"--{f.replace('_', '-')}" for f in own) or "-"])
    console.print(table("Inverter kinds", ["kind", "what it is", "capabilities", "own options"], rows))


@register_command
class Kinds(Command):
    name = "kinds"
    examples = ("invkeras kinds", "invkeras train-inverter --kind cinn --help   # one kind's options, with defaults")
    cli = staticmethod(cli_kinds)
