"""Export a Keras model as a TensorFlow SavedModel, for TF Serving and other TF runtimes.

The SavedModel's `serve` endpoint takes raw images (as the classifier does) and returns the
model's output (logits for our classifiers). The directory is written under a temporary
name and renamed into place, so a kill never leaves a half-written export; its metadata is
`<out>.meta.json` beside the directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from invkeras import artifacts
from invkeras.errors import InvkerasError
from invkeras.data.features import load_model


def export_saved_model(model_or_path: keras.Model | str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write `model_or_path` as a TF SavedModel at `out_dir` (replacing it) and return the path."""
    if keras.backend.backend() not in ("tensorflow", "jax"):
        raise InvkerasError(
            f"SavedModel export needs KERAS_BACKEND=tensorflow or jax, not {keras.backend.backend()}"
        )
    source = None
    if isinstance(model_or_path, keras.Model):
        model = model_or_path
    else:
        source = Path(model_or_path)
        model = load_model(source)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvkerasError(f"{out_dir}: exists and is not a directory")

    with artifacts.atomic_dir(out_dir) as tmp:
        model.export(str(tmp), format="tf_saved_model", verbose=False)
    artifacts.write_metadata(
        out_dir,
        kind="saved_model",
        config={"source": str(source) if source else None, "model_name": model.name},
        results={"endpoint": "serve", **_io_specs(model)},
        source_metadata=artifacts.read_metadata(source) if source else None,
    )
    return out_dir


def _io_specs(model: keras.Model) -> dict:
    """Input/output names, shapes and dtypes for the metadata (none for subclassed models)."""

    def spec(tensor) -> dict:
        return {"name": getattr(tensor, "name", None), "shape": list(tensor.shape), "dtype": str(tensor.dtype)}

    try:
        return {"inputs": [spec(t) for t in model.inputs], "outputs": [spec(t) for t in model.outputs]}
    except (AttributeError, ValueError, TypeError):
        return {}
