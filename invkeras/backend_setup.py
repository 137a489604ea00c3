"""What a process sets before its Keras backend starts: found and done without importing keras.

`configured_backend` says which backend `import keras` will pick. `prefer_xla_cpu_convolutions`
sets one XLA flag for JAX on the CPU, and must run before JAX creates its CPU client (the
first computation): `import invkeras` calls it.

Why the flag: jaxlib 0.10's XLA hands convolutions on the CPU to YNNPACK by default. On the
2-core x86 development machine that ran the PixelCNN++'s 2x3 convolutions (32 images of
28x30x128) 5.7x slower forward and 6.9x slower for the filter gradient than XLA's own
convolutions, and a whole training step 1.6x slower. YNNPACK stays on for everything else
(its reductions were 16x faster than XLA's own). The flag, as XLA spells it, is
`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`; a process whose XLA_FLAGS
already mention `xla_cpu_experimental_ynn_fusion_type` keeps its own setting.
"""

from __future__ import annotations

import json
import os
from importlib import metadata

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
EIGEN_CONVOLUTIONS = f"{YNN_FLAG}=-individual_convolution"
# The oldest jaxlib known to accept the flag (it is the pinned one; older XLAs abort on
# flags they do not know).
MIN_JAXLIB = (0, 10)


def configured_backend() -> str:
    """The Keras backend that `import keras` will pick, found without importing keras (which,
    under TensorFlow, would print TF's start-up lines before we could silence them):
    KERAS_BACKEND, else the `backend` of Keras's own config file, else tensorflow."""
    name = os.environ.get("KERAS_BACKEND")
    if name:
        return name
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as handle:
            return str(json.load(handle).get("backend") or "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def _jaxlib_version() -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in metadata.version("jaxlib").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return None


def prefer_xla_cpu_convolutions() -> bool:
    """Under JAX, add `EIGEN_CONVOLUTIONS` to XLA_FLAGS unless the user set the YNNPACK flag
    (or jaxlib is older than `MIN_JAXLIB`). Returns whether the flag is now set by us."""
    flags = os.environ.get("XLA_FLAGS", "")
    if configured_backend() != "jax" or YNN_FLAG in flags:
        return False
    version = _jaxlib_version()
    if version is None or version < MIN_JAXLIB:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {EIGEN_CONVOLUTIONS}".strip()
    return True
