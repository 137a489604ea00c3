"""Conditional PixelCNN++ p(x | h) (Salimans et al., 2017), as used by Nash et al. (2019).

Causality comes from shifted convolutions, not masked kernels. Two streams run side by side:

* u ("down-shifted"): the feature at (i, j) sees only rows strictly above i.
* ul ("down-right-shifted"): sees rows above i, and pixels left of j on row i.

The ul stream reads u as an auxiliary input, and the output is read from ul, so the
parameters at pixel (i, j) depend only on pixels before it in raster order (all channels of
pixel (i, j) excluded; the mixture likelihood couples channels inside the pixel itself).

The network is a U-Net over three resolutions: three blocks of `nr_resnet` gated resnet
layers going down (stride-2 shifted convolutions between them) and three coming back up
(stride-2 shifted transposed convolutions), the up blocks consuming every activation saved
on the way down. Odd sizes work: a stride-2 step maps n to ceil(n / 2) and the transposed
convolutions are cropped back to the saved size (20 -> 10 -> 5, 7 -> 4 -> 2).

Conditioning on h enters every gated resnet layer as a bias on the gate's pre-activation:
a linear projection for a vector h, and for a spatial h (a conv feature map) the map resized
to the layer's resolution followed by a 1x1 convolution. h is a function of the whole image
by design (we model p(x | h)); it never carries x through the network's causal paths.

Every operation is causal in rows, and the only ops mixing rows are height-2 kernels and
stride-2 (transposed) convolutions. So row r of every feature map can be computed from row r
of its inputs plus a few cached rows above. The architecture is written once (`_u_stream`,
`_ul_stream`) against a small "how to apply a layer" interface, with three implementations:
whole feature maps (`_FullPass`), one row per resolution with cached rows (`_RowPass`), and,
for the ul stream, one position per resolution with cached neighbours (`_PixelPass`), which
is what makes sampling fast (see `invkeras.inverters.pixelcnn.sampling`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import keras
import numpy as np
from keras import ops
from pydantic import BaseModel, ConfigDict, model_validator

from invkeras.inverters.pixelcnn import likelihoods
from invkeras.errors import InvkerasError
from invkeras.inverters.pixelcnn.weight_norm import WNConv2D, WNConv2DTranspose, WNDense

CONDITIONINGS = ("none", "vector", "spatial")
VECTOR_CONDITIONINGS = ("global", "deconv")
SCALES = ("tiny", "small", "paper")
NUM_RESOLUTIONS = 3  # full, 1/2 and 1/4 resolution, as in PixelCNN++


# --- configuration ----------------------------------------------------------------------


class PixelCNNConfig(BaseModel):
    """Everything needed to rebuild the network; stored in the model's Keras config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_shape: tuple[int, int, int]
    filters: int = 64
    nr_resnet: int = 3
    dropout_rate: float = 0.5
    likelihood: Literal["categorical", "logistic_mixture"] = "categorical"
    num_mixtures: int = 10
    conditioning: Literal["none", "vector", "spatial"] = "none"
    h_shape: tuple[int, ...] | None = None
    h_dropout: float = 0.0
    h_resize: Literal["nearest", "bilinear"] = "bilinear"
    # How a vector h reaches the gated resnets. "global": one bias per channel, the same at
    # every position (the class conditioning of conditional PixelCNN; the paper-scale
    # default). "deconv": a learned deconvolutional network turns h into a feature map per
    # resolution first (van den Oord et al. 2016's location-dependent conditioning), so h can
    # say *where* ink goes instead of the network inferring position from its own context.
    vector_conditioning: Literal["global", "deconv"] = "global"
    # Standardise h per feature (per channel for a spatial h) with training-set statistics
    # stored in the model, so the zero-initialised projections see unit-scale inputs.
    standardise_h: bool = False

    @model_validator(mode="before")
    @classmethod
    def _check_names(cls, data: Any) -> Any:
        # Raised before pydantic's own checks so a typo gives one clear InvkerasError line.
        if isinstance(data, dict):
            if data.get("likelihood", "categorical") not in likelihoods.LIKELIHOODS:
                likelihoods.check_likelihood(data["likelihood"])
            if data.get("conditioning", "none") not in CONDITIONINGS:
                raise InvkerasError(
                    f"unknown conditioning '{data['conditioning']}'; choose one of {', '.join(CONDITIONINGS)}"
                )
        return data

    @model_validator(mode="after")
    def _check_consistency(self) -> "PixelCNNConfig":
        if min(self.image_shape) < 1:
            raise InvkerasError(f"image_shape must be positive (H, W, C), got {self.image_shape}")
        if self.filters < 1 or self.nr_resnet < 0 or self.num_mixtures < 1:
            raise InvkerasError("filters and num_mixtures must be >= 1 and nr_resnet >= 0")
        for name in ("dropout_rate", "h_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise InvkerasError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        rank = {"none": None, "vector": 1, "spatial": 3}[self.conditioning]
        if rank is None and self.h_shape is not None:
            raise InvkerasError(f"conditioning 'none' takes no h, but h_shape={self.h_shape}")
        if rank is not None and (self.h_shape is None or len(self.h_shape) != rank or min(self.h_shape) < 1):
            what = "(D,)" if rank == 1 else "(H, W, C)"
            raise InvkerasError(f"conditioning '{self.conditioning}' needs h_shape {what}, got {self.h_shape}")
        if self.vector_conditioning not in VECTOR_CONDITIONINGS:
            raise InvkerasError(f"unknown vector_conditioning '{self.vector_conditioning}'")
        return self

    @property
    def spatial_h_maps(self) -> bool:
        """Whether the gated resnets see h as a map (sliced row by row when sampling)."""
        return self.conditioning == "spatial" or (self.conditioning == "vector" and self.vector_conditioning == "deconv")

    @property
    def num_channels(self) -> int:
        return self.image_shape[2]

    @property
    def params_shape(self) -> tuple[int, ...]:
        """Per-image shape of the network output."""
        return likelihoods.params_shape(self.likelihood, self.image_shape, self.num_mixtures)

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        """(H, W) at each resolution; a stride-2 shifted conv maps n to ceil(n / 2)."""
        sizes = [tuple(self.image_shape[:2])]
        for _ in range(NUM_RESOLUTIONS - 1):
            sizes.append(tuple(math.ceil(n / 2) for n in sizes[-1]))
        return sizes

    @classmethod
    def from_scale(
        cls,
        scale: str,
        image_shape,
        likelihood: str | None = None,
        conditioning: str = "none",
        h_shape=None,
        **overrides,
    ) -> "PixelCNNConfig":
        """Presets. tiny: tests; small: CPU experiments; paper: Nash et al. / PixelCNN++ sizes.

        The likelihood defaults to categorical for grey images and the logistic mixture for
        colour, as in the paper.
        """
        if scale not in SCALES:
            raise InvkerasError(f"unknown scale '{scale}'; choose one of {', '.join(SCALES)}")
        image_shape = tuple(int(n) for n in image_shape)
        if len(image_shape) != 3:
            raise InvkerasError(f"image_shape must be (H, W, C), got {image_shape}")
        colour = image_shape[2] > 1
        # tiny and small depart from the paper in how h enters (see `vector_conditioning`
        # and `standardise_h`); paper keeps Nash et al.'s PixelCNN++ as published.
        departures = dict(vector_conditioning="deconv", standardise_h=True)
        preset = {
            "tiny": dict(filters=8, nr_resnet=1, dropout_rate=0.0, **departures),
            "small": dict(filters=32, nr_resnet=2, dropout_rate=0.5, **departures),
            "paper": dict(filters=196 if colour else 64, nr_resnet=3, dropout_rate=0.5),
        }[scale]
        if likelihood is None:
            likelihood = "logistic_mixture" if colour else "categorical"
        return cls(
            image_shape=image_shape,
            likelihood=likelihood,
            conditioning=conditioning,
            h_shape=None if h_shape is None else tuple(int(n) for n in h_shape),
            **{**preset, **overrides},
        )


# --- small causal building blocks ---------------------------------------------------------


def down_shifted_conv(filters: int, kernel=(2, 3), strides=1, name=None, **kwargs) -> WNConv2D:
    """Output (i, j) sees rows i-kh+1..i, centred horizontally: pad top and both sides."""
    kh, kw = kernel
    return WNConv2D(filters, kernel, strides, padding=((kh - 1, 0), ((kw - 1) // 2, (kw - 1) // 2)), name=name, **kwargs)


def down_right_shifted_conv(filters: int, kernel=(2, 2), strides=1, name=None, **kwargs) -> WNConv2D:
    """Output (i, j) sees rows i-kh+1..i and columns j-kw+1..j: pad top and left."""
    kh, kw = kernel
    return WNConv2D(filters, kernel, strides, padding=((kh - 1, 0), (kw - 1, 0)), name=name, **kwargs)


@keras.saving.register_keras_serializable(package="invkeras")
class Shift(keras.layers.Layer):
    """Shift a feature map one step down (or right), filling with zeros: makes 'at or above'
    into 'strictly above' (or 'at or left' into 'strictly left')."""

    def __init__(self, direction: Literal["down", "right"], **kwargs):
        super().__init__(**kwargs)
        if direction not in ("down", "right"):
            raise InvkerasError(f"Shift: direction must be 'down' or 'right', got {direction!r}")
        self.direction = direction

    def call(self, x):
        if self.direction == "down":
            return ops.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]
        return ops.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]

    def get_config(self):
        return {**super().get_config(), "direction": self.direction}


def concat_elu(x):
    """ELU of [x, -x]: keeps both signs' information (PixelCNN++)."""
    return ops.elu(ops.concatenate([x, -x], axis=-1))


def crop_to(x, height, width, left: int = 0):
    """Keep rows [0, height) and columns [left, left + width): drops only bottom/right
    extras (and `left` columns), which never breaks causality."""
    return x[:, :height, left : left + width]


def write_row_and_read(state: dict, key: str, row, index, start, size: int = 2):
    """Row-by-row evaluation's cache: store `row` ([B, 1, W, C]) as row `index` of the
    feature map `state[key]`, then return its rows start..start+size-1. Buffers keep one
    zero row on top (row i lives at i + 1), which stands in for the convolution's padding."""
    buffer = ops.slice_update(state[key], (0, index + 1, 0, 0), row)
    state[key] = buffer
    batch, _, width, channels = buffer.shape
    return ops.slice(buffer, (0, start + 1, 0, 0), (batch, size, width, channels))


def write_cell_and_read(state: dict, key: str, cell, row, col):
    """Per-pixel evaluation's cache: store `cell` ([B, 1, 1, C]) at (`row`, `col`) of the
    feature map whose last two rows `state[key]` keeps ([B, 2, W + 1, C]: row i in slot
    i % 2, column j at j + 1 after one zero column for the left padding; the slot of row -1
    starts at zero for the top padding). Returns rows row-1..row, columns col-1..col
    ([B, 2, 2, C]): what a down-right-shifted 2x2 kernel reads at (row, col)."""
    buffer = ops.slice_update(state[key], (0, row % 2, col + 1, 0), cell)
    state[key] = buffer
    return read_cells(buffer, row, col)


def read_cells(buffer, row, col):
    """Rows row-1..row and columns col-1..col of a two-row buffer (see `write_cell_and_read`)."""
    batch, _, _, channels = buffer.shape
    above = ops.slice(buffer, (0, (row + 1) % 2, col, 0), (batch, 1, 2, channels))
    here = ops.slice(buffer, (0, row % 2, col, 0), (batch, 1, 2, channels))
    return ops.concatenate([above, here], axis=1)


@keras.saving.register_keras_serializable(package="invkeras")
class ShiftedUpsample(keras.layers.Layer):
    """Stride-2 transposed convolution for one stream, cropped to the skip connection's size.

    "down": 2x3 kernel, drop the first column so it stays centred (PixelCNN++'s
    down_shifted_deconv2d). "down_right": 2x2 kernel, keep the top-left corner.
    """

    def __init__(self, filters: int, stream: Literal["down", "down_right"], **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.stream = stream
        kernel = (2, 3) if stream == "down" else (2, 2)
        self.deconv = WNConv2DTranspose(self.filters, kernel, strides=2, name="deconv")

    def build(self, *input_shapes, **named_shapes):
        # The sublayer builds itself on first call; skip Keras' symbolic dry run of `call`.
        self.built = True

    @property
    def _left_crop(self) -> int:
        return 1 if self.stream == "down" else 0

    def call(self, x, target_height: int, target_width: int):
        return crop_to(self.deconv(x), target_height, target_width, self._left_crop)

    def row_step(self, row, out_index, target_width: int):
        """Output row `out_index` from input row out_index // 2: with a height-2 kernel and
        stride 2 each output row comes from exactly one input row and one kernel row."""
        both = self.deconv(row)  # [B, 2, width', F]
        return ops.slice(both, (0, out_index % 2, self._left_crop, 0), (both.shape[0], 1, target_width, self.filters))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "stream": self.stream}


@keras.saving.register_keras_serializable(package="invkeras")
class GatedResnet(keras.layers.Layer):
    """PixelCNN++ gated residual layer:

        c1 = conv(concat_elu(x)) [+ nin(concat_elu(aux))]
        c2 = conv(dropout(concat_elu(c1))) [+ conditioning bias]   (2F channels)
        out = x + a * sigmoid(b),  (a, b) = split(c2)

    `stream` picks the causal convolution ("down" or "down_right"). The conditioning bias is
    a projection of h: [B, 1, 1, D] for a vector, [B, h, w, D] (already resized) for a map.
    """

    def __init__(self, filters: int, stream: Literal["down", "down_right"], has_aux: bool = False,
                 conditioned: bool = False, dropout_rate: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.stream = stream
        self.has_aux = bool(has_aux)
        self.conditioned = bool(conditioned)
        self.dropout_rate = float(dropout_rate)
        conv = down_shifted_conv if stream == "down" else down_right_shifted_conv
        self.conv_in = conv(self.filters, name="conv_in")
        self.aux_nin = WNDense(self.filters, name="aux_nin") if self.has_aux else None
        self.dropout = keras.layers.Dropout(self.dropout_rate, name="dropout")
        # Small init scale keeps each residual branch near zero at the start (PixelCNN++).
        self.conv_out = conv(2 * self.filters, init_scale=0.1, name="conv_out")
        # Zero init: the conditional model starts identical to the unconditional one (and
        # draws no random numbers, so every other layer gets the same initial weights), so
        # any likelihood gain over it comes from h. Gradients still flow: dL/dW = h * dL/dc2.
        self.h_projection = (
            keras.layers.Dense(2 * self.filters, use_bias=False, name="h_projection", kernel_initializer="zeros")
            if self.conditioned else None
        )

    def build(self, *input_shapes, **named_shapes):
        # Sublayers build themselves on first call; skip Keras' symbolic dry run of `call`.
        self.built = True

    def call(self, x, aux=None, h=None, training=None):
        c1 = self.conv_in(concat_elu(x))
        if self.has_aux:
            c1 = c1 + self.aux_nin(concat_elu(aux))
        c2 = self.conv_out(self.dropout(concat_elu(c1), training=training))
        return self._gate(x, c2, h)

    def _gate(self, x, c2, h):
        if self.conditioned:
            c2 = c2 + self.h_projection(h)
        a, b = c2[..., : self.filters], c2[..., self.filters :]
        return x + a * ops.sigmoid(b)

    def row_step(self, state: dict, index, x_row, aux_row=None, h_row=None):
        """Row `index` of `call(...)` (inference: no dropout) from row `index` of the inputs;
        the row above of each convolution's input comes from `state`."""
        horizontal = ((0, 0), self.conv_in.padding[1])
        x_rows = write_row_and_read(state, f"{self.name}/x", x_row, index, index - 1)
        c1 = self.conv_in.convolve(concat_elu(x_rows), horizontal)
        if self.has_aux:
            c1 = c1 + self.aux_nin(concat_elu(aux_row))
        c1_rows = write_row_and_read(state, f"{self.name}/c1", c1, index, index - 1)
        return self._gate(x_row, self.conv_out.convolve(concat_elu(c1_rows), horizontal), h_row)

    def column_step(self, state: dict, row, col, x_cell, aux_cell=None, h_cell=None):
        """Position (`row`, `col`) of `call(...)` (inference) for the down-right stream, from
        that position's inputs; the three positions above and to the left that its 2x2
        kernels read come from the two-row buffers in `state` (`write_cell_and_read`)."""
        if self.stream != "down_right":
            raise InvkerasError("column_step is for the down-right (ul) stream only")
        x_cells = write_cell_and_read(state, f"{self.name}/x", x_cell, row, col)
        c1 = self.conv_in.convolve_window(concat_elu(x_cells))
        if self.has_aux:
            c1 = c1 + self.aux_nin(concat_elu(aux_cell))
        c1_cells = write_cell_and_read(state, f"{self.name}/c1", c1, row, col)
        return self._gate(x_cell, self.conv_out.convolve_window(concat_elu(c1_cells)), h_cell)

    def row_buffer_keys(self) -> list[str]:
        return [f"{self.name}/x", f"{self.name}/c1"]

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "stream": self.stream,
            "has_aux": self.has_aux,
            "conditioned": self.conditioned,
            "dropout_rate": self.dropout_rate,
        }


# --- the model ------------------------------------------------------------------------------


def check_inputs(config: PixelCNNConfig, inputs) -> None:
    """Raise InvkerasError when `inputs` does not fit `config` (static shapes only)."""
    if not isinstance(inputs, dict) or "x" not in inputs:
        raise InvkerasError("PixelCNN inputs must be a dict {'x': images} plus 'h' when conditioned")
    x_shape = tuple(inputs["x"].shape)
    expected = tuple(config.image_shape)
    ok = len(x_shape) == 4 and all(got is None or got == want for got, want in zip(x_shape[1:], expected))
    if not ok:
        raise InvkerasError(f"PixelCNN input 'x' has shape {x_shape}; expected (batch, {', '.join(map(str, expected))})")
    has_h = inputs.get("h") is not None
    if config.conditioning == "none":
        if has_h:
            raise InvkerasError("this PixelCNN is unconditional (conditioning 'none') but was given h")
        return
    if not has_h:
        raise InvkerasError(f"this PixelCNN is conditioned ('{config.conditioning}') and needs inputs['h']")
    h_shape = tuple(inputs["h"].shape)
    if len(h_shape) != 1 + len(config.h_shape) or any(
        got is not None and got != want for got, want in zip(h_shape[1:], config.h_shape)
    ):
        raise InvkerasError(f"PixelCNN input 'h' has shape {h_shape}; expected (batch, {', '.join(map(str, config.h_shape))})")


@keras.saving.register_keras_serializable(package="invkeras")
class Standardise(keras.layers.Layer):
    """(h - mean) / sqrt(variance + eps) per last-axis feature, with the statistics stored as
    non-trainable weights: set once from the training features (`set_statistics`), saved
    with the model, so the saved inverter takes raw features as the classifier emits them."""

    def __init__(self, num_features: int, **kwargs):
        super().__init__(**kwargs)
        self.num_features = int(num_features)
        self.mean = self.add_weight(shape=(self.num_features,), initializer="zeros", trainable=False, name="mean")
        self.variance = self.add_weight(shape=(self.num_features,), initializer="ones", trainable=False,
                                        name="variance")

    def set_statistics(self, h: np.ndarray) -> None:
        flat = np.asarray(h, np.float64).reshape(-1, self.num_features)
        mean, variance = flat.mean(axis=0), flat.var(axis=0)
        if not (np.all(np.isfinite(mean)) and np.all(variance < np.finfo(np.float32).max)):
            largest = float(np.max(np.abs(flat))) if flat.size else float("nan")
            raise InvkerasError(f"cannot standardise h: the features reach |h| = {largest:.3g}, beyond float32; "
                                "rescale them")
        self.mean.assign(mean.astype("float32"))
        self.variance.assign(variance.astype("float32"))

    def call(self, h):
        return (h - self.mean) * ops.rsqrt(self.variance + 1e-6)

    def get_config(self):
        return {**super().get_config(), "num_features": self.num_features}


@keras.saving.register_keras_serializable(package="invkeras")
class VectorToMaps(keras.layers.Layer):
    """h [B, D] -> one feature map per resolution, coarsest first built by a dense layer,
    each finer one by a stride-2 transposed convolution of the one below, cropped to size.

    Not causal in x and need not be: it sees only h, which the model conditions on whole."""

    def __init__(self, filters: int, resolutions, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.resolutions = [tuple(int(n) for n in r) for r in resolutions]

    def build(self, input_shape):
        # Sublayers are made here, not in __init__: their initialisers take seeds from the
        # global RNG when created, and the model builds this layer after its streams.
        coarse_h, coarse_w = self.resolutions[-1]
        self.project = keras.layers.Dense(coarse_h * coarse_w * self.filters, activation="elu", name="project")
        self.refine = [keras.layers.Conv2DTranspose(self.filters, 4, strides=2, padding="same", activation="elu",
                                                    name=f"up{level}")
                       for level in range(len(self.resolutions) - 1)]
        self.project.build(input_shape)
        coarse_h, coarse_w = self.resolutions[-1]
        for layer, (height, width) in zip(self.refine, reversed(self.resolutions[1:])):
            layer.build((None, height, width, self.filters))
        self.built = True

    def call(self, h):
        coarse_h, coarse_w = self.resolutions[-1]
        maps = [ops.reshape(self.project(h), (-1, coarse_h, coarse_w, self.filters))]
        for layer, (height, width) in zip(self.refine, reversed(self.resolutions[:-1])):
            maps.append(layer(maps[-1])[:, :height, :width, :])
        return maps[::-1]  # finest first, like `resolutions`

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "resolutions": self.resolutions}


@keras.saving.register_keras_serializable(package="invkeras")
class PixelCNNPlusPlus(keras.Model):
    """Conditional PixelCNN++: inputs {"x": [B, H, W, C] floats in 0..255, "h": h} -> params.

    Params are logits [B, H, W, C, 256] (categorical) or [B, H, W, P] (logistic mixture);
    see `invkeras.inverters.pixelcnn.likelihoods` for their meaning.
    """

    def __init__(self, config: PixelCNNConfig | dict, **kwargs):
        super().__init__(**kwargs)
        self.pixelcnn_config = config if isinstance(config, PixelCNNConfig) else PixelCNNConfig(**config)
        cfg = self.pixelcnn_config
        filters, nr_resnet = cfg.filters, cfg.nr_resnet
        conditioned = cfg.conditioning != "none"

        def resnet(stream, has_aux, name):
            return GatedResnet(filters, stream, has_aux=has_aux, conditioned=conditioned,
                               dropout_rate=cfg.dropout_rate, name=name)

        # Initial layers: u sees rows above; ul sees rows above and the pixel to the left.
        self.u_init = down_shifted_conv(filters, (2, 3), name="u_init")
        self.ul_init_above = down_shifted_conv(filters, (1, 3), name="ul_init_above")
        self.ul_init_left = down_right_shifted_conv(filters, (2, 1), name="ul_init_left")
        self.shift_down = Shift("down", name="shift_down")
        self.shift_right = Shift("right", name="shift_right")

        # Down path: NUM_RESOLUTIONS blocks of nr_resnet layers, stride-2 convs between them.
        self.down_u, self.down_ul, self.downsample_u, self.downsample_ul = [], [], [], []
        for level in range(NUM_RESOLUTIONS):
            self.down_u.append([resnet("down", False, f"down{level}_u{i}") for i in range(nr_resnet)])
            self.down_ul.append([resnet("down_right", True, f"down{level}_ul{i}") for i in range(nr_resnet)])
            if level < NUM_RESOLUTIONS - 1:
                self.downsample_u.append(down_shifted_conv(filters, (2, 3), strides=2, name=f"downsample{level}_u"))
                self.downsample_ul.append(down_right_shifted_conv(filters, (2, 2), strides=2, name=f"downsample{level}_ul"))

        # Up path: the first block has nr_resnet layers, later ones nr_resnet + 1 so that every
        # saved activation of the down path (including the downsampling outputs) is consumed.
        self.up_u, self.up_ul, self.upsample_u, self.upsample_ul = [], [], [], []
        for level in range(NUM_RESOLUTIONS):
            depth = nr_resnet if level == 0 else nr_resnet + 1
            self.up_u.append([resnet("down", True, f"up{level}_u{i}") for i in range(depth)])
            self.up_ul.append([resnet("down_right", True, f"up{level}_ul{i}") for i in range(depth)])
            if level < NUM_RESOLUTIONS - 1:
                self.upsample_u.append(ShiftedUpsample(filters, "down", name=f"upsample{level}_u"))
                self.upsample_ul.append(ShiftedUpsample(filters, "down_right", name=f"upsample{level}_ul"))

        self.output_nin = WNDense(likelihoods.num_params(cfg.likelihood, cfg.num_channels, cfg.num_mixtures),
                                  name="output_nin")
        self.h_dropout = keras.layers.Dropout(cfg.h_dropout, name="h_dropout") if conditioned else None
        self.h_standardise = (Standardise(cfg.h_shape[-1], name="h_standardise")
                              if conditioned and cfg.standardise_h else None)
        self.h_maps = (VectorToMaps(filters, cfg.resolutions, name="h_maps")
                       if cfg.conditioning == "vector" and cfg.vector_conditioning == "deconv" else None)

    # Weights are created by one dummy forward pass; `input_shape` is implied by the config.
    # Under JAX the pass is symbolic (shapes only): an eager one would compile every operation
    # on its own, a third of the build time. Under TensorFlow eager zeros are the faster.
    # Either way the initialisers run in the same order and draw the same weights.
    def build(self, input_shape=None):
        if self.built:
            return
        cfg = self.pixelcnn_config
        stand_in = keras.KerasTensor if keras.backend.backend() == "jax" else ops.zeros
        dummy = {"x": stand_in((1, *cfg.image_shape))}
        if cfg.conditioning != "none":
            dummy["h"] = stand_in((1, *cfg.h_shape))
        if self.h_maps is not None:
            # The streams first, on stand-in maps, so they draw the same initial weights as the
            # unconditional twin's (paired comparisons start from the same model); h's maps last.
            maps = [stand_in((1, *size, cfg.filters)) for size in cfg.resolutions]
            run = _FullPass(self, self._network_input(dummy["x"]), maps, False)
            self._ul_stream(run, *self._u_stream(run))
            self.h_maps.build((None, *cfg.h_shape))
        self._forward(dummy, training=False)
        self.built = True

    def build_from_config(self, config):
        self.build()

    def conditioning_maps(self, h, training=None):
        """The h each resolution's gated resnets see: [B, 1, 1, D] for a vector under "global"
        conditioning, the deconvolved maps under "deconv", the map resized to that resolution
        for a spatial h, None when unconditional. h is standardised first if configured."""
        cfg = self.pixelcnn_config
        if cfg.conditioning == "none":
            return [None] * NUM_RESOLUTIONS
        h = ops.cast(h, "float32")
        if self.h_standardise is not None:
            h = self.h_standardise(h)
        h = self.h_dropout(h, training=training)
        if self.h_maps is not None:
            return self.h_maps(h)
        if cfg.conditioning == "vector":
            return [h[:, None, None, :]] * NUM_RESOLUTIONS
        return [ops.image.resize(h, size, interpolation=cfg.h_resize) for size in cfg.resolutions]

    @staticmethod
    def _network_input(x):
        x = ops.cast(x, "float32") / 127.5 - 1.0
        # The constant channel of ones lets the network tell the image from zero padding.
        return ops.concatenate([x, ops.ones_like(x[..., :1])], axis=-1)

    def _forward(self, inputs, training=None):
        x = self._network_input(inputs["x"])
        run = _FullPass(self, x, self.conditioning_maps(inputs.get("h"), training), training)
        return self._ul_stream(run, *self._u_stream(run))

    def call(self, inputs, training=None):
        check_inputs(self.pixelcnn_config, inputs)
        return self._forward(inputs, training=training)

    # The architecture, written once. `run` says how a layer is applied: to whole feature
    # maps (`_FullPass`) or to one row per resolution with cached rows above (`_RowPass`).

    def _u_stream(self, run):
        """The down-shifted stream (sees rows above only). Returns the u after every layer of
        the down path and of the up path: the ul stream reads them as auxiliary inputs."""
        u = run.initial_u()
        down = [u]
        for level in range(NUM_RESOLUTIONS):
            for layer in self.down_u[level]:
                u = run.gated(layer, level, u)
                down.append(u)
            if level < NUM_RESOLUTIONS - 1:
                u = run.downsample(self.downsample_u[level], level, u)
                down.append(u)
        skips = list(down)
        u = skips.pop()  # the up path starts from the last saved activation, as in PixelCNN++
        up = []
        for level, resolution in enumerate(reversed(range(NUM_RESOLUTIONS))):
            for layer in self.up_u[level]:
                u = run.gated(layer, resolution, u, aux=skips.pop())
                up.append(u)
            if resolution > 0:
                u = run.upsample(self.upsample_u[level], resolution - 1, u)
        assert not skips, "every saved activation is consumed once"
        return down, up

    def _ul_stream(self, run, u_down, u_up):
        """The down-right-shifted stream, reading u; its output gives the params."""
        ul = run.initial_ul()
        skips = [ul]
        u_after = iter(u_down[1:])
        for level in range(NUM_RESOLUTIONS):
            for layer in self.down_ul[level]:
                ul = run.gated(layer, level, ul, aux=next(u_after))
                skips.append(ul)
            if level < NUM_RESOLUTIONS - 1:
                next(u_after)  # u's downsampling output: paired with ours, not an aux input
                ul = run.downsample(self.downsample_ul[level], level, ul)
                skips.append(ul)
        ul = skips.pop()
        u_after = iter(u_up)
        for level, resolution in enumerate(reversed(range(NUM_RESOLUTIONS))):
            for layer in self.up_ul[level]:
                ul = run.gated(layer, resolution, ul, aux=run.join(next(u_after), skips.pop()))
            if resolution > 0:
                ul = run.upsample(self.upsample_ul[level], resolution - 1, ul)
        assert not skips, "every saved activation is consumed once"
        return self._output_params(ul)

    def _output_params(self, ul):
        cfg = self.pixelcnn_config
        # In float32 whatever the policy: under mixed precision (bf16, float16) the network
        # computes in half precision, but a 256-way log-softmax summed over 784 pixels is not
        # something to do in 8 bits of mantissa.
        params = ops.cast(self.output_nin(ops.elu(ul)), "float32")
        if cfg.likelihood == "categorical":
            params = ops.reshape(params, (-1, *ops.shape(params)[1:3], cfg.num_channels, likelihoods.NUM_VALUES))
        return params

    # --- row-by-row evaluation (inference only) ---------------------------------------------
    #
    # Sampling image row r needs, at each resolution, only row r // 2**level of every feature
    # map, plus rows above it for height-2 and stride-2 kernels, which are cached. The u
    # stream sees rows above only, so it is computed once per image row (`start_row`); the
    # ul stream depends on the row's pixels so far and is recomputed per pixel (`row_params`).
    # Rows must be visited in order, and every pixel of a row before the next row starts.
    # Then each cached row was last written when all pixels it depends on were final (only
    # the initial layers read the current row, and they read the image, not a cache), so the
    # params equal those of a full forward pass; tests check this at every pixel.

    def initial_row_state(self, batch_size: int, ul: bool = True) -> dict:
        """Zero buffers, one per feature map that a height-2 or stride-2 kernel reads (the u
        stream's only when `ul` is False: the per-pixel sampler keeps its own for ul)."""
        cfg = self.pixelcnn_config
        state = {}

        def add(keys, resolution):
            height, width = cfg.resolutions[resolution]
            for key in keys:
                state[key] = ops.zeros((batch_size, height + 1, width, cfg.filters))

        for level in range(NUM_RESOLUTIONS):
            for layer in self.down_u[level] + (self.down_ul[level] if ul else []):
                add(layer.row_buffer_keys(), level)
            if level < NUM_RESOLUTIONS - 1:
                add([f"{self.downsample_u[level].name}/x"] + ([f"{self.downsample_ul[level].name}/x"] if ul else []),
                    level)
            for layer in self.up_u[level] + (self.up_ul[level] if ul else []):
                add(layer.row_buffer_keys(), NUM_RESOLUTIONS - 1 - level)
        return state

    def start_row(self, state: dict, x_window, row, h_levels):
        """The u stream's rows for image row `row`; fixed while that row is sampled.

        x_window: image rows row-2..row ([B, 3, W, C], 0..255; rows above the image are
        ignored). h_levels: `conditioning_maps(h)`. Returns (u_rows, new state)."""
        run = _RowPass(self, state, x_window, row, h_levels)
        return self._u_stream(run), run.state

    def row_params(self, state: dict, x_window, row, h_levels, u_rows):
        """Params of image row `row` ([B, 1, W, ...]) given the pixels sampled so far.
        Returns (params, new state)."""
        run = _RowPass(self, state, x_window, row, h_levels)
        return self._ul_stream(run, *u_rows), run.state

    # --- pixel-by-pixel evaluation of the ul stream (inference only) -------------------------
    #
    # Within image row r the ul stream at full resolution, column c, depends on the row's
    # pixels left of c only, so once pixel c - 1 is drawn, column c of every full-resolution
    # ul layer is final and is computed once, at the step that needs the params of pixel c:
    # its down-right 2x2 kernels read columns c - 1 and c of rows r - 1 and r, kept in
    # two-row buffers. Position (R, J) of resolution l (R = r >> l, J = c >> l) reads
    # full-resolution rows <= R * 2**l and columns < J * 2**l, so it is final from pixel
    # (R * 2**l, J * 2**l) on (Ramachandran et al., 2017). On image row R * 2**l it is
    # computed at every pixel: at the later pixels of that row its inputs and the buffer rows
    # it reads are unchanged, so it comes out the same. Computing it only where it becomes
    # final (every 2nd pixel of every 2nd row, every 4th of every 4th) would need a branch per
    # pixel, and a compiled branch copies every cached buffer it passes on, which costs more
    # than the extra positions. So the sampler runs one pixel loop per kind of row (levels up
    # to 2 on every 4th row, up to 1 on the other even rows, 0 on odd rows). A full-resolution
    # position reads its low-resolution input from the upsampling layer's cache: the stride-2
    # transposed convolution maps (R, J) to (2R + i, 2J + j) by kernel tap (i, j). The u
    # stream is still computed one row per resolution per image row (`start_row`); the ul
    # stream reads the column it needs from those rows.

    def initial_pixel_state(self, batch_size: int) -> dict:
        """Zero buffers for `pixel_params`: two rows (+ a zero column on the left) per ul
        feature map that a 2x2 or stride-2 kernel reads; one row per upsampled map."""
        cfg = self.pixelcnn_config
        state = {}

        def add(keys, resolution, rows=2, pad=1):
            width = cfg.resolutions[resolution][1]
            for key in keys:
                state[key] = ops.zeros((batch_size, rows, width + pad, cfg.filters))

        for level in range(NUM_RESOLUTIONS):
            resolution = NUM_RESOLUTIONS - 1 - level  # of the up path's level-th block
            for layer in self.down_ul[level]:
                add(layer.row_buffer_keys(), level)
            for layer in self.up_ul[level]:
                add(layer.row_buffer_keys(), resolution)
            if level < NUM_RESOLUTIONS - 1:
                add([f"{self.downsample_ul[level].name}/x"], level)
                add([f"{self.upsample_ul[level].name}/x"], resolution, rows=1, pad=0)
        return state

    def pixel_params(self, state: dict, x_window, row, col, h_levels, u_rows, max_level: int):
        """Params of pixel (`row`, `col`) ([B, 1, ...]) given the pixels before it. Computes the
        ul stream's position at this pixel for the levels up to `max_level` and reads the
        others from their caches. Pixels must be visited in raster order, with `max_level` the
        highest level l for which row is a multiple of 2**l (the sampler's loop for that kind
        of row). Returns (params, new state)."""
        pass_ = _PixelPass(self, state, x_window, row, col, h_levels, max_level)
        return self._ul_stream(pass_, *u_rows)[:, 0], pass_.state

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "config": self.pixelcnn_config.model_dump(mode="json")}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class _FullPass:
    """Apply layers to whole feature maps: training and likelihood evaluation."""

    def __init__(self, model: PixelCNNPlusPlus, x, h_levels, training):
        self.model, self.x, self.h_levels, self.training = model, x, h_levels, training

    def initial_u(self):
        m = self.model
        return m.shift_down(m.u_init(self.x))

    def initial_ul(self):
        m = self.model
        return m.shift_down(m.ul_init_above(self.x)) + m.shift_right(m.ul_init_left(self.x))

    def gated(self, layer, level, x, aux=None):
        return layer(x, aux=aux, h=self.h_levels[level], training=self.training)

    def downsample(self, layer, level, x):
        return layer(x)

    def upsample(self, layer, to_level, x):
        height, width = self.model.pixelcnn_config.resolutions[to_level]
        return layer(x, target_height=height, target_width=width)

    def join(self, u, skip):
        """The up path's auxiliary input: u and the skip connection, concatenated."""
        return ops.concatenate([u, skip], axis=-1)


class _RowPass:
    """Apply layers to one row per resolution (image row `row`), reading rows above from the
    caches in `state`; dropout is off. `state` is copied, then updated."""

    def __init__(self, model: PixelCNNPlusPlus, state: dict, x_window, row, h_levels):
        self.model, self.state, self.row = model, dict(state), row
        cfg = model.pixelcnn_config
        self.rows = [row // 2**level for level in range(NUM_RESOLUTIONS)]
        batch = x_window.shape[0]
        # Rows above the image are zero padding, in the constant-ones channel too.
        inside = ops.reshape(ops.cast(ops.arange(3) + row - 2 >= 0, "float32"), (1, 3, 1, 1))
        x = (ops.cast(x_window, "float32") / 127.5 - 1.0) * inside
        self.x = ops.concatenate([x, ops.ones_like(x[..., :1]) * inside], axis=-1)
        self.h_rows = []
        for level, h_map in enumerate(h_levels):
            if cfg.spatial_h_maps:
                h_map = ops.slice(h_map, (0, self.rows[level], 0, 0), (batch, 1, *h_map.shape[2:]))
            self.h_rows.append(h_map)

    def _not_first_row(self):
        return ops.cast(self.row > 0, "float32")  # down_shift fills row 0 with zeros

    def initial_u(self):
        # shift_down(u_init(x)) at row r is u_init's row r - 1, made of image rows r-2, r-1.
        return self._not_first_row() * self.model.u_init.convolve(self.x[:, 0:2], ((0, 0), (1, 1)))

    def initial_ul(self):
        m = self.model
        above = self._not_first_row() * m.ul_init_above.convolve(self.x[:, 1:2], ((0, 0), (1, 1)))
        return above + m.shift_right(m.ul_init_left.convolve(self.x[:, 1:3], ((0, 0), (0, 0))))

    def gated(self, layer, level, x, aux=None):
        return layer.row_step(self.state, self.rows[level], x, aux_row=aux, h_row=self.h_rows[level])

    def downsample(self, layer, level, x):
        # Low-res row j reads rows 2j-1 and 2j of this resolution.
        window = write_row_and_read(self.state, f"{layer.name}/x", x, self.rows[level], 2 * self.rows[level + 1] - 1)
        return layer.convolve(window, ((0, 0), layer.padding[1]))

    def upsample(self, layer, to_level, x):
        return layer.row_step(x, self.rows[to_level], self.model.pixelcnn_config.resolutions[to_level][1])

    def join(self, u, skip):
        return ops.concatenate([u, skip], axis=-1)


class _PixelPass(_RowPass):
    """Apply the ul stream's layers at one position per resolution: column col >> level of
    row row >> level, for the levels up to `max_level` (the others' positions are not final
    yet or were computed before: their layers return None and the upsampling reads their
    cached output). Reads u from the rows of `start_row`; `state`: `initial_pixel_state`."""

    def __init__(self, model: PixelCNNPlusPlus, state: dict, x_window, row, col, h_levels, max_level: int):
        super().__init__(model, state, x_window, row, h_levels)
        self.col, self.max_level = col, max_level
        self.cols = [col // 2**level for level in range(NUM_RESOLUTIONS)]
        if model.pixelcnn_config.spatial_h_maps:
            self.h_rows = [self._cell(h_row, level) for level, h_row in enumerate(self.h_rows)]

    def _cell(self, row_map, level):
        batch, _, _, channels = row_map.shape
        return ops.slice(row_map, (0, 0, self.cols[level], 0), (batch, 1, 1, channels))

    def initial_u(self):
        raise InvkerasError("the per-pixel pass evaluates the ul stream only; u comes from start_row")

    def initial_ul(self):
        # shift_down(ul_init_above(x)) + shift_right(ul_init_left(x)) at (row, col): image
        # row - 1, columns col-1..col+1; and image rows row-1..row at column col - 1.
        m = self.model
        x = ops.pad(self.x, ((0, 0), (0, 0), (1, 1), (0, 0)))  # column j at j + 1
        batch, _, _, channels = x.shape
        above = ops.slice(x, (0, 1, self.col, 0), (batch, 1, 3, channels))
        left = ops.slice(x, (0, 1, self.col, 0), (batch, 2, 1, channels))
        not_first_col = ops.cast(self.col > 0, "float32")
        return (self._not_first_row() * m.ul_init_above.convolve_window(above)
                + not_first_col * m.ul_init_left.convolve_window(left))

    def gated(self, layer, level, x, aux=None):
        if level > self.max_level:
            return None
        if isinstance(aux, tuple):  # the up path's (u row, skip) from `join`
            aux = ops.concatenate([self._cell(aux[0], level), aux[1]], axis=-1)
        else:
            aux = self._cell(aux, level)
        return layer.column_step(self.state, self.rows[level], self.cols[level], x, aux, self.h_rows[level])

    def downsample(self, layer, level, x):
        if level > self.max_level:
            return None
        key = f"{layer.name}/x"
        self.state[key] = ops.slice_update(self.state[key], (0, self.rows[level] % 2, self.cols[level] + 1, 0), x)
        if level + 1 > self.max_level:
            return None
        # Low-res (R, J) reads rows 2R-1, 2R and columns 2J-1, 2J: this level's row 2R is
        # the current one, and column 2J was just written.
        window = read_cells(self.state[key], 2 * self.rows[level + 1], 2 * self.cols[level + 1])
        return layer.convolve_window(window)

    def upsample(self, layer, to_level, x):
        if to_level > self.max_level:
            return None
        key, source = f"{layer.name}/x", to_level + 1
        if source <= self.max_level:
            self.state[key] = ops.slice_update(self.state[key], (0, 0, self.cols[source], 0), x)
        else:
            x = self._cell(self.state[key], source)  # computed at an earlier pixel
        both = layer.deconv(x)  # [B, 2, 2, F]: kernel tap (i, j) gives position (2R + i, 2J + j)
        return ops.slice(both, (0, self.rows[to_level] % 2, self.cols[to_level] % 2, 0),
                         (both.shape[0], 1, 1, layer.filters))

    def join(self, u, skip):
        return None if skip is None else (u, skip)


def build_pixelcnn(config: PixelCNNConfig) -> PixelCNNPlusPlus:
    """Create and build the network for `config` (weights exist on return)."""
    model = PixelCNNPlusPlus(config, name="pixelcnn")
    model.build()
    return model


def model_inputs(config: PixelCNNConfig, x, h=None) -> dict:
    """The input dict the model expects (no 'h' for an unconditional model)."""
    return {"x": x} if config.conditioning == "none" else {"x": x, "h": h}
