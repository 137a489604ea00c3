"""Layer choice: the default rule on functional, Sequential and subclassed models; --layers; refusals."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from invkeras.errors import InvkerasError
from invkeras.inspection.layers import BLOCK, HIDDEN, LOGITS, check_classifier, check_images, choose_layers

L = keras.layers


def _names(choices):
    return [(c.name, c.role) for c in choices]


def test_the_papers_conv_classifier_gets_both_blocks_the_hidden_layer_and_the_logits():
    from invkeras.classifiers.architectures import build_classifier

    model = build_classifier("conv", (20, 20, 1), 5)
    choices = choose_layers(model)
    assert _names(choices) == [("conv1", BLOCK), ("conv2", BLOCK), ("fc3", HIDDEN), ("logits", LOGITS)]
    assert choices[0].shape == (8, 8, 32) and choices[0].spatial and not choices[2].spatial


def test_a_sequential_model_has_its_blocks_end_at_pooling_and_after_their_activation():
    model = keras.Sequential([
        keras.Input((28, 28, 1)), L.Conv2D(8, 3, name="c1"), L.BatchNormalization(name="bn1"), L.ReLU(name="relu1"),
        L.MaxPooling2D(name="pool1"), L.Dropout(0.2, name="drop1"), L.Conv2D(16, 3, activation="relu", name="c2"),
        L.Flatten(name="flat"), L.Dense(32, activation="relu", name="hidden"), L.Dropout(0.3, name="drop2"),
        L.Dense(10, name="scores"), L.Softmax(name="probabilities")])
    # pool1 ends the first block (the dropout after it is passed over); c2 follows the last pooling
    # and goes straight to the dense part, so it ends the second; the softmax is the last layer.
    assert _names(choose_layers(model)) == [("pool1", BLOCK), ("c2", BLOCK), ("hidden", HIDDEN),
                                            ("probabilities", LOGITS)]


def test_a_network_that_never_pools_gets_one_block_per_convolution_with_its_activation():
    model = keras.Sequential([keras.Input((12, 12, 1)), L.Conv2D(4, 3, name="c1"), L.Activation("relu", name="a1"),
                              L.Conv2D(4, 3, activation="relu", name="c2"), L.Flatten(), L.Dense(3, name="out")])
    assert _names(choose_layers(model)) == [("a1", BLOCK), ("c2", BLOCK), ("out", LOGITS)]


def test_a_strided_convolution_downsamples_like_pooling():
    inputs = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, padding="same", name="same")(inputs)
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="strided")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, L.Dense(4, name="logits")(x))
    assert _names(choose_layers(model)) == [("strided", BLOCK), ("logits", LOGITS)]


class FunctionalSubclass(keras.Model):
    """A subclass that builds its graph functionally: Keras can read its layer outputs."""

    def __init__(self):
        inputs = keras.Input((12, 12, 1))
        x = L.MaxPooling2D(name="pool")(L.Conv2D(4, 3, activation="relu", name="conv")(inputs))
        x = L.Dense(8, activation="relu", name="fc")(L.Flatten()(x))
        super().__init__(inputs, L.Dense(3, name="logits")(x))


class PythonSubclass(keras.Model):
    """A subclass whose call() is Python code: its layers have no symbolic outputs."""

    def __init__(self):
        super().__init__()
        self.conv, self.flat, self.out = L.Conv2D(4, 3, name="conv"), L.Flatten(), L.Dense(3, name="logits")

    def call(self, x):
        return self.out(self.flat(self.conv(x)))


def test_a_subclass_built_functionally_is_inspected_like_a_functional_model():
    assert _names(choose_layers(FunctionalSubclass())) == [("pool", BLOCK), ("fc", HIDDEN), ("logits", LOGITS)]
    assert _names(choose_layers(FunctionalSubclass(), ["conv"]))[0][0] == "conv"


def test_a_subclassed_model_with_python_call_is_refused_with_what_to_do_instead():
    model = PythonSubclass()
    model(np.zeros((1, 12, 12, 1), "float32"))
    for attempt in (lambda: choose_layers(model), lambda: check_classifier(model, where="--model m.keras")):
        with pytest.raises(InvkerasError) as info:
            attempt()
        message = str(info.value)
        assert "\n" not in message and "subclassed" in message
        assert "functionally" in message and "--features" in message


def test_named_layers_replace_the_default_and_an_unknown_one_lists_the_valid_names():
    model = FunctionalSubclass()
    assert [c.name for c in choose_layers(model, ["fc", "conv", "fc"])] == ["fc", "conv"]
    with pytest.raises(InvkerasError) as info:
        choose_layers(model, ["conv", "fc9"])
    message = str(info.value)
    assert "\n" not in message and "'fc9'" in message and "conv, pool, flatten" in message and "logits" in message


def test_a_model_whose_output_is_not_a_vector_of_class_scores_is_not_a_classifier():
    assert check_classifier(FunctionalSubclass(), where="--model m.keras") == 3
    inputs = keras.Input((12, 12, 1))
    autoencoder = keras.Model(inputs, L.Conv2D(1, 3, padding="same")(inputs))
    with pytest.raises(InvkerasError, match=r"^--model m\.keras: .* is not a classifier: its output has shape "
                                            r"\(12, 12, 1\)"):
        check_classifier(autoencoder, where="--model m.keras")


def test_images_of_another_shape_than_the_models_input_are_refused_in_one_line():
    model = FunctionalSubclass()
    check_images(model, (12, 12, 1), where="inspect", dataset="npz:ok.npz")
    with pytest.raises(InvkerasError) as info:
        check_images(model, (28, 28, 1), where="inspect", dataset="npz:mine.npz")
    assert str(info.value) == ("inspect: the images of dataset 'npz:mine.npz' have shape (28, 28, 1), but model "
                               f"'{model.name}' takes images of shape (12, 12, 1)")
    inputs = keras.Input((None, None, 1))
    any_size = keras.Model(inputs, L.Dense(2)(L.GlobalMaxPooling2D()(inputs)))
    check_images(any_size, (28, 28, 1), where="inspect", dataset="npz:mine.npz")
    with pytest.raises(InvkerasError, match=r"takes images of shape \('any', 'any', 1\)"):
        check_images(any_size, (28, 28, 3), where="inspect", dataset="npz:colour.npz")
