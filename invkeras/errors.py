"""The one exception type for bad user input.

The CLI turns an `InvkerasError` into a single red line and exit code 2, so every
message must say what was wrong and where (file, flag, key or layer name).
"""


class InvkerasError(Exception):
    """A problem with the user's input: a path, dataset, layer, recipe key or value."""

    exit_code = 2


class NonFiniteLossError(InvkerasError):
    """Training produced a NaN or inf loss; the last good checkpoint is kept."""
