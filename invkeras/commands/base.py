"""A command: everything about one invkeras command, in one registered object.

Each command the CLI offers is a subclass of `Command`, decorated with `register_command`:

    @register_command
    class Mix(InverterAnalysis):
        name = "mix"
        step_schema = MixStep                   # a recipe step's keys; None: CLI only
        examples = ("invkeras mix --inverter DIR",)

        @staticmethod
        def cli(inverter: str = typer.Option(...), ...):   # the Typer function
            ...

        @classmethod
        def run(cls, step) -> str: ...          # one recipe step; its one-line summary

        @classmethod
        def outputs(cls, step) -> list[Path]: ...   # done when these are complete

        @classmethod
        def access(cls, step) -> StepAccess: ...    # what it reads and writes

        @classmethod
        def product(cls, step) -> Path: ...         # what `{step: NAME}` in a recipe stands for

The command line (`invkeras.cli`), the recipe schema (`invkeras.recipes.schema`) and the
recipe runner and executors are built from this registry, so a new command, in any module
imported before the CLI runs, needs no edit anywhere else. A command that writes no `cli`
gets one generated from its step schema: an option per field, with the field's default
and description as its help.

The ordering rule of `access` is a build tool's: a step waits for every earlier step that
writes something it reads or writes, or reads something it writes (`invkeras.recipes.runner`).
A command that does not declare what it touches (`access` returns `StepAccess(None, [])`)
is a barrier: ordered after every earlier step and before every later one.
"""

from __future__ import annotations

import importlib
import inspect
from types import UnionType
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, create_model

from invkeras.errors import InvkerasError


@dataclass
class StepAccess:
    """The paths a step reads and writes, for ordering steps (never for locating files).

    A directory stands for everything inside it. `reads` is None for a command that does not
    say: such a step is ordered after every earlier step and before every later one.
    `writes_if_missing` are feature directories the step extracts (every example of the
    split) only when they do not hold that already: an inverter without `features` does so.
    `whole_features` are the feature directories the step leaves holding whole splits.
    """

    reads: list[Path] | None
    writes: list[Path]
    writes_if_missing: list[Path] = field(default_factory=list)
    whole_features: list[Path] = field(default_factory=list)


class Command:
    """One command. Subclasses set `name` and override what they need (see the module docstring)."""

    name: ClassVar[str] = ""
    step_schema: ClassVar[Optional[type[BaseModel]]] = None
    # Or the library config the step's keys are (plus `command`): a class, or "module:Class" for
    # a config whose module is slow to import (it starts Keras), imported on first use.
    config: ClassVar[Union[type[BaseModel], str, None]] = None
    examples: ClassVar[tuple[str, ...]] = ()
    cli: ClassVar[Optional[Callable[..., None]]] = None
    # Typer settings of the command (e.g. extra arguments for a kind's own options).
    context_settings: ClassVar[dict] = {}

    @classmethod
    def schema(cls) -> Optional[type[BaseModel]]:
        """The recipe step's schema (None: not a recipe step): `step_schema`, or one built from
        `config` on first use."""
        if cls.step_schema is None and cls.config is not None:
            config = cls.config
            if isinstance(config, str):
                module, _, name = config.partition(":")
                config = getattr(importlib.import_module(module), name)
            cls.step_schema = with_command(config, cls.name)
        return cls.step_schema

    @classmethod
    def schema_for(cls, raw: dict) -> type[BaseModel]:
        """The schema of one raw recipe step (a command whose keys depend on another key, as
        train-inverter's on `kind`, picks it here)."""
        if cls.schema() is None:
            raise ValueError(f"command {cls.name!r} cannot be a recipe step")
        return cls.schema()

    @classmethod
    def default_schemas(cls) -> list[type[BaseModel]]:
        """The schemas a recipe's `defaults.<command>` entry may fill."""
        return [cls.schema()] if cls.schema() is not None else []

    @classmethod
    def run(cls, step: BaseModel) -> str:
        """Run one recipe step; return its summary (one line)."""
        raise NotImplementedError(f"command {cls.name!r} cannot run as a recipe step")

    @classmethod
    def outputs(cls, step: BaseModel) -> list[Path]:
        """The artefacts whose completeness means the step is done (a rerun skips it)."""
        raise NotImplementedError(f"command {cls.name!r} does not name its outputs")

    @classmethod
    def product(cls, step: BaseModel, **selectors) -> Path:
        """What a later step gets when it refers to this one by name (`{step: NAME}` in a
        recipe): its first output, a trained model's file for the training commands. A command
        may take selectors, keys beside `step` (a classifier's `checkpoint`)."""
        if selectors:
            raise TypeError(f"{cls.name} takes no selectors")
        return cls.outputs(step)[0]

    @classmethod
    def access(cls, step: BaseModel) -> StepAccess:
        """What the step reads and writes; the default orders it against every other step."""
        return StepAccess(None, [])

    @classmethod
    def show(cls, step: BaseModel) -> None:
        """Print the step's results after a recipe has run (most commands print nothing more)."""

    @classmethod
    def typer_function(cls, argv: list[str] | None = None) -> Callable[..., None]:
        """The function Typer registers: the command's own `cli`, or one generated from its
        step schema. `argv` is the command line, for commands whose options depend on it."""
        if cls.cli is not None:
            return cls.cli
        if cls.schema() is None:
            raise TypeError(f"command {cls.name!r}: give it a `cli` or a `step_schema`")
        return generated_cli(cls)


