"""invkeras: inversion models that show what a Keras classifier's layers keep and discard."""

import os

# TensorFlow's C++ start-up chatter drowns the CLI's output; users can still override it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

from invkeras.backend_setup import prefer_xla_cpu_convolutions  # noqa: E402

# Before JAX starts its CPU client: XLA's own convolutions, not YNNPACK's (backend_setup says why).
prefer_xla_cpu_convolutions()

from invkeras.errors import InvkerasError  # noqa: E402

__all__ = ["InvkerasError", "__version__"]
