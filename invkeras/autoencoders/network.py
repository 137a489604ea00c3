"""A convolutional autoencoder: encoder x -> z (a vector), decoder z -> x_hat in pixel units.

The saved model `autoencoder` is x -> encoder -> LatentRegulariser -> decoder, with the two
halves as nested models named "encoder" and "decoder" (`encoder_of`, `decoder_of`), so a
cinn inverter can carry them. The encoder is deterministic: z is the mean; the regulariser
adds Gaussian noise to z during training and a small penalty on |z|^2 (a fixed-variance
VAE's KL term up to constants), so that decoded latents near the data stay on the data
manifold and z keeps a bounded scale.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from invkeras.errors import InvkerasError
from invkeras.inverters.mse.network import PixelRange


def default_latent_dim(image_shape) -> int:
    """64 for grey images (28x28 MNIST), 128 for colour ones (32x32 CIFAR), as in the issue."""
    return 128 if int(image_shape[-1]) == 3 else 64


@keras.saving.register_keras_serializable(package="invkeras")
class LatentRegulariser(keras.layers.Layer):
    """Training only: z + noise * N(0, I), and adds kl_weight * mean(z^2) / 2 to the loss."""

    def __init__(self, noise: float = 0.1, kl_weight: float = 1e-3, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.noise, self.kl_weight, self.seed = float(noise), float(kl_weight), int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def call(self, z, training=False):
        if not training:
            return z
        if self.kl_weight > 0:
            self.add_loss(self.kl_weight * 0.5 * ops.mean(ops.square(z)))
        if self.noise > 0:
            z = z + self.noise * keras.random.normal(ops.shape(z), seed=self.seed_generator)
        return z

    def get_config(self):
        return {**super().get_config(), "noise": self.noise, "kl_weight": self.kl_weight, "seed": self.seed}


@keras.saving.register_keras_serializable(package="invkeras")
class PixelLoss(keras.losses.Loss):
    """L1 or L2 reconstruction error with pixels scaled to [0, 1]."""

    def __init__(self, norm: str = "l1", name="reconstruction", reduction="sum_over_batch_size", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)
        self.norm = norm

    def call(self, y_true, y_pred):
        diff = (ops.cast(y_true, "float32") - y_pred) / 255.0
        error = ops.abs(diff) if self.norm == "l1" else ops.square(diff)
        return ops.mean(ops.reshape(error, (ops.shape(error)[0], -1)), axis=-1)

    def get_config(self):
        return {**super().get_config(), "norm": self.norm}


CLASSIFIER_TERMS = ("logits", "kl")


class ClassifierMatching(keras.layers.Layer):
    """Training only: adds weight * d(c(x_hat), c(x)) for a frozen classifier c, and passes
    x_hat through. `term` picks d:

    - "logits": the mean squared error between the logits;
    - "kl": KL(softmax c(x) || softmax c(x_hat)), the distillation loss of Hinton et al. (2015)
      at temperature 1, averaged over the batch. It asks the reconstruction for the same class
      probabilities, not the same logits: a shift of all logits, which no decision depends on,
      costs nothing, and a confidently kept class costs little.

    A pixel loss spends the latent on what costs the most pixels, such as a photograph's smooth
    background, and may drop the small edges a classifier reads; this perceptual term, with the
    classifier itself as the feature network, makes the reconstruction keep what the classifier
    uses, so a cinn over the latent can show it. The classifier is called in inference mode (no
    dropout) and receives no gradient step: its weights are frozen by the caller. Only the
    training model holds this layer; it is never saved."""

    def __init__(self, classifier, weight: float, term: str = "logits", **kwargs):
        super().__init__(**kwargs)
        if term not in CLASSIFIER_TERMS:
            raise InvkerasError(f"classifier term {term!r}: choose one of {', '.join(CLASSIFIER_TERMS)}")
        self.classifier, self.weight, self.term = classifier, float(weight), term

    def call(self, inputs):
        x, x_hat = inputs
        target = ops.stop_gradient(self.classifier(x, training=False))
        logits = self.classifier(x_hat, training=False)
        if self.term == "logits":
            distance = ops.mean(ops.square(logits - target))
        else:
            log_p, log_q = ops.log_softmax(target, axis=-1), ops.log_softmax(logits, axis=-1)
            distance = ops.mean(ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1))
        self.add_loss(self.weight * distance)
        return x_hat


def build_encoder(image_shape, latent_dim: int, filters: int = 32):
    height, width, channels = (int(d) for d in image_shape)
    x = inputs = keras.Input((height, width, channels), name="x")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(x)
    x = keras.layers.Conv2D(filters, 4, strides=2, padding="same", activation="relu", name="down1")(x)
    x = keras.layers.Conv2D(2 * filters, 4, strides=2, padding="same", activation="relu", name="down2")(x)
    x = keras.layers.Conv2D(2 * filters, 3, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    z = keras.layers.Dense(latent_dim, name="z")(x)
    return keras.Model(inputs, z, name="encoder")


def build_decoder(image_shape, latent_dim: int, filters: int = 32):
    height, width, channels = (int(d) for d in image_shape)
    base_h, base_w = math.ceil(height / 4), math.ceil(width / 4)
    z = keras.Input((latent_dim,), name="z")
    x = keras.layers.Dense(base_h * base_w * 2 * filters, activation="relu", name="project")(z)
    x = keras.layers.Reshape((base_h, base_w, 2 * filters), name="to_map")(x)
    x = keras.layers.Conv2DTranspose(2 * filters, 4, strides=2, padding="same", activation="relu", name="up1")(x)
    x = keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="same", activation="relu", name="up2")(x)
    extra_h, extra_w = 4 * base_h - height, 4 * base_w - width
    if extra_h or extra_w:
        x = keras.layers.Cropping2D(((extra_h // 2, extra_h - extra_h // 2), (extra_w // 2, extra_w - extra_w // 2)),
                                    name="crop")(x)
    x = keras.layers.Conv2D(channels, 3, padding="same", name="pixels")(x)
    x = keras.layers.Rescaling(127.5, offset=127.5, name="to_pixel_units")(x)
    x = PixelRange(name="reconstruction")(x)
    return keras.Model(z, x, name="decoder")


def build_autoencoder(image_shape, latent_dim: int, filters: int = 32, *, noise: float = 0.1, kl_weight: float = 1e-3,
                      seed: int = 0):
    """x (pixel units) -> encoder -> regulariser -> decoder -> x_hat (pixel units, [0, 255])."""
    if len(image_shape) != 3:
        raise InvkerasError(f"autoencoder: images of shape {tuple(image_shape)} are not [H, W, C]")
    encoder = build_encoder(image_shape, latent_dim, filters)
    decoder = build_decoder(image_shape, latent_dim, filters)
    x = keras.Input(tuple(int(d) for d in image_shape), name="x")
    z = LatentRegulariser(noise, kl_weight, seed, name="regulariser")(encoder(x))
    return keras.Model(x, decoder(z), name="autoencoder")


def with_classifier_term(autoencoder, classifier, weight: float, term: str = "logits"):
    """The model to train when the loss has a classifier term: x -> autoencoder -> x_hat, plus
    `ClassifierMatching`. It shares the autoencoder's layers, so training it trains the
    autoencoder, which is what is saved; the classifier is frozen here."""
    classifier.trainable = False
    x = keras.Input(autoencoder.input_shape[1:], name="x")
    x_hat = ClassifierMatching(classifier, weight, term, name="classifier_term")([x, autoencoder(x)])
    return keras.Model(x, x_hat, name="autoencoder_with_classifier_term")


def encoder_of(autoencoder):
    return autoencoder.get_layer("encoder")


def decoder_of(autoencoder):
    return autoencoder.get_layer("decoder")
