"""The MSE decoder network: x_hat = f(h), an up-sampling convolutional decoder.

Why it exists: Nash et al. (2019, Figs. 1 and 4) set their inversion-model samples beside
the reconstruction of a network trained to minimise mean squared error, in the style of
Dosovitskiy & Brox (2016). Where a layer has thrown information away, p(x|h) has several
modes; an MSE decoder must predict their *average*, so it draws a blur exactly where the
samples disagree.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from invkeras.errors import InvkerasError

DEFAULT_FILTERS = 32


# --- the network --------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="invkeras")
class PixelRange(keras.layers.Layer):
    """Clip to [0, 255] on the way forward; pass gradients straight through on the way back.

    A sigmoid output does not work here: most pixels of sparse images (the procedural
    shapes, MNIST digits) are exactly 0, so the first steps drive every logit deep into the
    sigmoid's flat tail, its gradient vanishes and the decoder is stuck at a black image.
    A plain clip would stall the same way on pixels predicted outside the range. With the
    straight-through clip, the loss sees valid pixel values, and a pixel that is predicted
    below 0 but should be bright still gets the full gradient.
    """

    def call(self, x):
        return x + keras.ops.stop_gradient(keras.ops.clip(x, 0.0, 255.0) - x)


def _upsampling_stage(x, filters: int, name: str):
    """Double the resolution with a learned transposed conv, then refine with a 3x3 conv."""
    x = keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="same", activation="relu", name=f"{name}_up")(x)
    return keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_conv")(x)


def build_mse_decoder(
    image_shape,
    h_shape,
    filters: int = DEFAULT_FILTERS,
    *,
    h_mean: np.ndarray | None = None,
    h_variance: np.ndarray | None = None,
):
    """An up-sampling conv decoder h -> x_hat with x_hat in [0, 255], shaped exactly `image_shape`.

    * vector h [D]: Dense to a map of ceil(H/4) x ceil(W/4), two x2 up-sampling stages, then
      crop to H x W (exact for 20, 28, 32 and 40 px images, cropped otherwise);
    * spatial h [s, s, c]: two 3x3 convs at h's resolution, round(log2(H/s)) x2 stages,
      then a bilinear resize to H x W when the doublings do not land on it exactly.

    `h_mean`/`h_variance` (per feature, or per channel for spatial h) standardise h inside
    the model, so the saved decoder takes raw features as the classifier emits them.
    Output: a 3x3 conv to C channels, x255, clipped to [0, 255] with straight-through
    gradients (`PixelRange`), so the squared error is in pixel units.
    """
    height, width, channels = (int(d) for d in image_shape)
    h_shape = tuple(int(d) for d in h_shape)
    if len(h_shape) not in (1, 3):
        raise InvkerasError(f"MSE decoder: features of shape {h_shape} are neither a vector nor a [H, W, C] map")
    h = keras.Input(h_shape, name="h")
    x = h
    if h_mean is not None and h_variance is not None:
        x = keras.layers.Normalization(axis=-1, mean=np.asarray(h_mean), variance=np.asarray(h_variance),
                                       name="standardise_h")(x)

    if len(h_shape) == 1:
        base_h, base_w = math.ceil(height / 4), math.ceil(width / 4)
        x = keras.layers.Dense(base_h * base_w * 4 * filters, activation="relu", name="project")(x)
        x = keras.layers.Reshape((base_h, base_w, 4 * filters), name="to_map")(x)
        x = _upsampling_stage(x, 2 * filters, "stage1")
        x = _upsampling_stage(x, filters, "stage2")
        extra_h, extra_w = 4 * base_h - height, 4 * base_w - width
        if extra_h or extra_w:
            x = keras.layers.Cropping2D(((extra_h // 2, extra_h - extra_h // 2), (extra_w // 2, extra_w - extra_w // 2)),
                                        name="crop")(x)
    else:
        x = keras.layers.Conv2D(2 * filters, 3, padding="same", activation="relu", name="h_conv1")(x)
        x = keras.layers.Conv2D(2 * filters, 3, padding="same", activation="relu", name="h_conv2")(x)
        doublings = max(0, int(round(math.log2(height / h_shape[0]))))
        for stage in range(doublings):
            x = _upsampling_stage(x, filters if stage == doublings - 1 else 2 * filters, f"stage{stage + 1}")
        size = (h_shape[0] * 2**doublings, h_shape[1] * 2**doublings)
        if size != (height, width):
            x = keras.layers.Resizing(height, width, interpolation="bilinear", name="resize")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="refine")(x)

    x = keras.layers.Conv2D(channels, 3, padding="same", name="pixels")(x)  # predicts x / 255
    x = keras.layers.Rescaling(255.0, name="to_pixel_units")(x)
    x = PixelRange(name="reconstruction")(x)
    return keras.Model(h, x, name="mse_decoder")


def h_statistics(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (or per-channel) mean and variance for standardising h.

    The variance is floored at 1% of the average variance: a unit that is almost constant
    on the training set (a nearly dead ReLU) must not turn a small test-time change into a
    huge standardised input.
    """
    flat = h.reshape(-1, h.shape[-1]).astype(np.float64)
    mean, variance = flat.mean(0), flat.var(0)
    floor = max(1e-2 * float(variance.mean()), 1e-8)
    return mean.astype(np.float32), np.maximum(variance, floor).astype(np.float32)
