"""Export classifiers and inverters as TensorFlow SavedModels, for TF Serving and other TF runtimes.

A classifier's `serve` endpoint takes raw images (as the classifier does) and returns its
output (logits for our classifiers). An inverter gets one named signature per function its
kind exports (`Inverter.export_functions`): `log_prob(x, h)` in nats per image for kinds with
a pixel likelihood, `sample(h, seed)` compiled with XLA, `reconstruct(h)` for point estimates,
and `serve`, the kind's default. The library's PixelCNN++ sampler is compiled with XLA too, so
its exported `sample` draws the same images as `inverter.sample(h, 1, seed=seed)`. A GAN's
library `sample` draws its noise with TensorFlow's own stateless kernel, which gives other
numbers than XLA's for the same seed: its exported `sample` is a function of the seed and
draws from the same distribution, but not the library's images for that seed. The directory is
written under a temporary name and renamed into place, so a kill never leaves a
half-written export; its metadata is `<out>.meta.json` beside the directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from invkeras import artifacts
from invkeras.errors import InvkerasError
from invkeras.data.features import load_model


def _require_tensorflow() -> None:
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        raise InvkerasError("export writes TensorFlow SavedModels and needs TensorFlow, which is not installed in this "
                            "environment (the JAX one has none); export from the TensorFlow environment (.venv)")


def export_saved_model(model_or_path: keras.Model | str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write `model_or_path` as a TF SavedModel at `out_dir` (replacing it) and return the path."""
    _require_tensorflow()
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


def export_inverter(inverter_path: str | os.PathLike, out_dir: str | os.PathLike, *, batch_size: int = 16) -> Path:
    """Write an inverter of any kind that can be exported as a SavedModel with named signatures."""
    _require_tensorflow()
    import tensorflow as tf

    from invkeras.inverters import load_inverter

    if keras.backend.backend() != "tensorflow":
        raise InvkerasError(f"export --inverter needs KERAS_BACKEND=tensorflow, not {keras.backend.backend()}")
    if batch_size < 1:
        raise InvkerasError("export: --batch-size must be >= 1")
    inverter = load_inverter(inverter_path)
    functions = inverter.export_functions(batch_size)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvkerasError(f"{out_dir}: exists and is not a directory")
    archive = keras.export.ExportArchive()
    archive.track(inverter.model)
    signatures = {}
    for name, (fn, specs) in functions.items():
        signature = [tf.TensorSpec(shape, dtype) for shape, dtype in specs]
        # The sampler is a long loop: compiled with XLA, as the library compiles it (and so
        # drawing the same random bits for the same seed).
        traced = tf.function(fn, input_signature=signature, jit_compile=(name == "sample"), autograph=False)
        archive.add_endpoint(name, traced)
        signatures[name] = [{"shape": list(shape), "dtype": dtype} for shape, dtype in specs]
    default = next(iter(functions))
    archive.add_endpoint("serve", tf.function(functions[default][0], autograph=False,
                                              input_signature=[tf.TensorSpec(s, d) for s, d in functions[default][1]]))
    with artifacts.atomic_dir(out_dir) as tmp:
        archive.write_out(str(tmp), verbose=False)
    artifacts.write_metadata(
        out_dir, kind="saved_model",
        config={"inverter": str(inverter.path), "batch_size": batch_size, "inverter_kind": inverter.kind},
        results={"signatures": signatures, "serve": default},
        source_metadata=inverter.meta,
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
