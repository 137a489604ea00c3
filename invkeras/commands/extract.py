"""`invkeras extract`: (image, representation) pairs of named layers, streamed into shards."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from invkeras.commands.base import Command, StepAccess, classifier_files, config_of, register_command, with_command
from invkeras.commands.tables import console, table
from invkeras.data.features import ExtractConfig


def cli_extract(
    layer: List[str] = typer.Option(..., "--layer", "-l", help="Layer name (repeatable)."),
    dataset: str = typer.Option("procedural", help="Dataset spec (see `invkeras datasets`)."),
    model: Optional[str] = typer.Option(None, help="A .keras file or run directory (default: the run for --dataset/--arch)."),
    arch: str = typer.Option("conv", help="Which default run to use when --model is not given."),
    split: List[str] = typer.Option(["train", "validation", "test"], "--split", "-s", help="Split (repeatable)."),
    out: Optional[str] = typer.Option(None, help="Root directory (default runs/<dataset>/<arch>/features)."),
    batch_size: int = typer.Option(256),
    shard_size: int = typer.Option(4096, help="Examples per .npz shard."),
    limit: Optional[int] = typer.Option(None, help="At most N examples per split."),
    seed: int = typer.Option(0, help="Seed for carving splits the source lacks."),
    data_dir: Optional[str] = typer.Option(None),
    workspace: str = typer.Option("runs"),
) -> None:
    """Stream (image, representation) pairs from named layers into .npz shards plus a manifest."""
    import json

    from invkeras.data.features import ExtractConfig, extract_features

    config = ExtractConfig(
        dataset=dataset,
        model=model,
        arch=arch,
        layers=layer,
        splits=split,
        out=out,
        batch_size=batch_size,
        shard_size=shard_size,
        limit=limit,
        seed=seed,
        data_dir=data_dir,
        workspace=workspace,
    )
    written = extract_features(config)
    rows = []
    for name, splits in written.items():
        for split_name, manifest_path in splits.items():
            manifest = json.loads(Path(manifest_path).read_text())
            rows.append([name, split_name, manifest["num_examples"], tuple(manifest["h_shape"]), Path(manifest_path).parent])
    console.print(table("Extracted features", ["layer", "split", "examples", "h shape", "directory"], rows))


@register_command
class Extract(Command):
    name = "extract"
    step_schema = with_command(ExtractConfig, "extract")
    examples = (
        "invkeras extract --dataset procedural --layer conv1 --layer fc3",
        "invkeras extract --model my_model.keras --layer dense_1 --dataset mnist --split test --out feats/",
    )
    cli = staticmethod(cli_extract)

    @staticmethod
    def run(step) -> str:
        from invkeras.data.features import extract_features

        written = extract_features(config_of(step, ExtractConfig))
        return f"{len(written)} layer(s) x {len(step.splits)} split(s)"

    @staticmethod
    def outputs(step):
        from invkeras.data.features import MANIFEST

        return [step.split_dir(layer, split) / MANIFEST for layer in step.layers for split in step.splits]

    @staticmethod
    def access(step) -> StepAccess:
        dirs = [step.split_dir(layer, split) for layer in step.layers for split in step.splits]
        return StepAccess(classifier_files(step.model_path()), dirs, whole_features=[] if step.limit else dirs)
