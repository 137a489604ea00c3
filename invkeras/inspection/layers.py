"""Which layers of a user's classifier `inspect` inverts, and the checks that the model is one.

The default choice reads nothing but the model's layer types and output shapes, so it works
for any functional or Sequential Keras 3 model (images channels-last, as invkeras feeds them):

1. **The output of each convolutional block.** A layer *downsamples* when its output is a
   feature map (rank 4: H, W, C) at most half the height or width of its input: a pooling
   layer, a strided convolution, or a layer that pools inside (invkeras' own `ConvBlock`).
   Each downsampling layer ends a block, so its output is chosen, the representation the
   next block sees. When the convolutions after the last downsampling go on to the dense
   part without another one (Conv -> Pool -> Conv -> Flatten), the last of them ends a
   block too. A network whose feature maps never shrink by half gets one block per
   convolution: each layer with weights and a rank-4 output (normalisation aside).
2. **The last hidden dense layer**: the last `Dense` layer before the one that gives the
   class scores.
3. **The logits**: the model's last layer, whatever it is (a softmax layer included).

A chosen layer that is followed at once by activation or normalisation layers of the same
shape (Conv2D -> BatchNormalization -> ReLU) is replaced by the last of them, so a block's
output is its activation. Dropout and noise layers are passed over: they are the identity
at inference, and their name would only hide the layer that computes the values.

`--layers a,b` replaces the choice (names as `model.summary()` prints them). A subclassed
model whose `call` is Python code has no symbolic layer outputs; it is refused in one line
that says what to do instead (build it functionally, or pass `--features`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from invkeras.errors import InvkerasError

# What a chosen layer's output is, for the plan table and the report.
BLOCK, HIDDEN, LOGITS, CHOSEN = "conv block", "hidden dense", "logits", "chosen"


@dataclass(frozen=True)
class LayerChoice:
    """One layer to invert: its name, why it was chosen, and its output shape (no batch axis)."""

    name: str
    role: str
    shape: tuple[int | None, ...]

    @property
    def spatial(self) -> bool:
        return len(self.shape) == 3


def _layer_types():
    import keras

    layers = keras.layers
    identity = (layers.Dropout, layers.SpatialDropout1D, layers.SpatialDropout2D, layers.SpatialDropout3D,
                layers.GaussianNoise, layers.GaussianDropout, layers.AlphaDropout, layers.ActivityRegularization)
    elementwise = (layers.Activation, layers.ReLU, layers.LeakyReLU, layers.PReLU, layers.ELU, layers.Softmax,
                   layers.BatchNormalization, layers.LayerNormalization, layers.GroupNormalization,
                   layers.UnitNormalization)
    normalisation = (layers.BatchNormalization, layers.LayerNormalization, layers.GroupNormalization)
    return identity, elementwise, normalisation


def symbolic_model(model, *, where: str):
    """`model` itself if Keras can read its layers' outputs; one line otherwise."""
    from invkeras.classifiers.architectures import symbolic_inputs

    symbolic_inputs(model, unavailable=(
        f"{where}: model '{model.name}' is subclassed (its call() is Python code), so Keras cannot read the "
        "outputs of its layers; build it functionally (keras.Model(inputs, outputs)) or as a keras.Sequential "
        "that starts with keras.Input, or extract the representations yourself and pass --features DIR (one "
        "directory or .npz of x and h per layer)"))
    return model


def _shape(tensor) -> tuple[int | None, ...]:
    return tuple(None if d is None else int(d) for d in tensor.shape[1:])


def _output_shape(layer) -> tuple[int | None, ...] | None:
    try:
        output = layer.output
    except (AttributeError, ValueError):  # a layer never called, or shared by several calls
        return None
    return _shape(output) if hasattr(output, "shape") else None


def _input_shapes(layer) -> list[tuple[int | None, ...]]:
    try:
        inputs = layer.input
    except (AttributeError, ValueError):
        return []
    inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    return [_shape(t) for t in inputs if hasattr(t, "shape")]


def _downsamples(layer, shape) -> bool:
    """True for a layer whose rank-4 output is at most half as high or wide as its largest input."""
    if shape is None or len(shape) != 3:
        return False
    for before in _input_shapes(layer):
        if len(before) != 3:
            continue
        for old, new in zip(before[:2], shape[:2]):
            if old is not None and new is not None and 2 * new <= old:
                return True
    return False


def _has_weights(layer) -> bool:
    return bool(layer.weights)


