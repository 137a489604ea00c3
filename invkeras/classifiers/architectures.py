"""The classifiers whose layers we invert (Nash, Kushman & Williams, AISTATS 2019, section 4).

Three architectures, all built from `keras.layers`/`keras.ops` only so they run under any
Keras backend:

* `conv`:       conv1 -> conv2 -> fc3 -> logits, where each conv block is a 5x5 valid
                convolution, ReLU and 2x2 max-pool (32/32 filters for grey images, 64/128
                for colour).
* `conv-gpool`: as `conv`, with a global max-pool between conv2 and fc3, so fc3 sees no
                spatial layout (conv2 itself stays spatial).
* `fc`:         conv1 and conv2 replaced by 2048-unit ReLU dense layers on the flattened image.

Every inverted representation is a layer with a fixed name from `LAYER_NAMES`, and the
named layer outputs exactly the representation (a conv block's post-pool activation, not
the conv before ReLU or the dropout after it), so `model.get_layer("conv1").output` is what
the inversion model is conditioned on.

The model takes raw pixels (uint8 or float in [0, 255]) and rescales inside, so feature
extraction and export can feed images straight from the dataset.
"""

from __future__ import annotations

from typing import Sequence

import keras

from invkeras.errors import InvkerasError

ARCHITECTURES = ("conv", "conv-gpool", "fc")
LAYER_NAMES = ("conv1", "conv2", "fc3", "logits")

# Dropout after every representation layer, as in the paper's regularised classifiers.
# 0.3 keeps small conv nets trainable in a few epochs on 20-28 px images; the paper's
# "overfitted" classifiers use no dropout (dropout_rate=0).
DEFAULT_DROPOUT_RATE = 0.3
FC_UNITS = 2048
FC3_UNITS = 256
KERNEL_SIZE = 5


def default_filters(channels: int) -> tuple[int, int]:
    """Filters of conv1/conv2: 32/32 for greyscale, 64/128 for colour (the paper's choice)."""
    return (32, 32) if channels == 1 else (64, 128)


@keras.saving.register_keras_serializable(package="invkeras")
class ConvBlock(keras.layers.Layer):
    """5x5 valid convolution -> ReLU -> 2x2 max-pool, as one named layer.

    Wrapping the three ops in one layer makes the layer's output the block's post-pool
    activation, which is the representation the paper inverts.
    """

    def __init__(self, filters: int, kernel_size: int = KERNEL_SIZE, pool_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.pool_size = int(pool_size)
        self.conv = keras.layers.Conv2D(self.filters, self.kernel_size, padding="valid", name="conv")
        self.pool = keras.layers.MaxPooling2D(self.pool_size, name="pool")

    def build(self, input_shape):
        # Build the sublayer explicitly so `.keras` loading finds its weights.
        self.conv.build(input_shape)

    def call(self, inputs):
        return self.pool(keras.ops.relu(self.conv(inputs)))

    def compute_output_shape(self, input_shape):
        return self.pool.compute_output_shape(self.conv.compute_output_shape(input_shape))

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "pool_size": self.pool_size,
        }


