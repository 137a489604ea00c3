"""Loading a saved `.keras` file safely, with one readable error for every way it can fail.

Keras reports a bad model file in many shapes: a missing, empty or truncated file is "File
not found" (a ValueError), a zip archive of something else is a KeyError, a damaged weights
file an OSError from h5py, a layer class nobody registered a TypeError with the whole
config in it, and a Lambda layer that safe mode refuses a ValueError of several sentences.
`load_keras_model` turns each into one `InvkerasError` line that names the file and what it
was meant to be, so every command that reads a model file fails the same way.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

from invkeras.errors import InvkerasError

_MAX_REASON = 160  # characters of a Keras message kept in the one-line error


def model_file(path: str | Path, name: str, *, flag: str, missing: str) -> Path:
    """The model file a user gave as the file itself or as its directory (holding `name`);
    one line, `missing` saying how to make one, when there is none."""
    file = Path(path)
    if file.is_dir():
        file = file / name
    if not file.is_file():
        raise InvkerasError(f"{flag} {path}: {missing}")
    return file


def load_keras_model(path: str | Path, *, what: str, flag: str | None = None,
                     custom_objects: dict[str, Any] | None = None, compile: bool = False):
    """Load the model saved in the `.keras` file at `path`, in Keras' safe mode (no Python
    code from the file is run).

    `what` names what the file should hold ("inverter", "factor INN", "Keras model"), and
    `flag` the option it came from, if any ("--inverter"): a failure is raised as
    `InvkerasError("<flag> <path>: not a loadable <what> (<reason>)")`, one line. The classes
    of invkeras' own layers must be registered first (by importing their modules), or passed
    in `custom_objects`.
    """
    import keras

    file = Path(path)
    prefix = f"{flag} {file}" if flag else str(file)

    def refuse(reason: str) -> InvkerasError:
        return InvkerasError(f"{prefix}: not a loadable {what} ({reason})")

    if file.is_dir():
        raise refuse("a directory, not a .keras file")
    if not file.is_file():
        raise refuse("file not found")
    if file.suffix != ".keras":
        raise refuse("expected a .keras file")
    if file.stat().st_size == 0:
        raise refuse("empty file")
    if not zipfile.is_zipfile(file):  # Keras would call a truncated file "File not found"
        raise refuse("not a .keras archive: truncated or corrupted")
    try:
        return keras.saving.load_model(file, custom_objects=custom_objects, compile=compile, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a bad file; the user needs one line
        raise refuse(_reason(exc)) from None


def _reason(exc: Exception) -> str:
    """What went wrong, in a few words, from the exception Keras raised."""
    message = str(exc)
    unknown = re.search(r"Could not locate class '([^']+)'", message)
    if unknown:
        return f"it uses the class '{unknown.group(1)}', which is not registered with Keras"
    if isinstance(exc, KeyError) and "config.json" in message:
        return "a zip archive without the config.json of a .keras file"
    if "safe_mode" in message:
        return "safe mode refuses it: " + _first_sentence(message)
    first = _first_sentence(message)
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _first_sentence(message: str) -> str:
    line = (message.strip().splitlines() or [""])[0]
    sentence = re.split(r"(?<=\.)\s", line, maxsplit=1)[0]
    return sentence[:_MAX_REASON]
