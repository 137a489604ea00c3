"""The `invkeras` command line: wiring from the command registry to Typer.

Every command is one registered object (`invkeras.commands`): its options, its run, its
outputs. This module only builds the Typer application from the registry, and turns bad
input (an `InvkerasError`, or a config that fails validation) into one red line on stderr
and exit code 2, with no traceback.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import sys
from typing import Callable

import typer
from pydantic import ValidationError
from rich.markup import escape

from invkeras import __version__
from invkeras.backend_setup import configured_backend
from invkeras.commands.tables import (comparison_table, console, err_console, latent_mi_table,  # noqa: F401
                                      mi_report_table, mi_table)
from invkeras.errors import InvkerasError


class _InvkerasTyper(typer.Typer):
    """Every command registered here reports bad input as one line (`user_errors`): the one
    place this happens, so a new command cannot forget it."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorate(function):
            _escape_option_help(function)
            return register(user_errors(function))

        return decorate


class _OneLineUsageErrors(typer.core.TyperGroup):
    """A usage error (an unknown option or command, an extra argument, a value of the wrong
    type) is one line, `error: ...`, and exit code 2, like every other bad input, rather than
    a boxed usage block. Errors are caught where parsing happens (making the context, and
    resolving and parsing the command), so this holds for `main()` and for `app` run any
    other way (typer's CliRunner). `--help`, `--version` and bare `invkeras` are unchanged."""

    def make_context(self, *args, **kwargs):
        with _usage_errors_as_one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _usage_errors_as_one_line():
            return super().invoke(ctx)


@contextlib.contextmanager
def _usage_errors_as_one_line():
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    try:
        yield
    except NoArgsIsHelpError:
        raise  # bare `invkeras`: the help, as before
    except ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        message = " ".join(exc.format_message().split()).rstrip(".")
        err_console.print(f"[bold red]error:[/bold red] {escape(where + message + hint)}", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(code=2) from None


def _escape_option_help(function: Callable) -> None:
    """Option help is plain text: under rich markup, '[default: 64]' would read as a style tag
    and vanish from `--help`. Command docstrings and examples keep their markup."""
    for parameter in inspect.signature(function).parameters.values():
        info = parameter.default
        if isinstance(info, typer.models.ParameterInfo) and info.help and not getattr(info, "escaped", False):
            info.help = escape(info.help)
            info.escaped = True  # the app is built again for each command line: escape once


def user_errors(command: Callable) -> Callable:
    """Report bad input as one line and exit 2; everything else is a bug and keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        _quiet_tensorflow_import()
        if configured_backend() == "jax":
            from invkeras.distribution import enable_compilation_cache, initialize_multi_host

            enable_compilation_cache()  # each command is a process: reuse what the last one compiled
            if os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES") or os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES"):
                initialize_multi_host()  # one process of a multi-host run (README, "Scaling up")
        try:
            check_finite_options(kwargs)
            return command(*args, **kwargs)
        except InvkerasError as exc:
            err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        except ValidationError as exc:
            from invkeras.recipes import describe_validation_error

            err_console.print(f"[bold red]error:[/bold red] {describe_validation_error(exc)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except OSError as exc:  # an --out that is read-only, a file where a directory should be, ...
            where = exc.filename or "a path"
            err_console.print(f"[bold red]error:[/bold red] cannot use {where}: {exc.strerror or exc}",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]: rerun the same command to resume from the last checkpoint")
            raise typer.Exit(code=130) from None

    return wrapper


def check_finite_options(options: dict) -> None:
    """Every number option is finite: Typer reads 'inf' and 'nan' as floats, and a run on them
    goes to the end and writes garbage (a NaN noise level, an infinite step size). An option
    that means something by infinity says so, and takes it as text."""
    for name, value in options.items():
        for number in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(number, float) and not math.isfinite(number):
                raise InvkerasError(f"--{name.replace('_', '-')} {number}: must be a finite number")


def _quiet_tensorflow_import() -> None:
    """Import TensorFlow with stderr silenced: its C++ start-up lines would bury our one-line messages.

    Only under the TensorFlow backend: under JAX, TensorFlow is needed (and imported lazily)
    only by the TFDS datasets and SavedModel export, and need not be installed at all."""
    if "tensorflow" in sys.modules or configured_backend() != "tensorflow":
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_logical_devices()  # device discovery prints the "cuInit failed" line
        # Library warnings (absl's "Variant folder ... has no dataset_info.json", TF's retracing
        # notes) would stand before our one-line messages; errors still get through.
        import logging

        for name in ("absl", "tensorflow", "tensorflow_datasets"):
            logging.getLogger(name).setLevel(logging.ERROR)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)



def _examples(*lines: str) -> str:
    return "[bold]Examples[/bold]\n\n" + "\n\n".join(f"  [cyan]$ {line}[/cyan]" for line in lines)


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """The Typer application of every registered command, in registration order. `argv` is
    the command line, for commands whose options depend on it (train-inverter's `--kind`)."""
    from invkeras.commands import registered_commands

    application = _InvkerasTyper(
        name="invkeras",
        cls=_OneLineUsageErrors,
        help="Inversion models for Keras classifiers: what does a layer keep, and what does it throw away?",
        rich_markup_mode="rich",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for command in registered_commands().values():
        function = command.typer_function(argv)
        application.command(command.name, epilog=_examples(*command.examples) if command.examples else None,
                            context_settings=dict(command.context_settings) or None)(function)

    @application.callback(invoke_without_command=True)
    def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
        if version:
            console.print(f"invkeras {__version__}")
            raise typer.Exit()

    return application


app = build_app()


def main() -> None:
    argv = sys.argv[1:]
    if "train-inverter" in argv and "--help" in argv:
        _quiet_tensorflow_import()  # the help of a kind's own options reads the kinds, which start Keras
    build_app(argv)()


if __name__ == "__main__":
    main()