def build_classifier(
    arch: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    dropout_rate: float = DEFAULT_DROPOUT_RATE,
    filters: Sequence[int] | None = None,
    fc_units: int = FC_UNITS,
    fc3_units: int = FC3_UNITS,
) -> keras.Model:
    """Build one of `ARCHITECTURES` for images of `input_shape` (H, W, C) and `num_classes` classes.

    `dropout_rate=0` removes dropout without changing the initial weights; `filters=(f1, f2)`
    overrides the conv widths.
    """
    if arch not in ARCHITECTURES:
        raise InvkerasError(f"unknown architecture '{arch}'; choose one of {', '.join(ARCHITECTURES)}")
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3:
        raise InvkerasError(f"classifier input shape must be (height, width, channels), got {input_shape}")
    if num_classes < 2:
        raise InvkerasError(f"a classifier needs at least 2 classes, got {num_classes}")
    if not 0.0 <= dropout_rate < 1.0:
        raise InvkerasError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    height, width, channels = input_shape
    if arch != "fc" and min(height, width) < 16:
        # Two (5x5 valid conv, 2x2 pool) blocks need at least 16 px to leave a 1x1 map.
        raise InvkerasError(f"architecture '{arch}' needs images of at least 16x16 pixels, got {height}x{width}")
    filters = tuple(filters) if filters is not None else default_filters(channels)
    if len(filters) != 2:
        raise InvkerasError(f"filters must give two conv widths (conv1, conv2), got {filters}")

    def dropout(x, name):
        if dropout_rate > 0:
            return keras.layers.Dropout(dropout_rate, name=name)(x)
        # A Dropout layer draws its seed from the global RNG (a SeedGenerator) between the
        # layers' initialisations; make that draw without the layer, so that one seed gives the
        # same untrained network with and without dropout, as comparing the normal and the
        # overfitted regimes of the training-dynamics study needs.
        keras.random.SeedGenerator()
        return x

    inputs = keras.Input(shape=input_shape, name="image")
    # Raw pixels in [0, 255] -> [-1, 1]; Rescaling also casts uint8 input to float.
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)

    if arch == "fc":
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(fc_units, activation="relu", name="conv1")(x)
        x = dropout(x, "conv1_dropout")
        x = keras.layers.Dense(fc_units, activation="relu", name="conv2")(x)
        x = dropout(x, "conv2_dropout")
    else:
        x = ConvBlock(filters[0], name="conv1")(x)
        x = dropout(x, "conv1_dropout")
        x = ConvBlock(filters[1], name="conv2")(x)
        if arch == "conv-gpool":
            x = keras.layers.GlobalMaxPooling2D(name="gpool")(x)
        else:
            x = keras.layers.Flatten(name="flatten")(x)
        x = dropout(x, "conv2_dropout")

    x = keras.layers.Dense(fc3_units, activation="relu", name="fc3")(x)
    x = dropout(x, "fc3_dropout")
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=f"classifier_{arch.replace('-', '_')}")


def layer_output_model(model: keras.Model, layer_names: Sequence[str]) -> keras.Model:
    """A model mapping `model`'s input to `{name: that layer's output}` for each name.

    Works on any functional or Sequential Keras model (built or loaded from `.keras`), not
    only on ours. Subclassed models have no symbolic layer outputs and are refused.
    """
    if isinstance(layer_names, str):
        layer_names = [layer_names]
    layer_names = list(dict.fromkeys(layer_names))  # drop duplicates, keep order
    if not layer_names:
        raise InvkerasError("no layer names given")
    available = [layer.name for layer in model.layers]
    unknown = [name for name in layer_names if name not in available]
    if unknown:
        raise InvkerasError(
            f"model '{model.name}' has no layer named {', '.join(repr(n) for n in unknown)}; "
            f"its layers are: {', '.join(available)}"
        )
    inputs = symbolic_inputs(model)
    try:
        outputs = {name: model.get_layer(name).output for name in layer_names}
    except (AttributeError, ValueError) as exc:
        raise InvkerasError(
            f"cannot read layer outputs of model '{model.name}' (a subclassed model?): {exc}"
        ) from None
    return keras.Model(inputs, outputs, name=f"{model.name}_layers")


def symbolic_inputs(model: keras.Model, *, unavailable: str | None = None):
    """The model's symbolic input(s), through which Keras reads its layers' outputs; one line,
    `unavailable` or a default, when it has none (a subclassed model, an unbuilt Sequential)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise InvkerasError(unavailable or (
            f"model '{model.name}' has no symbolic inputs: build it (e.g. start a Sequential model "
            "with keras.Input(shape)) or save it after calling it on data"))
    return inputs[0] if len(inputs) == 1 else inputs