def inspectable_layers(model) -> list:
    """The layers whose outputs can be inverted: all but the input layers, in the model's order."""
    import keras

    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def _extended(layers: list, index: int, shapes: list) -> int:
    """The index of the layer whose output stands for layer `index`: the last activation or
    normalisation layer of the same shape that follows it, dropout passed over."""
    identity, elementwise, _ = _layer_types()
    chosen = index
    for j in range(index + 1, len(layers)):
        if shapes[j] != shapes[index]:
            break
        if isinstance(layers[j], identity):
            continue
        if isinstance(layers[j], elementwise):
            chosen = j
            continue
        break
    return chosen


def default_layers(model) -> list[LayerChoice]:
    """The layers `inspect` inverts when none are named (the module docstring states the rule)."""
    import keras

    _, _, normalisation = _layer_types()
    layers = inspectable_layers(model)
    shapes = [_output_shape(layer) for layer in layers]
    chosen: dict[int, str] = {}

    def convolutional(i: int) -> bool:
        return (shapes[i] is not None and len(shapes[i]) == 3 and _has_weights(layers[i])
                and not isinstance(layers[i], normalisation))

    downsampling = [i for i, layer in enumerate(layers) if _downsamples(layer, shapes[i])]
    convolutions = [i for i in range(len(layers)) if convolutional(i)]
    blocks = list(downsampling) if downsampling else list(convolutions)
    if downsampling and convolutions and convolutions[-1] > downsampling[-1]:
        blocks.append(convolutions[-1])  # convolutions after the last downsampling end a block too
    for i in blocks:
        chosen.setdefault(_extended(layers, i, shapes), BLOCK)

    last = len(layers) - 1
    dense = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Dense)]
    # The Dense layer giving the class scores is the last one when nothing after it has weights.
    if dense and not any(_has_weights(layers[j]) for j in range(dense[-1] + 1, len(layers))):
        dense = dense[:-1]
    if dense:
        hidden = _extended(layers, dense[-1], shapes)
        if hidden != last:
            chosen.setdefault(hidden, HIDDEN)
    chosen[last] = LOGITS
    return [LayerChoice(layers[i].name, chosen[i], shapes[i] or ()) for i in sorted(chosen)]


def choose_layers(model, requested: Sequence[str] | None = None, *, where: str = "inspect") -> list[LayerChoice]:
    """The layers to invert: `requested` by name (checked), else the default choice.

    An unknown name is one line listing the valid ones; a model whose layer outputs cannot be
    read (subclassed) is one line saying what to do instead.
    """
    symbolic_model(model, where=where)
    if not requested:
        return default_layers(model)
    layers = {layer.name: layer for layer in inspectable_layers(model)}
    names = list(dict.fromkeys(name.strip() for name in requested if name.strip()))
    unknown = [name for name in names if name not in layers]
    if unknown or not names:
        missing = ", ".join(repr(n) for n in unknown) or "no layer"
        raise InvkerasError(f"--layers: model '{model.name}' has no layer named {missing}; its layers are: "
                            + ", ".join(layers))
    roles = {choice.name: choice.role for choice in default_layers(model)}
    choices = []
    for name in names:
        shape = _output_shape(layers[name])
        if shape is None:
            raise InvkerasError(f"--layers {name}: layer '{name}' of model '{model.name}' has no single output "
                                "(it is shared, or never called); name another layer")
        choices.append(LayerChoice(name, roles.get(name, CHOSEN), shape))
    return choices


def check_classifier(model, *, where: str) -> int:
    """The number of classes; one line when the model's output is not a vector of class scores."""
    symbolic_model(model, where=where)
    outputs = model.outputs
    if len(outputs) != 1:
        raise InvkerasError(f"{where}: model '{model.name}' has {len(outputs)} outputs; inspect needs a classifier "
                            "with one output, a vector of class scores")
    shape = _shape(outputs[0])
    if len(shape) != 1 or shape[0] is None or shape[0] < 2:
        raise InvkerasError(f"{where}: model '{model.name}' is not a classifier: its output has shape "
                            f"{shape}, not a vector of at least 2 class scores")
    return int(shape[0])


def check_images(model, image_shape: Sequence[int], *, where: str, dataset: str) -> None:
    """One line when the dataset's images (H, W, C) do not fit the model's input."""
    symbolic_model(model, where=where)
    if len(model.inputs) != 1:
        raise InvkerasError(f"{where}: model '{model.name}' has {len(model.inputs)} inputs; inspect needs a "
                            "classifier of one image input")
    expected = _shape(model.inputs[0])
    image_shape = tuple(int(d) for d in image_shape)
    fits = len(expected) == len(image_shape) and all(e is None or e == d for e, d in zip(expected, image_shape))
    if not fits:
        shown = tuple("any" if d is None else d for d in expected)
        raise InvkerasError(f"{where}: the images of dataset '{dataset}' have shape {image_shape}, but model "
                            f"'{model.name}' takes images of shape {shown}")