class OnePerLayer(Command):
    """A command whose step does the same work for each of its `layers`, with one output per
    layer: a rerun does only the layers whose output is not complete."""

    @classmethod
    def layer_output(cls, step: BaseModel, layer: str) -> Path:
        """The file whose completeness means `layer` is done."""
        raise NotImplementedError

    @classmethod
    def run_layer(cls, step: BaseModel, layer: str) -> str:
        """Do one layer's work; return its summary."""
        raise NotImplementedError

    @classmethod
    def outputs(cls, step: BaseModel) -> list[Path]:
        return [cls.layer_output(step, layer) for layer in step.layers]

    @classmethod
    def run(cls, step: BaseModel) -> str:
        from invkeras import artifacts

        done = [cls.run_layer(step, layer) for layer in step.layers
                if not artifacts.is_complete(cls.layer_output(step, layer))]
        return "; ".join(s for s in done if s) or f"{cls.name}: nothing left to do"


_COMMANDS: dict[str, type[Command]] = {}


def register_command(cls: type[Command]) -> type[Command]:
    """Class decorator: make a command known to the CLI, recipes and the runner."""
    if not cls.name or not isinstance(cls.name, str):
        raise TypeError(f"{cls.__name__}: set the class attribute `name`")
    if cls.name in _COMMANDS and _COMMANDS[cls.name] is not cls:
        raise TypeError(f"{cls.__name__}: a command named {cls.name!r} is registered already "
                        f"({_COMMANDS[cls.name].__name__})")
    _COMMANDS[cls.name] = cls
    return cls


def registered_commands() -> dict[str, type[Command]]:
    """Every command by name, the built-in ones first (registered on import of invkeras.commands)."""
    import invkeras.commands  # noqa: F401  (registers the built-in commands)

    return dict(_COMMANDS)


def recipe_commands() -> dict[str, type[Command]]:
    """The commands a recipe step can run."""
    return {name: cls for name, cls in registered_commands().items() if cls.schema() is not None}


def command_class(name: str) -> type[Command]:
    commands = registered_commands()
    if name not in commands:
        raise InvkerasError(f"unknown command {name!r}; choose from {', '.join(commands)}")
    return commands[name]


# --- shared helpers for commands ---------------------------------------------------------


DATA_DIR_HELP = ("Data directory: local copies DIR/NAME/ or DIR/NAME-*/ (IDX or .npz) of catalogue datasets, "
                 "else TFDS's prepared datasets [default: $INVKERAS_DATA_DIR].")


def with_command(config: type[BaseModel], name: str, title: str | None = None, **fields: Any) -> type[BaseModel]:
    """A recipe step's schema: a library config plus the `command` key (and `fields`)."""
    title = title or "".join(part.capitalize() for part in name.split("-")) + "Step"
    return create_model(title, __base__=config, command=(Literal[name], ...), **fields)  # type: ignore[valid-type]


def fields_of(config: type[BaseModel], *, without: tuple[str, ...]) -> dict:
    """A config's fields (defaults and descriptions included) for a step schema: written once."""
    return {name: (f.annotation, f) for name, f in config.model_fields.items() if name not in without}


def config_of(step: BaseModel, config_class: type[BaseModel], **values) -> BaseModel:
    """The library config a step stands for: the step's keys that the config has, plus `values`."""
    names = set(config_class.model_fields)
    return config_class(**{**{k: v for k, v in step.model_dump().items() if k in names}, **values})


def given(options: dict) -> dict:
    """The options the user gave (not None): the config's own defaults fill in the rest, so
    each default is written once, in the config."""
    return {k: v for k, v in options.items() if v is not None}


def model_files(value: str | Path, *names: str) -> list[Path]:
    """A model given as a `.keras` file or as a directory: the files the directory may hold."""
    path = Path(value)
    return [path] if path.suffix == ".keras" else [path / name for name in names]


def classifier_files(value: str | Path) -> list[Path]:
    return model_files(value, "classifier/model.keras", "model.keras")  # as data.features.resolve_model_path


# --- a CLI generated from a step schema ----------------------------------------------------


def _plain_type(annotation: Any) -> tuple[Any, bool]:
    """(the type Typer parses, whether the field may be None) for a field's annotation."""
    optional = False
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        annotation = args[0] if len(args) == 1 else str
    if get_origin(annotation) is Literal:
        return str, optional
    if get_origin(annotation) in (list, tuple):
        inner = get_args(annotation)[0] if get_args(annotation) else str
        return list[inner if inner in (int, float, str) else str], optional
    if annotation in (bool, int, float, str):
        return annotation, optional
    return str, optional


def generated_cli(command: type[Command]) -> Callable[..., None]:
    """A Typer function with one option per field of the command's step schema.

    Only the options the user gives reach the schema, so every default is the schema's own;
    the step runs as a one-step recipe would, and its summary is printed."""
    import typer
    from pydantic_core import PydanticUndefined

    schema = command.schema()
    parameters = []
    for name, f in schema.model_fields.items():
        if name == "command":
            continue
        kind, optional = _plain_type(f.annotation)
        required = f.default is PydanticUndefined and f.default_factory is None
        default = ... if required else None
        shown = "" if required else f" [default: {f.get_default(call_default_factory=True)}]"
        option = typer.Option(default, f"--{name.replace('_', '-')}", help=(f.description or "") + shown,
                              show_default=False)
        annotation = kind if required else Optional[kind]
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                            annotation=annotation))

    def run_one_step(**options) -> None:
        from invkeras.cli import console

        step = schema.model_validate({"command": command.name, **given(options)})
        console.print(f"{command.name}: {command.run(step)}")

    run_one_step.__signature__ = inspect.Signature(parameters)
    run_one_step.__doc__ = (inspect.getdoc(command) or command.name)
    run_one_step.__name__ = command.name.replace("-", "_")
    return run_one_step
