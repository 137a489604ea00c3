"""invkeras: inversion models that show what a Keras classifier's layers keep and discard."""

import os

# TensorFlow's C++ start-up chatter drowns the CLI's output; users can still override it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

from invkeras.errors import InvkerasError  # noqa: E402

__all__ = ["InvkerasError", "__version__"]
